//! The SQLite poller: claims pending events, dispatches them, commits.
//!
//! Adaptive like the original (fast while busy, slow when idle) but far
//! quicker: in-process publishes ring the [`Wakeup`] so they are picked up at
//! once, and the intervals (20 ms active, 500 ms idle by default) only bound
//! how long an event written by another process waits.
//!
//! Commits are pipelined: a committer thread writes the outcomes of batch k
//! while this thread claims and dispatches batch k+1, so handlers and SQLite
//! work at the same time. Handlers still run in publish order per project
//! (dispatch is sequential); only the commit trails by one batch. A commit
//! that fails returns its events to `pending`: nothing is lost, and the
//! processed ledger keeps handlers whose runs did commit from running again.

use crate::bus::Inner;
use crate::dispatch::Delivery;
use crate::event::now_millis;
use crate::outcome::Resolution;
use crate::runtime::Origin;
use crate::store::{ClaimScope, StoreError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

/// How often rows stuck in `processing` are looked for.
const REAP_EVERY: Duration = Duration::from_secs(30);

pub(crate) fn run(inner: Arc<Inner>) {
    let poll = inner.config.poll.clone();
    let active = Duration::from_millis(poll.active_interval_ms);
    let idle = Duration::from_millis(poll.idle_interval_ms);
    let check = Duration::from_secs(inner.config.kafka.breaker.check_secs);
    let linger = Duration::from_micros(poll.linger_us);
    let mut empty_polls: u32 = 0;
    let mut last_reap = Instant::now();
    // One batch in flight to the committer: enough to overlap, and the
    // poller never runs more than one batch ahead of what is durable.
    let (to_committer, batches) = sync_channel::<Vec<Resolution>>(1);
    let committer = {
        let inner = inner.clone();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                for resolutions in batches {
                    // A failure is logged and its events released inside.
                    let _ = commit(&inner, &resolutions);
                }
            })
    };
    let committer = match committer {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the committer thread; poller not started");
            return;
        }
    };
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
        let to_committer = &to_committer;
        let deliver = |resolutions| {
            if let Err(returned) = to_committer.send(resolutions) {
                // Only when the committer died: commit here instead (a
                // failure is logged and its events released inside).
                let _ = commit(&inner, &returned.0);
            }
        };
        match claim_and_dispatch(&inner, poll.batch_size, deliver) {
            Ok(n) if n > 0 => {
                empty_polls = 0;
                // A short batch while busy: let the next one fill up a little
                // so it shares a commit (see `PollConfig::linger_us`).
                if n < poll.batch_size && !linger.is_zero() {
                    std::thread::sleep(linger);
                }
            }
            Ok(_) => {
                empty_polls = empty_polls.saturating_add(1);
                let mut wait = if inner.source.claim_scope() == ClaimScope::Leftovers {
                    // Kafka is in charge: look for events left behind only
                    // now and then (plan phase 2: every 60 s); a breaker
                    // transition or a due retry wakes us sooner.
                    check
                } else if empty_polls > poll.idle_after_empty_polls {
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
                // writer). Back off and try again; nothing was claimed.
                tracing::error!(error = %e, "poll failed; retrying in 1 s");
                inner.wakeup.wait(Duration::from_secs(1));
            }
        }
    }
    // Closing the channel lets the committer finish the last batch and stop.
    drop(to_committer);
    let _ = committer.join();
    tracing::info!("sqlite poller stopped");
}

/// Claims up to `limit` events, dispatches them and hands the outcomes to
/// `deliver` (the committer, or an inline commit). Returns how many events it
/// claimed. If dispatch fails, the claimed events go back to pending.
fn claim_and_dispatch(
    inner: &Inner,
    limit: usize,
    deliver: impl FnOnce(Vec<Resolution>),
) -> Result<usize, StoreError> {
    let claimed = inner
        .store
        .claim(limit, now_millis(), inner.source.claim_scope())?;
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
    match inner.dispatcher.dispatch(deliveries) {
        Ok(resolutions) => deliver(resolutions),
        Err(e) => {
            release(inner, &ids, &e);
            return Err(e);
        }
    }
    Ok(n)
}

/// Commits a batch of outcomes; on failure returns its events to pending
/// and reports the error.
fn commit(inner: &Inner, resolutions: &[Resolution]) -> Result<(), StoreError> {
    match inner.store.commit(resolutions) {
        Ok(committed) => {
            if committed.duplicates > 0 {
                tracing::info!(
                    runs = committed.duplicates,
                    "skipped effects of runs already in the ledger"
                );
            }
            if committed.published > 0 {
                // Follow-up events are stored: pick them up at once.
                inner.stored();
            }
            inner.notify_resolved(resolutions);
            Ok(())
        }
        Err(e) => {
            let ids: Vec<String> = resolutions.iter().map(|r| r.event.id.clone()).collect();
            release(inner, &ids, &e);
            Err(e)
        }
    }
}

fn release(inner: &Inner, ids: &[String], cause: &StoreError) {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    match inner.store.release(&ids) {
        Ok(n) => {
            tracing::error!(error = %cause, events = n, "could not commit outcomes; events returned to pending")
        }
        Err(e) => {
            tracing::error!(error = %cause, release_error = %e, "could not commit outcomes; the reaper will return the events")
        }
    }
}

/// Claims, dispatches and commits one batch on the calling thread; returns
/// how many events it processed (used by `Bus::drain`).
pub(crate) fn process_batch(inner: &Inner, limit: usize) -> Result<usize, StoreError> {
    let mut committed = Ok(());
    let n = claim_and_dispatch(inner, limit, |resolutions| {
        committed = commit(inner, &resolutions)
    })?;
    committed.map(|()| n)
}
