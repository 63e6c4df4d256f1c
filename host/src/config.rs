//! Host configuration: an optional TOML file, overridden by environment
//! variables (the migration plan's `KAFKA_*` names and `PERSONA_BUS_*`), then
//! validated as a whole before anything starts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use persona_bus_model::limits::HostLimits;
use persona_bus_model::text::line_of;
pub use persona_bus_store::StoreConfig;

/// Everything the host can be told. Defaults run the embedded bus: SQLite
/// only, Kafka off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Holds the SQLite database, the host lock and the compiled-component
    /// cache. A CLI process pointed at the same folder publishes into the
    /// running host's store. Env: `PERSONA_BUS_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Folder of handler components (`name.wasm`) and manifests
    /// (`name.toml`). Env: `PERSONA_BUS_HANDLERS_DIR`.
    pub handlers_dir: PathBuf,
    /// Reload handlers when the handlers folder changes (hot reload).
    pub watch_handlers: bool,
    pub poll: PollConfig,
    pub limits: HostLimits,
    pub runtime: RuntimeConfig,
    pub store: StoreConfig,
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub schemas: SchemasConfig,
    /// The host's own alert rules and webhooks (see `alerts`).
    pub alerts: crate::alerts::config::AlertsConfig,
    /// OTLP traces, off without an endpoint (see `traces`).
    pub traces: crate::traces::TracesConfig,
    /// On SIGINT/SIGTERM (or `Bus::shutdown`): how long handler calls in
    /// flight may take to finish. Calls still running then are abandoned:
    /// nothing of theirs is committed, their events go back to `pending`
    /// and no Kafka offset passes them. Env: `PERSONA_BUS_SHUTDOWN_GRACE_MS`.
    pub shutdown_grace_ms: u64,
}

/// Payload schemas (see `schemas`): off by default, a folder of schema
/// files without a registry, a Confluent-API registry with one.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasConfig {
    /// Check payloads at all. Env: `PERSONA_BUS_SCHEMAS_ENABLED`. Turning it
    /// off loses nothing: framed records are still read while a registry is
    /// configured, and JSON records are what the host writes then.
    pub enabled: bool,
    /// Without a registry: `<dir>/<event_type>/<version>.json` (JSON Schema)
    /// or `.avsc` (Avro). Env: `PERSONA_BUS_SCHEMAS_DIR`.
    pub dir: PathBuf,
    /// Refuse event types that have no schema (default: let them pass).
    pub strict: bool,
    /// Confluent Schema Registry API root, e.g.
    /// `http://127.0.0.1:8081/apis/ccompat/v7`. Env: `KAFKA_SCHEMA_REGISTRY_URL`.
    pub registry_url: Option<String>,
    /// Basic auth. Env: `KAFKA_SCHEMA_REGISTRY_USERNAME` / `_PASSWORD`.
    pub registry_username: Option<String>,
    pub registry_password: Option<String>,
    /// Per registry request.
    pub registry_timeout_ms: u64,
    /// Subject of an event type: `{topic}` and `{event_type}` are replaced.
    pub subject: String,
    /// Compatibility level `schemas push` sets on a subject before
    /// registering (BACKWARD, FORWARD, FULL, NONE, or *_TRANSITIVE).
    pub compatibility: String,
    /// `avro`: with a registry, types whose schema is Avro go on the wire
    /// Avro-encoded in the Confluent framing; `json`: always JSON records.
    pub wire_format: WireFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    Avro,
    Json,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: PathBuf::from("schemas"),
            strict: false,
            registry_url: None,
            registry_username: None,
            registry_password: None,
            registry_timeout_ms: 2_000,
            subject: "{topic}-{event_type}".into(),
            compatibility: "BACKWARD".into(),
            wire_format: WireFormat::Avro,
        }
    }
}

impl std::fmt::Debug for SchemasConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemasConfig")
            .field("enabled", &self.enabled)
            .field("dir", &self.dir)
            .field("strict", &self.strict)
            .field("registry_url", &self.registry_url)
            .field("registry_username", &self.registry_username)
            .field(
                "registry_password",
                &self.registry_password.as_ref().map(|_| "<redacted>"),
            )
            .field("subject", &self.subject)
            .field("compatibility", &self.compatibility)
            .field("wire_format", &self.wire_format)
            .finish()
    }
}

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
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".data"),
            handlers_dir: PathBuf::from("build/handlers"),
            watch_handlers: true,
            poll: PollConfig::default(),
            limits: HostLimits::default(),
            runtime: RuntimeConfig::default(),
            store: StoreConfig::default(),
            kafka: KafkaConfig::default(),
            http: HttpConfig::default(),
            schemas: SchemasConfig::default(),
            alerts: Default::default(),
            traces: Default::default(),
            shutdown_grace_ms: 10_000,
        }
    }
}

