//! `POST /api/personas/webhooks/{trigger_id}`: HMAC-SHA256 in
//! `x-hub-signature-256` (`sha256=<hex>`, GitHub's form), checked in
//! constant time against the trigger's secret. Unknown trigger 404,
//! disabled 403, missing or wrong signature 401: nothing is published.
//!
//! A good webhook becomes a `webhook_received` event with the original
//! bus's payload `{trigger_id, headers, body}`, and beside those
//! `webhook_id` (the event id) and `received_at`. With Kafka as the
//! source it goes to the webhooks topic (the webhook ingester routes it);
//! otherwise, or if Kafka does not take it, it is stored here directly
//! under the same id, so it is never routed twice.

use super::{Api, ApiError, blocking};
use crate::kafka::wire::WebhookRecord;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use std::time::Duration;

/// Request headers worth keeping in the event (never credentials).
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "x-github-event",
    "x-github-delivery",
    "x-request-id",
];

pub async fn receive(
    State(api): State<Api>,
    Path(trigger_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let http = &api.bus.config().http;
    let Some(trigger) = http.webhooks.get(&trigger_id) else {
        return Err(ApiError::not_found(format!(
            "no webhook trigger {trigger_id:?}"
        )));
    };
    if !trigger.enabled {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("webhook trigger {trigger_id:?} is disabled"),
        ));
    }
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "missing x-hub-signature-256".into(),
            )
        })?;
    crate::signature::verify(&trigger.secret, &body, signature)
        .map_err(|why| ApiError(StatusCode::UNAUTHORIZED, why.into()))?;

    // The body as JSON when it is JSON, else as text.
    let body_value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    let kept: serde_json::Map<String, serde_json::Value> = KEPT_HEADERS
        .iter()
        .filter_map(|h| {
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.into()))
        })
        .collect();
    let record = WebhookRecord {
        id: format!("wh_{}", ulid::Ulid::new()),
        trigger_id: trigger_id.clone(),
        project_id: trigger.project_id.clone(),
        headers: kept,
        body: body_value,
        received_at: crate::event::now_rfc3339(),
    };
    let id = record.id.clone();
    let value = serde_json::to_vec(&record).map_err(ApiError::internal)?;

    let mut via = "sqlite";
    if let Some(producer) = &api.webhook_producer
        && api.bus.source().kafka_active()
    {
        let topic = &api.bus.config().kafka.topics.webhooks.name;
        let sent = producer
            .send(
                rdkafka::producer::FutureRecord::to(topic)
                    .key(&trigger_id)
                    .payload(&value),
                Duration::from_secs(5),
            )
            .await;
        match sent {
            Ok(_) => via = "kafka",
            Err((e, _)) => tracing::warn!(error = %e, "webhook not taken by Kafka; stored locally"),
        }
    }
    if via == "sqlite" {
        let bus = api.bus.clone();
        let limits = bus.config().limits.event_limits();
        blocking(move || {
            let event = crate::source::webhooks::to_event(Some(&value), limits)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            bus.store().insert_new(&[event])?;
            bus.published_elsewhere(1);
            Ok(())
        })
        .await?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "ok": true, "event_id": id, "via": via })),
    ))
}
