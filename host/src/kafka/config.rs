//! `[kafka]`: the brokers, security, topics, groups and breaker, named as in
//! the migration plan (`KAFKA_*`).

use persona_bus_model::settings::{Checked, EnvVar, Invalid, parse_bool};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// The topic an event of `event_type` goes to: actions for
    /// `persona_action`, else events.
    pub fn topic_for(&self, event_type: &str) -> &str {
        if persona_bus_model::matching::normalize_event_type(event_type) == "persona.action" {
            &self.topics.actions.name
        } else {
            &self.topics.events.name
        }
    }

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

impl KafkaConfig {
    pub const ENV: &[EnvVar<Self>] = &[
        EnvVar {
            name: "KAFKA_ENABLED",
            key: "kafka.enabled",
            help: "the master switch",
            secret: false,
            set: |k, v, _| {
                k.enabled = parse_bool(&v)?;
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_REQUIRED",
            key: "kafka.required",
            help: "stop instead of falling back to SQLite when Kafka is away",
            secret: false,
            set: |k, v, _| {
                k.required = parse_bool(&v)?;
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_DUAL_WRITE",
            key: "kafka.dual_write",
            help: "phase 1: write SQLite and Kafka, handle from SQLite (false: consume from Kafka)",
            secret: false,
            set: |k, v, _| {
                k.dual_write = parse_bool(&v)?;
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_BROKERS",
            key: "kafka.brokers",
            help: "bootstrap list, host:port,host:port",
            secret: false,
            set: |k, v, _| {
                k.brokers = v;
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_CLIENT_ID",
            key: "kafka.client_id",
            help: "this device's client id, also its name in event headers",
            secret: false,
            set: |k, v, _| {
                k.client_id = v;
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_CONSUMER_GROUP",
            key: "kafka.consumer_group",
            help: "the event processor's consumer group",
            secret: false,
            set: |k, v, _| {
                k.consumer_group = v;
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_AUTO_OFFSET_RESET",
            key: "kafka.auto_offset_reset",
            help: "where a new group starts: latest, or earliest to replay",
            secret: false,
            set: |k, v, _| {
                k.auto_offset_reset = match v.trim().to_ascii_lowercase().as_str() {
                    "earliest" => OffsetReset::Earliest,
                    "latest" => OffsetReset::Latest,
                    _ => return Err("expected `earliest` or `latest`".into()),
                };
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SASL_USERNAME",
            key: "kafka.sasl_username",
            help: "SASL user",
            secret: false,
            set: |k, v, _| {
                k.sasl_username = Some(v);
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SASL_PASSWORD",
            key: "kafka.sasl_password",
            help: "SASL password",
            secret: true,
            set: |k, v, _| {
                k.sasl_password = Some(v);
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SASL_MECHANISM",
            key: "kafka.sasl_mechanism",
            help: "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
            secret: false,
            set: |k, v, _| {
                k.sasl_mechanism = v.parse()?;
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SSL_ENABLED",
            key: "kafka.ssl_enabled",
            help: "TLS to the brokers",
            secret: false,
            set: |k, v, _| {
                k.ssl_enabled = parse_bool(&v)?;
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SSL_CA_LOCATION",
            key: "kafka.ssl_ca_location",
            help: "PEM of the brokers' CA (default: the system's trust store)",
            secret: false,
            set: |k, v, _| {
                k.ssl_ca_location = Some(v.into());
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SSL_CERT_LOCATION",
            key: "kafka.ssl_cert_location",
            help: "mutual TLS: this device's certificate (PEM)",
            secret: false,
            set: |k, v, _| {
                k.ssl_cert_location = Some(v.into());
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SSL_KEY_LOCATION",
            key: "kafka.ssl_key_location",
            help: "mutual TLS: this device's key (PEM)",
            secret: false,
            set: |k, v, _| {
                k.ssl_key_location = Some(v.into());
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SSL_KEY_PASSWORD",
            key: "kafka.ssl_key_password",
            help: "the key's password, if it has one",
            secret: true,
            set: |k, v, _| {
                k.ssl_key_password = Some(v);
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SSL_ENDPOINT_IDENTIFICATION",
            key: "kafka.ssl_endpoint_identification",
            help: "https (the certificate must name the host dialled) or none",
            secret: false,
            set: |k, v, _| {
                k.ssl_endpoint_identification = v.parse()?;
                Ok(())
            },
        },
    ];

    /// Checks the section when Kafka is on (off, its keys are not used).
    pub fn validate(&self) -> Checked {
        if !self.enabled {
            return Ok(());
        }
        if self.brokers.split(',').any(|b| {
            b.trim()
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err(Invalid::new(
                "kafka.brokers",
                "expected a comma-separated list of host:port",
            ));
        }
        if self.client_id.trim().is_empty() || self.consumer_group.trim().is_empty() {
            return Err(Invalid::new(
                "kafka",
                "client_id and consumer_group must not be empty",
            ));
        }
        if self.partitions < 1 || self.partitions > 1000 {
            return Err(Invalid::new(
                "kafka.partitions",
                "must be between 1 and 1000",
            ));
        }
        if self.replication_factor < 1 || self.replication_factor > 32 {
            return Err(Invalid::new(
                "kafka.replication_factor",
                "must be between 1 and 32",
            ));
        }
        if self
            .topics
            .all()
            .iter()
            .any(|t| t.name.trim().is_empty() || t.retention_hours == 0)
        {
            return Err(Invalid::new(
                "kafka.topics",
                "every topic needs a name and a retention above 0 hours",
            ));
        }
        if self.sasl_username.is_some() != self.sasl_password.is_some() {
            return Err(Invalid::new(
                "kafka.sasl",
                "set both KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD, or neither",
            ));
        }
        let tls_files = [
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            ("kafka.ssl_cert_location", &self.ssl_cert_location),
            ("kafka.ssl_key_location", &self.ssl_key_location),
        ];
        if !self.ssl_enabled
            && (tls_files.iter().any(|(_, f)| f.is_some()) || self.ssl_key_password.is_some())
        {
            return Err(Invalid::new(
                "kafka.ssl_enabled",
                "TLS files or a key password are set but TLS is off: set KAFKA_SSL_ENABLED=true",
            ));
        }
        if self.ssl_cert_location.is_some() != self.ssl_key_location.is_some() {
            return Err(Invalid::new(
                "kafka.ssl_cert_location",
                "mutual TLS needs both KAFKA_SSL_CERT_LOCATION and KAFKA_SSL_KEY_LOCATION",
            ));
        }
        for (field, file) in tls_files {
            if let Some(path) = file
                && !path.is_file()
            {
                return Err(Invalid::new(
                    field,
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        check_settings(self).map_err(|reason| Invalid::new("kafka.librdkafka", reason))?;
        if self.consumer_batch == 0 || self.consumer_batch > 50_000 {
            return Err(Invalid::new(
                "kafka.consumer_batch",
                "must be between 1 and 50000",
            ));
        }
        let b = &self.breaker;
        if b.failures == 0 || b.open_secs == 0 || b.check_secs == 0 || b.failure_after_ms < 100 {
            return Err(Invalid::new(
                "kafka.breaker",
                "failures, open_secs and check_secs must be above 0 and failure_after_ms at least 100",
            ));
        }
        Ok(())
    }
}

/// Client settings shared by every client the host makes: the outbox
/// producer, the consumer groups, the execution-record producers, and the
/// admin client behind `status` and `replay`. Secrets go into the librdkafka
/// config and nowhere else (never a log line).
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", &k.client_id)
        // Small records should leave at once: batching is linger.ms's job.
        .set("socket.nagle.disable", "true");
    let sasl = k.sasl_username.as_ref().zip(k.sasl_password.as_ref());
    let protocol = match (sasl.is_some(), k.ssl_enabled) {
        (true, true) => "SASL_SSL",
        (true, false) => "SASL_PLAINTEXT",
        (false, true) => "SSL",
        (false, false) => "PLAINTEXT",
    };
    c.set("security.protocol", protocol);
    if let Some((user, password)) = sasl {
        c.set("sasl.mechanisms", k.sasl_mechanism.as_str())
            .set("sasl.username", user)
            .set("sasl.password", password);
    }
    if k.ssl_enabled {
        c.set(
            "ssl.endpoint.identification.algorithm",
            k.ssl_endpoint_identification.as_str(),
        );
        let files = [
            ("ssl.ca.location", &k.ssl_ca_location),
            ("ssl.certificate.location", &k.ssl_cert_location),
            ("ssl.key.location", &k.ssl_key_location),
        ];
        for (key, file) in files {
            if let Some(path) = file {
                c.set(key, path.to_string_lossy());
            }
        }
        if let Some(password) = &k.ssl_key_password {
            c.set("ssl.key.password", password);
        }
    }
    for (key, value) in &k.librdkafka {
        c.set(key, value);
    }
    c
}

/// Checks every setting the host would give librdkafka, the
/// `[kafka.librdkafka]` table's included, without connecting: a name it
/// does not know or a value it refuses is reported with its key (a secret's
/// value is never repeated).
pub fn check_settings(k: &KafkaConfig) -> Result<(), String> {
    match client_config(k).create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, description, key, value)) => {
            // librdkafka's text may quote the value: never a secret's.
            let (description, shown) = if is_secret_setting(&key) {
                let redacted = if value.is_empty() {
                    description
                } else {
                    description.replace(&value, "<redacted>")
                };
                (redacted, "<redacted>".to_owned())
            } else {
                (description, format!("{value:?}"))
            };
            Err(format!(
                "librdkafka refused `{key}` = {shown}: {description}"
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}
