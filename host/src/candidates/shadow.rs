//! Shadow versions: every event the live version runs, the shadow runs too,
//! after it and apart from it, and nothing it does is committed.
//!
//! Invariants:
//! - The live version never waits for its shadow. A run is pushed onto a
//!   bounded queue (a short lock, no wakeup: the runner polls it, so a
//!   live call never pays for a thread switch); when it is full the event
//!   is dropped for the shadow and counted (`dropped`), never queued
//!   behind.
//! - The shadow runs on one thread of its own, one call at a time, in the
//!   order the live runs were offered: the live version's order.
//! - It reads the state the live call read: each key the live call read
//!   from outside itself answers with that value (`Effects::reads`), so a
//!   shadow that does what the live version does writes the same. A key
//!   the live call did not read answers with the committed value.
//! - Its state writes, published events and outbound requests are kept
//!   only to compare; its outbound HTTP goes nowhere unless its manifest's
//!   `[rollout] shadow_outbound_hosts` names the host (set at load).

use crate::event::Event;
use crate::event::SchemaError;
use crate::outcome::{Run, StateOp};
use crate::registry::LoadedHandler;
use crate::runtime::{CallEnv, HostView, Origin, Runtime};
use crate::store::{ShadowDiff, ShadowTally, Store};
use persona_bus_model::sync::Locked;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs offered and not yet run, over all shadows; past this they drop.
const QUEUE: usize = 1024;
/// Differing events stored per (handler, shadow version): enough to
/// show every difference of a test or a day's canary, bounded for a
/// shadow that differs on everything.
const MAX_DIFFS: u64 = 10_000;
/// How often tallies and differences reach the store.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How long the runner sleeps when its queue is empty: from the first, it
/// doubles while the queue stays empty, up to the last (a host with no
/// shadow wakes the runner four times a second).
const IDLE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(250));

/// What the live version did with one event, as the shadow is compared.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    outcome: &'static str,
    error: Option<String>,
    state: Vec<StateOp>,
    /// (type, target, payload) of each follow-up event: ids differ by
    /// nature, the rest must not.
    published: Vec<(String, Option<String>, String)>,
    /// `METHOD URI` of each outbound request, sent or refused.
    requests: Vec<String>,
}

impl Observed {
    fn of(outcome: &crate::outcome::RunOutcome, effects: &crate::outcome::Effects) -> Self {
        Self {
            outcome: outcome.label(),
            error: outcome.error(),
            state: effects.state.clone(),
            published: effects
                .published
                .iter()
                .map(|e| {
                    (
                        e.event_type.clone(),
                        e.target_persona_id.clone(),
                        e.payload.clone(),
                    )
                })
                .collect(),
            requests: effects.requests.clone(),
        }
    }

