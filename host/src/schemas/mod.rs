//! Payload schemas per event type and version (migration plan, phase 4).
//!
//! Off by default (`[schemas] enabled`). When on, every event that enters
//! (publish from the CLI, HTTP, the library or a handler; a Kafka record from
//! another device) has its payload checked against the schema its
//! `schema-version` selects:
//! - without a registry, JSON Schema (`<dir>/<type>/<version>.json`) or Avro
//!   (`<version>.avsc`) files in a folder;
//! - with `KAFKA_SCHEMA_REGISTRY_URL`, the registry's subject
//!   `[schemas] subject` (default `{topic}-{event_type}`), version N.
//!
//! With a registry and an Avro schema for a type, the outbox relay writes
//! the payload Avro-encoded in the Confluent framing (byte 0, 4-byte schema
//! id, body); the consumer reads that framing (Avro or JSON Schema) and
//! today's JSON records alike, so devices migrate one at a time. Handlers
//! always see JSON.
//!
//! Schemas are cached: by (type, version) and by id. Ids never change, so
//! those entries live as long as the host; an absent (type, version) is
//! asked again after [`ABSENT_TTL`], so a schema registered later is found.
//! A registry that cannot be reached fails the lookups that need it for
//! [`DOWN_FOR`] without calling it again; the caller retries (publish gets a
//! retryable error, the consumer holds that record's partition, the relay
//! keeps the event in the outbox): nothing is lost.

pub mod avro;
pub mod config;
pub mod registry;

use crate::config::Config;
use crate::event::Event;
use crate::kafka::config::KafkaConfig;
use avro::AvroSchema;
use config::SchemasConfig;
use persona_bus_model::sync::{Locked, ReadWrite};
use registry::{RegistryClient, RegistryError};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long "this type and version have no schema" is believed.
pub const ABSENT_TTL: Duration = Duration::from_secs(5);
/// After a failed registry call, how long lookups fail without calling.
pub const DOWN_FOR: Duration = Duration::from_millis(500);
/// The Confluent wire framing: magic byte, then a big-endian schema id.
pub const MAGIC: u8 = 0;

pub use persona_bus_model::event::SchemaError;

/// A loaded schema.
pub struct Schema {
    /// Registry id (None for files).
    pub id: Option<u32>,
    /// Where it came from: `subject X version N (id I)` or the file.
    pub origin: String,
    pub body: Body,
}

pub enum Body {
    Json(jsonschema::Validator),
    Avro(AvroSchema),
}

impl Schema {
    /// Parses a schema text of a registry type (`AVRO`, `JSON`).
    pub fn parse(
        text: &str,
        schema_type: &str,
        id: Option<u32>,
        origin: String,
    ) -> Result<Self, SchemaError> {
        let bad = |reason: String| SchemaError::BadSchema {
            origin: origin.clone(),
            reason,
        };
        let body = match schema_type.to_ascii_uppercase().as_str() {
            "AVRO" => Body::Avro(AvroSchema::parse(text).map_err(bad)?),
            "JSON" => {
                let doc: Value =
                    serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
                Body::Json(
                    jsonschema::validator_for(&doc)
                        .map_err(|e| bad(format!("not a valid JSON Schema: {e}")))?,
                )
            }
            other => {
                return Err(bad(format!(
                    "{other} schemas are not supported (use AVRO or JSON)"
                )));
            }
        };
        Ok(Self { id, origin, body })
    }

    /// Checks `payload`; on failure, the first failing path and rule.
    pub fn check(&self, payload: &Value) -> Result<(), (String, String)> {
        match &self.body {
            Body::Json(v) => v.validate(payload).map_err(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                (path, format!("{e} (rule {})", e.schema_path()))
            }),
            Body::Avro(a) => {
                let mut sink = Vec::new();
                a.encode(payload, &mut sink).map_err(|m| (m.path, m.rule))
            }
        }
    }
}

/// Guesses a schema file's type: Avro for `.avsc` or a top-level named
/// Avro type, JSON Schema otherwise.
pub fn schema_type_of(path: &std::path::Path, text: &str) -> &'static str {
    if path.extension().is_some_and(|e| e == "avsc") {
        return "AVRO";
    }
    let doc: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let avro_named = matches!(doc["type"].as_str(), Some("record" | "enum" | "fixed"))
        && doc.get("name").is_some();
    if avro_named || doc.is_array() || doc.as_str().is_some() {
        "AVRO"
    } else {
        "JSON"
    }
}

#[derive(Clone)]
enum Lookup {
    Found(Arc<Schema>),
    Absent(Instant),
}

/// The schemas of this host: lookups, caches, checks and the wire codec.
pub struct Schemas {
    cfg: SchemasConfig,
    kafka: KafkaConfig,
    registry: Option<RegistryClient>,
    by_version: RwLock<HashMap<(String, u32), Lookup>>,
    by_id: RwLock<HashMap<u32, Arc<Schema>>>,
    down_until: Mutex<Option<Instant>>,
    /// Payloads refused (publish and consume), for `/metrics`.
    pub refused: AtomicU64,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas")
            .field("enabled", &self.cfg.enabled)
            .field("registry", &self.registry)
            .finish()
    }
}

