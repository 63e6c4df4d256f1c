//! Replaying one handler over past events, from the SQLite event table or
//! from Kafka ([`kafka`]), beside a running host:
//! `persona-bus replay --handler NAME --from <TIME | OFFSET>`.
//!
//! The handler runs alone, in the events' order (`seq`, or each
//! partition's offsets), one event
//! at a time; each call reads the writes of the replay's calls before it
//! (an overlay of its own until they are committed, as in a lane). Its runs
//! go to a fresh ledger generation (`<handler>#replay-<id>`, see
//! `store::replays`), so every event of the range runs once per replay
//! whatever the live ledger says, and an event's status is never changed.
//! A run that asks for a retry is retried at once under the handler's
//! retry policy (its backoff capped at a second); what still fails is
//! counted as failed and recorded in the replay's executions, not
//! dead-lettered (the live event's dead letters stay the live handler's).

pub mod kafka;

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
    /// SQLite: `created_at` at or after this (RFC 3339). Kafka: a time,
    /// `earliest`, or `partition:offset`.
    pub from: String,
    /// `created_at` before this (default: when the replay starts).
    pub to: Option<String>,
    pub project: Option<String>,
}

/// Where a replay reads its events, page by page, in order.
pub trait Pages {
    /// Up to `max` more events; None once the range is read.
    fn next_page(&mut self, max: usize) -> Result<Option<Vec<Event>>, ReplayError>;
    /// Events (or records) in the range, when known.
    fn total(&self) -> Option<u64>;
    /// Events (or records) read so far.
    fn looked(&self) -> u64;
}

/// The SQLite event table: `created_at` in the range, by `seq`.
pub struct SqlitePages {
    store: Arc<Store>,
    range: ReplayRange,
    after: i64,
    total: u64,
    looked: u64,
}

impl SqlitePages {
    pub fn open(store: Arc<Store>, req: &ReplayRequest) -> Result<Self, ReplayError> {
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
        let total = store.replay_count(&range)?;
        Ok(Self {
            store,
            range,
            after: 0,
            total,
            looked: 0,
        })
    }
}

impl Pages for SqlitePages {
    fn next_page(&mut self, max: usize) -> Result<Option<Vec<Event>>, ReplayError> {
        let page = self.store.replay_page(&self.range, self.after, max)?;
        let Some((last, _)) = page.last() else {
            return Ok(None);
        };
        self.after = *last;
        self.looked += page.len() as u64;
        Ok(Some(page.into_iter().map(|(_, e)| e).collect()))
    }

    fn total(&self) -> Option<u64> {
        Some(self.total)
    }

    fn looked(&self) -> u64 {
        self.looked
    }
}

/// Why a replay could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading Kafka: {0}")]
    Kafka(String),
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
    // The weak parser takes the `Z` or leaves it out, as events store it.
    let t =
        humantime::parse_rfc3339_weak(text).map_err(|_| ReplayError::BadTime(text.to_owned()))?;
    Ok(humantime::format_rfc3339_millis(t).to_string())
}

/// The live manifest of `name`: where the running host recorded it, else
/// in the configured handlers folder.
fn live_handler(
    config: &Config,
    store: &Store,
    runtime: &Runtime,
    name: &str,
) -> Result<LoadedHandler, ReplayError> {
    let recorded = store
        .handler_records()?
        .into_iter()
        .find(|r| r.name == name && r.status == "loaded")
        .and_then(|r| {
            std::path::Path::new(&r.manifest_path)
                .parent()
                .map(|p| p.to_owned())
        });
    let dir = recorded.as_deref().unwrap_or(&config.handlers_dir);
    let no_handler = || ReplayError::NoHandler {
        name: name.to_owned(),
        dir: dir.display().to_string(),
    };
    for path in manifests_in(dir).map_err(|_| no_handler())? {
        let Ok(m) = Manifest::load(&path, &config.limits) else {
            continue;
        };
        if m.name == name && m.rollout.is_none() {
            let load = |error: String| ReplayError::Load {
                name: name.to_owned(),
                error,
            };
            // The same trust and registry as the host: a replay runs only
            // what the host would.
            let sources = crate::registry::Sources::of(config).map_err(load)?;
            return load_handler(runtime, &path, &config.limits, &sources)
                .map_err(|e| load(e.to_string()));
        }
    }
    Err(no_handler())
}

/// Runs a replay to its end; `progress` sees it after every commit.
/// `source` names it in the record (`sqlite`, `kafka`).
pub fn replay(
    config: &Config,
    store: Arc<Store>,
    req: &ReplayRequest,
    (source, pages): (&str, &mut dyn Pages),
    mut progress: impl FnMut(&Replay),
) -> Result<Replay, ReplayError> {
    let runtime = Runtime::new(
        &config.runtime,
        &config.limits,
        Some(config.compile_cache_dir()),
    )?;
    let handler = live_handler(config, &store, &runtime, &req.handler)?;
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
    let mut replay = store.start_replay(
        &req.handler,
        source,
        (&req.from, req.to.as_deref(), req.project.as_deref()),
        pages.total(),
    )?;
    let ledger = replay.ledger_name();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut pending: Vec<(Event, Run)> = Vec::new();
    let mut written = Vec::new();
    let result = (|| -> Result<(), ReplayError> {
        while let Some(page) = pages.next_page(PAGE)? {
            for event in page {
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
                }
            }
            replay.done = pages.looked();
            store.replay_progress(
                replay.id,
                (replay.done, replay.completed, replay.failed),
                "running",
                None,
            )?;
            progress(&replay);
        }
        store.commit_replayed(&ledger, &pending)?;
        env.overlay.release(std::mem::take(&mut written));
        Ok(())
    })();
    replay.done = pages.looked();
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
        return h.run(attempt, inv, verdict);
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
