//! `[http]`: the HTTP API, dashboard and webhook triggers of `persona-bus run`.

use persona_bus_model::settings::{Checked, EnvVar, Invalid};
use serde::{Deserialize, Serialize};

/// The HTTP API and dashboard served by `persona-bus run`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the API at all.
    pub enabled: bool,
    /// `--http-addr` / `PERSONA_BUS_HTTP_ADDR`.
    pub addr: String,
    /// Bearer token required by mutating routes (`PERSONA_BUS_HTTP_TOKEN`).
    /// Without one the host refuses to listen beyond loopback.
    pub token: Option<String>,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Webhook triggers by id: `[http.webhooks.github] secret = "..."`.
    pub webhooks: std::collections::BTreeMap<String, WebhookTrigger>,
    /// The dashboard's memory: a sample of its charted series this often...
    pub history_sample_ms: u64,
    /// ...kept this long, so a page opens with the recent past.
    pub history_minutes: u64,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTrigger {
    /// HMAC-SHA256 key for `x-hub-signature-256`.
    pub secret: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Project of the `webhook_received` events (default: `default`).
    #[serde(default)]
    pub project_id: Option<String>,
}

fn yes() -> bool {
    true
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: "127.0.0.1:8080".into(),
            token: None,
            max_body_bytes: 1024 * 1024,
            webhooks: Default::default(),
            history_sample_ms: 5000,
            history_minutes: 60,
        }
    }
}

// Secrets never reach a log line through `{:?}`.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("enabled", &self.enabled)
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("webhooks", &self.webhooks.keys().collect::<Vec<_>>())
            .field("history_sample_ms", &self.history_sample_ms)
            .field("history_minutes", &self.history_minutes)
            .finish()
    }
}

impl HttpConfig {
    pub const ENV: &[EnvVar<Self>] = &[
        EnvVar {
            name: "PERSONA_BUS_HTTP_ADDR",
            key: "http.addr",
            help: "where the HTTP API and dashboard listen (host:port; port 0 picks one)",
            secret: false,
            set: |s, v, _| {
                s.addr = v;
                Ok(())
            },
        },
        EnvVar {
            name: "PERSONA_BUS_HTTP_TOKEN",
            key: "http.token",
            help: "bearer token of the mutating routes; required beyond loopback",
            secret: true,
            set: |s, v, _| {
                s.token = Some(v);
                Ok(())
            },
        },
    ];

    pub fn validate(&self) -> Checked {
        if !self.enabled {
            return Ok(());
        }
        let addr: std::net::SocketAddr = self.addr.parse().map_err(|_| {
            Invalid::new(
                "http.addr",
                format!("{:?} is not host:port (e.g. 127.0.0.1:8080)", self.addr),
            )
        })?;
        if !addr.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
            return Err(Invalid::new(
                "http.token",
                "listening beyond loopback needs a bearer token (PERSONA_BUS_HTTP_TOKEN)",
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(Invalid::new("http.max_body_bytes", "must be at least 1024"));
        }
        if self.history_sample_ms < 100 {
            return Err(Invalid::new(
                "http.history_sample_ms",
                "must be at least 100",
            ));
        }
        if self.history_minutes == 0 || self.history_minutes > 24 * 60 {
            return Err(Invalid::new(
                "http.history_minutes",
                "must be 1 to 1440 (a day)",
            ));
        }
        if self.webhooks.values().any(|w| w.secret.is_empty()) {
            return Err(Invalid::new(
                "http.webhooks",
                "every trigger needs a non-empty secret",
            ));
        }
        Ok(())
    }
}
