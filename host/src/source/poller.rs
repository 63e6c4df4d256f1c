//! The SQLite poller: claims pending events and submits them to the
//! pipeline; its [`SqliteSink`] commits their outcomes.
//!
//! Adaptive like the original (fast while busy, slow when idle) but far
//! quicker: in-process publishes ring the [`crate::wakeup::Wakeup`] so they
//! are picked up at once, and the intervals (20 ms active, 500 ms idle by
//! default) only bound how long an event written by another process waits.
//!
//! The poller claims ahead while earlier events are still being handled (up
//! to `runtime.max_in_flight`), so handlers and SQLite work at the same time
//! and a slow handler holds up only its own project. A commit that fails
//! (a full disk) is retried until the store takes it, with its outcomes
//! kept in memory: nothing is lost, and no handler runs twice for it.

use crate::context::HostContext;
use crate::dispatch::Delivery;
use crate::event::{Event, now_millis};
use crate::outcome::Resolution;
use crate::pipeline::{Finished, Pipeline, Refused, Sink};
use crate::runtime::Origin;
use crate::store::{ClaimScope, StoreError};
use crate::wakeup::Woke;
use persona_bus_model::sync::Locked;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often rows stuck in `processing` are looked for.
const REAP_EVERY: Duration = Duration::from_secs(30);

/// Commits outcomes of events claimed from SQLite.
pub(crate) struct SqliteSink {
    pub(crate) ctx: Arc<HostContext>,
}

impl Sink for SqliteSink {
    fn commit(&self, batch: Vec<Finished>) -> bool {
        let resolutions: Vec<Resolution> = batch.into_iter().map(|f| f.resolution).collect();
        commit(&self.ctx, &resolutions)
    }

    fn abandoned(&self, events: Vec<(String, Origin)>) {
        let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        match self.ctx.store.release(&ids) {
            Ok(n) => tracing::info!(events = n, "abandoned events returned to pending"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot return abandoned events to pending; the next start does")
            }
        }
    }
}

/// The SQLite poller, on its own thread.
pub struct Poller;

impl super::Source for Poller {
    fn start(
        self: Box<Self>,
        cx: &super::SourceContext,
        tasks: &crate::supervisor::Supervisor,
    ) -> Result<(), crate::supervisor::StartError> {
        let cx = cx.clone();
        tasks.spawn("sqlite-poller", move || run(cx.ctx, cx.pipeline, cx.sqlite))
    }
}

