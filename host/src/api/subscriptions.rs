//! Subscriptions CRUD (`/api/personas/events/subscriptions`). Changes take
//! effect at once: the matcher is rebuilt after each.

use super::{Api, ApiError, blocking};
use crate::store::NewSubscription;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    persona_id: Option<String>,
    event_type: Option<String>,
    /// A plain string (exact or `prefix*`) or the original JSON object.
    #[serde(default)]
    source_filter: Option<serde_json::Value>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

fn parse(body: &[u8]) -> Result<NewSubscription, ApiError> {
    let b: Body = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid subscription: {e}")))?;
    let required = |v: Option<String>, field: &str| {
        v.filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ApiError::bad_request(format!("`{field}` is required")))
    };
    Ok(NewSubscription {
        persona_id: required(b.persona_id, "persona_id")?,
        event_type: required(b.event_type, "event_type")?,
        source_filter: match b.source_filter {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        },
        project_id: b.project_id,
        enabled: b.enabled.unwrap_or(true),
    })
}

pub async fn list(State(api): State<Api>) -> Result<Json<serde_json::Value>, ApiError> {
    let bus = api.bus.clone();
    let subs = blocking(move || Ok(bus.store().subscriptions()?)).await?;
    Ok(Json(serde_json::json!({ "subscriptions": subs })))
}

pub async fn create(
    State(api): State<Api>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let new = parse(&body)?;
    let bus = api.bus.clone();
    let sub = blocking(move || {
        let sub = bus.store().create_subscription(&new)?;
        bus.registry().refresh_subscriptions()?;
        Ok(sub)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "subscription": sub })),
    ))
}

pub async fn update(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let new = parse(&body)?;
    let bus = api.bus.clone();
    let sub = blocking(move || {
        let sub = bus.store().update_subscription(&id, &new)?;
        bus.registry().refresh_subscriptions()?;
        Ok(sub)
    })
    .await?;
    Ok(Json(serde_json::json!({ "subscription": sub })))
}

pub async fn delete(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bus = api.bus.clone();
    blocking(move || {
        bus.store().delete_subscription(&id)?;
        bus.registry().refresh_subscriptions()?;
        Ok(())
    })
    .await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}
