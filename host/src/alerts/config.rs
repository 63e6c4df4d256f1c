//! `[alerts]`: the rules the host evaluates itself and where it sends what
//! they find. Durations are humantime strings (`"90s"`, `"10m"`).

use persona_bus_model::settings::{Checked, EnvVar, Invalid};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Evaluate rules at all (they are also listed with no webhook: the
    /// log, `persona-bus alerts list` and the dashboard show them).
    pub enabled: bool,
    /// How often the rules are evaluated, in milliseconds.
    pub interval_ms: u64,
    /// The rules. Left out, a default set mirroring
    /// `deploy/prometheus/alerts.yml` applies; `rules = []` turns them off.
    pub rules: Vec<AlertRule>,
    /// Where firing and resolved notifications are POSTed. Env:
    /// `PERSONA_BUS_ALERT_WEBHOOK_URL` (+ `_SECRET`) adds one.
    pub webhooks: Vec<AlertWebhook>,
    /// Deliveries to a receiver that is down are retried after 1x, 2x, 4x
    /// ... this, capped at `retry_max_ms`, up to `max_attempts` attempts.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub max_attempts: u32,
    /// Per delivery (connect + response).
    pub timeout_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 10_000,
            rules: default_rules(),
            webhooks: Vec::new(),
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            max_attempts: 15,
            timeout_ms: 5_000,
        }
    }
}

impl AlertsConfig {
    pub const ENV: &[EnvVar<Self>] = &[
        EnvVar {
            name: "PERSONA_BUS_ALERT_WEBHOOK_URL",
            key: "alerts.webhooks[].url",
            help: "one more alert webhook, e.g. https://ops.example.com/hooks/persona-bus",
            secret: false,
            set: |s, url, env| {
                s.webhooks.push(AlertWebhook {
                    url,
                    secret: env("PERSONA_BUS_ALERT_WEBHOOK_SECRET"),
                });
                Ok(())
            },
        },
        EnvVar {
            name: "PERSONA_BUS_ALERT_WEBHOOK_SECRET",
            key: "alerts.webhooks[].secret",
            help: "HMAC-SHA256 key of PERSONA_BUS_ALERT_WEBHOOK_URL (read with it)",
            secret: true,
            set: |_, _, _| Ok(()),
        },
    ];

