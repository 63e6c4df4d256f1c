//! How an event travels on Kafka: a JSON value (the event, with its payload
//! as JSON rather than text) and headers that let consumers route and
//! deduplicate without parsing it.

use crate::event::Event;
use serde::{Deserialize, Serialize};

/// The record value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireEvent {
    pub id: String,
    pub project_id: String,
    pub event_type: String,
    pub source_type: String,
    pub source_id: Option<String>,
    pub target_persona_id: Option<String>,
    pub payload: serde_json::Value,
    pub headers: Vec<(String, String)>,
    pub schema_version: u32,
    pub chain_depth: u32,
    pub created_at: String,
}

impl WireEvent {
    pub fn from_event(e: &Event) -> Self {
        Self {
            id: e.id.clone(),
            project_id: e.project_id.clone(),
            event_type: e.event_type.clone(),
            source_type: e.source_type.clone(),
            source_id: e.source_id.clone(),
            target_persona_id: e.target_persona_id.clone(),
            // Stored payloads always parse (validated at publish).
            payload: serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null),
            headers: e.headers.clone(),
            schema_version: e.schema_version,
            chain_depth: e.chain_depth,
            created_at: e.created_at.clone(),
        }
    }
}

/// Header on an event that its device already handled from SQLite (the
/// breaker was open, or it was written in phase 1) before producing it:
/// other devices archive it instead of running it again.
pub const HANDLED_BY: &str = "handled-by";
/// With [`HANDLED_BY`]: the event's status on that device.
pub const HANDLED_STATUS: &str = "handled-status";

/// The record headers of the plan (phase 4 "event versioning headers"),
/// plus [`HANDLED_BY`] for events already handled.
pub fn headers(e: &Event, origin_device: &str) -> Vec<(&'static str, String)> {
    let mut hs = base_headers(e, origin_device);
    if e.status.is_final() {
        hs.push((HANDLED_BY, origin_device.to_owned()));
        hs.push((HANDLED_STATUS, e.status.as_str().to_owned()));
    }
    hs
}

fn base_headers(e: &Event, origin_device: &str) -> Vec<(&'static str, String)> {
    let mut hs = vec![
        ("event-id", e.id.clone()),
        ("event-type", e.event_type.clone()),
        ("schema-version", e.schema_version.to_string()),
        ("content-type", "application/json".into()),
        (
            "source",
            format!("{}:{}", e.source_type, e.source_id.as_deref().unwrap_or("")),
        ),
        ("chain-depth", e.chain_depth.to_string()),
        ("origin-device", origin_device.to_owned()),
    ];
    // W3C trace context where Kafka instrumentation looks for it (it is in
    // the event's own headers too).
    if let Some((_, tp)) = e
        .headers
        .iter()
        .find(|(k, _)| k == crate::traces::TRACEPARENT)
    {
        hs.push((crate::traces::TRACEPARENT, tp.clone()));
    }
    hs
}

/// Headers of a record whose value is the payload alone, in the schema
/// registry's framing: the envelope that the JSON record carries in its
/// value travels here instead.
pub fn framed_headers(
    e: &Event,
    origin_device: &str,
    schema_id: u32,
) -> Vec<(&'static str, String)> {
    let mut hs = headers(e, origin_device);
    for h in hs.iter_mut().filter(|h| h.0 == "content-type") {
        h.1 = "application/avro".into();
    }
    hs.push(("schema-id", schema_id.to_string()));
    hs.push(("project-id", e.project_id.clone()));
    hs.push(("created-at", e.created_at.clone()));
    if let Some(t) = &e.target_persona_id {
        hs.push(("target-persona-id", t.clone()));
    }
    if !e.headers.is_empty() {
        hs.push((
            "event-headers",
            serde_json::to_string(&e.headers).unwrap_or_default(),
        ));
    }
    hs
}

/// The id of a framed record's event: its `event-id` header, else its
/// position (stable across redeliveries).
pub fn framed_event_id(headers: &[(String, String)], position: &str) -> String {
    headers
        .iter()
        .rev()
        .find(|h| h.0 == "event-id")
        .map_or_else(|| position.to_owned(), |h| h.1.clone())
}

/// An event from a framed record: the payload (decoded) and the envelope
/// from its headers. A record from a producer that is not a persona host
/// needs only `event-type`; its id defaults to its position, so a
/// redelivery is still recognised.
pub fn event_from_headers(
    payload: serde_json::Value,
    headers: &[(String, String)],
    position: &str,
) -> Result<Event, DecodeError> {
    let get = |k: &str| headers.iter().rev().find(|h| h.0 == k).map(|h| h.1.clone());
    let num = |k: &str, default: u32, field| match get(k) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| DecodeError::Field { field }),
    };
    let (source_type, source_id) = match get("source") {
        Some(s) => match s.split_once(':') {
            Some((t, id)) => (t.to_owned(), (!id.is_empty()).then(|| id.to_owned())),
            None => (s, None),
        },
        None => ("kafka".to_owned(), None),
    };
    let event_headers = match get("event-headers") {
        Some(v) => serde_json::from_str(&v).map_err(|_| DecodeError::Field {
            field: "event-headers",
        })?,
        None => Vec::new(),
    };
    WireEvent {
        id: framed_event_id(headers, position),
        project_id: get("project-id").unwrap_or_else(|| crate::event::DEFAULT_PROJECT.to_owned()),
        event_type: get("event-type").unwrap_or_default(),
        source_type,
        source_id,
        target_persona_id: get("target-persona-id"),
        payload,
        headers: event_headers,
        schema_version: num(
            "schema-version",
            crate::event::DEFAULT_SCHEMA_VERSION,
            "schema-version",
        )?,
        chain_depth: num("chain-depth", 0, "chain-depth")?,
        created_at: get("created-at").unwrap_or_else(crate::event::now_rfc3339),
    }
    .into_event()
}

