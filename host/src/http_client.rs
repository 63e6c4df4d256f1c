//! The one way the host makes outbound HTTP calls (schema registry, alert
//! webhooks): ureq over the system's OpenSSL (the TLS rdkafka links
//! already), platform root certificates, a timeout on the whole call, and
//! statuses returned rather than raised so callers can name them.

use std::time::Duration;

pub fn agent(timeout: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .tls_config(tls)
        .build()
        .into()
}
