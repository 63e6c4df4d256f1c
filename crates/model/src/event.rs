//! Events: what is published, what is stored, and how input is validated.
//!
//! Validation happens once, at the edge (CLI, HTTP, handler `publish`), so
//! that everything past [`NewEvent::validate`] can trust an event: its payload
//! parses as JSON, its sizes are within limits, its names are not empty.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Payload schema version written when a publisher does not say.
pub const DEFAULT_SCHEMA_VERSION: u32 = 1;
/// Project used when a publisher does not name one (as in the original table).
pub const DEFAULT_PROJECT: &str = "default";
/// Longest event type, source type, id or project accepted.
const MAX_NAME_LEN: usize = 200;

/// An event as a publisher submits it. Unknown fields are refused so that a
/// typo (`evnet_type`) is an error rather than a silently dropped field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    pub event_type: String,
    pub source_type: String,
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default)]
    pub target_persona_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    /// Any JSON value. Over the CLI it arrives as text and is parsed.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub schema_version: Option<u32>,
}

/// Why an event was refused. Each message names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("`{field}` is required and must not be empty")]
    Missing { field: &'static str },
    #[error("`{field}` is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong { field: &'static str, len: usize },
    #[error("`event_type` {0:?} may contain only letters, digits and `_ - . :`")]
    BadEventType(String),
    #[error("payload is not valid JSON: {0}")]
    BadPayload(String),
    #[error("payload is {size} bytes; the limit is {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("event is not valid JSON: {0}")]
    BadJson(String),
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Why a payload or a record was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "payload of `{event_type}` does not match schema version {version} ({origin}) at {path}: {rule}"
    )]
    Invalid {
        event_type: String,
        version: u32,
        origin: String,
        path: String,
        rule: String,
    },
    #[error(
        "no schema for `{event_type}` version {version} ({origin}), and [schemas] strict refuses unknown event types"
    )]
    Unknown {
        event_type: String,
        version: u32,
        origin: String,
    },
    #[error("cannot check the payload of `{event_type}` now: {reason}; retry later")]
    Unavailable { event_type: String, reason: String },
    #[error("schema {origin} cannot be used: {reason}")]
    BadSchema { origin: String, reason: String },
    #[error("record framed with schema id {id}: {reason}")]
    Frame { id: u32, reason: String },
}

impl SchemaError {
    /// An outage (retry later), not a verdict on the payload.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Publication limits, from the host configuration.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    pub max_payload_bytes: usize,
}

impl NewEvent {
    /// Parses a whole event from JSON (the `--from-json` and HTTP input),
    /// refusing unknown fields.
    pub fn from_json(text: &str) -> Result<Self, EventError> {
        serde_json::from_str(text).map_err(|e| EventError::BadJson(e.to_string()))
    }

    /// Parses payload text (CLI `--payload`, handler `publish`) into JSON.
    pub fn parse_payload(text: &str) -> Result<serde_json::Value, EventError> {
        serde_json::from_str(text).map_err(|e| EventError::BadPayload(e.to_string()))
    }

    /// Checks every field and turns the event into the row the store inserts.
    /// `chain_depth` is 0 for events from outside; the runtime passes the
    /// parent's depth + 1 for events a handler publishes.
    pub fn validate(self, limits: EventLimits, chain_depth: u32) -> Result<Event, EventError> {
        let event_type = required("event_type", self.event_type)?;
        if !is_valid_event_type(&event_type) {
            return Err(EventError::BadEventType(event_type));
        }
        let source_type = required("source_type", self.source_type)?;
        let source_id = optional("source_id", self.source_id)?;
        let target_persona_id = optional("target_persona_id", self.target_persona_id)?;
        let project_id =
            optional("project_id", self.project_id)?.unwrap_or_else(|| DEFAULT_PROJECT.to_owned());
        let payload = match self.payload {
            None => "{}".to_owned(),
            Some(value) => {
                serde_json::to_string(&value).map_err(|e| EventError::BadPayload(e.to_string()))?
            }
        };
        if payload.len() > limits.max_payload_bytes {
            return Err(EventError::PayloadTooLarge {
                size: payload.len(),
                limit: limits.max_payload_bytes,
            });
        }
        Ok(Event {
            id: new_event_id(),
            project_id,
            event_type,
            source_type,
            source_id,
            target_persona_id,
            payload,
            headers: self.headers,
            schema_version: self.schema_version.unwrap_or(DEFAULT_SCHEMA_VERSION),
            chain_depth,
            created_at: now_rfc3339(),
            status: EventStatus::Pending,
            retry_count: 0,
            error_message: None,
            processed_at: None,
        })
    }
}