fn run(ctx: Arc<HostContext>, pipeline: Arc<Pipeline>, sink: Arc<dyn Sink>) {
    let poll = ctx.config.poll.clone();
    let active = Duration::from_millis(poll.active_interval_ms);
    let idle = Duration::from_millis(poll.idle_interval_ms);
    let check = Duration::from_secs(ctx.config.kafka.breaker.check_secs);
    let linger = Duration::from_micros(poll.linger_us);
    let mut empty_polls: u32 = 0;
    let mut last_reap = Instant::now();
    // Whether to ask SQLite for rows at the next poll: after a ring (rows
    // were stored), a timeout, a full claim (more may wait), and at least
    // every active interval. A nudge alone brings only handed-over events
    // (see `handoff`), and asking then would be an empty claim per wake.
    let mut look = true;
    let mut last_look = Instant::now();
    let mut retry_at: Option<i64> = None;
    tracing::info!(
        active_ms = poll.active_interval_ms,
        idle_ms = poll.idle_interval_ms,
        "sqlite poller started"
    );
    while !ctx.stopping() {
        if last_reap.elapsed() >= REAP_EVERY {
            last_reap = Instant::now();
            // Events in the pipeline wait in their lanes: not stuck.
            let busy = pipeline.in_flight_ids();
            match ctx
                .store
                .reap_except(now_millis() - poll.stuck_after_ms as i64, &busy)
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(events = n, "returned events stuck in processing to pending")
                }
                Err(e) => tracing::error!(error = %e, "reaper failed"),
            }
        }
        look |= ctx.wakeup.take_ring() || last_look.elapsed() >= active;
        match claim_and_submit(&ctx, &pipeline, &sink, poll.batch_size, look) {
            Ok(polled) if polled.submitted > 0 => {
                if polled.looked {
                    last_look = Instant::now();
                    look = polled.full;
                }
                empty_polls = 0;
                // A short batch while busy: let the next one fill up a little
                // so it shares a commit (see `PollConfig::linger_us`).
                if polled.submitted < poll.batch_size && !linger.is_zero() {
                    std::thread::sleep(linger);
                }
            }
            Ok(polled) => {
                if polled.looked {
                    last_look = Instant::now();
                    look = false;
                    // Wake for a retry that falls due before the interval
                    // ends (asked only along with SQLite's rows).
                    retry_at = ctx.store.next_retry_at(now_millis()).unwrap_or(None);
                }
                empty_polls = empty_polls.saturating_add(1);
                let mut wait = if ctx.source.claim_scope() == ClaimScope::Leftovers {
                    // Kafka is in charge: look for events left behind only
                    // now and then (plan phase 2: every 60 s); a breaker
                    // transition or a due retry wakes us sooner.
                    check
                } else if empty_polls > poll.idle_after_empty_polls {
                    idle
                } else {
                    active
                };
                if let Some(due) = retry_at {
                    let ms = (due - now_millis()).max(1) as u64;
                    wait = wait.min(Duration::from_millis(ms));
                }
                match ctx.wakeup.wait_for(wait) {
                    Woke::Rung => {
                        empty_polls = 0;
                        look = true;
                    }
                    Woke::Nudged => empty_polls = 0,
                    Woke::TimedOut => look = true,
                }
            }
            Err(e) => {
                // The store is unwell (disk full, locked by a foreign
                // writer). Back off and try again; nothing was claimed.
                tracing::error!(error = %e, "poll failed; retrying in 1 s");
                ctx.wakeup.wait(Duration::from_secs(1));
                look = true;
            }
        }
    }
    release_handed(&ctx);
    tracing::info!("sqlite poller stopped");
}

/// What one poll did.
#[derive(Default)]
struct Polled {
    /// Events submitted to the pipeline (handed over and claimed).
    submitted: usize,
    /// Whether SQLite was asked for rows.
    looked: bool,
    /// Whether it gave as many as asked for (more may be waiting).
    full: bool,
}

/// Submits the events handed over by publishes (see `handoff`) and, with
/// `look`, claims up to `limit` events from SQLite (none of a project
/// whose lane is full) and submits them after those. Events the pipeline
/// refuses go back to pending.
fn claim_and_submit(
    ctx: &HostContext,
    pipeline: &Arc<Pipeline>,
    sink: &Arc<dyn Sink>,
    limit: usize,
    look: bool,
) -> Result<Polled, StoreError> {
    // Wait for room first, and claim no more than there is, so the submit
    // rarely waits for handlers.
    let room = pipeline.wait_for_room();
    if room == 0 {
        return Ok(Polled::default());
    }
    let mut queue = ctx.handoff.locked();
    let handed = std::mem::take(&mut *queue);
    let want = limit.min(room.saturating_sub(handed.len()));
    let looked = look && want > 0;
    let claimed = if looked {
        let full = pipeline.full_lanes();
        ctx.store
            .claim(want, now_millis(), ctx.source.claim_scope(), &full)
    } else {
        Ok(Vec::new())
    };
    let (claimed, failed) = match claimed {
        Ok(c) => (c, None),
        // The handed-over events are submitted all the same.
        Err(e) => (Vec::new(), Some(e)),
    };
    let full = looked && claimed.len() >= want;
    let events: Vec<(Event, u32)> = handed.into_iter().map(|e| (e, 1)).chain(claimed).collect();
    // Submitted outside the lock: only this thread submits SQLite's events,
    // so they reach the pipeline in the order they were taken here; the
    // lock only keeps a publish from coming between the take and the
    // claim. Publishers then wait for neither the submit nor its wakes.
    drop(queue);
    let submitted = submit_claimed(ctx, pipeline, sink, events)?;
    match failed {
        Some(e) => Err(e),
        None => Ok(Polled {
            submitted,
            looked,
            full,
        }),
    }
}

