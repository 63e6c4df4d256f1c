//! How an event travels on Kafka: a JSON value (the event, with its payload
//! as JSON rather than text) and headers that let consumers route and
//! deduplicate without parsing it.

use crate::event::Event;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The record value. The payload is parsed JSON (`serde_json::Value`) for
/// code that looks into it, or its text as written ([`RawPayload`]) on the
/// paths that only carry it: the consumer and the outbox, where building
/// a tree of the payload and printing it again cost more than the rest of
/// the record, and grows with the payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireEvent<P = serde_json::Value> {
    pub id: String,
    pub project_id: String,
    pub event_type: String,
    pub source_type: String,
    pub source_id: Option<String>,
    pub target_persona_id: Option<String>,
    pub payload: P,
    pub headers: Vec<(String, String)>,
    pub schema_version: u32,
    pub chain_depth: u32,
    pub created_at: String,
}

/// A payload's JSON text, checked to be JSON but not parsed into a tree.
pub type RawPayload = Box<serde_json::value::RawValue>;

/// What a payload becomes in a stored event: its JSON text.
pub trait PayloadText {
    fn into_text(self) -> String;
}

impl PayloadText for serde_json::Value {
    fn into_text(self) -> String {
        self.to_string()
    }
}

impl PayloadText for RawPayload {
    /// The text as the producer wrote it (no copy): numbers keep every
    /// digit, where a parsed tree rounds integers past 64 bits.
    fn into_text(self) -> String {
        String::from(Box::<str>::from(self))
    }
}

impl WireEvent {
    pub fn from_event(e: &Event) -> Self {
        // Stored payloads always parse (validated at publish).
        WireEvent::with_payload(e, serde_json::from_str(&e.payload).unwrap_or_default())
    }
}

impl WireEvent<RawPayload> {
    /// The record of a stored event, its payload carried as stored text.
    pub fn raw_from_event(e: &Event) -> Self {
        // Stored payloads always parse (validated at publish).
        let payload = serde_json::value::RawValue::from_string(e.payload.clone())
            .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
        WireEvent::with_payload(e, payload)
    }
}

