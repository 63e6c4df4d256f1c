//! A handler's page (its live version, its shadow or canary, their runs
//! side by side, the shadow's differences) and replays of one handler.

use super::{Api, ApiError, blocking};
use axum::Json;
use axum::extract::{Path, State};
use persona_bus_model::rollout::Rollout;
use std::sync::atomic::Ordering;

/// Differing events the page shows.
const EXAMPLES: usize = 20;

/// `GET /api/personas/handlers/{name}`.
pub async fn handler(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let snapshot = api.bus.registry().snapshot();
    let live = snapshot
        .handlers
        .get(name.as_str())
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no handler {name} is loaded")))?;
    let candidate = snapshot.candidates.get(name.as_str()).cloned();
    let versions = api.bus.metrics().version_runs(&name);
    let bus = api.bus.clone();
    let key = name.clone();
    let (tallies, differences) = blocking(move || {
        let tallies = bus.store().shadow_tallies(&key)?;
        let differences = match tallies.first() {
            Some(t) => bus
                .store()
                .shadow_diffs(&key, &t.shadow_version, EXAMPLES)?,
            None => Vec::new(),
        };
        Ok((tallies, differences))
    })
    .await?;
    let candidate = candidate.map(|c| {
        let rolled_back = c.rolled_back.load(Ordering::Relaxed);
        serde_json::json!({
            "role": c.rollout_role(),
            "version": &*c.version,
            "share": match &c.manifest.rollout {
                Some(Rollout::Canary(canary)) => Some(canary.share),
                _ => None,
            },
            "rolled_back": rolled_back,
            "manifest": c.manifest.path,
        })
    });
    Ok(Json(serde_json::json!({
        "name": name,
        "live": { "version": &*live.version, "manifest": live.manifest.path },
        "candidate": candidate,
        "versions": versions
            .into_iter()
            .map(|(version, outcomes)| serde_json::json!({ "version": version, "runs": outcomes }))
            .collect::<Vec<_>>(),
        "shadow": { "tallies": tallies, "differences": differences },
    })))
}

/// `GET /api/personas/replays`: the newest replays, with their progress.
pub async fn replays(State(api): State<Api>) -> Result<Json<serde_json::Value>, ApiError> {
    let bus = api.bus.clone();
    let replays = blocking(move || Ok(bus.store().replays(20)?)).await?;
    Ok(Json(serde_json::json!({ "replays": replays })))
}
