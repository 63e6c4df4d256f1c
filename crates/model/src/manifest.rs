//! Handler manifests: the `name.toml` beside each `name.wasm`.
//!
//! Parsed strictly (unknown keys are errors with file and line) and resolved
//! against the host's defaults and ceilings at load time, so a bad manifest is
//! refused before its handler ever sees an event.

use crate::limits::HostLimits;
use crate::matching::SourceFilter;
/// Where outbound HTTP may go; its own module so `rollout` can name it.
pub use crate::outbound::OutboundRule;
use crate::text::line_of;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A manifest as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    #[serde(default)]
    description: Option<String>,
    /// The component file, relative to the manifest; default `<name>.wasm`.
    #[serde(default)]
    component: Option<PathBuf>,
    /// The component from an OCI registry instead of a file (`[oci]`).
    #[serde(default)]
    oci: Option<RawOci>,
    #[serde(default)]
    subscriptions: Vec<RawSubscription>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    capabilities: Capabilities,
    #[serde(default)]
    instances: Instances,
    #[serde(default)]
    ordering: RawOrdering,
    #[serde(default)]
    batch: Option<RawBatch>,
    /// A shadow or canary of the live handler of this name.
    #[serde(default)]
    rollout: Option<crate::rollout::RawRollout>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    /// Destinations outbound HTTP may reach (deny by default):
    /// `"https://api.github.com"`, `"http://127.0.0.1:*"`, `"https://*.example.com:8443"`.
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    /// Values from the host's environment or files (`crate::secrets`).
    #[serde(default)]
    secrets: BTreeMap<String, crate::secrets::SecretSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOci {
    reference: String,
    #[serde(default)]
    poll_secs: Option<u64>,
}

/// `[oci]`: the component is pulled from a registry, not read from the
/// handlers folder.
#[derive(Debug, Clone, PartialEq)]
pub struct OciSource {
    /// `host[:port]/repository:tag` or `...@sha256:<hex>`.
    pub reference: String,
    /// How often a tag is checked for a new digest; None: the host's
    /// `[oci] poll_secs`. A reference by digest never moves.
    pub poll_secs: Option<u64>,
}

impl OciSource {
    /// Whether the reference names a digest (it never changes).
    pub fn pinned(&self) -> bool {
        self.reference.contains("@sha256:")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    event_type: String,
    /// A string (`"watcher-*"`) or a table in the original JSON object form.
    #[serde(default)]
    source_filter: Option<toml::Value>,
    #[serde(default)]
    project: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    fuel: Option<u64>,
    max_publishes: Option<u32>,
    max_log_lines: Option<u32>,
    max_event_bytes: Option<usize>,
    max_output_bytes: Option<usize>,
    http_requests: Option<u32>,
    http_response_bytes: Option<usize>,
    http_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    backoff_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

/// What a handler may touch beyond the bus API. Nothing by default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Let the guest write to the host's stdout/stderr (debugging).
    #[serde(default)]
    pub stdio: bool,
}

/// A subscription a manifest declares.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestSubscription {
    pub event_type: String,
    /// Stored as text in `persona_event_subscriptions.source_filter`.
    pub source_filter: Option<String>,
    pub project_id: Option<String>,
}

/// Per-handler limits, resolved against the host's defaults and ceilings.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// Instructions budget per call, when set.
    pub fuel: Option<u64>,
    pub max_publishes: u32,
    pub max_log_lines: u32,
    /// Largest event payload delivered to this handler; a larger one is
    /// dead-lettered for it without running it.
    pub max_event_bytes: usize,
    /// Most bytes one call may publish (payloads) and write to state.
    pub max_output_bytes: usize,
    /// Outbound HTTP per call: requests, bytes per response body, and the
    /// time per request (never past the call's deadline).
    pub http_requests: u32,
    pub http_response_bytes: usize,
    pub http_timeout: Duration,
}

/// Whether each event gets a fresh instance or reuses a warm one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstancePolicy {
    /// A new instance per event: no state can leak between events. Cheap for
    /// small guests (microseconds with the pooling allocator).
    #[default]
    Fresh,
    /// Keep instances warm and call them again: for large guests (a
    /// JavaScript handler costs far more to instantiate than to call). An
    /// instance that traps or hits a limit is thrown away.
    Reuse,
}