/// How the SQLite poller looks for pending events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Interval while events keep arriving. Events published in this process
    /// wake the poller at once; this bounds the delay for events written by
    /// another process (the CLI, a second tool on the same database).
    pub active_interval_ms: u64,
    /// Interval once the bus has been quiet for `idle_after_empty_polls`.
    pub idle_interval_ms: u64,
    pub idle_after_empty_polls: u32,
    /// Most events claimed in one transaction.
    pub batch_size: usize,
    /// After a batch smaller than `batch_size`, wait this long before the
    /// next claim so that events arriving meanwhile share one commit. Only
    /// while busy: an idle poller reacts to a publish at once. Trades up to
    /// this much latency for far fewer (page-heavy) transactions under load.
    pub linger_us: u64,
    /// A row left in `processing` this long is returned to `pending` by the
    /// reaper (rows of a crashed host are returned at once on restart).
    pub stuck_after_ms: u64,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            active_interval_ms: 20,
            idle_interval_ms: 500,
            idle_after_empty_polls: 100,
            batch_size: 256,
            linger_us: 1_000,
            stuck_after_ms: 300_000,
        }
    }
}

/// The WebAssembly runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run handlers; 0 = one per core.
    pub workers: usize,
    /// Instance slots of the pooling allocator: how many handler instances
    /// may exist at once.
    pub pool_slots: u32,
    /// Granularity of handler timeouts, and how often a running guest
    /// yields its thread to other calls.
    pub epoch_tick_ms: u64,
    /// Handler calls in progress at once (each holds an instance slot, so
    /// at most `pool_slots`). One handler takes at most half of them unless
    /// its manifest sets `instances.concurrency`.
    pub max_calls: u32,
    /// Events accepted by dispatch and not yet committed, from all sources:
    /// bounds memory, and how far a source runs ahead of what is durable.
    pub max_in_flight: usize,
    /// Events queued in one project's lane. A project whose lane is full is
    /// not claimed from SQLite until it drains, so one slow project cannot
    /// fill `max_in_flight` and hold up the others.
    pub lane_depth: usize,
    /// Where compiled components are cached; default `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            pool_slots: 128,
            epoch_tick_ms: 5,
            max_calls: 64,
            max_in_flight: 10_000,
            lane_depth: 512,
            cache_dir: None,
        }
    }
}

/// When Kafka may consume `latest` or `earliest` offsets for a new group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