/// Why a Kafka record did not become an event.
#[derive(Debug)]
pub enum RecordError {
    /// Not an event, or its payload breaks its schema: dead-lettered.
    Bad(String),
    /// Its schema cannot be had now (registry down): try again later.
    Unavailable(String),
}

/// Reads a record of the events or actions topic: today's JSON record, or
/// a payload in the schema-registry framing with its envelope in headers.
/// With `validate`, a JSON record's payload is checked against its schema
/// (a framed one was written with its schema).
pub fn decode_record(
    schemas: &crate::schemas::Schemas,
    value: Option<&[u8]>,
    headers: impl FnOnce() -> Vec<(String, String)>,
    // Only written out for a framed record without an `event-id`.
    position: &dyn std::fmt::Display,
    validate: bool,
) -> Result<Event, RecordError> {
    let schema_error = |e: crate::schemas::SchemaError| {
        if e.is_transient() {
            RecordError::Unavailable(e.to_string())
        } else {
            RecordError::Bad(e.to_string())
        }
    };
    match value {
        Some(v) if crate::schemas::is_framed(v) => {
            let payload = schemas.unframe(v).map_err(schema_error)?;
            event_from_headers(payload, &headers(), &position.to_string())
                .map_err(|e| RecordError::Bad(e.to_string()))
        }
        _ => {
            let bad = |e: DecodeError| RecordError::Bad(e.to_string());
            let wire: WireEvent =
                serde_json::from_slice(value.ok_or(DecodeError::Empty).map_err(bad)?)
                    .map_err(|e| bad(DecodeError::Json(e)))?;
            // Checked as parsed, before the payload becomes text.
            if validate && schemas.enabled() {
                schemas
                    .check_value(&wire.event_type, wire.schema_version, &wire.payload)
                    .map_err(schema_error)?;
            }
            wire.into_event().map_err(bad)
        }
    }
}

/// Why a record could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no value")]
    Empty,
    #[error("record value is not a persona event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event `{field}` is empty or invalid")]
    Field { field: &'static str },
}

impl WireEvent {
    /// The event as this device stores and dispatches it. Checks what the
    /// matcher and the store rely on; a record that fails is dead-lettered.
    pub fn into_event(self) -> Result<Event, DecodeError> {
        let bad = |field| Err(DecodeError::Field { field });
        if self.id.trim().is_empty() || self.id.len() > 128 {
            return bad("id");
        }
        if self.event_type.is_empty() || !crate::event::is_valid_event_type(&self.event_type) {
            return bad("event_type");
        }
        if self.source_type.trim().is_empty() {
            return bad("source_type");
        }
        if self.project_id.trim().is_empty() {
            return bad("project_id");
        }
        Ok(Event {
            id: self.id,
            project_id: self.project_id,
            event_type: self.event_type,
            source_type: self.source_type,
            source_id: self.source_id,
            target_persona_id: self.target_persona_id,
            payload: self.payload.to_string(),
            status: crate::event::EventStatus::Pending,
            error_message: None,
            processed_at: None,
            created_at: self.created_at,
            headers: self.headers,
            schema_version: self.schema_version,
            chain_depth: self.chain_depth,
            retry_count: 0,
        })
    }

    /// Decodes a record value.
    pub fn decode(value: Option<&[u8]>) -> Result<Event, DecodeError> {
        let value = value.ok_or(DecodeError::Empty)?;
        serde_json::from_slice::<WireEvent>(value)?.into_event()
    }
}

/// One handled event, as sent to the executions topic: which device ran
/// which handlers and how it ended. Other devices' audit loggers apply the
/// final status to their archived copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub event_id: String,
    pub event_type: String,
    pub project_id: String,
    pub device: String,
    /// The event's status after this delivery (`pending` = retry scheduled).
    pub status: String,
    pub error: Option<String>,
    pub runs: Vec<RunRecord>,
    pub processed_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub handler: String,
    pub version: String,
    pub attempt: u32,
    pub outcome: String,
    pub duration_us: u64,
    pub error: Option<String>,
}

impl ExecutionRecord {
    pub fn from_resolution(r: &crate::outcome::Resolution, device: &str, now: &str) -> Self {
        let (status, error) = match &r.next {
            crate::outcome::Next::Final { status, error } => (status.as_str(), error.clone()),
            crate::outcome::Next::Retry { error, .. } => ("pending", Some(error.clone())),
        };
        Self {
            event_id: r.event.id.clone(),
            event_type: r.event.event_type.clone(),
            project_id: r.event.project_id.clone(),
            device: device.to_owned(),
            status: status.to_owned(),
            error,
            runs: r
                .runs
                .iter()
                .map(|run| RunRecord {
                    handler: run.handler.to_string(),
                    version: run.version.to_string(),
                    attempt: run.attempt,
                    outcome: run.outcome.label().to_owned(),
                    duration_us: run.duration.as_micros() as u64,
                    error: run.outcome.error(),
                })
                .collect(),
            processed_at: now.to_owned(),
        }
    }
}

/// A webhook as the HTTP endpoint puts it on the webhooks topic; the
/// webhook ingester turns it into a `webhook_received` event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRecord {
    /// Becomes the event id: a redelivered webhook is routed once.
    pub id: String,
    pub trigger_id: String,
    #[serde(default)]
    pub project_id: Option<String>,
    /// The request body, as JSON.
    pub body: serde_json::Value,
    pub received_at: String,
}
