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

/// The record headers of the plan (phase 4 "event versioning headers").
pub fn headers(e: &Event, origin_device: &str) -> Vec<(&'static str, String)> {
    vec![
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
    ]
}