impl<P> WireEvent<P> {
    fn with_payload(e: &Event, payload: P) -> Self {
        Self {
            id: e.id.clone(),
            project_id: e.project_id.clone(),
            event_type: e.event_type.clone(),
            source_type: e.source_type.clone(),
            source_id: e.source_id.clone(),
            target_persona_id: e.target_persona_id.clone(),
            payload,
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
            let wire: WireEvent<RawPayload> =
                serde_json::from_slice(value.ok_or(DecodeError::Empty).map_err(bad)?)
                    .map_err(|e| bad(DecodeError::Json(e)))?;
            // Only checking against a schema needs the payload parsed.
            if validate && schemas.enabled() {
                let payload: serde_json::Value = serde_json::from_str(wire.payload.get())
                    .map_err(|e| bad(DecodeError::Json(e)))?;
                schemas
                    .check_value(&wire.event_type, wire.schema_version, &payload)
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

impl<P: PayloadText> WireEvent<P> {
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
            payload: self.payload.into_text(),
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
}

impl WireEvent<RawPayload> {
    /// Decodes a record value.
    pub fn decode(value: Option<&[u8]>) -> Result<Event, DecodeError> {
        let value = value.ok_or(DecodeError::Empty)?;
        serde_json::from_slice::<Self>(value)?.into_event()
    }
}

/// A record of the executions topic (the plan's "execution lifecycle
/// events"): one per handler run (`kind = "run"`, with the run's handler,
/// version, attempt, outcome, duration and error), or one `kind = "event"`
/// for a delivery that ran no handler (skipped, or every subscriber had
/// finished it before). Each carries the event's status after this
/// delivery (`status`, `error`: `pending` means a retry is scheduled),
/// which other devices' audit loggers apply to their archived copy. Its
/// text borrows from the outcome it is written from (off the committer):
/// read back, it owns its text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionRecord<'a> {
    /// `run` or `event` (records from hosts before runs had their own
    /// records read as `event`).
    #[serde(default = "event_kind")]
    pub kind: Cow<'a, str>,
    pub event_id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    pub project_id: Cow<'a, str>,
    pub device: Cow<'a, str>,
    /// The event's status after this delivery (`pending` = retry scheduled).
    pub status: Cow<'a, str>,
    /// The event's error after this delivery, if any.
    pub error: Option<Cow<'a, str>>,
    /// The run, for `kind = "run"` (plain fields, not a flattened struct:
    /// serde's flatten goes through a map, at a cost per record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// `completed`, `retry`, `rejected`, or how the runtime stopped it
    /// (`trap`, `timeout`, `out_of_memory`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Cow<'a, str>>,
    /// What follows for this handler: `done`, `retry` or `dead_letter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_error: Option<String>,
    pub processed_at: Cow<'a, str>,
}

fn event_kind() -> Cow<'static, str> {
    Cow::Borrowed("event")
}

impl<'a> ExecutionRecord<'a> {
    /// The records of one delivery: one per run, or one for the event.
    pub fn of_resolution(
        r: &'a crate::outcome::Resolution,
        device: &'a str,
        now: &'a str,
    ) -> Vec<Self> {
        let (status, error) = match &r.next {
            crate::outcome::Next::Final { status, error } => (status.as_str(), error.as_deref()),
            crate::outcome::Next::Retry { error, .. }
            | crate::outcome::Next::Wait { reason: error, .. } => ("pending", Some(error.as_str())),
        };
        let event = Self {
            kind: Cow::Borrowed("event"),
            event_id: r.event.id.as_str().into(),
            event_type: r.event.event_type.as_str().into(),
            project_id: r.event.project_id.as_str().into(),
            device: device.into(),
            status: status.into(),
            error: error.map(Cow::Borrowed),
            handler: None,
            version: None,
            attempt: None,
            outcome: None,
            verdict: None,
            started_at: None,
            duration_us: None,
            run_error: None,
            processed_at: now.into(),
        };
        if r.runs.is_empty() {
            return vec![event];
        }
        r.runs
            .iter()
            .map(|run| Self {
                kind: Cow::Borrowed("run"),
                handler: Some((*run.handler).into()),
                version: Some((*run.version).into()),
                attempt: Some(run.attempt),
                outcome: Some(run.outcome.label().into()),
                verdict: Some(
                    match run.verdict {
                        crate::outcome::Verdict::Done => "done",
                        crate::outcome::Verdict::RetryAt(_) => "retry",
                        crate::outcome::Verdict::DeadLetter { .. } => "dead_letter",
                    }
                    .into(),
                ),
                started_at: Some(run.started_at.as_str().into()),
                duration_us: Some(run.duration.as_micros() as u64),
                run_error: run.outcome.error(),
                ..event.clone()
            })
            .collect()
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
    /// The request headers worth keeping (never credentials), by name.
    #[serde(default)]
    pub headers: serde_json::Map<String, serde_json::Value>,
    /// The request body, as JSON (a body that is not JSON: its text).
    pub body: serde_json::Value,
    pub received_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Effects, Next, Resolution, Run, RunOutcome, Verdict};
    use std::sync::Arc;
    use std::time::Duration;

    fn record(payload: &str) -> Vec<u8> {
        format!(
            r#"{{"id":"e-1","project_id":"p","event_type":"order_placed","source_type":"system","source_id":null,"target_persona_id":null,"payload":{payload},"headers":[["k","v"]],"schema_version":1,"chain_depth":0,"created_at":"2026-11-29T00:00:00Z"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_consumed_payload_is_stored_as_the_producer_wrote_it() {
        // Past 64 bits: a parsed tree would have rounded it to a float.
        let big = r#"{"amount":123456789012345678901234567890,"note":"caf\u00e9"}"#;
        let e = WireEvent::decode(Some(&record(big))).expect("decodes");
        assert_eq!(e.payload, big);
        assert_eq!(e.headers, vec![("k".to_owned(), "v".to_owned())]);
        // The stored text is what a handler and the outbox see again.
        let again = serde_json::to_vec(&WireEvent::raw_from_event(&e)).unwrap();
        assert_eq!(WireEvent::decode(Some(&again)).unwrap(), e);
    }

    #[test]
    fn a_record_whose_payload_is_not_json_is_refused() {
        for bad in [
            &b"{\"id\":\"e-1\"}"[..],
            &record("{\"n\":")[..],
            &record("nope")[..],
        ] {
            assert!(
                WireEvent::decode(Some(bad)).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(WireEvent::decode(None), Err(DecodeError::Empty)));
    }

    #[test]
    fn an_execution_record_written_from_an_outcome_reads_back_the_same() {
        let event = WireEvent::decode(Some(&record(r#"{"n":1}"#))).unwrap();
        let run = |handler: &str, outcome| Run {
            handler: Arc::from(handler),
            version: Arc::from("1.0.0"),
            attempt: 2,
            started_at: "2026-11-29T00:00:00Z".into(),
            duration: Duration::from_micros(42),
            outcome,
            verdict: Verdict::Done,
            effects: Effects::default(),
            note: None,
            call_events: 1,
        };
        let resolution = Resolution {
            event,
            runs: vec![
                run("audit", RunOutcome::Completed),
                run("mailer", RunOutcome::Retry("smtp down".into())),
            ],
            next: Next::Retry {
                at_ms: 1,
                error: "mailer: smtp down".into(),
            },
        };
        let records =
            ExecutionRecord::of_resolution(&resolution, "device-a", "2026-11-29T00:00:01Z");
        let back: Vec<ExecutionRecord<'static>> = records
            .iter()
            .map(|r| serde_json::from_slice(&serde_json::to_vec(r).unwrap()).unwrap())
            .collect();
        for b in &back {
            assert_eq!(
                (
                    &*b.kind,
                    &*b.event_id,
                    &*b.device,
                    &*b.status,
                    b.error.as_deref()
                ),
                (
                    "run",
                    "e-1",
                    "device-a",
                    "pending",
                    Some("mailer: smtp down")
                )
            );
        }
        let runs: Vec<_> = back
            .iter()
            .map(|b| {
                (
                    b.handler.as_deref().unwrap(),
                    b.outcome.as_deref().unwrap(),
                    b.attempt.unwrap(),
                    b.duration_us.unwrap(),
                    b.run_error.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            runs,
            [
                ("audit", "completed", 2, 42, None),
                ("mailer", "retry", 2, 42, Some("retry: smtp down")),
            ]
        );
        // A delivery that ran nothing is one record for the event, and a
        // record from before runs had records reads as one.
        let skipped = Resolution {
            runs: Vec::new(),
            next: Next::Final {
                status: crate::event::EventStatus::Skipped,
                error: None,
            },
            ..resolution.clone()
        };
        let records = ExecutionRecord::of_resolution(&skipped, "device-a", "now");
        assert_eq!(records.len(), 1);
        assert_eq!(
            (&*records[0].kind, records[0].handler.is_none()),
            ("event", true)
        );
        let old: ExecutionRecord<'static> = serde_json::from_str(
            r#"{"event_id":"e","event_type":"t","project_id":"p","device":"d","status":"completed","error":null,"runs":[],"processed_at":"now"}"#,
        )
        .unwrap();
        assert_eq!((&*old.kind, &*old.status), ("event", "completed"));
    }
}