/// How a handler's instances are made and how many run at once.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instances {
    #[serde(default)]
    pub policy: InstancePolicy,
    /// Most calls of this handler at the same time (and warm instances kept
    /// with `reuse`); unset: as many as there are workers.
    #[serde(default)]
    pub concurrency: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrdering {
    #[serde(default)]
    by: Option<String>,
    /// With `by = "key"`: a JSON pointer into the payload (`/order_id`).
    #[serde(default)]
    key: Option<String>,
    /// With `by = "key"`: a header of the event instead.
    #[serde(default)]
    header: Option<String>,
    /// Most calls of this handler at once (its `instances.concurrency`).
    #[serde(default)]
    max_in_flight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_events: u32,
    #[serde(default)]
    max_wait_ms: u64,
}

/// Most events in one `handle-batch` call.
pub const MAX_BATCH_EVENTS: u32 = 1024;
/// Longest a batch may wait to fill.
pub const MAX_BATCH_WAIT_MS: u64 = 10_000;

/// `[batch]`: many events per call, through the component's
/// `handle-batch` export (`persona:bus@0.2.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most events in one call.
    pub max_events: u32,
    /// How long a batch that is not full waits for more of its unit's
    /// events before it runs; 0: it takes what is queued.
    pub max_wait: Duration,
}

/// Which of a handler's events run one after another. Its state behaves
/// as if the events of one ordering unit ran one after another: a call
/// sees every write of the earlier completed calls of its unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OrderBy {
    /// Every event of a project, in order, one at a time: the unit is the
    /// project (the default).
    #[default]
    Project,
    /// Events of a project with the same key, in order, one at a time;
    /// different keys in parallel. The unit is (project, key).
    Key(KeySource),
    /// No order: each event is its own unit, up to the handler's
    /// concurrency at once.
    None,
}

/// Where an event's ordering key is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JSON pointer into the payload (`/order_id`): a string is the key
    /// as is, any other value its JSON text.
    Pointer(String),
    /// A header of the event.
    Header(String),
}

impl KeySource {
    /// The key of `event`; empty when the field or header is missing (such
    /// events share one unit).
    pub fn key_of(&self, event: &crate::event::Event) -> String {
        match self {
            Self::Header(name) => event
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            Self::Pointer(pointer) => {
                let Ok(payload) = serde_json::from_str::<serde_json::Value>(&event.payload) else {
                    return String::new();
                };
                match payload.pointer(pointer) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                }
            }
        }
    }
}

impl std::fmt::Display for OrderBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Project => f.write_str("project"),
            Self::Key(KeySource::Pointer(p)) => write!(f, "key {p}"),
            Self::Key(KeySource::Header(h)) => write!(f, "key header {h}"),
            Self::None => f.write_str("none"),
        }
    }
}

impl RawOrdering {
    fn resolve(&self) -> Result<OrderBy, (&'static str, String)> {
        let by = self.by.as_deref().unwrap_or("project");
        let order = match (by, &self.key, &self.header) {
            ("project", None, None) => OrderBy::Project,
            ("none", None, None) => OrderBy::None,
            ("project" | "none", _, _) => {
                return Err((
                    "ordering",
                    format!("key and header are for by = \"key\", not by = {by:?}"),
                ));
            }
            ("key", Some(p), None) if p.starts_with('/') => {
                OrderBy::Key(KeySource::Pointer(p.clone()))
            }
            ("key", Some(p), None) => {
                return Err((
                    "ordering.key",
                    format!(
                        "{p:?} is not a JSON pointer (one starts with `/`, as in \"/order_id\")"
                    ),
                ));
            }
            ("key", None, Some(h)) if !h.trim().is_empty() => {
                OrderBy::Key(KeySource::Header(h.clone()))
            }
            ("key", None, Some(_)) => {
                return Err(("ordering.header", "is empty".into()));
            }
            ("key", _, _) => {
                return Err((
                    "ordering",
                    "by = \"key\" takes one of key (a JSON pointer into the payload) or header"
                        .into(),
                ));
            }
            (other, _, _) => {
                return Err((
                    "ordering.by",
                    format!("{other:?} is not one of \"project\", \"key\", \"none\""),
                ));
            }
        };
        Ok(order)
    }
}

