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
    native: std::sync::RwLock<Option<NativeHandler>>,
}

/// A native Rust function called instead of every handler's WebAssembly
/// component, with the rest of the pipeline unchanged (matching, ledger,
/// commit, offsets). It exists to measure what the sandbox costs
/// (`BENCHMARKS.md`: WASM vs native), not to run production handlers: it
/// has no limits and no host API.
pub type NativeHandler = Arc<dyn Fn(&str, &Event) -> Result<(), String> + Send + Sync>;

/// An event to dispatch, with where it came from.
pub struct Delivery {
    pub event: Event,
    /// Times the SQLite poller has claimed it (1 = first time); Kafka
    /// deliveries always look at the ledger.
    pub claims: u32,
    pub origin: Origin,
}

impl Delivery {
    fn seen_before(&self) -> bool {
        // A Kafka record may have been handled here already: from SQLite
        // while the broker was away, or before a rebalance or a replay.
        self.claims > 1 || self.event.retry_count > 0 || matches!(self.origin, Origin::Kafka { .. })
    }
}

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
            native: std::sync::RwLock::new(None),
        })
    }

    /// Calls `f` instead of the handlers' components from now on (None:
    /// back to WebAssembly). See [`NativeHandler`].
    pub fn set_native(&self, f: Option<NativeHandler>) {
        *self.native.write().unwrap_or_else(|p| p.into_inner()) = f;
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Runs every claimed event through its handlers. Handlers that already
    /// finished an event (its ledger says so) are not run again.
    pub fn dispatch(&self, deliveries: Vec<Delivery>) -> Result<Vec<Resolution>, StoreError> {
        let snapshot = self.registry.snapshot();
        let native = self
            .native
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Only events seen before can have ledger entries: skip the lookup
        // for first deliveries from SQLite, which are nearly all of them.
        let seen_before = deliveries
            .iter()
            .filter(|d| d.seen_before())
            .map(|d| d.event.id.as_str());
        let ledger = self.store.processed_for(seen_before)?;

        let lanes = into_lanes(
            deliveries,
            self.pool.current_num_threads() * LANES_PER_WORKER,
        );
        let resolve = |d: Delivery| {
            let done = ledger
                .get(&d.event.id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            self.resolve(&snapshot, d.event, done, &d.origin, native.as_ref())
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
        native: Option<&NativeHandler>,
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
            let inv = match native {
                None => {
                    self.runtime
                        .invoke(handler.handle_ref(), &event, origin, attempt, &self.env)
                }
                Some(f) => call_native(f, &handler.name, &event),
            };
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

fn call_native(f: &NativeHandler, handler: &str, event: &Event) -> crate::runtime::Invocation {
    let started = std::time::Instant::now();
    let outcome = match f(handler, event) {
        Ok(()) => crate::outcome::RunOutcome::Completed,
        Err(message) => crate::outcome::RunOutcome::Rejected(message),
    };
    crate::runtime::Invocation {
        outcome,
        effects: Default::default(),
        started_at: crate::event::now_rfc3339(),
        duration: started.elapsed(),
        note: None,
    }
}

/// Splits events into at most `n` lanes by project, keeping publish order
/// within each lane. Empty lanes are dropped.
fn into_lanes(deliveries: Vec<Delivery>, n: usize) -> Vec<Vec<Delivery>> {
    let n = n.max(1);
    let mut lanes: Vec<Vec<Delivery>> = (0..n).map(|_| Vec::new()).collect();
    let mut lane_of: HashMap<String, usize> = HashMap::new();
    for item in deliveries {
        let lane = *lane_of
            .entry(item.event.project_id.clone())
            .or_insert_with(|| {
                let mut h = DefaultHasher::new();
                item.event.project_id.hash(&mut h);
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
        let claimed: Vec<Delivery> = (0..40)
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
                Delivery {
                    event: e,
                    claims: 1,
                    origin: Origin::Sqlite,
                }
            })
            .collect();
        let order: Vec<String> = claimed.iter().map(|d| d.event.id.clone()).collect();
        let lanes = into_lanes(claimed, 3);
        assert!(lanes.len() <= 3);
        for lane in &lanes {
            let mut last: HashMap<&str, usize> = HashMap::new();
            for Delivery { event: e, .. } in lane {
                let pos = order.iter().position(|id| *id == e.id).unwrap();
                if let Some(prev) = last.insert(e.project_id.as_str(), pos) {
                    assert!(prev < pos, "project {} out of order", e.project_id);
                }
            }
        }
        let projects_per_lane: Vec<std::collections::HashSet<&str>> = lanes
            .iter()
            .map(|l| l.iter().map(|d| d.event.project_id.as_str()).collect())
            .collect();
        for (i, a) in projects_per_lane.iter().enumerate() {
            for b in &projects_per_lane[i + 1..] {
                assert!(a.is_disjoint(b), "a project is in one lane only");
            }
        }
    }
}
