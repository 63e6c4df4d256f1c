//! `GET/POST /api/personas/events` and the server-sent event stream.

use super::{Api, ApiError, blocking};
use crate::bus::Notice;
use crate::event::{EventStatus, NewEvent};
use crate::store::EventFilter;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::Deserialize;
use std::time::Duration;
use tokio_stream::StreamExt;

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    event_type: Option<String>,
    project_id: Option<String>,
    status: Option<String>,
}

/// `{events, pendingCount, total}` as the original, plus `kafka` (the
/// plan's health check in the GET response).
pub async fn list(
    State(api): State<Api>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(EventStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!("status {s:?} is not one of pending, processing, completed, failed, skipped, dead_letter"))
        })?),
    };
    let filter = EventFilter {
        event_type: q.event_type.filter(|t| !t.is_empty()),
        project_id: q.project_id.filter(|p| !p.is_empty()),
        status,
        limit: q.limit.unwrap_or(50).clamp(1, 1000),
    };
    let bus = api.bus.clone();
    let page = blocking(move || Ok(bus.store().list_events(&filter)?)).await?;
    let mut value = serde_json::to_value(&page).map_err(ApiError::internal)?;
    value["kafka"] = kafka_health(&api).await;
    Ok(Json(value))
}

/// One event with every handler run (outcome, duration, error) and its
/// dead letters: the dashboard's detail view.
pub async fn show(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bus = api.bus.clone();
    blocking(move || {
        let store = bus.store();
        let event = store.event(&id)?;
        let runs = store.executions(&id)?;
        let dead_letters = store.dead_letters_of(&id)?;
        Ok(Json(serde_json::json!({
            "event": event,
            "runs": runs,
            "dead_letters": dead_letters,
        })))
    })
    .await
}

/// Kafka's health: with Kafka as the source, the breaker's view; in dual
/// write (plan phase 1), where nothing consumes, a connectivity check and
/// the outbox: unhealthy while no broker answers or events wait for it.
pub async fn kafka_health(api: &Api) -> serde_json::Value {
    let k = &api.bus.config().kafka;
    let s = api.bus.source().status();
    let mut health = serde_json::json!({
        "enabled": k.enabled,
        "dual_write": k.dual_write,
        "source": s.active,
        "breaker": s.breaker,
        "healthy": s.healthy,
    });
    if k.enabled && !k.consuming() {
        let bus = api.bus.clone();
        let checked = blocking(move || {
            let reach = bus.source().reachable(&bus.config().kafka);
            let outbox = bus.store().outbox_depth().map_err(ApiError::from)?;
            Ok((reach, outbox))
        })
        .await;
        let (healthy, reachable, error, pending, oldest) = match checked {
            Ok((reach, (pending, oldest))) => {
                // A backlog that the relay cannot move is unhealthy too.
                let stuck = oldest > std::time::Duration::from_secs(60);
                (
                    reach.is_ok() && !stuck,
                    reach.is_ok(),
                    reach.err(),
                    pending,
                    oldest,
                )
            }
            Err(e) => (false, false, Some(e.1), 0, std::time::Duration::ZERO),
        };
        health["healthy"] = healthy.into();
        health["reachable"] = reachable.into();
        health["error"] = error.into();
        health["outbox_pending"] = pending.into();
        health["outbox_oldest_s"] = oldest.as_secs().into();
    }
    health
}

/// 201 `{ok, event_id}`; 400 naming the missing or bad field. A W3C
/// `traceparent` request header makes the event part of the caller's trace.
pub async fn publish(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let mut new: NewEvent = serde_json::from_slice(&body).map_err(|e| {
        let message = e.to_string();
        // serde says "missing field `event_type` at line 1 column 30".
        match message.split('`').nth(1) {
            Some(field) if message.starts_with("missing field") => {
                ApiError::bad_request(format!("`{field}` is required"))
            }
            _ if e.is_syntax() || e.is_eof() => {
                ApiError::bad_request(format!("body is not valid JSON: {message}"))
            }
            _ => ApiError::bad_request(format!("invalid event: {message}")),
        }
    })?;
    let tp = crate::traces::TRACEPARENT;
    if let Some(v) = headers.get(tp).and_then(|v| v.to_str().ok())
        && !new.headers.iter().any(|(k, _)| k == tp)
    {
        new.headers.push((tp.into(), v.to_owned()));
    }
    let event = api.ingest.publish(new).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "ok": true, "event_id": event.id })),
    ))
}

/// Server-sent events: `init` (the latest 50 events), then `published`
/// and `status` as they happen, a heartbeat every 15 s, and `lagged` when
/// this client fell behind (it should reload).
pub async fn stream(
    State(api): State<Api>,
) -> Result<
    Sse<impl tokio_stream::Stream<Item = Result<SseEvent, std::convert::Infallible>>>,
    ApiError,
> {
    let notices = api.bus.subscribe();
    let bus = api.bus.clone();
    let first = blocking(move || {
        Ok(bus.store().list_events(&EventFilter {
            limit: 50,
            ..Default::default()
        })?)
    })
    .await?;
    let init = SseEvent::default()
        .event("init")
        .json_data(&first)
        .map_err(ApiError::internal)?;
    let live = tokio_stream::wrappers::BroadcastStream::new(notices).map(|n| {
        Ok(match n {
            Ok(notice @ Notice::Published { .. }) => SseEvent::default()
                .event("published")
                .json_data(&notice)
                .unwrap_or_default(),
            Ok(notice @ Notice::Resolved { .. }) => SseEvent::default()
                .event("status")
                .json_data(&notice)
                .unwrap_or_default(),
            Err(lagged) => SseEvent::default().event("lagged").data(lagged.to_string()),
        })
    });
    let stream = tokio_stream::once(Ok(init)).chain(live);
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}