/// Letters, digits and `_ - . :` only (what the matcher and the topics
/// rely on); the caller checks emptiness.
pub fn is_valid_event_type(event_type: &str) -> bool {
    event_type
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn required(field: &'static str, value: String) -> Result<String, EventError> {
    // Usually nothing to trim: keep the caller's string (no new allocation
    // on every publish).
    let value = match value.trim() {
        t if t.len() == value.len() => value,
        t => t.to_owned(),
    };
    if value.is_empty() {
        return Err(EventError::Missing { field });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(EventError::TooLong {
            field,
            len: value.len(),
        });
    }
    Ok(value)
}

fn optional(field: &'static str, value: Option<String>) -> Result<Option<String>, EventError> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => required(field, v).map(Some),
    }
}

/// A stored event: a row of `persona_events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: String,
    pub project_id: String,
    pub event_type: String,
    pub source_type: String,
    pub source_id: Option<String>,
    pub target_persona_id: Option<String>,
    /// JSON text, guaranteed to parse.
    pub payload: String,
    pub headers: Vec<(String, String)>,
    pub schema_version: u32,
    pub chain_depth: u32,
    pub created_at: String,
    pub status: EventStatus,
    /// Delivery attempts that ended in a retry.
    pub retry_count: u32,
    pub error_message: Option<String>,
    pub processed_at: Option<String>,
}

/// Status of an event row. The first five are the original bus's; the rest
/// were added by its Rust port and kept for compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Pending,
    Processing,
    /// Every matching handler completed.
    Completed,
    /// The host could not process the event at all (see `error_message`).
    Failed,
    /// No handler matched.
    Skipped,
    Delivered,
    /// At least one matching handler gave up on it (see the dead letters).
    DeadLetter,
    Discarded,
}

impl EventStatus {
    pub const ALL: [EventStatus; 8] = [
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
        Self::Skipped,
        Self::Delivered,
        Self::DeadLetter,
        Self::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Delivered => "delivered",
            Self::DeadLetter => "dead_letter",
            Self::Discarded => "discarded",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether processing of the event is over.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Processing)
    }
}

impl std::fmt::Display for EventStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A new unique, time-sortable event id (ULID).
pub fn new_event_id() -> String {
    ulid::Ulid::new().to_string()
}

/// Now, as RFC 3339 UTC with milliseconds (the `created_at` format).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Now, in milliseconds since the Unix epoch (scheduling columns).
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: EventLimits = EventLimits {
        max_payload_bytes: 64,
    };

    fn minimal() -> NewEvent {
        NewEvent {
            event_type: "task_created".into(),
            source_type: "system".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_project_payload_and_schema() {
        let ev = minimal().validate(LIMITS, 0).unwrap();
        assert_eq!(ev.project_id, DEFAULT_PROJECT);
        assert_eq!(ev.payload, "{}");
        assert_eq!(ev.schema_version, DEFAULT_SCHEMA_VERSION);
        assert_eq!(ev.status, EventStatus::Pending);
        assert_eq!(ev.id.len(), 26);
    }

    #[test]
    fn names_are_trimmed_and_blank_optional_ones_are_absent() {
        let ev = NewEvent {
            event_type: " task_created\t".into(),
            source_type: "system".into(),
            project_id: Some("  alpha ".into()),
            source_id: Some("   ".into()),
            target_persona_id: Some("persona-1".into()),
            ..Default::default()
        }
        .validate(LIMITS, 0)
        .unwrap();
        assert_eq!(ev.event_type, "task_created");
        assert_eq!(ev.project_id, "alpha");
        assert_eq!(ev.source_id, None);
        assert_eq!(ev.target_persona_id.as_deref(), Some("persona-1"));
    }

    #[test]
    fn missing_and_bad_fields_name_the_field() {
        let err = NewEvent {
            event_type: " ".into(),
            ..minimal()
        }
        .validate(LIMITS, 0)
        .unwrap_err();
        assert_eq!(
            err,
            EventError::Missing {
                field: "event_type"
            }
        );
        let err = NewEvent {
            event_type: "a b".into(),
            ..minimal()
        }
        .validate(LIMITS, 0)
        .unwrap_err();
        assert!(matches!(err, EventError::BadEventType(_)));
        let err = NewEvent {
            source_type: String::new(),
            ..minimal()
        }
        .validate(LIMITS, 0)
        .unwrap_err();
        assert_eq!(
            err,
            EventError::Missing {
                field: "source_type"
            }
        );
    }

    #[test]
    fn oversized_payload_is_refused() {
        let payload = Some(serde_json::Value::String("x".repeat(100)));
        let err = NewEvent {
            payload,
            ..minimal()
        }
        .validate(LIMITS, 0)
        .unwrap_err();
        assert!(
            matches!(err, EventError::PayloadTooLarge { limit: 64, .. }),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_payload_text_are_refused() {
        let err =
            NewEvent::from_json(r#"{"event_type":"a","source_type":"b","evil":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `evil`"), "{err}");
        assert!(matches!(
            NewEvent::parse_payload("{not json"),
            Err(EventError::BadPayload(_))
        ));
    }

    #[test]
    fn status_round_trips() {
        for s in EventStatus::ALL {
            assert_eq!(EventStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(EventStatus::parse("nope"), None);
    }
}