/// Deliveries when a manifest sets none: the first and 3 retries, then a
/// dead letter, as the bus this one replaces did.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;

/// When and how often a failed delivery is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Deliveries in all, the first included; then the event is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles for each one after.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1`: exponential, capped, with "equal
    /// jitter" (a random point in the upper half) so that many events failing
    /// together do not come back together.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let full = exp.min(self.backoff_max);
        let half = full / 2;
        half + Duration::from_micros(fastrand::u64(0..=half.as_micros() as u64))
    }
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    /// The manifest file itself.
    pub path: PathBuf,
    /// The component file: beside the manifest, or, for `[oci]`, the
    /// host's cached copy once pulled and verified.
    pub component: PathBuf,
    /// Where the component is pulled from, if from a registry.
    pub oci: Option<OciSource>,
    pub subscriptions: Vec<ManifestSubscription>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub capabilities: Capabilities,
    pub instances: Instances,
    /// Which of its events run one after another (`[ordering]`).
    pub ordering: OrderBy,
    /// Events per call (`[batch]`); None: one, through `handle`.
    pub batch: Option<Batching>,
    /// Set when this is a candidate version (`[rollout]`), not the live one.
    pub rollout: Option<crate::rollout::Rollout>,
    pub config: BTreeMap<String, String>,
    /// Where outbound HTTP may go; empty: nowhere.
    pub allowed_outbound_hosts: Arc<[OutboundRule]>,
    /// Read by the guest through `config(name)`; scrubbed from its output.
    pub secrets: Arc<crate::secrets::Secrets>,
}

/// A manifest that cannot be loaded; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}, line {line}: {message}")]
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{file}: `{key}`: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

