//! What operators look at: `/health`, `/ready`, `/metrics`, handlers,
//! dead letters, and the dashboard page.

use super::events::kafka_health;
use super::{Api, ApiError, blocking};
use crate::Bus;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use serde::Deserialize;
use std::fmt::Write;

/// The dashboard: one page, no external assets (embedded at build time).
pub async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// Liveness: the process answers.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: SQLite takes writes, handlers are loaded, and events are
/// being handled from the configured source. With `KAFKA_REQUIRED`, an
/// open breaker, or in dual write a broker that does not answer, is not
/// ready; without it the latter is `degraded`. 200 when ready, else 503.
pub async fn ready(State(api): State<Api>) -> impl IntoResponse {
    let bus = api.bus.clone();
    let writable = blocking(move || Ok(bus.store().check_writable()?)).await;
    let snapshot = api.bus.registry().snapshot();
    let source = api.bus.source().status();
    // Commits or publishes SQLite refused (a full disk), or too little
    // room left for new events: say which, with SQLite's own words.
    let refusals = api.bus.store_refusals();
    // Kafka down in dual write (phase 1) degrades the host (events wait in
    // the outbox); with KAFKA_REQUIRED it is not ready.
    let kafka = kafka_health(&api).await;
    let kafka_ok = kafka["healthy"].as_bool().unwrap_or(true);
    let ready = writable.is_ok()
        && source.healthy
        && refusals.is_empty()
        && (kafka_ok || !api.bus.config().kafka.required);
    let body = serde_json::json!({
        "ready": ready,
        "degraded": !kafka_ok,
        "sqlite_writable": writable.is_ok() && refusals.is_empty(),
        "sqlite_error": writable.err().map(|e| e.1).or_else(|| {
            refusals.first().map(|r| format!("{} refused since {}: {}", r.what, r.since, r.reason))
        }),
        "store_refusals": refusals,
        "handlers_loaded": snapshot.handlers.len(),
        "handlers_refused": snapshot.failures.len(),
        "kafka": kafka,
        "breaker": source,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Prometheus text format.
pub async fn metrics(State(api): State<Api>) -> Result<impl IntoResponse, ApiError> {
    let bus = api.bus.clone();
    let text = blocking(move || metrics_text(&bus)).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// The dashboard's recent past (`history`): samples of its charted series.
pub async fn history(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "every_ms": api.history.every.as_millis() as u64,
        "samples": api.history.samples(),
    }))
}

/// What `/metrics` answers: the host's counters and the figures read now
/// (dead letters, the outbox, the breaker, consumer lag).
pub fn metrics_text(bus: &Bus) -> Result<String, ApiError> {
    {
        let mut extra = String::new();
        let dead = bus.store().dead_letter_count()?;
        let _ = writeln!(
            extra,
            "# HELP persona_bus_dead_letters Dead letters not yet retried.\n# TYPE persona_bus_dead_letters gauge\npersona_bus_dead_letters {dead}"
        );
        let pending = bus.store().unfinished()?;
        let _ = writeln!(
            extra,
            "# HELP persona_bus_events_unfinished Events pending or processing in SQLite.\n# TYPE persona_bus_events_unfinished gauge\npersona_bus_events_unfinished {pending}"
        );
        let reloads = bus.registry().reloads();
        let _ = writeln!(
            extra,
            "# HELP persona_bus_handler_reloads_total Handler folder reloads (the first load included).\n# TYPE persona_bus_handler_reloads_total counter\npersona_bus_handler_reloads_total {reloads}"
        );
        let s = bus.source().status();
        let state = match s.breaker {
            crate::breaker::State::Closed => 0,
            crate::breaker::State::Open => 1,
            crate::breaker::State::HalfOpen => 2,
        };
        let _ = writeln!(
            extra,
            "# HELP persona_bus_breaker_state Circuit breaker: 0 closed, 1 open, 2 half-open.\n# TYPE persona_bus_breaker_state gauge\npersona_bus_breaker_state {state}"
        );
        let [closed, open, half] = bus.source().transition_counts();
        let _ = writeln!(
            extra,
            "# HELP persona_bus_breaker_transitions_total Breaker transitions by destination state.\n# TYPE persona_bus_breaker_transitions_total counter"
        );
        for (to, n) in [("closed", closed), ("open", open), ("half_open", half)] {
            let _ = writeln!(
                extra,
                "persona_bus_breaker_transitions_total{{to=\"{to}\"}} {n}"
            );
        }
        let _ = writeln!(
            extra,
            "# HELP persona_bus_schema_refusals_total Payloads refused by their schema (publish and consume).\n# TYPE persona_bus_schema_refusals_total counter\npersona_bus_schema_refusals_total {}",
            bus.schemas()
                .refused
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        let rollouts = bus.rollouts();
        let shadows = rollouts.shadows.counters();
        let _ = writeln!(
            extra,
            "# HELP persona_bus_shadow_events_total Events run by shadow versions, by whether they agreed with the live version; dropped: never run (the shadow fell behind).\n# TYPE persona_bus_shadow_events_total counter"
        );
        for (result, n) in [
            ("agreed", &shadows.agreed),
            ("differed", &shadows.differed),
            ("dropped", &shadows.dropped),
        ] {
            let _ = writeln!(
                extra,
                "persona_bus_shadow_events_total{{result=\"{result}\"}} {}",
                n.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            extra,
            "# HELP persona_bus_canary_rollbacks_total Canary versions rolled back for erring more than their live version.\n# TYPE persona_bus_canary_rollbacks_total counter\npersona_bus_canary_rollbacks_total {}",
            rollouts
                .canaries
                .rollbacks
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        let snapshot = bus.registry().snapshot();
        let _ = writeln!(
            extra,
            "# HELP persona_bus_handler_candidate Candidate versions loaded beside a live one (1), by role; a rolled-back canary is 0.\n# TYPE persona_bus_handler_candidate gauge"
        );
        for c in snapshot.candidates.values() {
            let serving = !c.rolled_back.load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(
                extra,
                "persona_bus_handler_candidate{{handler=\"{}\",version=\"{}\",role=\"{}\"}} {}",
                crate::metrics::escape(&c.name),
                crate::metrics::escape(&c.version),
                c.rollout_role(),
                u8::from(serving)
            );
        }
        let (outbox, oldest) = bus.store().outbox_depth()?;
        let _ = writeln!(
            extra,
            "# HELP persona_bus_outbox_events Events stored but not yet acknowledged by Kafka.\n# TYPE persona_bus_outbox_events gauge\npersona_bus_outbox_events {outbox}"
        );
        let _ = writeln!(
            extra,
            "# HELP persona_bus_outbox_oldest_age_seconds Age of the oldest event waiting in the outbox (0 when empty).\n# TYPE persona_bus_outbox_oldest_age_seconds gauge\npersona_bus_outbox_oldest_age_seconds {:.3}",
            oldest.as_secs_f64()
        );
        let k = &bus.config().kafka;
        if k.consuming() {
            // The three groups of the plan: event processor, audit logger,
            // webhook ingester.
            let (events, actions) = (
                k.topics.events.name.as_str(),
                k.topics.actions.name.as_str(),
            );
            // The audit logger leaves the partitions this device's processor
            // owns to it (paused), so its lag there counts records it never
            // needs: alert on role!="audit" (deploy/prometheus/alerts.yml).
            let groups = [
                ("processor", k.consumer_group.clone(), vec![events, actions]),
                (
                    "audit",
                    crate::source::archive::group_id(k),
                    vec![events, actions, k.topics.executions.name.as_str()],
                ),
                (
                    "webhooks",
                    k.webhook_group.clone(),
                    vec![k.topics.webhooks.name.as_str()],
                ),
            ];
            // Sampled: a scrape within FRESH_FOR of the last one is served
            // the same figures without asking the broker.
            let _ = writeln!(
                extra,
                "# HELP persona_bus_consumer_lag Records not yet consumed, per group and partition (read from the broker at most every {} s).\n# TYPE persona_bus_consumer_lag gauge",
                crate::kafka::lag::FRESH_FOR.as_secs()
            );
            for (role, group, topics) in &groups {
                let lag = bus.lag().read(
                    k,
                    group,
                    topics,
                    std::time::Duration::from_secs(2),
                    crate::kafka::lag::FRESH_FOR,
                );
                match lag {
                    Ok(view) => {
                        for p in &view.partitions {
                            let _ = writeln!(
                                extra,
                                "persona_bus_consumer_lag{{role=\"{role}\",group=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
                                crate::metrics::escape(&view.group),
                                crate::metrics::escape(&p.topic),
                                p.partition,
                                p.lag
                            );
                        }
                    }
                    Err(e) => tracing::debug!(group, error = %e, "no consumer lag for /metrics"),
                }
            }
        }
        let _ = writeln!(
            extra,
            "# HELP persona_bus_consumer_lag_reads_total Times a group's lag was read from the broker.\n# TYPE persona_bus_consumer_lag_reads_total counter\npersona_bus_consumer_lag_reads_total {}",
            bus.lag().reads()
        );
        Ok(bus.metrics().render(&extra))
    }
}

/// Loaded handlers (version, source, signer, subscriptions, runs and
/// errors), refused manifests, and held handlers.
pub async fn handlers(State(api): State<Api>) -> Json<serde_json::Value> {
    let snapshot = api.bus.registry().snapshot();
    let runs = api.bus.metrics().handler_runs();
    let loaded: Vec<_> = snapshot
        .handlers
        .values()
        .map(|h| {
            let (n, errors) = runs.get(&*h.name).copied().unwrap_or_default();
            let candidate = snapshot.candidates.get(&h.name).map(|c| {
                serde_json::json!({
                    "role": c.rollout_role(),
                    "version": &*c.version,
                    "rolled_back": c.rolled_back.load(std::sync::atomic::Ordering::Relaxed),
                })
            });
            serde_json::json!({
                "candidate": candidate,
                "name": &*h.name,
                "version": &*h.version,
                "state": "loaded",
                "subscriptions": h.manifest.subscriptions.iter().map(|s| &s.event_type).collect::<Vec<_>>(),
                "instances": format!("{:?}", h.manifest.instances.policy).to_lowercase(),
                "ordering": h.manifest.ordering.to_string(),
                "contract": h.prepared.contract.to_string(),
                "source": &h.origin.source,
                "digest": &h.prepared.digest,
                "signer": &h.origin.signer,
                "loaded_at": &h.origin.loaded_at,
                "batch": h.manifest.batch.map(|b| serde_json::json!({
                    "max_events": b.max_events,
                    "max_wait_ms": b.max_wait.as_millis() as u64,
                })),
                "concurrency": h.manifest.instances.concurrency,
                "runs": n,
                "errors": errors,
                "error_rate": if n == 0 { 0.0 } else { errors as f64 / n as f64 },
            })
        })
        .collect();
    let refused: Vec<_> = snapshot
        .failures
        .iter()
        // A held handler is listed under `held`, once.
        .filter(|f| !snapshot.held.values().any(|why| **why == f.error))
        .map(|f| {
            serde_json::json!({
                "manifest": f.manifest,
                "state": "refused",
                "error": f.error,
                "still_serving": f.still_serving,
            })
        })
        .collect();
    // Held: no version serves, and their events wait for one.
    let held: Vec<_> = snapshot
        .held
        .iter()
        .map(|(name, why)| serde_json::json!({ "name": &**name, "state": "held", "error": &**why }))
        .collect();
    Json(serde_json::json!({ "handlers": loaded, "refused": refused, "held": held }))
}

#[derive(Deserialize)]
pub struct DlqQuery {
    limit: Option<usize>,
}

/// Which dead letters a redrive or a purge takes, and whether only to
/// count them (`dry_run`): the dashboard shows the count before anyone
/// confirms.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqSelection {
    handler: Option<String>,
    event_type: Option<String>,
    error_contains: Option<String>,
    /// RFC 3339, UTC.
    since: Option<String>,
    until: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

impl DlqSelection {
    fn filter(self) -> Result<(crate::store::DeadLetterFilter, bool), ApiError> {
        let time = |name: &str, t: Option<String>| {
            t.filter(|t| !t.trim().is_empty())
                .map(|t| {
                    crate::store::DeadLetterFilter::time(&t).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "{name} {t:?} is not an RFC 3339 time (UTC, like 2026-12-07T10:00:00Z)"
                        ))
                    })
                })
                .transpose()
        };
        let text = |t: Option<String>| t.filter(|t| !t.trim().is_empty());
        Ok((
            crate::store::DeadLetterFilter {
                handler: text(self.handler),
                event_type: text(self.event_type),
                error_contains: text(self.error_contains),
                since: time("since", self.since)?,
                until: time("until", self.until)?,
                include_retried: false,
                limit: usize::MAX >> 1,
            },
            self.dry_run,
        ))
    }
}