/// Kafka, named as in the migration plan. Off by default.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `KAFKA_ENABLED`: the master switch.
    pub enabled: bool,
    /// `KAFKA_BROKERS`: comma-separated `host:port` list.
    pub brokers: String,
    /// `KAFKA_CLIENT_ID`: also names this device in event headers.
    pub client_id: String,
    /// `KAFKA_REQUIRED`: fail instead of falling back to SQLite.
    pub required: bool,
    /// `KAFKA_DUAL_WRITE`: write each event to SQLite and Kafka.
    pub dual_write: bool,
    /// `KAFKA_CONSUMER_GROUP`.
    pub consumer_group: String,
    /// `KAFKA_AUTO_OFFSET_RESET`: `latest` or `earliest`.
    pub auto_offset_reset: OffsetReset,
    /// `KAFKA_SASL_USERNAME` / `KAFKA_SASL_PASSWORD`: optional SASL auth.
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    /// `KAFKA_SASL_MECHANISM`: `PLAIN` (the default, as before),
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: SaslMechanism,
    /// `KAFKA_SSL_ENABLED`: TLS to the brokers (`SASL_SSL` with SASL
    /// credentials, `SSL` without).
    pub ssl_enabled: bool,
    /// `KAFKA_SSL_CA_LOCATION`: PEM file of the CA(s) that signed the
    /// brokers' certificates [default: the system's trust store].
    pub ssl_ca_location: Option<PathBuf>,
    /// `KAFKA_SSL_CERT_LOCATION` / `KAFKA_SSL_KEY_LOCATION`: this device's
    /// client certificate and key (PEM) for mutual TLS.
    pub ssl_cert_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
    /// `KAFKA_SSL_KEY_PASSWORD`: the client key's password, if it has one.
    pub ssl_key_password: Option<String>,
    /// `KAFKA_SSL_ENDPOINT_IDENTIFICATION`: `https` (check that the broker's
    /// certificate names the host dialled; the default) or `none`.
    pub ssl_endpoint_identification: EndpointIdentification,
    /// librdkafka settings passed through as they are, for the long tail
    /// (`[kafka.librdkafka]`, e.g. `"socket.keepalive.enable" = "true"`).
    /// Applied last, to every client the host makes; a name librdkafka does
    /// not know, or a value it refuses, fails at start naming the key.
    pub librdkafka: BTreeMap<String, String>,
    /// The plan's five topics: names and retention. Created when missing.
    pub topics: TopicsConfig,
    /// Partitions of each topic (the plan: 6, so up to 6 consumers share).
    pub partitions: i32,
    /// Replicas of each topic the host creates: 1 for a single broker (the
    /// default), 3 on a cluster (then `min.insync.replicas` = 2, so one
    /// broker may be lost without losing or refusing a record).
    pub replication_factor: u16,
    /// The audit logger's group. Each device archives every event, so the
    /// group actually joined is `<audit_group>.<client_id>` (one per device).
    pub audit_group: String,
    /// The webhook ingester's group: shared, so each webhook is routed once.
    pub webhook_group: String,
    /// Messages taken from the consumer per dispatched batch.
    pub consumer_batch: usize,
    /// Most record bytes (KiB) librdkafka prefetches for the event
    /// processor (`queued.max.messages.kbytes`); the audit logger and the
    /// webhook ingester get a quarter each (at least 1 MiB). Bounds memory
    /// under a backlog; with the short fetch backoff (`kafka::group`) 2 MiB
    /// keeps the pipeline fed, and more only holds decompressed batches.
    pub prefetch_kb: u32,
    /// Send execution records to the executions topic: one per handler run,
    /// or one per event that ran no handler (see `kafka::wire::ExecutionRecord`).
    pub publish_executions: bool,
    /// The circuit breaker between Kafka and the SQLite fallback.
    pub breaker: BreakerConfig,
}

/// How the host authenticates with SASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka and the brokers use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl std::str::FromStr for SaslMechanism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            _ => Err("expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512".into()),
        }
    }
}

/// Whether the broker's certificate must name the host the client dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointIdentification {
    Https,
    None,
}

impl EndpointIdentification {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for EndpointIdentification {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "https" => Ok(Self::Https),
            "none" => Ok(Self::None),
            _ => Err("expected `https` or `none`".into()),
        }
    }
}

/// librdkafka settings whose values are secrets: never shown, logged or
/// echoed in an error.
pub fn is_secret_setting(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // sasl.password, ssl.key.password, ssl.keystore.password,
    // sasl.oauthbearer.client.secret, ssl.key.pem (a private key), and
    // sasl.oauthbearer.config (may carry a token).
    ["password", "secret", "token", "oauthbearer.config"]
        .iter()
        .any(|s| key.contains(s))
        || key == "ssl.key.pem"
}

/// When Kafka is given up on and tried again (plan phase 2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive Kafka failures that open the breaker (the plan: 3).
    pub failures: u32,
    /// How long it stays open, with the SQLite poller in charge (the plan: 5 minutes).
    pub open_secs: u64,
    /// While closed, how often the poller looks for events left behind in
    /// SQLite (the plan: 60 s).
    pub check_secs: u64,
    /// A consumer that has seen no broker for this long counts one failure
    /// (so a dead broker opens the breaker within `failures` x this).
    pub failure_after_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            open_secs: 300,
            check_secs: 60,
            failure_after_ms: 1_000,
        }
    }
}

/// One topic: its name and how long the broker keeps its records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub name: String,
    pub retention_hours: u64,
}

impl TopicConfig {
    fn new(name: &str, retention_hours: u64) -> Self {
        Self {
            name: name.into(),
            retention_hours,
        }
    }
}

/// The topics of the migration plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// All persona events, keyed by project_id.
    pub events: TopicConfig,
    /// Inbound webhook payloads.
    pub webhooks: TopicConfig,
    /// Inter-persona action requests (`persona_action` events).
    pub actions: TopicConfig,
    /// Execution lifecycle events.
    pub executions: TopicConfig,
    /// Dead letters.
    pub dlq: TopicConfig,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            events: TopicConfig::new("vibeman.persona.events.v1", 7 * 24),
            webhooks: TopicConfig::new("vibeman.persona.webhooks.v1", 3 * 24),
            actions: TopicConfig::new("vibeman.persona.actions.v1", 7 * 24),
            executions: TopicConfig::new("vibeman.persona.executions.v1", 3 * 24),
            dlq: TopicConfig::new("vibeman.persona.dlq.v1", 30 * 24),
        }
    }
}

