//! Group commit for publishes.
//!
//! A single-row transaction writes several WAL pages (the row and its
//! indexes), so committing each publish on its own caps inserts at the disk's
//! page rate. Concurrent publishers instead queue their events; the first one
//! to find no commit in progress becomes the leader, takes the whole queue and
//! commits it in one transaction, and the others wait for that commit. Every
//! `publish` still returns only after its own event is durable; a lone
//! publisher commits alone, with no hand-off to another thread.
//!
//! The leader commits through the function its caller passes, which calls
//! `take` for the queue (the bus stores a batch `pending`, or already
//! claimed and handed to the poller: see `source::handoff`).
//!
//! The leader takes the queue only once its transaction has begun: the
//! writer is often busy (the poller's claim, the committer's outcomes), and
//! whatever other publishers queue during that wait rides along. Taking it
//! first left four publisher threads at 1.15 events a transaction.

use super::StoreError;
use crate::event::Event;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

/// Outcomes kept for waiters that wake after later batches committed.
const KEPT_OUTCOMES: usize = 1024;

#[derive(Default)]
struct State {
    queue: Vec<Event>,
    /// Generation the queue is being filled for.
    filling: u64,
    /// A leader is committing now.
    committing: bool,
    /// Outcome of each committed generation (error text when it failed).
    outcomes: VecDeque<(u64, Result<(), String>)>,
}

#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    committed: Condvar,
}

impl GroupCommit {
    /// Stores `events` (already validated) durably, sharing the transaction
    /// with whatever other publishers queued meanwhile. A leader calls
    /// `commit`, which must call `take` (once its transaction has begun)
    /// for everything queued and store it all or nothing.
    pub fn insert(
        &self,
        events: Vec<Event>,
        commit: impl FnOnce(&mut dyn FnMut() -> Vec<Event>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        st.queue.extend(events);
        let mine = st.filling;
        loop {
            if let Some((_, outcome)) = st.outcomes.iter().find(|(g, _)| *g == mine) {
                return outcome.clone().map_err(StoreError::GroupCommit);
            }
            if !st.committing {
                // Lead: commit everything queued, ours included.
                st.committing = true;
                drop(st);
                let mut taken = None;
                let result = commit(&mut || {
                    let mut st = self.lock();
                    taken = Some(st.filling);
                    st.filling += 1;
                    std::mem::take(&mut st.queue)
                });
                st = self.lock();
                let generation = taken.unwrap_or_else(|| {
                    // The transaction never began: what is queued (ours
                    // among it) fails, and nothing of it was stored.
                    st.queue.clear();
                    st.filling += 1;
                    st.filling - 1
                });
                st.committing = false;
                st.outcomes.push_back((
                    generation,
                    result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                ));
                while st.outcomes.len() > KEPT_OUTCOMES {
                    st.outcomes.pop_front();
                }
                self.committed.notify_all();
                // `mine == generation`: our events were in the queue we took.
                return result;
            }
            st = self.committed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