    pub fn validate(&self) -> Checked {
        if self.interval_ms < 10 || self.timeout_ms == 0 {
            return Err(Invalid::new(
                "alerts",
                "interval_ms must be at least 10 and timeout_ms above 0",
            ));
        }
        if self.max_attempts == 0
            || self.retry_base_ms == 0
            || self.retry_max_ms < self.retry_base_ms
        {
            return Err(Invalid::new(
                "alerts",
                "need max_attempts >= 1 and 0 < retry_base_ms <= retry_max_ms",
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.check()
                .map_err(|reason| Invalid::new("alerts.rules", reason))?;
            if self.rules[..i].iter().any(|r| r.name == rule.name) {
                return Err(Invalid::new(
                    "alerts.rules",
                    format!("two rules are named {:?}", rule.name),
                ));
            }
        }
        for w in &self.webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(Invalid::new(
                    "alerts.webhooks",
                    format!("{:?} must start with http:// or https://", w.url),
                ));
            }
            if w.secret.as_deref() == Some("") {
                return Err(Invalid::new(
                    "alerts.webhooks",
                    format!(
                        "the secret of {:?} is empty (leave it out to send unsigned)",
                        w.url
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for AlertsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertsConfig")
            .field("enabled", &self.enabled)
            .field("interval_ms", &self.interval_ms)
            .field("rules", &self.rules)
            .field(
                "webhooks",
                &self.webhooks.iter().map(|w| &w.url).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertWebhook {
    pub url: String,
    /// HMAC-SHA256 key: the body's signature goes in
    /// `x-persona-bus-signature-256: sha256=<hex>`. Unsigned without one.
    #[serde(default)]
    pub secret: Option<String>,
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Dead letters created within `window` (one handler, or all).
    DeadLetters,
    /// The event processor group's lag, summed over its partitions.
    ConsumerLag,
    /// The Kafka breaker is not closed (SQLite is handling events).
    BreakerOpen,
    /// Percent of handler runs that failed within `window`, per handler.
    ErrorRate,
    /// Seconds the oldest event has waited in the Kafka outbox.
    OutboxAge,
    /// 1 while the store refuses writes (a full disk, or less free space
    /// than `store.min_free_mb`), else 0.
    StoreRefusing,
    /// 1 per handler whose canary version was rolled back, while it is
    /// loaded (a new canary or `handlers discard` ends it).
    CanaryRolledBack,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::DeadLetters => "dead_letters",
            Signal::ConsumerLag => "consumer_lag",
            Signal::BreakerOpen => "breaker_open",
            Signal::ErrorRate => "error_rate",
            Signal::OutboxAge => "outbox_age",
            Signal::StoreRefusing => "store_refusing",
            Signal::CanaryRolledBack => "canary_rolled_back",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Unique; names the alert in notifications and lists.
    pub name: String,
    pub signal: Signal,
    /// Fires when the value is above this: a count (dead letters, records),
    /// a percent (error rate) or seconds (outbox age). Unused by
    /// `breaker_open`.
    #[serde(default)]
    pub above: f64,
    /// The look-back of `dead_letters` and `error_rate`.
    #[serde(default)]
    pub window: Option<String>,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for")]
    pub hold: Option<String>,
    /// `dead_letters` and `error_rate`: only this handler. Without it,
    /// dead letters are counted over all handlers and error rates are
    /// watched per handler (an alert each).
    #[serde(default)]
    pub handler: Option<String>,
    /// `error_rate`: fewer runs in the window say nothing.
    #[serde(default = "ten")]
    pub min_runs: u64,
    /// Passed through to notifications (`warning`, `critical`, ...).
    #[serde(default = "warning")]
    pub severity: String,
}

fn ten() -> u64 {
    10
}

fn warning() -> String {
    "warning".into()
}

impl AlertRule {
    pub fn window(&self) -> Duration {
        parse(self.window.as_deref()).unwrap_or(Duration::from_secs(300))
    }

    pub fn hold(&self) -> Duration {
        parse(self.hold.as_deref()).unwrap_or_default()
    }

    /// Checks one rule; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("every rule needs a name".into());
        }
        for (field, v) in [("window", &self.window), ("for", &self.hold)] {
            if let Some(text) = v {
                humantime::parse_duration(text).map_err(|e| {
                    format!(
                        "rule {:?}: {field} = {text:?} is not a duration ({e})",
                        self.name
                    )
                })?;
            }
        }
        let windowed = matches!(self.signal, Signal::DeadLetters | Signal::ErrorRate);
        if self.window.is_some() && !windowed {
            return Err(format!(
                "rule {:?}: window applies to dead_letters and error_rate only",
                self.name
            ));
        }
        if self.handler.is_some() && !windowed {
            return Err(format!(
                "rule {:?}: handler applies to dead_letters and error_rate only",
                self.name
            ));
        }
        if !self.above.is_finite() || self.above < 0.0 {
            return Err(format!("rule {:?}: above must be a number >= 0", self.name));
        }
        if self.signal == Signal::ErrorRate && self.above >= 100.0 {
            return Err(format!(
                "rule {:?}: an error rate is a percent; above must be below 100",
                self.name
            ));
        }
        Ok(())
    }
}

fn parse(text: Option<&str>) -> Option<Duration> {
    text.and_then(|t| humantime::parse_duration(t).ok())
}

/// The rules used when `[alerts] rules` is left out: the same signals and
/// thresholds as the shipped Prometheus rules.
pub fn default_rules() -> Vec<AlertRule> {
    let rule = |name: &str, signal, above, window: Option<&str>, hold: &str| AlertRule {
        name: name.into(),
        signal,
        above,
        window: window.map(Into::into),
        hold: Some(hold.into()),
        handler: None,
        min_runs: 20,
        severity: "warning".into(),
    };
    vec![
        rule("dead-letters", Signal::DeadLetters, 10.0, Some("15m"), "0s"),
        rule("consumer-lag", Signal::ConsumerLag, 10_000.0, None, "5m"),
        rule("breaker-open", Signal::BreakerOpen, 0.0, None, "2m"),
        rule("handler-errors", Signal::ErrorRate, 5.0, Some("10m"), "10m"),
        rule("outbox-stale", Signal::OutboxAge, 600.0, None, "5m"),
        rule("store-refusing", Signal::StoreRefusing, 0.0, None, "0s"),
        rule(
            "canary-rolled-back",
            Signal::CanaryRolledBack,
            0.0,
            None,
            "0s",
        ),
    ]
}
