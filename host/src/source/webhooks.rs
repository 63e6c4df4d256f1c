//! The webhook ingester (group `vibeman-webhook-ingester`, shared by all
//! devices so each webhook is routed once): validates records on the
//! webhooks topic and routes each as a `webhook_received` event.
//!
//! The event takes the webhook's id, so a webhook redelivered after a crash
//! is stored once. Records that are not webhooks are dead-lettered (listed
//! by `persona-bus dlq list` with handler `(decode)`, and copied to the dlq
//! topic by nobody else: the raw record stays on the webhooks topic).

use crate::context::HostContext;
use crate::event::{Event, EventError, NewEvent};
use crate::kafka::group::{self, GroupWork, Record};
use crate::kafka::wire::WebhookRecord;
use crate::supervisor::{StartError, Supervisor};
use std::sync::Arc;

/// The event type webhooks are routed as.
pub const WEBHOOK_RECEIVED: &str = "webhook_received";

/// The webhook ingester: its own group over the webhooks topic, each
/// record into an event.
pub struct WebhookIngester;

impl super::Source for WebhookIngester {
    fn start(
        self: Box<Self>,
        cx: &super::SourceContext,
        tasks: &Supervisor,
    ) -> Result<(), StartError> {
        let inner = cx.ctx.clone();
        let k = &inner.config.kafka;
        let group = k.webhook_group.clone();
        let consumer = group::subscribe(k, &group, &[&k.topics.webhooks.name], k.prefetch_kb / 4)
            .map_err(|e| StartError::new("webhook ingester", e))?;
        let stop = tasks.token().clone();
        tasks.spawn("kafka-webhooks", move || {
            group::run_loop(&group, consumer, 1_000, &stop, Route(inner))
        })
    }
}

/// Why a record on the webhooks topic was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("record has no value")]
    Empty,
    #[error("not a webhook record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`{0}` must not be empty")]
    Missing(&'static str),
    #[error(transparent)]
    Event(#[from] EventError),
}

/// The event a webhook record becomes.
pub fn to_event(
    value: Option<&[u8]>,
    limits: crate::event::EventLimits,
) -> Result<Event, WebhookError> {
    let w: WebhookRecord = serde_json::from_slice(value.ok_or(WebhookError::Empty)?)?;
    if w.id.trim().is_empty() || w.id.len() > 128 {
        return Err(WebhookError::Missing("id"));
    }
    if w.trigger_id.trim().is_empty() {
        return Err(WebhookError::Missing("trigger_id"));
    }
    let mut event = NewEvent {
        event_type: WEBHOOK_RECEIVED.into(),
        source_type: "webhook".into(),
        source_id: Some(w.trigger_id.clone()),
        project_id: w.project_id,
        // The original bus's fields, then ours beside them.
        payload: Some(serde_json::json!({
            "trigger_id": w.trigger_id,
            "headers": w.headers,
            "body": w.body,
            "webhook_id": w.id,
            "received_at": w.received_at,
        })),
        ..Default::default()
    }
    .validate(limits, 0)?;
    event.id = w.id;
    Ok(event)
}

struct Route(Arc<HostContext>);

impl GroupWork for Route {
    fn handle(&mut self, records: &[Record]) -> Result<(), String> {
        route(&self.0, records)
    }
}

fn route(inner: &HostContext, records: &[Record]) -> Result<(), String> {
    let limits = inner.config.limits.event_limits();
    let mut events = Vec::new();
    for r in records {
        match to_event(r.value.as_deref(), limits) {
            Ok(e) => events.push(e),
            Err(e) => {
                tracing::warn!(at = %r.at, error = %e, "webhook record refused");
                inner
                    .store
                    .record_undecodable(&r.at.to_string(), &e.to_string(), &r.headers)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let new = inner.store.insert_new(&events).map_err(|e| e.to_string())?;
    if new > 0 {
        // They are in the outbox: produce them to the events topic now.
        inner.outbox_wakeup.ring();
        inner.wakeup.ring();
    }
    Ok(())
}
