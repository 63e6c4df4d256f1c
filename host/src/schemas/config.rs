//! `[schemas]`: payload schemas, from a folder or a Confluent-API registry.

use persona_bus_model::settings::{Checked, EnvVar, Invalid, parse_bool};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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

/// The compatibility levels a registry knows.
const LEVELS: &[&str] = &[
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
];

impl SchemasConfig {
    pub const ENV: &[EnvVar<Self>] = &[
        EnvVar {
            name: "PERSONA_BUS_SCHEMAS_ENABLED",
            key: "schemas.enabled",
            help: "check payloads against their schemas",
            secret: false,
            set: |s, v, _| {
                s.enabled = parse_bool(&v)?;
                Ok(())
            },
        },
        EnvVar {
            name: "PERSONA_BUS_SCHEMAS_DIR",
            key: "schemas.dir",
            help: "without a registry: DIR/EVENT_TYPE/VERSION.json or .avsc",
            secret: false,
            set: |s, v, _| {
                s.dir = v.into();
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SCHEMA_REGISTRY_URL",
            key: "schemas.registry_url",
            help: "Confluent-API registry root, e.g. http://127.0.0.1:8081/apis/ccompat/v7",
            secret: false,
            set: |s, v, _| {
                s.registry_url = Some(v);
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SCHEMA_REGISTRY_USERNAME",
            key: "schemas.registry_username",
            help: "the registry's basic-auth user",
            secret: false,
            set: |s, v, _| {
                s.registry_username = Some(v);
                Ok(())
            },
        },
        EnvVar {
            name: "KAFKA_SCHEMA_REGISTRY_PASSWORD",
            key: "schemas.registry_password",
            help: "the registry's basic-auth password",
            secret: true,
            set: |s, v, _| {
                s.registry_password = Some(v);
                Ok(())
            },
        },
    ];

    pub fn validate(&self) -> Checked {
        if let Some(url) = &self.registry_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Invalid::new(
                "schemas.registry_url",
                "must start with http:// or https://",
            ));
        }
        if !self.subject.contains("{event_type}") {
            return Err(Invalid::new(
                "schemas.subject",
                "must contain {event_type} (one subject per event type)",
            ));
        }
        if !LEVELS.contains(&self.compatibility.as_str()) {
            return Err(Invalid::new(
                "schemas.compatibility",
                format!("must be one of {}", LEVELS.join(", ")),
            ));
        }
        if self.registry_timeout_ms == 0 {
            return Err(Invalid::new(
                "schemas.registry_timeout_ms",
                "must be above 0",
            ));
        }
        Ok(())
    }
}
