//! Host configuration: an optional TOML file, overridden by environment
//! variables (the migration plan's `KAFKA_*` names and `PERSONA_BUS_*`), then
//! validated as a whole before anything starts.
//!
//! Each section is owned by its subsystem: its struct, defaults, validation
//! and environment variables live beside its code (`kafka::config`,
//! `persona_bus_store::StoreConfig`, ...). This module only combines them:
//! one file with unknown keys refused, and one table of variables
//! ([`env_vars`]) that `--help`, the docs and the loader all read.

use persona_bus_model::settings::{EnvDoc, EnvVar, Invalid, Lookup, parse_number};
use persona_bus_model::text::line_of;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::alerts::config::AlertsConfig;
pub use crate::api::config::{HttpConfig, WebhookTrigger};
pub use crate::kafka::config::{
    BreakerConfig, EndpointIdentification, KafkaConfig, OffsetReset, SaslMechanism, TopicConfig,
    TopicsConfig, is_secret_setting,
};
pub use crate::registry::config::{OciConfig, TrustConfig};
pub use crate::runtime::config::RuntimeConfig;
pub use crate::schemas::config::{SchemasConfig, WireFormat};
pub use crate::source::config::PollConfig;
pub use crate::traces::TracesConfig;
pub use persona_bus_model::limits::HostLimits;
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
    pub alerts: AlertsConfig,
    /// OTLP traces, off without an endpoint (see `traces`).
    pub traces: TracesConfig,
    /// The keys whose signatures a component needs (see `registry`).
    pub trust: TrustConfig,
    /// Components pulled from OCI registries (see `registry`).
    pub oci: OciConfig,
    /// On SIGINT/SIGTERM (or `Bus::shutdown`): how long handler calls in
    /// flight may take to finish. Calls still running then are abandoned:
    /// nothing of theirs is committed, their events go back to `pending`
    /// and no Kafka offset passes them. Env: `PERSONA_BUS_SHUTDOWN_GRACE_MS`.
    pub shutdown_grace_ms: u64,
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
            trust: Default::default(),
            oci: Default::default(),
            shutdown_grace_ms: 10_000,
        }
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

impl From<Invalid> for ConfigError {
    fn from(e: Invalid) -> Self {
        ConfigError::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// Every environment variable the host reads, in the order of the docs:
/// the host's own, then each section's.
pub fn env_vars() -> Vec<EnvDoc> {
    fn docs<S>(vars: &[EnvVar<S>]) -> Vec<EnvDoc> {
        vars.iter().map(EnvVar::doc).collect()
    }
    [
        docs(Config::ENV),
        docs(KafkaConfig::ENV),
        docs(SchemasConfig::ENV),
        docs(HttpConfig::ENV),
        docs(AlertsConfig::ENV),
        docs(TracesConfig::ENV),
        docs(TrustConfig::ENV),
        docs(OciConfig::ENV),
    ]
    .concat()
}

/// Sets `section`'s keys from the variables of `vars` that are set.
fn apply<S>(section: &mut S, vars: &[EnvVar<S>], env: &Lookup<'_>) -> Result<(), ConfigError> {
    for var in vars {
        if let Some(value) = env(var.name) {
            let shown = if var.secret {
                "<redacted>".to_owned()
            } else {
                value.clone()
            };
            (var.set)(section, value, env).map_err(|reason| ConfigError::Env {
                var: var.name,
                value: shown,
                reason,
            })?;
        }
    }
    Ok(())
}

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

    /// The variables of the top level; `PERSONA_BUS_CONFIG` names the
    /// file itself and is read by the command line.
    pub const ENV: &[EnvVar<Self>] = &[
        EnvVar {
            name: "PERSONA_BUS_CONFIG",
            key: "--config",
            help: "the TOML configuration file (read by the command line)",
            secret: false,
            set: |_, _, _| Ok(()),
        },
        EnvVar {
            name: "PERSONA_BUS_DATA_DIR",
            key: "data_dir",
            help: "SQLite database, host lock and compiled-component cache",
            secret: false,
            set: |c, v, _| {
                c.data_dir = v.into();
                Ok(())
            },
        },
        EnvVar {
            name: "PERSONA_BUS_HANDLERS_DIR",
            key: "handlers_dir",
            help: "folder of handler components (name.wasm) and manifests (name.toml)",
            secret: false,
            set: |c, v, _| {
                c.handlers_dir = v.into();
                Ok(())
            },
        },
        EnvVar {
            name: "PERSONA_BUS_SHUTDOWN_GRACE_MS",
            key: "shutdown_grace_ms",
            help: "on SIGINT/SIGTERM, how long calls in flight may finish",
            secret: false,
            set: |c, v, _| {
                c.shutdown_grace_ms = parse_number(&v, "milliseconds")?;
                Ok(())
            },
        },
    ];

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        apply(self, Self::ENV, &env)?;
        apply(&mut self.kafka, KafkaConfig::ENV, &env)?;
        apply(&mut self.schemas, SchemasConfig::ENV, &env)?;
        apply(&mut self.http, HttpConfig::ENV, &env)?;
        apply(&mut self.alerts, AlertsConfig::ENV, &env)?;
        apply(&mut self.traces, TracesConfig::ENV, &env)?;
        apply(&mut self.trust, TrustConfig::ENV, &env)?;
        apply(&mut self.oci, OciConfig::ENV, &env)?;
        Ok(())
    }

    /// Checks the whole configuration, section by section; every problem
    /// names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.poll.validate()?;
        self.store.validate()?;
        self.limits.validate()?;
        self.runtime.validate()?;
        self.http.validate()?;
        self.kafka.validate()?;
        self.schemas.validate()?;
        self.traces.validate()?;
        self.alerts.validate()?;
        self.trust.validate()?;
        self.oci.validate()?;
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

    /// The variables table of docs/configuration.md, as `env_vars` makes it.
    fn env_table() -> String {
        let mut table = String::from("| variable | key | meaning |\n|---|---|---|\n");
        for v in env_vars() {
            let secret = if v.secret {
                " (secret: never shown)"
            } else {
                ""
            };
            table.push_str(&format!(
                "| `{}` | `{}` | {}{secret} |\n",
                v.name, v.key, v.help
            ));
        }
        table
    }

    #[test]
    fn the_docs_and_env_example_list_exactly_the_variables_the_loader_reads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let (begin, end) = ("<!-- env-vars: begin -->\n", "<!-- env-vars: end -->");
        let at = docs
            .find(begin)
            .expect("docs/configuration.md has the env-vars markers");
        let section = &docs[at + begin.len()..docs.find(end).unwrap()];
        let want = env_table();
        assert_eq!(
            section, want,
            "docs/configuration.md's variables differ from config::env_vars(); paste this between its markers:\n{want}"
        );
        let example = std::fs::read_to_string(root.join(".env.example")).unwrap();
        let mut listed: Vec<&str> = example
            .lines()
            .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim()))
            .filter(|name| !name.starts_with('#') && *name != "RUST_LOG")
            .collect();
        let mut read: Vec<&str> = env_vars().iter().map(|v| v.name).collect();
        listed.sort_unstable();
        read.sort_unstable();
        assert_eq!(listed, read, ".env.example and config::env_vars()");
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
