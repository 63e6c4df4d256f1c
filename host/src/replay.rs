//! Replaying one handler over past events from the SQLite event table,
//! beside a running host: `persona-bus replay --handler NAME --from TIME`.
//!
//! The handler runs alone, in the events' stored order (`seq`), one event
//! at a time; each call reads the writes of the replay's calls before it
//! (an overlay of its own until they are committed, as in a lane). Its runs
//! go to a fresh ledger generation (`<handler>#replay-<id>`, see
//! `store::replays`), so every event of the range runs once per replay
//! whatever the live ledger says, and an event's status is never changed.
//! A run that asks for a retry is retried at once under the handler's
//! retry policy (its backoff capped at a second); what still fails is
//! counted as failed and recorded in the replay's executions, not
//! dead-lettered (the live event's dead letters stay the live handler's).

use crate::call_host::CallHost;
use crate::config::Config;
use crate::event::Event;
use crate::manifest::Manifest;
use crate::matching::Matcher;
use crate::outcome::{Run, Verdict};
use crate::registry::{LoadedHandler, load_handler, manifests_in};
use crate::runtime::{CallEnv, Origin, Runtime};
use crate::store::{Replay, ReplayRange, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs per commit.
const COMMIT_EVERY: usize = 256;
/// Events read per page of the table.
const PAGE: usize = 1024;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub handler: String,
    /// `created_at` at or after this (RFC 3339).
    pub from: String,
    /// `created_at` before this (default: when the replay starts).
    pub to: Option<String>,
    pub project: Option<String>,
}

/// Why a replay could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0:?} is not an RFC 3339 time (2026-12-07T09:00:00Z)")]
    BadTime(String),
    #[error("no live handler `{name}` in {dir}")]
    NoHandler { name: String, dir: String },
    #[error("handler `{name}`: {error}")]
    Load { name: String, error: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("cannot start the replay's runtime: {0}")]
    Io(#[from] std::io::Error),
}

/// A time as events store it (RFC 3339, milliseconds, UTC), so text
/// comparison in SQL orders it right.
pub fn stored_time(text: &str) -> Result<String, ReplayError> {
    let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339_weak(text))
        .map_err(|_| ReplayError::BadTime(text.to_owned()))?;
    Ok(humantime::format_rfc3339_millis(t).to_string())
}

fn live_handler(
    config: &Config,
    runtime: &Runtime,
    name: &str,
) -> Result<LoadedHandler, ReplayError> {
    let dir = &config.handlers_dir;
    let no_handler = || ReplayError::NoHandler {
        name: name.to_owned(),
        dir: dir.display().to_string(),
    };
    for path in manifests_in(dir).map_err(|_| no_handler())? {
        let Ok(m) = Manifest::load(&path, &config.limits) else {
            continue;
        };
        if m.name == name && m.rollout.is_none() {
            return load_handler(runtime, &path, &config.limits).map_err(|e| ReplayError::Load {
                name: name.to_owned(),
                error: e.to_string(),
            });
        }
    }
    Err(no_handler())
}