/// Sends every dead letter matching the selection back to its handler
/// (`dlq retry` with filters); with `dry_run`, only counts them.
pub async fn redrive_dead_letters(
    State(api): State<Api>,
    Json(selection): Json<DlqSelection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (filter, dry_run) = selection.filter()?;
    let bus = api.bus.clone();
    blocking(move || {
        let store = bus.store();
        if dry_run {
            let matched = store.count_dead_letters(&filter)?;
            return Ok(Json(
                serde_json::json!({ "matched": matched, "dry_run": true }),
            ));
        }
        let letters = store.dead_letters_where(&filter)?;
        let mut retried = 0u64;
        for d in &letters {
            if store.retry_dead_letter(d.id)?.is_some() {
                retried += 1;
            }
        }
        bus.wake();
        Ok(Json(
            serde_json::json!({ "matched": letters.len(), "retried": retried }),
        ))
    })
    .await
}

/// Deletes every dead letter matching the selection; with `dry_run`, only
/// counts them.
pub async fn purge_dead_letters(
    State(api): State<Api>,
    Json(selection): Json<DlqSelection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (filter, dry_run) = selection.filter()?;
    let bus = api.bus.clone();
    blocking(move || {
        let store = bus.store();
        let matched = store.count_dead_letters(&filter)?;
        if dry_run {
            return Ok(Json(
                serde_json::json!({ "matched": matched, "dry_run": true }),
            ));
        }
        let purged = store.purge_dead_letters(&filter)?;
        Ok(Json(
            serde_json::json!({ "matched": matched, "purged": purged }),
        ))
    })
    .await
}