impl Manifest {
    pub fn load(path: &Path, host: &HostLimits) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, host)
    }

    pub fn parse(path: &Path, text: &str, host: &HostLimits) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            file: path.to_owned(),
            line: line_of(text, e.span()),
            message: e.message().trim().to_owned(),
        })?;
        let invalid = |key: &str, reason: String| ManifestError::Invalid {
            file: path.to_owned(),
            key: key.to_owned(),
            reason,
        };

        if raw.name.is_empty()
            || raw.name.len() > 64
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(invalid(
                "name",
                "use 1-64 characters of a-z, 0-9, `-` and `_`".into(),
            ));
        }
        if raw.version.trim().is_empty() {
            return Err(invalid("version", "must not be empty".into()));
        }
        // A candidate (`[rollout]`) gets the live version's events: its own
        // subscriptions, if any, are not used.
        if raw.subscriptions.is_empty() && raw.rollout.is_none() {
            return Err(invalid(
                "subscriptions",
                "a handler needs at least one subscription".into(),
            ));
        }
        let mut subscriptions = Vec::with_capacity(raw.subscriptions.len());
        for (i, s) in raw.subscriptions.into_iter().enumerate() {
            let key = format!("subscriptions[{i}]");
            if s.event_type.trim().is_empty() {
                return Err(invalid(
                    &format!("{key}.event_type"),
                    "must not be empty".into(),
                ));
            }
            let source_filter = match s.source_filter {
                None => None,
                Some(toml::Value::String(text)) => Some(text),
                Some(table @ toml::Value::Table(_)) => {
                    Some(serde_json::to_string(&table).map_err(|e| invalid(&key, e.to_string()))?)
                }
                Some(other) => {
                    return Err(invalid(
                        &format!("{key}.source_filter"),
                        format!("expected a string or a table, found {}", other.type_str()),
                    ));
                }
            };
            SourceFilter::parse(source_filter.as_deref())
                .map_err(|e| invalid(&format!("{key}.source_filter"), e.reason))?;
            subscriptions.push(ManifestSubscription {
                event_type: s.event_type,
                source_filter,
                project_id: s.project,
            });
        }

        let timeout_ms = raw.limits.timeout_ms.unwrap_or(host.default_timeout_ms);
        ceiling(timeout_ms, host.max_timeout_ms, "ms")
            .map_err(|r| invalid("limits.timeout_ms", r))?;
        let memory_mb = raw.limits.memory_mb.unwrap_or(host.default_memory_mb);
        ceiling(memory_mb, host.max_memory_mb, "MiB")
            .map_err(|r| invalid("limits.memory_mb", r))?;
        let max_publishes = raw
            .limits
            .max_publishes
            .unwrap_or(host.default_max_publishes);
        ceiling(max_publishes as u64, host.max_publishes as u64, "events")
            .map_err(|r| invalid("limits.max_publishes", r))?;
        if timeout_ms == 0 || memory_mb == 0 {
            return Err(invalid(
                "limits",
                "timeout_ms and memory_mb must be above 0".into(),
            ));
        }
        if raw.limits.fuel == Some(0) {
            return Err(invalid(
                "limits.fuel",
                "must be above 0 (leave it out for no fuel limit)".into(),
            ));
        }
        if raw.instances.concurrency == Some(0) {
            return Err(invalid("instances.concurrency", "must be above 0".into()));
        }
        let ordering = raw
            .ordering
            .resolve()
            .map_err(|(key, reason)| invalid(key, reason))?;
        let mut instances = raw.instances;
        match (raw.ordering.max_in_flight, instances.concurrency) {
            (Some(0), _) => {
                return Err(invalid("ordering.max_in_flight", "must be above 0".into()));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "ordering.max_in_flight",
                    "is instances.concurrency under another name: set one of them".into(),
                ));
            }
            (Some(n), None) => instances.concurrency = Some(n),
            (None, _) => {}
        }
        let batch = match raw.batch {
            None => None,
            Some(b) => {
                if b.max_events == 0 || b.max_events > MAX_BATCH_EVENTS {
                    return Err(invalid(
                        "batch.max_events",
                        format!("must be 1 to {MAX_BATCH_EVENTS}"),
                    ));
                }
                if b.max_wait_ms > MAX_BATCH_WAIT_MS {
                    return Err(invalid(
                        "batch.max_wait_ms",
                        format!("must be at most {MAX_BATCH_WAIT_MS}"),
                    ));
                }
                if ordering == OrderBy::None {
                    return Err(invalid(
                        "batch",
                        "a batch is events of one ordering unit, and `by = \"none\"` has none: \
                         order by project or key"
                            .into(),
                    ));
                }
                Some(Batching {
                    max_events: b.max_events,
                    max_wait: Duration::from_millis(b.max_wait_ms),
                })
            }
        };
        let max_event_bytes = raw.limits.max_event_bytes.unwrap_or(host.max_payload_bytes);
        let max_output_bytes = raw
            .limits
            .max_output_bytes
            .unwrap_or(host.max_payload_bytes * 4);
        ceiling(
            max_output_bytes as u64,
            host.max_payload_bytes as u64 * 64,
            "bytes",
        )
        .map_err(|r| invalid("limits.max_output_bytes", r))?;
        let limits = Limits {
            timeout: Duration::from_millis(timeout_ms),
            memory_bytes: (memory_mb as usize) << 20,
            fuel: raw.limits.fuel,
            max_publishes,
            max_log_lines: raw
                .limits
                .max_log_lines
                .unwrap_or(host.default_max_log_lines),
            max_event_bytes,
            max_output_bytes,
            http_requests: raw.limits.http_requests.unwrap_or(10),
            http_response_bytes: raw.limits.http_response_bytes.unwrap_or(1 << 20),
            http_timeout: Duration::from_millis(raw.limits.http_timeout_ms.unwrap_or(timeout_ms)),
        };

        let retry = RetryPolicy {
            // The original bus dead-lettered after 3 retries: 4 deliveries.
            max_attempts: raw.retry.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            backoff: Duration::from_millis(raw.retry.backoff_ms.unwrap_or(500)),
            backoff_max: Duration::from_millis(raw.retry.backoff_max_ms.unwrap_or(60_000)),
        };
        if retry.max_attempts == 0 || retry.max_attempts > 100 {
            return Err(invalid(
                "retry.max_attempts",
                "must be between 1 and 100".into(),
            ));
        }
        if retry.backoff > retry.backoff_max {
            return Err(invalid(
                "retry.backoff_ms",
                "is above retry.backoff_max_ms".into(),
            ));
        }

        let mut config = BTreeMap::new();
        for (key, value) in raw.config {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    value.to_string()
                }
                other => {
                    return Err(invalid(
                        &format!("config.{key}"),
                        format!(
                            "expected a string, number or boolean, found {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            config.insert(key, text);
        }

        let dir = path.parent().unwrap_or(Path::new("."));
        let secrets =
            crate::secrets::Secrets::resolve(&raw.secrets, dir, |v| std::env::var(v).ok())
                .map_err(|r| invalid("secrets", r))?;
        if let Some(name) = secrets.names().find(|n| config.contains_key(*n)) {
            return Err(invalid(
                "secrets",
                format!("{name:?} is both a config key and a secret"),
            ));
        }
        let rollout = raw
            .rollout
            .map(|r| r.resolve())
            .transpose()
            .map_err(|(key, reason)| invalid(key, reason))?;
        // A candidate's component is never the live one's by default.
        let default_stem = match &rollout {
            Some(_) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| raw.name.clone()),
            None => raw.name.clone(),
        };
        let oci = match raw.oci {
            Some(_) if raw.component.is_some() => {
                return Err(invalid(
                    "oci",
                    "give `component` (a file) or [oci] (a registry reference), not both".into(),
                ));
            }
            Some(o) => {
                let r = o.reference.trim();
                let (repo, rest) = r.split_once('/').unwrap_or(("", ""));
                if repo.is_empty() || rest.is_empty() || r.contains(char::is_whitespace) {
                    return Err(invalid(
                        "oci.reference",
                        format!(
                            "{r:?} is not an OCI reference: host[:port]/repository[:tag|@sha256:<hex>]"
                        ),
                    ));
                }
                if let Some((_, d)) = r.split_once('@')
                    && !d.strip_prefix("sha256:").is_some_and(|hex| {
                        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
                    })
                {
                    return Err(invalid(
                        "oci.reference",
                        format!("{r:?}: a digest is sha256:<64 hex digits>"),
                    ));
                }
                if o.poll_secs == Some(0) {
                    return Err(invalid(
                        "oci.poll_secs",
                        "must be at least 1 (a reference by digest is never polled)".into(),
                    ));
                }
                Some(OciSource {
                    reference: r.to_owned(),
                    poll_secs: o.poll_secs,
                })
            }
            None => None,
        };
        let component = dir.join(
            raw.component
                .unwrap_or_else(|| PathBuf::from(format!("{default_stem}.wasm"))),
        );
        Ok(Self {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            path: path.to_owned(),
            component,
            oci,
            subscriptions,
            limits,
            retry,
            capabilities: raw.capabilities,
            instances,
            ordering,
            batch,
            rollout,
            config,
            allowed_outbound_hosts: raw
                .allowed_outbound_hosts
                .iter()
                .map(|t| OutboundRule::parse(t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|r| invalid("allowed_outbound_hosts", r))?
                .into(),
            secrets: Arc::new(secrets),
        })
    }
}

fn ceiling(asked: u64, max: u64, unit: &str) -> Result<(), String> {
    if asked > max {
        Err(format!(
            "asks for {asked} {unit}, above the host ceiling of {max} {unit}"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("/h/x.toml"), text, &HostLimits::default())
    }

    const MIN: &str = "name = \"x\"\nversion = \"1\"\n[[subscriptions]]\nevent_type = \"*\"\n";

    #[test]
    fn minimal_manifest_takes_host_defaults() {
        let m = parse(MIN).unwrap();
        assert_eq!(m.component, Path::new("/h/x.wasm"));
        assert_eq!(m.limits.timeout, Duration::from_millis(5_000));
        assert_eq!(m.retry.max_attempts, 4, "3 retries, as the original bus");
        assert_eq!(m.capabilities, Capabilities::default());
    }

    #[test]
    fn a_component_from_a_registry_is_a_reference_by_tag_or_digest() {
        let hex = "ab".repeat(32);
        let m = parse(&format!(
            "{MIN}[oci]\nreference = \"reg.example:5000/team/x@sha256:{hex}\"\n"
        ))
        .unwrap();
        let oci = m.oci.unwrap();
        assert!(oci.pinned());
        assert_eq!(oci.poll_secs, None);
        let m = parse(&format!(
            "{MIN}[oci]\nreference = \"reg.example/team/x:1.4\"\npoll_secs = 5\n"
        ))
        .unwrap();
        assert!(!m.oci.as_ref().unwrap().pinned());
        assert_eq!(m.oci.unwrap().poll_secs, Some(5));
        for (body, says) in [
            ("reference = \"x:1\"", "not an OCI reference"),
            ("reference = \"reg/x@sha256:12\"", "sha256:<64 hex digits>"),
            ("reference = \"reg/x:1\"\npoll_secs = 0", "at least 1"),
        ] {
            let e = parse(&format!("{MIN}[oci]\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
        let e = parse(&format!(
            "component = \"y.wasm\"\n{MIN}[oci]\nreference = \"reg/x:1\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse(&format!("{MIN}[limits]\ntimeout_ms = 10\nmemroy_mb = 4\n")).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("/h/x.toml, line 7"), "{text}");
        assert!(text.contains("memroy_mb"), "{text}");
    }

    #[test]
    fn ceilings_and_bad_values_are_refused() {
        let e = parse(&format!("{MIN}[limits]\nmemory_mb = 100000\n")).unwrap_err();
        assert!(
            e.to_string().contains("limits.memory_mb") && e.to_string().contains("ceiling"),
            "{e}"
        );
        let e =
            parse("name = \"Bad Name\"\nversion = \"1\"\n[[subscriptions]]\nevent_type = \"*\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("`name`"), "{e}");
        let e = parse("name = \"x\"\nversion = \"1\"\n").unwrap_err();
        assert!(e.to_string().contains("subscriptions"), "{e}");
        let e = parse(&format!("{MIN}[retry]\nmax_attempts = 0\n")).unwrap_err();
        assert!(e.to_string().contains("retry.max_attempts"), "{e}");
    }

    #[test]
    fn ordering_defaults_to_the_project_and_takes_a_key_or_none() {
        assert_eq!(parse(MIN).unwrap().ordering, OrderBy::Project);
        let m = parse(&format!(
            "{MIN}[ordering]\nby = \"key\"\nkey = \"/order/id\"\nmax_in_flight = 64\n"
        ))
        .unwrap();
        assert_eq!(
            m.ordering,
            OrderBy::Key(KeySource::Pointer("/order/id".into()))
        );
        assert_eq!(m.instances.concurrency, Some(64));
        let m = parse(&format!(
            "{MIN}[ordering]\nby = \"key\"\nheader = \"x-key\"\n"
        ))
        .unwrap();
        assert_eq!(m.ordering, OrderBy::Key(KeySource::Header("x-key".into())));
        assert_eq!(
            parse(&format!("{MIN}[ordering]\nby = \"none\"\n"))
                .unwrap()
                .ordering,
            OrderBy::None
        );
        for (bad, names) in [
            ("by = \"key\"\n", "ordering"),
            ("by = \"key\"\nkey = \"order_id\"\n", "JSON pointer"),
            ("by = \"project\"\nkey = \"/a\"\n", "by = \"key\""),
            ("by = \"lane\"\n", "ordering.by"),
            ("by = \"key\"\nkey = \"/a\"\nheader = \"h\"\n", "one of key"),
            ("max_in_flight = 0\n", "ordering.max_in_flight"),
        ] {
            let e = parse(&format!("{MIN}[ordering]\n{bad}")).unwrap_err();
            assert!(e.to_string().contains(names), "{bad}: {e}");
        }
        let e = parse(&format!(
            "{MIN}[instances]\nconcurrency = 4\n[ordering]\nmax_in_flight = 8\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("set one of them"), "{e}");
    }

    #[test]
    fn a_batch_is_bounded_and_needs_an_ordering_unit() {
        assert_eq!(parse(MIN).unwrap().batch, None);
        let m = parse(&format!("{MIN}[batch]\nmax_events = 64\nmax_wait_ms = 5\n")).unwrap();
        assert_eq!(
            m.batch,
            Some(Batching {
                max_events: 64,
                max_wait: Duration::from_millis(5)
            })
        );
        for (bad, names) in [
            ("[batch]\nmax_events = 0\n", "batch.max_events"),
            ("[batch]\nmax_events = 5000\n", "batch.max_events"),
            (
                "[batch]\nmax_events = 8\nmax_wait_ms = 60000\n",
                "batch.max_wait_ms",
            ),
            ("[batch]\nmax_wait_ms = 5\n", "max_events"),
            ("[batch]\nmax_events = 8\nsize = 2\n", "size"),
            (
                "[ordering]\nby = \"none\"\n[batch]\nmax_events = 8\n",
                "order by project or key",
            ),
        ] {
            let e = parse(&format!("{MIN}{bad}")).unwrap_err();
            assert!(e.to_string().contains(names), "{bad}: {e}");
        }
    }

    #[test]
    fn a_key_is_read_from_the_payload_or_a_header() {
        let event = |payload: &str| {
            crate::event::NewEvent {
                event_type: "t".into(),
                source_type: "system".into(),
                payload: serde_json::from_str(payload).ok(),
                headers: vec![("X-Key".into(), "h1".into())],
                ..Default::default()
            }
            .validate(
                crate::event::EventLimits {
                    max_payload_bytes: 1 << 20,
                },
                0,
            )
            .unwrap()
        };
        let pointer = KeySource::Pointer("/order/id".into());
        assert_eq!(pointer.key_of(&event(r#"{"order":{"id":"a-1"}}"#)), "a-1");
        assert_eq!(pointer.key_of(&event(r#"{"order":{"id":42}}"#)), "42");
        assert_eq!(pointer.key_of(&event(r#"{"other":1}"#)), "");
        assert_eq!(KeySource::Header("x-key".into()).key_of(&event("{}")), "h1");
        assert_eq!(KeySource::Header("y".into()).key_of(&event("{}")), "");
    }

    #[test]
    fn source_filters_take_both_forms() {
        let m = parse(
            "name = \"x\"\nversion = \"1\"\n[[subscriptions]]\nevent_type = \"a\"\nsource_filter = \"w-*\"\n\
             [[subscriptions]]\nevent_type = \"b\"\nsource_filter = { source_type = \"webhook\", exclude_system = true }\n\
             [config]\nn = 3\nflag = true\n",
        )
        .unwrap();
        assert_eq!(m.subscriptions[0].source_filter.as_deref(), Some("w-*"));
        let obj: serde_json::Value =
            serde_json::from_str(m.subscriptions[1].source_filter.as_deref().unwrap()).unwrap();
        assert_eq!(obj["source_type"], "webhook");
        assert_eq!(m.config["n"], "3");
        assert_eq!(m.config["flag"], "true");
        let e = parse("name = \"x\"\nversion = \"1\"\n[[subscriptions]]\nevent_type = \"a\"\nsource_filter = { bogus = 1 }\n").unwrap_err();
        assert!(e.to_string().contains("source_filter"), "{e}");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(300),
        };
        for _ in 0..50 {
            let d1 = p.delay_after(1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d2 = p.delay_after(2);
            assert!(
                d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200),
                "{d2:?}"
            );
            let d9 = p.delay_after(9);
            assert!(
                d9 >= Duration::from_millis(150) && d9 <= Duration::from_millis(300),
                "{d9:?}"
            );
        }
    }

    #[test]
    fn outbound_rules_match_scheme_host_and_port() {
        let allows = |rule: &str, url: &str| {
            OutboundRule::parse(rule)
                .unwrap()
                .allows(&url.parse::<http::Uri>().unwrap())
        };
        assert!(allows(
            "https://api.github.com",
            "https://api.github.com/repos"
        ));
        assert!(!allows("https://api.github.com", "http://api.github.com/"));
        assert!(!allows(
            "https://api.github.com",
            "https://api.github.com:8443/"
        ));
        assert!(!allows(
            "https://api.github.com",
            "https://evil.com/?api.github.com"
        ));
        assert!(allows("http://127.0.0.1:*", "http://127.0.0.1:4318/v1"));
        assert!(!allows("http://127.0.0.1:*", "http://127.0.0.2:4318/v1"));
        assert!(allows(
            "https://*.example.com",
            "https://hooks.example.com/x"
        ));
        assert!(!allows(
            "https://*.example.com",
            "https://example.com.evil.net/"
        ));
        assert!(allows("*://*:*", "http://anything:1/"));
        for bad in [
            "api.github.com",
            "ftp://x",
            "https://x/path",
            "https://x:port",
        ] {
            assert!(OutboundRule::parse(bad).is_err(), "{bad}");
        }
    }
}