/// Runs the replay to its end; `progress` sees it after every commit.
pub fn replay_from_sqlite(
    config: &Config,
    store: Arc<Store>,
    req: &ReplayRequest,
    mut progress: impl FnMut(&Replay),
) -> Result<Replay, ReplayError> {
    let range = ReplayRange {
        from: stored_time(&req.from)?,
        // Bounded at the start: live traffic arriving meanwhile is the
        // live handler's, not the replay's.
        to: Some(match &req.to {
            Some(t) => stored_time(t)?,
            None => crate::event::now_rfc3339(),
        }),
        project: req.project.clone(),
    };
    let runtime = Runtime::new(
        &config.runtime,
        &config.limits,
        Some(config.compile_cache_dir()),
    )?;
    let handler = live_handler(config, &runtime, &req.handler)?;
    let subscriptions: Vec<_> = store
        .subscriptions()?
        .into_iter()
        .filter(|s| s.persona_id == req.handler)
        .collect();
    let matcher = Matcher::new(&subscriptions);
    let env = Arc::new(CallEnv {
        host: Arc::new(CallHost {
            store: store.clone(),
            schemas: Arc::new(crate::schemas::Schemas::new(config)),
        }),
        limits: config.limits.clone(),
        overlay: Default::default(),
        transcript: None,
    });
    let total = store.replay_count(&range)?;
    let mut replay = store.start_replay(
        &req.handler,
        "sqlite",
        (&range.from, range.to.as_deref(), range.project.as_deref()),
        Some(total),
    )?;
    let ledger = replay.ledger_name();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut pending: Vec<(Event, Run)> = Vec::new();
    let mut written = Vec::new();
    let mut after = 0;
    let result = (|| -> Result<(), ReplayError> {
        loop {
            let page = store.replay_page(&range, after, PAGE)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = *last;
            for (_, event) in page {
                replay.done += 1;
                if !matcher
                    .subscribers(&event)
                    .iter()
                    .any(|n| **n == *handler.name)
                {
                    continue;
                }
                let mut run = rt.block_on(run_once(&runtime, &handler, &event, &env));
                match run.verdict {
                    Verdict::Done => replay.completed += 1,
                    _ => replay.failed += 1,
                }
                let view = std::mem::take(&mut run.effects.view);
                if run.verdict == Verdict::Done && !view.is_empty() {
                    // Later calls read it until the commit below.
                    written.push(env.overlay.apply(&handler.name, &event.project_id, view));
                }
                pending.push((event, run));
                if pending.len() >= COMMIT_EVERY {
                    store.commit_replayed(&ledger, &pending)?;
                    pending.clear();
                    env.overlay.release(std::mem::take(&mut written));
                    store.replay_progress(
                        replay.id,
                        (replay.done, replay.completed, replay.failed),
                        "running",
                        None,
                    )?;
                    progress(&replay);
                }
            }
        }
        store.commit_replayed(&ledger, &pending)?;
        env.overlay.release(std::mem::take(&mut written));
        Ok(())
    })();
    let (status, error) = match &result {
        Ok(()) => ("finished", None),
        Err(e) => ("failed", Some(e.to_string())),
    };
    store.replay_progress(
        replay.id,
        (replay.done, replay.completed, replay.failed),
        status,
        error.as_deref(),
    )?;
    let replay = store.replay(replay.id)?;
    progress(&replay);
    result.map(|()| replay)
}

/// One event through the handler, retried at once while it asks to be.
async fn run_once(runtime: &Runtime, h: &LoadedHandler, event: &Event, env: &Arc<CallEnv>) -> Run {
    let mut attempt = 1;
    loop {
        let inv = runtime
            .invoke(
                h.handle_ref(),
                event,
                &event.project_id,
                &Origin::Sqlite,
                attempt,
                env,
            )
            .await;
        let now = crate::event::now_millis();
        let verdict = Verdict::decide(&inv.outcome, attempt, &h.manifest.retry, now);
        if let Verdict::RetryAt(at) = verdict {
            let wait = Duration::from_millis((at - now).clamp(0, 1000) as u64);
            tokio::time::sleep(wait).await;
            attempt += 1;
            continue;
        }
        return Run {
            handler: h.name.clone(),
            version: h.version.clone(),
            attempt,
            started_at: inv.started_at,
            duration: inv.duration,
            outcome: inv.outcome,
            verdict,
            effects: inv.effects,
            note: inv.note,
            call_events: 1,
        };
    }
}

/// A progress line: a bar on a terminal, else a plain line.
pub fn progress_line(r: &Replay, started: Instant, bar: bool) -> String {
    let rate = r.done as f64 / started.elapsed().as_secs_f64().max(0.001);
    let total = r.total.unwrap_or(r.done).max(1);
    let share = (r.done as f64 / total as f64).min(1.0);
    let counts = format!(
        "{}/{} events, {} run: {} completed, {} failed; {rate:.0} events/s",
        r.done,
        total,
        r.completed + r.failed,
        r.completed,
        r.failed
    );
    if bar {
        let filled = (share * 30.0) as usize;
        format!(
            "\r[{}{}] {:>3.0}% {counts}",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            share * 100.0
        )
    } else {
        format!("replay {}: {:.0}% {counts}", r.id, share * 100.0)
    }
}
