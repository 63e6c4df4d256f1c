//! Webhook deliveries of alert notifications: a JSON body, signed with
//! HMAC-SHA256 over the exact bytes sent (`x-persona-bus-signature-256:
//! sha256=<hex>`, GitHub's form), with a delivery id that stays the same
//! across retries so a receiver can drop a repeat. A receiver that is down
//! or answers non-2xx is tried again after 1x, 2x, 4x ... `retry_base_ms`
//! (capped at `retry_max_ms`) until `max_attempts`; the queue is in SQLite,
//! so retries outlive a restart.

use super::state::Alert;
use crate::config::Config;
use crate::context::HostContext;
use crate::event::now_millis;
use crate::store::Delivery;
use std::time::Duration;

/// Deliveries attempted per pass (the evaluator's thread also evaluates).
const PER_PASS: usize = 32;

pub struct Sender {
    agent: ureq::Agent,
    webhooks: Vec<(String, Option<String>)>,
    retry_base_ms: u64,
    retry_max_ms: u64,
    max_attempts: u32,
    /// Who is speaking: this device's name and the host's dashboard.
    host: String,
    client_id: String,
    dashboard: Option<String>,
}

impl Sender {
    pub fn new(config: &Config) -> Self {
        let a = &config.alerts;
        Self {
            agent: crate::http_client::agent(Duration::from_millis(a.timeout_ms)),
            webhooks: a
                .webhooks
                .iter()
                .map(|w| (w.url.clone(), w.secret.clone()))
                .collect(),
            retry_base_ms: a.retry_base_ms,
            retry_max_ms: a.retry_max_ms,
            max_attempts: a.max_attempts,
            host: hostname(),
            client_id: config.kafka.client_id.clone(),
            dashboard: config
                .http
                .enabled
                .then(|| format!("http://{}/", config.http.addr)),
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.webhooks.iter().map(|(u, _)| u.clone()).collect()
    }

    /// The notification body for `alert` as it is now.
    pub fn body(&self, alert: &Alert) -> String {
        let mut v = super::alert_json(alert);
        v["host"] = self.host.clone().into();
        v["client_id"] = self.client_id.clone().into();
        v["dashboard"] = self.dashboard.clone().into();
        v.to_string()
    }

    /// Attempts the deliveries that are due; returns how long until the
    /// next one is (none: nothing waits).
    pub fn deliver_due(&self, ctx: &HostContext) -> Option<Duration> {
        let now = now_millis();
        let due = match ctx.store.alert_deliveries_due(now, PER_PASS) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read alert deliveries; retrying");
                return Some(Duration::from_secs(1));
            }
        };
        for d in &due {
            if ctx.stopping() {
                break;
            }
            let result = self.post(d);
            let now = now_millis();
            let retry_at = match &result {
                Ok(()) => None,
                Err(e) if d.attempts + 1 >= self.max_attempts => {
                    tracing::error!(url = %d.url, attempts = d.attempts + 1, error = %e, "giving up on an alert delivery");
                    None
                }
                Err(e) => {
                    let delay = self.backoff(d.attempts);
                    tracing::warn!(url = %d.url, attempt = d.attempts + 1, retry_in_ms = delay, error = %e, "alert delivery failed; will retry");
                    Some(now + delay as i64)
                }
            };
            if let Err(e) = ctx.store.alert_delivery_attempted(
                d.id,
                now,
                result.as_ref().err().map(String::as_str),
                retry_at,
            ) {
                tracing::warn!(error = %e, "cannot record an alert delivery attempt");
            }
        }
        match ctx.store.alert_delivery_next_due() {
            Ok(Some(at)) => Some(Duration::from_millis((at - now_millis()).max(0) as u64)),
            Ok(None) => None,
            Err(_) => Some(Duration::from_secs(1)),
        }
    }

    /// Milliseconds before attempt `attempts + 2`.
    fn backoff(&self, attempts: u32) -> u64 {
        self.retry_base_ms
            .saturating_mul(1u64 << attempts.min(30))
            .min(self.retry_max_ms)
    }

    fn post(&self, d: &Delivery) -> Result<(), String> {
        let mut req = self
            .agent
            .post(&d.url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("persona-bus/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-persona-bus-delivery", d.id.to_string())
            .header("x-persona-bus-event", format!("alert.{}", d.status));
        // The secret is looked up now: a delivery queued before a restart
        // is signed with the key configured after it.
        if let Some(secret) = self
            .webhooks
            .iter()
            .find(|(u, _)| u == &d.url)
            .and_then(|(_, s)| s.as_deref())
        {
            req = req.header(
                "x-persona-bus-signature-256",
                crate::signature::sign(secret, d.body.as_bytes()),
            );
        }
        match req.send(d.body.as_bytes()) {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{} answered {}", d.url, r.status())),
            Err(e) => Err(format!("{}: {e}", d.url)),
        }
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut c = Config::default();
        c.alerts.retry_base_ms = 100;
        c.alerts.retry_max_ms = 1_000;
        let s = Sender::new(&c);
        let delays: Vec<u64> = (0..6).map(|a| s.backoff(a)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
    }
}