pub async fn dead_letters(
    State(api): State<Api>,
    Query(q): Query<DlqQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bus = api.bus.clone();
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let letters = blocking(move || Ok(bus.store().dead_letters(limit)?)).await?;
    Ok(Json(serde_json::json!({ "dead_letters": letters })))
}

/// The host's alerts (active first, then recent resolved) and their
/// webhook deliveries.
pub async fn alerts(
    State(api): State<Api>,
    Query(q): Query<DlqQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bus = api.bus.clone();
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let listing = blocking(move || Ok(crate::alerts::listing(bus.store(), limit)?)).await?;
    Ok(Json(listing))
}

/// Deletes one dead letter (the event keeps its `dead_letter` status).
pub async fn purge_dead_letter(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = letter_id(&id)?;
    let bus = api.bus.clone();
    if blocking(move || Ok(bus.store().purge_dead_letter(id)?)).await? {
        Ok(Json(serde_json::json!({ "ok": true, "purged": id })))
    } else {
        Err(ApiError::not_found(format!("no dead letter {id}")))
    }
}

/// A dead letter's id from the path: a number, or 400.
fn letter_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("dead letter id {id:?} is not a number")))
}

pub async fn retry_dead_letter(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = letter_id(&id)?;
    let bus = api.bus.clone();
    let event = blocking(move || {
        let event = bus.store().retry_dead_letter(id)?;
        bus.wake();
        Ok(event)
    })
    .await?;
    match event {
        Some(event_id) => Ok(Json(
            serde_json::json!({ "ok": true, "event_id": event_id }),
        )),
        None => Err(ApiError::not_found(format!(
            "dead letter {id} does not exist or was already retried"
        ))),
    }
}