impl TopicsConfig {
    pub fn all(&self) -> [&TopicConfig; 5] {
        [
            &self.events,
            &self.webhooks,
            &self.actions,
            &self.executions,
            &self.dlq,
        ]
    }
}

impl KafkaConfig {
    /// Kafka is the event source (plan phases 2-3): enabled and not in
    /// phase 1's "write both, read SQLite" (`KAFKA_DUAL_WRITE=true`).
    pub fn consuming(&self) -> bool {
        self.enabled && !self.dual_write
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            brokers: "localhost:9092".into(),
            client_id: "vibeman-local".into(),
            required: false,
            dual_write: false,
            consumer_group: "vibeman-event-processor".into(),
            auto_offset_reset: OffsetReset::Latest,
            sasl_username: None,
            sasl_password: None,
            sasl_mechanism: SaslMechanism::Plain,
            ssl_enabled: false,
            ssl_ca_location: None,
            ssl_cert_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            ssl_endpoint_identification: EndpointIdentification::Https,
            librdkafka: BTreeMap::new(),
            topics: TopicsConfig::default(),
            partitions: 6,
            replication_factor: 1,
            audit_group: "vibeman-audit-logger".into(),
            webhook_group: "vibeman-webhook-ingester".into(),
            consumer_batch: 2_000,
            prefetch_kb: 2 * 1024,
            publish_executions: true,
            breaker: BreakerConfig::default(),
        }
    }
}

// Secrets never reach a log line through `{:?}`.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("enabled", &self.enabled)
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("required", &self.required)
            .field("dual_write", &self.dual_write)
            .field("consumer_group", &self.consumer_group)
            .field("auto_offset_reset", &self.auto_offset_reset)
            .field("sasl_username", &self.sasl_username)
            .field(
                "sasl_password",
                &self.sasl_password.as_ref().map(|_| "<redacted>"),
            )
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("ssl_enabled", &self.ssl_enabled)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_cert_location", &self.ssl_cert_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .field(
                "ssl_key_password",
                &self.ssl_key_password.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "ssl_endpoint_identification",
                &self.ssl_endpoint_identification,
            )
            .field(
                "librdkafka",
                &self
                    .librdkafka
                    .iter()
                    .map(|(k, v)| {
                        let shown = if is_secret_setting(k) {
                            "<redacted>"
                        } else {
                            v.as_str()
                        };
                        (k.as_str(), shown)
                    })
                    .collect::<BTreeMap<_, _>>(),
            )
            .field("topics", &self.topics)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("audit_group", &self.audit_group)
            .field("webhook_group", &self.webhook_group)
            .field("consumer_batch", &self.consumer_batch)
            .field("publish_executions", &self.publish_executions)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// A configuration that cannot be used, with where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("config `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Every environment variable the host reads, for `.env.example` and `--help`.
pub const ENV_VARS: &[&str] = &[
    "PERSONA_BUS_CONFIG",
    "PERSONA_BUS_DATA_DIR",
    "PERSONA_BUS_HANDLERS_DIR",
    "KAFKA_BROKERS",
    "KAFKA_CLIENT_ID",
    "KAFKA_ENABLED",
    "KAFKA_REQUIRED",
    "KAFKA_DUAL_WRITE",
    "KAFKA_CONSUMER_GROUP",
    "KAFKA_AUTO_OFFSET_RESET",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SSL_ENABLED",
    "KAFKA_SSL_CA_LOCATION",
    "KAFKA_SSL_CERT_LOCATION",
    "KAFKA_SSL_KEY_LOCATION",
    "KAFKA_SSL_KEY_PASSWORD",
    "KAFKA_SSL_ENDPOINT_IDENTIFICATION",
    "PERSONA_BUS_HTTP_ADDR",
    "PERSONA_BUS_HTTP_TOKEN",
    "PERSONA_BUS_SHUTDOWN_GRACE_MS",
    "PERSONA_BUS_SCHEMAS_ENABLED",
    "PERSONA_BUS_SCHEMAS_DIR",
    "KAFKA_SCHEMA_REGISTRY_URL",
    "KAFKA_SCHEMA_REGISTRY_USERNAME",
    "KAFKA_SCHEMA_REGISTRY_PASSWORD",
    "PERSONA_BUS_ALERT_WEBHOOK_URL",
    "PERSONA_BUS_ALERT_WEBHOOK_SECRET",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER_ARG",
];

