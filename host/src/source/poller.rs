//! The SQLite poller: claims pending events, dispatches them, commits.
//!
//! Adaptive like the original (fast while busy, slow when idle) but far
//! quicker: in-process publishes ring the [`Wakeup`] so they are picked up at
//! once, and the intervals (20 ms active, 500 ms idle by default) only bound
//! how long an event written by another process waits. While a batch was
//! full it loops without waiting at all.

use crate::bus::Inner;
use crate::event::now_millis;
use crate::runtime::Origin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often rows stuck in `processing` are looked for.
const REAP_EVERY: Duration = Duration::from_secs(30);

pub(crate) fn run(inner: Arc<Inner>) {
    let poll = inner.config.poll.clone();
    let active = Duration::from_millis(poll.active_interval_ms);
    let idle = Duration::from_millis(poll.idle_interval_ms);
    let mut empty_polls: u32 = 0;
    let mut last_reap = Instant::now();
    tracing::info!(
        active_ms = poll.active_interval_ms,
        idle_ms = poll.idle_interval_ms,
        "sqlite poller started"
    );
    while !inner.stopping.load(Ordering::Acquire) {
        if last_reap.elapsed() >= REAP_EVERY {
            last_reap = Instant::now();
            match inner.store.reap(now_millis() - poll.stuck_after_ms as i64) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(events = n, "returned events stuck in processing to pending")
                }
                Err(e) => tracing::error!(error = %e, "reaper failed"),
            }
        }
        match process_batch(&inner, poll.batch_size) {
            Ok(n) if n > 0 => empty_polls = 0,
            Ok(_) => {
                empty_polls = empty_polls.saturating_add(1);
                let mut wait = if empty_polls > poll.idle_after_empty_polls {
                    idle
                } else {
                    active
                };
                // Wake for a retry that falls due before the interval ends.
                let now = now_millis();
                if let Ok(Some(due)) = inner.store.next_retry_at(now) {
                    wait = wait.min(Duration::from_millis((due - now).max(1) as u64));
                }
                if inner.wakeup.wait(wait) {
                    empty_polls = 0;
                }
            }
            Err(e) => {
                // The store is unwell (disk full, locked by a foreign
                // writer). Claimed rows stay `processing` until the reaper
                // returns them; nothing is lost. Back off and try again.
                tracing::error!(error = %e, "poll failed; retrying in 1 s");
                inner.wakeup.wait(Duration::from_secs(1));
            }
        }
    }
    tracing::info!("sqlite poller stopped");
}

/// Claims, dispatches and commits one batch; returns how many events it
/// processed.
pub(crate) fn process_batch(
    inner: &Inner,
    limit: usize,
) -> Result<usize, crate::store::StoreError> {
    let claimed = inner.store.claim(limit, now_millis())?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let n = claimed.len();
    let resolutions = inner.dispatcher.dispatch(claimed, &Origin::Sqlite)?;
    let committed = inner.store.commit(&resolutions)?;
    if committed.duplicates > 0 {
        tracing::info!(
            runs = committed.duplicates,
            "skipped effects of runs already in the ledger"
        );
    }
    inner.notify_resolved(&resolutions);
    Ok(n)
}