    /// What differs from `other`: `outcome`, `state`, `published`,
    /// `outbound`.
    fn differs(&self, other: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.outcome != other.outcome {
            out.push("outcome");
        }
        if self.state != other.state {
            out.push("state");
        }
        if self.published != other.published {
            out.push("published");
        }
        if self.requests != other.requests {
            out.push("outbound");
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let state: Vec<serde_json::Value> = self
            .state
            .iter()
            .map(|op| match op {
                StateOp::Set(k, v) => {
                    serde_json::json!({"set": k, "value": String::from_utf8_lossy(v)})
                }
                StateOp::Delete(k) => serde_json::json!({"delete": k}),
                StateOp::Add(k, n) => serde_json::json!({"increment": k, "by": n}),
            })
            .collect();
        let published: Vec<serde_json::Value> = self
            .published
            .iter()
            .map(|(t, target, payload)| {
                serde_json::json!({"event_type": t, "target": target, "payload": payload})
            })
            .collect();
        serde_json::json!({
            "outcome": self.outcome,
            "error": self.error,
            "state": state,
            "published": published,
            "outbound": self.requests,
        })
    }
}

struct Job {
    shadow: Arc<LoadedHandler>,
    live_version: Arc<str>,
    event: Event,
    origin: Origin,
    attempt: u32,
    live: Observed,
    reads: Vec<(String, Option<Vec<u8>>)>,
}

/// Counters of all shadows since the host started (for `/metrics`).
#[derive(Default)]
pub struct ShadowCounters {
    pub agreed: AtomicU64,
    pub differed: AtomicU64,
    pub dropped: AtomicU64,
}

/// The shadow runner: a queue, and the thread that empties it.
pub struct Shadows {
    queue: Arc<Mutex<VecDeque<Job>>>,
    /// Set when the host stops: queued runs are dropped, not run.
    closed: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<ShadowCounters>,
    /// Drops not yet written to the store, by tally key.
    dropped: Arc<Mutex<HashMap<TallyKey, u64>>>,
}

/// (handler, shadow version, live version): `Arc`s of the loaded
/// handlers, so counting allocates nothing.
type TallyKey = (Arc<str>, Arc<str>, Arc<str>);

impl Shadows {
    /// Starts the runner's thread; it ends when the runner is dropped.
    pub fn start(runtime: Arc<Runtime>, store: Arc<Store>, env: &CallEnv) -> std::io::Result<Self> {
        let queue = Arc::new(Mutex::new(VecDeque::with_capacity(QUEUE)));
        let jobs = queue.clone();
        let counters = Arc::new(ShadowCounters::default());
        let dropped = Arc::new(Mutex::new(HashMap::new()));
        let view = Arc::new(ShadowView {
            inner: env.host.clone(),
            reads: Mutex::new(HashMap::new()),
        });
        let env = Arc::new(CallEnv {
            host: view.clone(),
            limits: env.limits.clone(),
            // Its own, never applied: a shadow's writes are seen by no one.
            overlay: Default::default(),
            transcript: None,
        });
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let runner = Runner {
            closed: closed.clone(),
            runtime,
            store,
            env,
            view,
            counters: counters.clone(),
            dropped: dropped.clone(),
            tallies: HashMap::new(),
            diffs: Vec::new(),
            stored_diffs: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("shadows".into())
            .spawn(move || runner.run(jobs))?;
        Ok(Self {
            queue,
            closed,
            thread: Some(thread),
            counters,
            dropped,
        })
    }

    pub fn counters(&self) -> &ShadowCounters {
        &self.counters
    }

    /// Offers the live run `live` of `event` to `shadow`. Never waits.
    /// Takes the live run's reads (only the shadow needs them).
    pub fn offer(
        &self,
        shadow: &Arc<LoadedHandler>,
        event: &Event,
        origin: &Origin,
        live: &mut Run,
    ) {
        // Under a backlog the queue is full most of the time: count the
        // drop before copying anything.
        if self.queue.locked().len() >= QUEUE || self.closed.load(Ordering::Relaxed) {
            self.count_drop((
                shadow.name.clone(),
                shadow.version.clone(),
                live.version.clone(),
            ));
            return;
        }
        let job = Job {
            shadow: shadow.clone(),
            live_version: live.version.clone(),
            event: event.clone(),
            origin: origin.clone(),
            attempt: live.attempt,
            live: Observed::of(&live.outcome, &live.effects),
            reads: std::mem::take(&mut live.effects.reads),
        };
        let mut queue = self.queue.locked();
        if queue.len() >= QUEUE {
            drop(queue);
            drop_job(&self.counters, &self.dropped, &job);
            return;
        }
        queue.push_back(job);
    }

    fn count_drop(&self, key: TallyKey) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        *self.dropped.locked().entry(key).or_default() += 1;
    }
}

impl Drop for Shadows {
    /// Queued runs are dropped (counted); the call in progress, if any,
    /// ends by its deadline, and its thread is joined.
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn drop_job(counters: &ShadowCounters, dropped: &Mutex<HashMap<TallyKey, u64>>, job: &Job) {
    counters.dropped.fetch_add(1, Ordering::Relaxed);
    *dropped
        .locked()
        .entry((
            job.shadow.name.clone(),
            job.shadow.version.clone(),
            job.live_version.clone(),
        ))
        .or_default() += 1;
}

/// Puts the calling thread (the shadow runner) where the scheduler runs it
/// only when no other thread of the machine wants the CPU (Linux's
/// `SCHED_IDLE`; else the lowest nice), so a shadow takes spare CPU, never
/// the live version's: what it cannot keep up with is dropped.
fn run_on_spare_cpu() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` outlives the call.
        let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
        if idle {
            return;
        }
        // SAFETY: plain syscalls on the calling thread's id.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
        }
    }
}

/// The shadow's view of state: the live call's reads first.
struct ShadowView {
    inner: Arc<dyn HostView>,
    /// The reads of the live call of the event being shadowed.
    reads: Mutex<HashMap<String, Option<Vec<u8>>>>,
}

impl HostView for ShadowView {
    fn state_get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(v) = self.reads.locked().get(key) {
            return Ok(v.clone());
        }
        self.inner.state_get(handler, key)
    }

    fn check_published(&self, event: &Event) -> Result<(), SchemaError> {
        self.inner.check_published(event)
    }
}

struct Runner {
    closed: Arc<std::sync::atomic::AtomicBool>,
    runtime: Arc<Runtime>,
    store: Arc<Store>,
    env: Arc<CallEnv>,
    view: Arc<ShadowView>,
    counters: Arc<ShadowCounters>,
    dropped: Arc<Mutex<HashMap<TallyKey, u64>>>,
    tallies: HashMap<TallyKey, ShadowTally>,
    diffs: Vec<ShadowDiff>,
    stored_diffs: HashMap<TallyKey, u64>,
}

impl Runner {
    fn run(mut self, jobs: Arc<Mutex<VecDeque<Job>>>) {
        run_on_spare_cpu();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the shadow runner; shadows will not run");
                return;
            }
        };
        let mut flushed = Instant::now();
        let mut taken = Vec::new();
        let mut idle = IDLE.0;
        loop {
            let closed = self.closed.load(Ordering::Relaxed);
            {
                let mut queue = jobs.locked();
                let n = queue.len().min(64);
                taken.extend(queue.drain(..n));
            }
            if closed {
                for job in taken.drain(..).chain(jobs.locked().drain(..)) {
                    drop_job(&self.counters, &self.dropped, &job);
                }
                break;
            }
            if taken.is_empty() {
                std::thread::sleep(idle);
                idle = (idle * 2).min(IDLE.1);
            } else {
                idle = IDLE.0;
            }
            for job in taken.drain(..) {
                if self.closed.load(Ordering::Relaxed) {
                    drop_job(&self.counters, &self.dropped, &job);
                } else {
                    rt.block_on(self.shadow(job));
                }
            }
            if flushed.elapsed() >= FLUSH_EVERY {
                self.flush();
                flushed = Instant::now();
            }
        }
        self.flush();
    }

    async fn shadow(&mut self, job: Job) {
        *self.view.reads.locked() = job.reads.into_iter().collect();
        let mut target = job.shadow.handle_ref();
        // Its requests are compared with the live call's.
        target.record_io = true;
        let inv = self
            .runtime
            .invoke(
                target,
                &job.event,
                &job.event.project_id,
                &job.origin,
                job.attempt,
                &self.env,
            )
            .await;
        let shadow = Observed::of(&inv.outcome, &inv.effects);
        let differs = job.live.differs(&shadow);
        let key = (
            job.shadow.name.clone(),
            job.shadow.version.clone(),
            job.live_version.clone(),
        );
        let tally = self.tallies.entry(key.clone()).or_default();
        if differs.is_empty() {
            tally.agreed += 1;
            self.counters.agreed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tally.differed += 1;
        self.counters.differed.fetch_add(1, Ordering::Relaxed);
        let stored = self.stored_diffs.entry(key).or_default();
        if *stored < MAX_DIFFS {
            *stored += 1;
            self.diffs.push(ShadowDiff {
                handler: job.shadow.name.to_string(),
                shadow_version: job.shadow.version.to_string(),
                live_version: job.live_version.to_string(),
                event_id: job.event.id.clone(),
                attempt: job.attempt,
                differs: differs.join(","),
                live: job.live.json(),
                shadow: shadow.json(),
                at: persona_bus_model::event::now_rfc3339(),
            });
        }
    }

    /// Writes the tallies and differences gathered since the last flush.
    fn flush(&mut self) {
        for (key, n) in std::mem::take(&mut *self.dropped.locked()) {
            self.tallies.entry(key).or_default().dropped += n;
        }
        if self.tallies.is_empty() && self.diffs.is_empty() {
            return;
        }
        let tallies: Vec<ShadowTally> = self
            .tallies
            .drain()
            .map(|((handler, shadow_version, live_version), t)| ShadowTally {
                handler: handler.to_string(),
                shadow_version: shadow_version.to_string(),
                live_version: live_version.to_string(),
                ..t
            })
            .collect();
        if let Err(e) = self.store.record_shadow(&tallies, &self.diffs) {
            tracing::warn!(error = %e, "cannot record what the shadows did; dropped");
        }
        self.diffs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Effects, RunOutcome};

    #[test]
    fn a_difference_is_named_by_what_differs() {
        let mut live = Effects::default();
        live.state.push(StateOp::Set("k".into(), b"1".to_vec()));
        let a = Observed::of(&RunOutcome::Completed, &live);
        assert!(a.differs(&a.clone()).is_empty());
        let mut other = live.clone();
        other.state[0] = StateOp::Set("k".into(), b"2".to_vec());
        let b = Observed::of(&RunOutcome::Completed, &other);
        assert_eq!(a.differs(&b), ["state"]);
        let c = Observed::of(&RunOutcome::Rejected("no".into()), &Effects::default());
        assert_eq!(a.differs(&c), ["outcome", "state"]);
    }
}