/// Returns events handed over and not submitted to `pending` (the poller
/// is stopping).
pub(crate) fn release_handed(ctx: &HostContext) {
    let handed = std::mem::take(&mut *ctx.handoff.locked());
    if handed.is_empty() {
        return;
    }
    let ids: Vec<&str> = handed.iter().map(|e| e.id.as_str()).collect();
    if let Err(e) = ctx.store.release(&ids) {
        tracing::warn!(error = %e, "cannot return handed-over events to pending; the next start does");
    }
}

/// Submits events claimed from SQLite (each with its claim count); returns
/// how many. Events the pipeline refuses go back to pending.
fn submit_claimed(
    ctx: &HostContext,
    pipeline: &Arc<Pipeline>,
    sink: &Arc<dyn Sink>,
    claimed: Vec<(Event, u32)>,
) -> Result<usize, StoreError> {
    if claimed.is_empty() {
        return Ok(0);
    }
    let n = claimed.len();
    let ids: Vec<String> = claimed.iter().map(|(e, _)| e.id.clone()).collect();
    let deliveries = claimed
        .into_iter()
        .map(|(event, claims)| Delivery {
            event,
            claims,
            origin: Origin::Sqlite,
        })
        .collect();
    match pipeline.submit(deliveries, sink) {
        Ok(()) => Ok(n),
        Err(Refused::Closed) => {
            // Shutting down: unclaim them for the next start.
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            if let Err(e) = ctx.store.release(&ids) {
                tracing::warn!(error = %e, "cannot unclaim events at shutdown; the next start does");
            }
            Ok(0)
        }
        Err(Refused::Store(e)) => {
            release(ctx, &ids, &e);
            Err(e)
        }
    }
}

/// Commits a batch of outcomes, retrying while the store refuses (a full
/// disk): they stay in memory, their events stay `processing` (the reaper
/// leaves events in flight alone), and later outcomes wait behind them.
/// False only when stopping with the batch not committed; the pipeline
/// then returns its events to pending (`abandoned`).
fn commit(ctx: &HostContext, resolutions: &[Resolution]) -> bool {
    let Some(committed) =
        ctx.commit_until_taken(resolutions.len(), || ctx.store.commit(resolutions))
    else {
        return false;
    };
    if committed.duplicates > 0 {
        tracing::info!(
            runs = committed.duplicates,
            "skipped effects of runs already in the ledger"
        );
    }
    if committed.published > 0 {
        // Follow-up events are stored: pick them up at once.
        ctx.stored();
    }
    ctx.notify_resolved(resolutions);
    true
}

fn release(ctx: &HostContext, ids: &[String], cause: &StoreError) {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    match ctx.store.release(&ids) {
        Ok(n) => {
            tracing::error!(error = %cause, events = n, "could not submit claimed events; returned to pending")
        }
        Err(e) => {
            tracing::error!(error = %cause, release_error = %e, "could not submit claimed events; the reaper will return them")
        }
    }
}

/// Claims, handles and commits on the calling thread's behalf until nothing
/// is due (follow-ups included); returns how many events it processed (used
/// by `Bus::drain`).
pub(crate) fn drain(
    ctx: &HostContext,
    pipeline: &Arc<Pipeline>,
    sink: &Arc<dyn Sink>,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let n = claim_and_submit(ctx, pipeline, sink, limit, true)?.submitted;
        pipeline.wait_idle(Duration::MAX);
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}
