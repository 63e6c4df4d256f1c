//! Dispatch: runs the matching handlers on a batch of claimed events and
//! turns what they did into [`Resolution`]s for the store to commit.
//!
//! The batch is split into lanes by project: events of one project stay in
//! one lane and run in publish order, while lanes run in parallel on the
//! worker pool. This is the same guarantee Kafka gives per partition (keyed
//! by project), so both sources behave alike.

use crate::event::{Event, now_millis};
use crate::outcome::{Resolution, Run, Verdict};
use crate::registry::{Registry, Snapshot};
use crate::runtime::{CallEnv, Origin, Runtime};
use crate::store::{Store, StoreError};
use rayon::prelude::*;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// Lanes per worker thread. More lanes than workers lets work-stealing keep
/// every worker busy while one lane is held up by a slow handler (one that
/// runs to its timeout): only the events behind it in its own lane wait.
/// Measured: a well-behaved handler beside hostile ones kept 86% of its
/// throughput with one lane per worker (BENCHMARKS.md).
const LANES_PER_WORKER: usize = 8;

pub struct Dispatcher {
    runtime: Arc<Runtime>,
    store: Arc<Store>,
    registry: Arc<Registry>,
    env: Arc<CallEnv>,
    pool: rayon::ThreadPool,
}

/// A claimed event and how many times it has been claimed (1 = first time).
pub type Claimed = (Event, u32);

impl Dispatcher {
    pub fn new(
        runtime: Arc<Runtime>,
        store: Arc<Store>,
        registry: Arc<Registry>,
        env: Arc<CallEnv>,
        workers: usize,
    ) -> std::io::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers.max(1))
            .thread_name(|i| format!("handler-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            runtime,
            store,
            registry,
            env,
            pool,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Runs every claimed event through its handlers. Handlers that already
    /// finished an event (its ledger says so) are not run again.
    pub fn dispatch(
        &self,
        claimed: Vec<Claimed>,
        origin: &Origin,
    ) -> Result<Vec<Resolution>, StoreError> {
        let snapshot = self.registry.snapshot();
        // Only events seen before can have ledger entries: skip the lookup
        // for first deliveries, which are nearly all of them.
        let seen_before = claimed
            .iter()
            .filter(|(e, claims)| *claims > 1 || e.retry_count > 0)
            .map(|(e, _)| e.id.as_str());
        let ledger = self.store.processed_for(seen_before)?;

        let lanes = into_lanes(claimed, self.pool.current_num_threads() * LANES_PER_WORKER);
        let resolve = |(event, _): Claimed| {
            let done = ledger.get(&event.id).map(Vec::as_slice).unwrap_or_default();
            self.resolve(&snapshot, event, done, origin)
        };
        Ok(if lanes.len() == 1 {
            lanes.into_iter().flatten().map(resolve).collect()
        } else {
            self.pool.install(|| {
                lanes
                    .into_par_iter()
                    .flat_map_iter(|lane| lane.into_iter().map(resolve))
                    .collect()
            })
        })
    }

    fn resolve(
        &self,
        snapshot: &Snapshot,
        event: Event,
        done: &[(String, String)],
        origin: &Origin,
    ) -> Resolution {
        let subscribers: Vec<_> = if event.chain_depth > self.env.limits.max_chain_depth {
            // Only an event from a host with a laxer limit gets here.
            tracing::warn!(event_id = %event.id, depth = event.chain_depth, "not dispatching: chain too deep");
            Vec::new()
        } else {
            snapshot
                .matcher
                .subscribers(&event)
                .into_iter()
                .filter_map(|name| snapshot.handlers.get(&name).cloned())
                .collect()
        };
        let attempt = event.retry_count + 1;
        let mut earlier = Vec::new();
        let mut runs = Vec::with_capacity(subscribers.len());
        for handler in &subscribers {
            if let Some((_, outcome)) = done.iter().find(|(name, _)| **name == *handler.name) {
                earlier.push(outcome.clone());
                continue;
            }
            let span = tracing::debug_span!("handle", handler = %handler.name, event_id = %event.id, attempt);
            let _enter = span.enter();
            let inv = self
                .runtime
                .invoke(handler.handle_ref(), &event, origin, attempt, &self.env);
            let verdict =
                Verdict::decide(&inv.outcome, attempt, &handler.manifest.retry, now_millis());
            if let Some(error) = inv.outcome.error() {
                tracing::warn!(handler = %handler.name, event_id = %event.id, attempt, verdict = ?verdict, "{error}");
            }
            runs.push(Run {
                handler: handler.name.clone(),
                version: handler.version.clone(),
                attempt,
                started_at: inv.started_at,
                duration: inv.duration,
                outcome: inv.outcome,
                verdict,
                effects: inv.effects,
                note: inv.note,
            });
        }
        Resolution::summarize(event, subscribers.len(), &earlier, runs)
    }
}

/// Splits events into at most `n` lanes by project, keeping publish order
/// within each lane. Empty lanes are dropped.
fn into_lanes(claimed: Vec<Claimed>, n: usize) -> Vec<Vec<Claimed>> {
    let n = n.max(1);
    let mut lanes: Vec<Vec<Claimed>> = (0..n).map(|_| Vec::new()).collect();
    let mut lane_of: HashMap<String, usize> = HashMap::new();
    for item in claimed {
        let lane = *lane_of.entry(item.0.project_id.clone()).or_insert_with(|| {
            let mut h = DefaultHasher::new();
            item.0.project_id.hash(&mut h);
            (h.finish() % n as u64) as usize
        });
        lanes[lane].push(item);
    }
    lanes.retain(|l| !l.is_empty());
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventLimits, NewEvent};

    #[test]
    fn lanes_keep_each_project_in_order() {
        let claimed: Vec<Claimed> = (0..40)
            .map(|i| {
                let e = NewEvent {
                    event_type: "t".into(),
                    source_type: "s".into(),
                    project_id: Some(format!("p{}", i % 5)),
                    ..Default::default()
                }
                .validate(
                    EventLimits {
                        max_payload_bytes: 100,
                    },
                    0,
                )
                .unwrap();
                (e, 1)
            })
            .collect();
        let order: Vec<String> = claimed.iter().map(|(e, _)| e.id.clone()).collect();
        let lanes = into_lanes(claimed, 3);
        assert!(lanes.len() <= 3);
        for lane in &lanes {
            let mut last: HashMap<&str, usize> = HashMap::new();
            for (e, _) in lane {
                let pos = order.iter().position(|id| *id == e.id).unwrap();
                if let Some(prev) = last.insert(e.project_id.as_str(), pos) {
                    assert!(prev < pos, "project {} out of order", e.project_id);
                }
            }
        }
        let projects_per_lane: Vec<std::collections::HashSet<&str>> = lanes
            .iter()
            .map(|l| l.iter().map(|(e, _)| e.project_id.as_str()).collect())
            .collect();
        for (i, a) in projects_per_lane.iter().enumerate() {
            for b in &projects_per_lane[i + 1..] {
                assert!(a.is_disjoint(b), "a project is in one lane only");
            }
        }
    }
}