impl Schemas {
    pub fn new(config: &Config) -> Self {
        let cfg = config.schemas.clone();
        let registry = cfg.registry_url.as_deref().map(|url| {
            RegistryClient::new(
                url,
                cfg.registry_username.as_deref(),
                cfg.registry_password.as_deref(),
                Duration::from_millis(cfg.registry_timeout_ms),
            )
        });
        Self {
            cfg,
            kafka: config.kafka.clone(),
            registry,
            by_version: RwLock::default(),
            by_id: RwLock::default(),
            down_until: Mutex::new(None),
            refused: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn registry(&self) -> Option<&RegistryClient> {
        self.registry.as_ref()
    }

    pub fn config(&self) -> &SchemasConfig {
        &self.cfg
    }

    /// The registry subject of an event type on a topic.
    pub fn subject(&self, topic: &str, event_type: &str) -> String {
        self.cfg
            .subject
            .replace("{topic}", topic)
            .replace("{event_type}", event_type)
    }

    /// The topic an event of this type is produced to.
    pub fn topic_for(&self, event_type: &str) -> &str {
        self.kafka.topic_for(event_type)
    }

    /// Checks a stored-form event (its payload is JSON text). A no-op when
    /// schemas are off.
    pub fn check(&self, e: &Event) -> Result<(), SchemaError> {
        if !self.cfg.enabled {
            return Ok(());
        }
        // Validated events always carry a JSON payload.
        let payload: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
        self.check_value(&e.event_type, e.schema_version, &payload)
            .map(|_| ())
    }

    /// Checks a payload against the schema of (type, version); returns that
    /// schema (None: the type has none and strict is off).
    pub fn check_value(
        &self,
        event_type: &str,
        version: u32,
        payload: &Value,
    ) -> Result<Option<Arc<Schema>>, SchemaError> {
        let Some(schema) = self.lookup(event_type, version)? else {
            if self.cfg.strict {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(SchemaError::Unknown {
                    event_type: event_type.to_owned(),
                    version,
                    origin: self.where_from(event_type, version),
                });
            }
            return Ok(None);
        };
        schema.check(payload).map_err(|(path, rule)| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            SchemaError::Invalid {
                event_type: event_type.to_owned(),
                version,
                origin: schema.origin.clone(),
                path,
                rule,
            }
        })?;
        Ok(Some(schema))
    }

    fn where_from(&self, event_type: &str, version: u32) -> String {
        match &self.registry {
            Some(r) => format!(
                "subject {} at {}",
                self.subject(self.topic_for(event_type), event_type),
                r.url()
            ),
            None => self
                .file_of(event_type, version, "json")
                .display()
                .to_string(),
        }
    }

    fn file_of(&self, event_type: &str, version: u32, ext: &str) -> PathBuf {
        self.cfg
            .dir
            .join(event_type)
            .join(format!("{version}.{ext}"))
    }

    /// The schema of (type, version), from the cache, the registry or the
    /// folder.
    pub fn lookup(
        &self,
        event_type: &str,
        version: u32,
    ) -> Result<Option<Arc<Schema>>, SchemaError> {
        let key = (event_type.to_owned(), version);
        if let Some(hit) = self.by_version.read_locked().get(&key) {
            match hit {
                Lookup::Found(s) => return Ok(Some(s.clone())),
                Lookup::Absent(at) if at.elapsed() < ABSENT_TTL => return Ok(None),
                Lookup::Absent(_) => {}
            }
        }
        let found = match &self.registry {
            Some(r) => self.in_registry(r, event_type, version)?,
            None => self.in_folder(event_type, version)?,
        };
        let entry = match &found {
            Some(s) => Lookup::Found(s.clone()),
            None => Lookup::Absent(Instant::now()),
        };
        self.by_version.write_locked().insert(key, entry);
        Ok(found)
    }

    fn in_folder(
        &self,
        event_type: &str,
        version: u32,
    ) -> Result<Option<Arc<Schema>>, SchemaError> {
        for (ext, kind) in [("json", "JSON"), ("avsc", "AVRO")] {
            let path = self.file_of(event_type, version, ext);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let s = Schema::parse(&text, kind, None, path.display().to_string())?;
                    return Ok(Some(Arc::new(s)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SchemaError::BadSchema {
                        origin: path.display().to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(None)
    }

    fn in_registry(
        &self,
        r: &RegistryClient,
        event_type: &str,
        version: u32,
    ) -> Result<Option<Arc<Schema>>, SchemaError> {
        let subject = self.subject(self.topic_for(event_type), event_type);
        let unavailable = |reason: String| SchemaError::Unavailable {
            event_type: event_type.to_owned(),
            reason,
        };
        self.registry_up().map_err(unavailable)?;
        match r.version(&subject, &version.to_string()) {
            Ok(reg) => {
                let origin = format!("subject {subject} version {version}, id {}", reg.id);
                let kind = reg.schema_type.as_deref().unwrap_or("AVRO");
                let schema = Arc::new(Schema::parse(&reg.schema, kind, Some(reg.id), origin)?);
                self.by_id.write_locked().insert(reg.id, schema.clone());
                Ok(Some(schema))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(unavailable(self.registry_failed(e))),
        }
    }

    /// A schema by registry id (framed records).
    pub fn by_id(&self, id: u32) -> Result<Arc<Schema>, SchemaError> {
        if let Some(s) = self.by_id.read_locked().get(&id) {
            return Ok(s.clone());
        }
        let Some(r) = &self.registry else {
            return Err(SchemaError::Frame {
                id,
                reason: "the record is in the schema-registry framing, but no registry is configured (KAFKA_SCHEMA_REGISTRY_URL)".into(),
            });
        };
        let unavailable = |reason: String| SchemaError::Unavailable {
            event_type: format!("schema id {id}"),
            reason,
        };
        self.registry_up().map_err(unavailable)?;
        let reg = match r.by_id(id) {
            Ok(reg) => reg,
            Err(e) if e.is_not_found() => {
                return Err(SchemaError::Frame {
                    id,
                    reason: format!("the registry at {} has no schema with this id", r.url()),
                });
            }
            Err(e) => return Err(unavailable(self.registry_failed(e))),
        };
        let kind = reg.schema_type.as_deref().unwrap_or("AVRO");
        let schema = Arc::new(Schema::parse(
            &reg.schema,
            kind,
            Some(id),
            format!("schema id {id}"),
        )?);
        self.by_id.write_locked().insert(id, schema.clone());
        Ok(schema)
    }

    fn registry_up(&self) -> Result<(), String> {
        match *self.down_until.locked() {
            Some(until) if Instant::now() < until => {
                Err("the schema registry was unreachable moments ago".into())
            }
            _ => Ok(()),
        }
    }

    fn registry_failed(&self, e: RegistryError) -> String {
        if matches!(e, RegistryError::Unreachable { .. }) {
            *self.down_until.locked() = Some(Instant::now() + DOWN_FOR);
        }
        e.to_string()
    }

    /// The record value the relay produces for `e`: Some(framed Avro) when a
    /// registry is configured, schemas are on, the wire format is Avro and
    /// the type's schema is Avro; None means today's JSON record.
    pub fn wire_value(&self, e: &Event) -> Result<Option<(u32, Vec<u8>)>, SchemaError> {
        if !self.cfg.enabled
            || self.registry.is_none()
            || self.cfg.wire_format != config::WireFormat::Avro
        {
            return Ok(None);
        }
        let Some(schema) = self.lookup(&e.event_type, e.schema_version)? else {
            return Ok(None);
        };
        let (Body::Avro(avro), Some(id)) = (&schema.body, schema.id) else {
            return Ok(None);
        };
        let payload: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
        let out = frame_avro(id, avro, &payload).map_err(|m| SchemaError::Invalid {
            event_type: e.event_type.clone(),
            version: e.schema_version,
            origin: schema.origin.clone(),
            path: m.path,
            rule: m.rule,
        })?;
        Ok(Some((id, out)))
    }

    /// The JSON payload of a framed record value (magic byte, schema id,
    /// Avro or JSON body).
    pub fn unframe(&self, value: &[u8]) -> Result<Value, SchemaError> {
        let id = u32::from_be_bytes(value[1..5].try_into().expect("framed: 5 bytes checked"));
        let schema = self.by_id(id)?;
        let body = &value[5..];
        match &schema.body {
            Body::Avro(a) => a
                .decode(body)
                .map_err(|reason| SchemaError::Frame { id, reason }),
            Body::Json(_) => {
                let payload: Value =
                    serde_json::from_slice(body).map_err(|e| SchemaError::Frame {
                        id,
                        reason: format!("body is not JSON: {e}"),
                    })?;
                schema
                    .check(&payload)
                    .map_err(|(path, rule)| SchemaError::Frame {
                        id,
                        reason: format!("body does not match its schema at {path}: {rule}"),
                    })?;
                Ok(payload)
            }
        }
    }
}

/// `payload` Avro-encoded in the schema-registry framing: the magic byte,
/// the big-endian schema id, the body.
pub fn frame_avro(id: u32, avro: &AvroSchema, payload: &Value) -> Result<Vec<u8>, avro::Misfit> {
    let mut out = Vec::with_capacity(128);
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    avro.encode(payload, &mut out)?;
    Ok(out)
}

/// Whether a record value is in the schema-registry framing.
pub fn is_framed(value: &[u8]) -> bool {
    value.len() >= 5 && value[0] == MAGIC
}

#[cfg(test)]
mod tests;