impl Config {
    /// Reads `file` (if any), applies the environment as seen through `env`,
    /// and validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the process environment.
    pub fn from_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(file, |k| std::env::var(k).ok())
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses a config file's text, unvalidated (`path` names it in
    /// errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: line_of(text, e.span()),
            message: e.message().to_owned(),
        })
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = env("PERSONA_BUS_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = env("PERSONA_BUS_HANDLERS_DIR") {
            self.handlers_dir = v.into();
        }
        if let Some(v) = env("PERSONA_BUS_HTTP_ADDR") {
            self.http.addr = v;
        }
        if let Some(v) = env("PERSONA_BUS_HTTP_TOKEN") {
            self.http.token = Some(v);
        }
        if let Some(v) = env("PERSONA_BUS_SHUTDOWN_GRACE_MS") {
            self.shutdown_grace_ms = v.trim().parse().map_err(|_| ConfigError::Env {
                var: "PERSONA_BUS_SHUTDOWN_GRACE_MS",
                value: v.clone(),
                reason: "expected milliseconds (a whole number)".into(),
            })?;
        }
        let sc = &mut self.schemas;
        if let Some(v) = env("PERSONA_BUS_SCHEMAS_ENABLED") {
            sc.enabled = parse_bool("PERSONA_BUS_SCHEMAS_ENABLED", &v)?;
        }
        if let Some(v) = env("PERSONA_BUS_SCHEMAS_DIR") {
            sc.dir = v.into();
        }
        for (var, slot) in [
            ("KAFKA_SCHEMA_REGISTRY_URL", &mut sc.registry_url),
            ("KAFKA_SCHEMA_REGISTRY_USERNAME", &mut sc.registry_username),
            ("KAFKA_SCHEMA_REGISTRY_PASSWORD", &mut sc.registry_password),
        ] {
            if let Some(v) = env(var) {
                *slot = Some(v);
            }
        }
        if let Some(v) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.traces.endpoint = Some(v);
        }
        if let Some(v) = env("OTEL_SERVICE_NAME") {
            self.traces.service_name = v;
        }
        if let Some(v) = env("OTEL_TRACES_SAMPLER_ARG") {
            self.traces.sample_ratio = v.trim().parse().map_err(|_| ConfigError::Env {
                var: "OTEL_TRACES_SAMPLER_ARG",
                value: v.clone(),
                reason: "expected a ratio between 0 and 1 (e.g. 0.01)".into(),
            })?;
        }
        if let Some(url) = env("PERSONA_BUS_ALERT_WEBHOOK_URL") {
            self.alerts
                .webhooks
                .push(crate::alerts::config::AlertWebhook {
                    url,
                    secret: env("PERSONA_BUS_ALERT_WEBHOOK_SECRET"),
                });
        }
        let k = &mut self.kafka;
        if let Some(v) = env("KAFKA_BROKERS") {
            k.brokers = v;
        }
        if let Some(v) = env("KAFKA_CLIENT_ID") {
            k.client_id = v;
        }
        if let Some(v) = env("KAFKA_CONSUMER_GROUP") {
            k.consumer_group = v;
        }
        if let Some(v) = env("KAFKA_SASL_USERNAME") {
            k.sasl_username = Some(v);
        }
        if let Some(v) = env("KAFKA_SASL_PASSWORD") {
            k.sasl_password = Some(v);
        }
        if let Some(v) = env("KAFKA_SASL_MECHANISM") {
            k.sasl_mechanism = v.parse().map_err(|reason| ConfigError::Env {
                var: "KAFKA_SASL_MECHANISM",
                value: v.clone(),
                reason,
            })?;
        }
        for (var, slot) in [
            ("KAFKA_SSL_CA_LOCATION", &mut k.ssl_ca_location),
            ("KAFKA_SSL_CERT_LOCATION", &mut k.ssl_cert_location),
            ("KAFKA_SSL_KEY_LOCATION", &mut k.ssl_key_location),
        ] {
            if let Some(v) = env(var) {
                *slot = Some(v.into());
            }
        }
        if let Some(v) = env("KAFKA_SSL_KEY_PASSWORD") {
            k.ssl_key_password = Some(v);
        }
        if let Some(v) = env("KAFKA_SSL_ENDPOINT_IDENTIFICATION") {
            k.ssl_endpoint_identification = v.parse().map_err(|reason| ConfigError::Env {
                var: "KAFKA_SSL_ENDPOINT_IDENTIFICATION",
                value: v.clone(),
                reason,
            })?;
        }
        for (var, slot) in [
            ("KAFKA_ENABLED", &mut k.enabled),
            ("KAFKA_REQUIRED", &mut k.required),
            ("KAFKA_DUAL_WRITE", &mut k.dual_write),
            ("KAFKA_SSL_ENABLED", &mut k.ssl_enabled),
        ] {
            if let Some(v) = env(var) {
                *slot = parse_bool(var, &v)?;
            }
        }
        if let Some(v) = env("KAFKA_AUTO_OFFSET_RESET") {
            k.auto_offset_reset = match v.trim().to_ascii_lowercase().as_str() {
                "earliest" => OffsetReset::Earliest,
                "latest" => OffsetReset::Latest,
                _ => {
                    return Err(ConfigError::Env {
                        var: "KAFKA_AUTO_OFFSET_RESET",
                        value: v,
                        reason: "expected `earliest` or `latest`".into(),
                    });
                }
            };
        }
        Ok(())
    }

    /// Checks the whole configuration; every problem names its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        let p = &self.poll;
        if p.active_interval_ms == 0 || p.idle_interval_ms < p.active_interval_ms {
            return invalid("poll", "need 0 < active_interval_ms <= idle_interval_ms");
        }
        if p.batch_size == 0 || p.batch_size > 10_000 {
            return invalid("poll.batch_size", "must be between 1 and 10000");
        }
        if let Err((field, reason)) = self.store.validate() {
            return Err(ConfigError::Invalid { field, reason });
        }
        if let Err((field, reason)) = self.limits.validate() {
            return Err(ConfigError::Invalid { field, reason });
        }
        let r = &self.runtime;
        if r.pool_slots == 0 || r.epoch_tick_ms == 0 {
            return invalid("runtime", "pool_slots and epoch_tick_ms must be above 0");
        }
        if r.max_calls == 0 || r.max_calls > r.pool_slots {
            return invalid(
                "runtime.max_calls",
                "must be between 1 and runtime.pool_slots",
            );
        }
        if r.max_in_flight == 0 || r.lane_depth == 0 {
            return invalid("runtime", "max_in_flight and lane_depth must be above 0");
        }
        let h = &self.http;
        if h.enabled {
            let addr: std::net::SocketAddr = h.addr.parse().map_err(|_| ConfigError::Invalid {
                field: "http.addr",
                reason: format!("{:?} is not host:port (e.g. 127.0.0.1:8080)", h.addr),
            })?;
            if !addr.ip().is_loopback() && h.token.as_deref().is_none_or(str::is_empty) {
                return invalid(
                    "http.token",
                    "listening beyond loopback needs a bearer token (PERSONA_BUS_HTTP_TOKEN)",
                );
            }
            if h.max_body_bytes < 1024 {
                return invalid("http.max_body_bytes", "must be at least 1024");
            }
            if h.webhooks.values().any(|w| w.secret.is_empty()) {
                return invalid("http.webhooks", "every trigger needs a non-empty secret");
            }
        }
        let k = &self.kafka;
        if k.enabled {
            if k.brokers.split(',').any(|b| {
                b.trim()
                    .rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            }) {
                return invalid(
                    "kafka.brokers",
                    "expected a comma-separated list of host:port",
                );
            }
            if k.client_id.trim().is_empty() || k.consumer_group.trim().is_empty() {
                return invalid("kafka", "client_id and consumer_group must not be empty");
            }
            if k.partitions < 1 || k.partitions > 1000 {
                return invalid("kafka.partitions", "must be between 1 and 1000");
            }
            if k.replication_factor < 1 || k.replication_factor > 32 {
                return invalid("kafka.replication_factor", "must be between 1 and 32");
            }
            if k.topics
                .all()
                .iter()
                .any(|t| t.name.trim().is_empty() || t.retention_hours == 0)
            {
                return invalid(
                    "kafka.topics",
                    "every topic needs a name and a retention above 0 hours",
                );
            }
            if k.sasl_username.is_some() != k.sasl_password.is_some() {
                return invalid(
                    "kafka.sasl",
                    "set both KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD, or neither",
                );
            }
            let tls_files = [
                ("kafka.ssl_ca_location", &k.ssl_ca_location),
                ("kafka.ssl_cert_location", &k.ssl_cert_location),
                ("kafka.ssl_key_location", &k.ssl_key_location),
            ];
            if !k.ssl_enabled
                && (tls_files.iter().any(|(_, f)| f.is_some()) || k.ssl_key_password.is_some())
            {
                return invalid(
                    "kafka.ssl_enabled",
                    "TLS files or a key password are set but TLS is off: set KAFKA_SSL_ENABLED=true",
                );
            }
            if k.ssl_cert_location.is_some() != k.ssl_key_location.is_some() {
                return invalid(
                    "kafka.ssl_cert_location",
                    "mutual TLS needs both KAFKA_SSL_CERT_LOCATION and KAFKA_SSL_KEY_LOCATION",
                );
            }
            for (field, file) in tls_files {
                if let Some(path) = file
                    && !path.is_file()
                {
                    return Err(ConfigError::Invalid {
                        field,
                        reason: format!("{} is not a readable file", path.display()),
                    });
                }
            }
            crate::kafka::check_settings(k).map_err(|reason| ConfigError::Invalid {
                field: "kafka.librdkafka",
                reason,
            })?;
            if k.consumer_batch == 0 || k.consumer_batch > 50_000 {
                return invalid("kafka.consumer_batch", "must be between 1 and 50000");
            }
            let b = &k.breaker;
            if b.failures == 0 || b.open_secs == 0 || b.check_secs == 0 || b.failure_after_ms < 100
            {
                return invalid(
                    "kafka.breaker",
                    "failures, open_secs and check_secs must be above 0 and failure_after_ms at least 100",
                );
            }
        }
        let sc = &self.schemas;
        if let Some(url) = &sc.registry_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid(
                "schemas.registry_url",
                "must start with http:// or https://",
            );
        }
        if !sc.subject.contains("{event_type}") {
            return invalid(
                "schemas.subject",
                "must contain {event_type} (one subject per event type)",
            );
        }
        const LEVELS: &[&str] = &[
            "BACKWARD",
            "BACKWARD_TRANSITIVE",
            "FORWARD",
            "FORWARD_TRANSITIVE",
            "FULL",
            "FULL_TRANSITIVE",
            "NONE",
        ];
        if !LEVELS.contains(&sc.compatibility.as_str()) {
            return invalid(
                "schemas.compatibility",
                &format!("must be one of {}", LEVELS.join(", ")),
            );
        }
        if sc.registry_timeout_ms == 0 {
            return invalid("schemas.registry_timeout_ms", "must be above 0");
        }
        self.validate_alerts()
    }

    fn validate_alerts(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        let t = &self.traces;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return invalid("traces.sample_ratio", "must be between 0 and 1".into());
        }
        if let Some(e) = &t.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return invalid(
                "traces.endpoint",
                format!("{e:?} must start with http:// or https:// (OTLP over HTTP)"),
            );
        }
        let a = &self.alerts;
        if a.interval_ms < 10 || a.timeout_ms == 0 {
            return invalid(
                "alerts",
                "interval_ms must be at least 10 and timeout_ms above 0".into(),
            );
        }
        if a.max_attempts == 0 || a.retry_base_ms == 0 || a.retry_max_ms < a.retry_base_ms {
            return invalid(
                "alerts",
                "need max_attempts >= 1 and 0 < retry_base_ms <= retry_max_ms".into(),
            );
        }
        for (i, rule) in a.rules.iter().enumerate() {
            rule.check().map_err(|reason| ConfigError::Invalid {
                field: "alerts.rules",
                reason,
            })?;
            if a.rules[..i].iter().any(|r| r.name == rule.name) {
                return invalid(
                    "alerts.rules",
                    format!("two rules are named {:?}", rule.name),
                );
            }
        }
        for w in &a.webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return invalid(
                    "alerts.webhooks",
                    format!("{:?} must start with http:// or https://", w.url),
                );
            }
            if w.secret.as_deref() == Some("") {
                return invalid(
                    "alerts.webhooks",
                    format!(
                        "the secret of {:?} is empty (leave it out to send unsigned)",
                        w.url
                    ),
                );
            }
        }
        Ok(())
    }

    /// Where compiled components are cached: `runtime.cache_dir`, else
    /// `<data_dir>/cache`.
    pub fn compile_cache_dir(&self) -> PathBuf {
        self.runtime
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }

    /// Worker threads to run handlers on.
    pub fn workers(&self) -> usize {
        match self.runtime.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

fn parse_bool(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Env {
            var,
            value: value.into(),
            reason: "expected true or false".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(None, |k| vars.get(k).cloned())
    }

    #[test]
    fn tls_and_sasl_settings_load_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not read until a client connects").unwrap();
        let ca = ca.to_str().unwrap();
        let c = load(&[
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_SSL_ENABLED", "true"),
            ("KAFKA_SSL_CA_LOCATION", ca),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION", "none"),
        ])
        .unwrap();
        assert_eq!(c.kafka.sasl_mechanism, SaslMechanism::ScramSha512);
        assert_eq!(
            c.kafka.ssl_endpoint_identification,
            EndpointIdentification::None
        );
        let debug = format!("{:?}", c.kafka);
        assert!(!debug.contains("hunter2"), "{debug}");

        let e = load(&[
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_SASL_MECHANISM", "GSSAPI"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("KAFKA_SASL_MECHANISM"), "{e}");
        let e = load(&[("KAFKA_ENABLED", "true"), ("KAFKA_SSL_CA_LOCATION", ca)]).unwrap_err();
        assert!(e.to_string().contains("KAFKA_SSL_ENABLED=true"), "{e}");
        let e = load(&[
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_SSL_ENABLED", "true"),
            ("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = load(&[
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_SSL_ENABLED", "true"),
            ("KAFKA_SSL_CERT_LOCATION", ca),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("KAFKA_SSL_KEY_LOCATION"), "{e}");
    }

    #[test]
    fn librdkafka_passthrough_refuses_unknown_names_and_bad_values_naming_the_key() {
        let with = |table: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bus.toml");
            std::fs::write(
                &path,
                format!("[kafka]\nenabled = true\n[kafka.librdkafka]\n{table}"),
            )
            .unwrap();
            Config::load(Some(&path), |_| None)
        };
        let c = with("\"socket.keepalive.enable\" = \"true\"\n").unwrap();
        assert_eq!(c.kafka.librdkafka["socket.keepalive.enable"], "true");

        let e = with("\"socket.keepalive.enabel\" = \"true\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kafka.librdkafka") && e.contains("`socket.keepalive.enabel`"),
            "{e}"
        );
        let e = with("\"socket.timeout.ms\" = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`socket.timeout.ms`") && e.contains("soon"),
            "{e}"
        );
        // A secret's value is never shown.
        let debug = format!(
            "{:?}",
            with("\"ssl.keystore.password\" = \"s3cret-value\"\n")
                .unwrap()
                .kafka
        );
        assert!(
            !debug.contains("s3cret-value") && debug.contains("ssl.keystore.password"),
            "{debug}"
        );
    }

    #[test]
    fn defaults_are_embedded_sqlite() {
        let c = load(&[]).unwrap();
        assert!(!c.kafka.enabled && !c.kafka.required && !c.kafka.dual_write);
        assert_eq!(c.kafka.consumer_group, "vibeman-event-processor");
    }

    #[test]
    fn plan_variables_override() {
        let c = load(&[
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_BROKERS", "a:9092,b:9093"),
            ("KAFKA_CLIENT_ID", "vibeman-device-001"),
            ("KAFKA_AUTO_OFFSET_RESET", "earliest"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
        ])
        .unwrap();
        assert!(c.kafka.enabled);
        assert_eq!(c.kafka.auto_offset_reset, OffsetReset::Earliest);
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "secrets are redacted"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = load(&[("KAFKA_ENABLED", "maybe")]).unwrap_err();
        assert!(e.to_string().contains("KAFKA_ENABLED"), "{e}");
        let e = load(&[("KAFKA_ENABLED", "1"), ("KAFKA_BROKERS", "nohost")]).unwrap_err();
        assert!(e.to_string().contains("kafka.brokers"), "{e}");
        let e = load(&[("KAFKA_ENABLED", "1"), ("KAFKA_SASL_USERNAME", "u")]).unwrap_err();
        assert!(e.to_string().contains("sasl"), "{e}");
    }

    #[test]
    fn unknown_file_keys_report_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.toml");
        std::fs::write(&path, "[poll]\nactive_interval_ms = 5\nbogus = 1\n").unwrap();
        let e = Config::load(Some(&path), |_| None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("line 3") && text.contains("bogus"), "{text}");
    }
}
