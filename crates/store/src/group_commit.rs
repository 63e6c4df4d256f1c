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
use persona_bus_model::event::Event;
use persona_bus_model::sync::{Locked, Waits};
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
    /// Publishers waiting for a commit. A lone publisher never has any,
    /// and then the leader does not signal: std's condition variable makes
    /// a system call for every signal, waiters or not (5% of a lone
    /// publisher's time).
    waiting: usize,
    /// Outcome of each committed generation (error text when it failed).
    outcomes: VecDeque<(u64, Result<(), String>)>,
}

impl State {
    /// The outcome of `generation`, if it is committed and still kept.
    /// Generations commit one at a time and in order, so the kept ones are
    /// consecutive and this is an index, not a search: a search walked all
    /// of them on every publish (its own generation is never there yet),
    /// 3% of a lone publisher's time.
    fn outcome_of(&self, generation: u64) -> Option<&Result<(), String>> {
        let (first, _) = self.outcomes.front()?;
        let (g, outcome) = self
            .outcomes
            .get(generation.checked_sub(*first)? as usize)?;
        debug_assert_eq!(*g, generation, "kept outcomes are consecutive");
        Some(outcome)
    }
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
            if let Some(outcome) = st.outcome_of(mine) {
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
                if st.waiting > 0 {
                    self.committed.notify_all();
                }
                // `mine == generation`: our events were in the queue we took.
                return result;
            }
            st.waiting += 1;
            st = self.committed.wait_on(st);
            st.waiting -= 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_bus_model::event::{EventLimits, NewEvent};
    use std::sync::Arc;

    fn event(n: usize) -> Event {
        NewEvent {
            event_type: "custom".into(),
            source_type: "system".into(),
            project_id: Some(format!("p{n}")),
            ..Default::default()
        }
        .validate(
            EventLimits {
                max_payload_bytes: 1024,
            },
            0,
        )
        .unwrap()
    }

    /// Past the kept outcomes, from several threads, each caller hears the
    /// outcome of the commit that carried its event, and every event is
    /// taken exactly once.
    #[test]
    fn each_publisher_hears_the_outcome_of_its_own_commit() {
        let group = Arc::new(GroupCommit::default());
        let taken = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (group, taken) = (group.clone(), taken.clone());
                std::thread::spawn(move || {
                    let mut failed = Vec::new();
                    for i in 0..KEPT_OUTCOMES {
                        let n = t * KEPT_OUTCOMES + i;
                        let result = group.insert(vec![event(n)], |take| {
                            let batch = take();
                            let fail = batch.iter().any(|e| e.project_id == "p7");
                            taken.lock().unwrap().extend(batch);
                            if fail {
                                Err(StoreError::GroupCommit("disk full".into()))
                            } else {
                                Ok(())
                            }
                        });
                        if result.is_err() {
                            failed.push(n);
                        }
                    }
                    failed
                })
            })
            .collect();
        let failed: Vec<usize> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert!(
            failed.contains(&7),
            "the failed commit's own caller hears it"
        );
        // Whoever shared the failed transaction failed with it; no one else.
        assert!(
            failed.len() <= 4,
            "only the failed commit's callers: {failed:?}"
        );
        let mut projects: Vec<String> = taken
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.project_id.clone())
            .collect();
        assert_eq!(projects.len(), 4 * KEPT_OUTCOMES, "every event taken");
        projects.sort();
        projects.dedup();
        assert_eq!(projects.len(), 4 * KEPT_OUTCOMES, "no event taken twice");
    }

    #[test]
    fn a_commit_that_never_began_fails_its_callers_and_the_next_succeeds() {
        let group = GroupCommit::default();
        let first = group.insert(vec![event(1)], |_| {
            Err(StoreError::GroupCommit("cannot begin".into()))
        });
        assert!(first.is_err());
        let mut seen = Vec::new();
        group
            .insert(vec![event(2)], |take| {
                seen = take();
                Ok(())
            })
            .unwrap();
        assert_eq!(
            seen.len(),
            1,
            "the failed caller's event was not carried over"
        );
        assert_eq!(seen[0].project_id, "p2");
    }
}
