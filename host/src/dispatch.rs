//! Dispatch: runs the matching handlers on one event and turns what they
//! did into a [`Resolution`] for the store to commit.
//!
//! Which events run when, and in what order, is the pipeline's business
//! ([`crate::pipeline`]): it calls [`Dispatcher::resolve`] from a project's
//! lane, one event at a time.

use crate::candidates::Rollouts;
use crate::candidates::canary::CanaryWatch;
use crate::candidates::shadow::Shadows;
use crate::event::{Event, now_millis};
use crate::manifest::OrderBy;
use crate::outcome::RunOutcome;
use crate::outcome::{Resolution, Run, Verdict};
use crate::registry::{LoadedHandler, Registry};
use crate::runtime::{CallEnv, Invocation, Origin, Runtime};
use crate::store::{Store, StoreError};
use crate::traces::{EventSpan, Traces};
use persona_bus_model::sync::ReadWrite;
use std::collections::HashMap;
use std::sync::Arc;

/// Ledger entries (handler, outcome) per event id.
pub type Ledger = HashMap<String, Vec<(String, String)>>;

pub struct Dispatcher {
    runtime: Arc<Runtime>,
    store: Arc<Store>,
    registry: Arc<Registry>,
    env: Arc<CallEnv>,
    /// Spans of dispatches and handler calls (a no-op when tracing is off).
    traces: Arc<Traces>,
    native: std::sync::RwLock<Option<NativeHandler>>,
    /// Shadows and canaries of the handlers (see [`crate::candidates`]).
    rollouts: Rollouts,
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
        traces: Arc<Traces>,
    ) -> std::io::Result<Self> {
        let rollouts = Rollouts {
            shadows: Shadows::start(runtime.clone(), store.clone(), &env)?,
            canaries: CanaryWatch::new(store.clone()),
        };
        Ok(Self {
            runtime,
            store,
            registry,
            env,
            traces,
            native: std::sync::RwLock::new(None),
            rollouts,
        })
    }

    /// Shadows and canaries (their counters, for `/metrics`).
    pub fn rollouts(&self) -> &Rollouts {
        &self.rollouts
    }

    /// Calls `f` instead of the handlers' components from now on (None:
    /// back to WebAssembly). See [`NativeHandler`].
    pub fn set_native(&self, f: Option<NativeHandler>) {
        *self.native.write_locked() = f;
    }

    /// What handlers see of the host (state, limits, the publish check).
    pub fn env(&self) -> &Arc<CallEnv> {
        &self.env
    }

    /// Spans of dispatches and handler calls.
    pub fn traces(&self) -> &Arc<Traces> {
        &self.traces
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The ledger entries of a batch: which handlers already finished which
    /// of these events, so they are not run again. One query per batch, and
    /// only for events that can have entries: first deliveries from SQLite,
    /// nearly all of them, are skipped.
    pub fn ledger_for(&self, deliveries: &[Delivery]) -> Result<Ledger, StoreError> {
        self.store.processed_for(
            deliveries
                .iter()
                .filter(|d| d.seen_before())
                .map(|d| d.event.id.as_str()),
        )
    }

    /// Runs every matching handler that has not finished `event` yet
    /// (`done`, from its ledger), one after the other, each under its own
    /// limits and deadline: every handler in the project's unit.
    pub async fn resolve(
        &self,
        event: Event,
        done: &[(String, String)],
        origin: &Origin,
    ) -> (Resolution, Option<EventSpan>) {
        let mut trace = self.traces.dispatching(&event);
        let subs = self.subscribers(&event, done);
        let runs = self
            .run_handlers(
                &event,
                &subs.handlers,
                &event.project_id,
                origin,
                trace.as_ref(),
            )
            .await;
        let resolution = self.finish(
            event,
            subs.handlers.len(),
            &subs.earlier,
            &subs.held,
            runs,
            trace.as_mut(),
        );
        (resolution, trace)
    }

    /// The handlers `event` is for now, without those its ledger says
    /// finished it (`done`); those finished outcomes; and the held
    /// handlers it must wait for.
    pub fn subscribers(&self, event: &Event, done: &[(String, String)]) -> Subscribers {
        if event.chain_depth > self.env.limits.max_chain_depth {
            // Only an event from a host with a laxer limit gets here.
            tracing::warn!(event_id = %event.id, depth = event.chain_depth, "not dispatching: chain too deep");
            return Subscribers::default();
        }
        let snapshot = self.registry.snapshot();
        let mut earlier = Vec::new();
        let mut held = Vec::new();
        let canaries = !snapshot.candidates.is_empty();
        // A handler its ledger says finished the event: its outcome goes
        // to `earlier`, and it runs (or waits) no more.
        let mut finished = |name: &str| match done.iter().find(|(n, _)| n == name) {
            Some((_, outcome)) => {
                earlier.push(outcome.clone());
                true
            }
            None => false,
        };
        let mut handlers = Vec::new();
        for name in snapshot.matcher.subscribers(event) {
            match snapshot.handlers.get(&name) {
                Some(h) => {
                    let h = match canaries {
                        true => snapshot.version_for(h, &event.project_id),
                        false => h,
                    };
                    if !finished(&h.name) {
                        handlers.push(h.clone());
                    }
                }
                None => {
                    if let Some(why) = snapshot.held.get(&name)
                        && !finished(&name)
                    {
                        held.push((name, why.clone()));
                    }
                }
            }
        }
        Subscribers {
            handlers,
            earlier,
            held,
        }
    }

    /// Which handlers of `event` run in which unit (see
    /// [`crate::manifest::OrderBy`]): the project-ordered ones together in
    /// the project's unit, each key-ordered one in its key's unit, each
    /// unordered one alone. A handler that takes batches has a lane of its
    /// own for its unit, where its events gather.
    pub fn plan(&self, event: &Event, handlers: Vec<Arc<LoadedHandler>>) -> Vec<Part> {
        let mut parts: Vec<Part> = Vec::new();
        let mut project = Vec::new();
        for h in handlers {
            match &h.manifest.ordering {
                OrderBy::Project if h.manifest.batch.is_some() => parts.push(Part {
                    unit: Unit::Key(KeyUnit {
                        handler: h.name.clone(),
                        project: event.project_id.clone(),
                        key: None,
                    }),
                    handlers: vec![h],
                }),
                OrderBy::Project => project.push(h),
                OrderBy::Key(source) => {
                    let key = source.key_of(event);
                    parts.push(Part {
                        unit: Unit::Key(KeyUnit {
                            handler: h.name.clone(),
                            project: event.project_id.clone(),
                            key: Some(key),
                        }),
                        handlers: vec![h],
                    });
                }
                OrderBy::None => parts.push(Part {
                    unit: Unit::Alone,
                    handlers: vec![h],
                }),
            }
        }
        if !project.is_empty() {
            parts.insert(
                0,
                Part {
                    unit: Unit::Project,
                    handlers: project,
                },
            );
        }
        parts
    }

    /// Runs `handler`'s `handle-batch` on `events` (one unit's, in order):
    /// for each event, its run if the batch call settled it, or None if it
    /// must run again alone (through `handle`, not counted as an attempt),
    /// after the settled ones before it. The settled ones are always a
    /// prefix. `wit/bus.wit` (world `batch-handler`) states the contract.
    pub async fn run_batch(
        &self,
        handler: &Arc<LoadedHandler>,
        events: &[Batched],
        unit: &str,
    ) -> Vec<Option<Run>> {
        let started = std::time::SystemTime::now();
        let inv = self
            .runtime
            .invoke_batch(
                handler.handle_ref(),
                events
                    .iter()
                    .map(|(e, origin, _)| (e.clone(), origin.clone(), e.retry_count + 1))
                    .collect(),
                unit,
                &self.env,
            )
            .await;
        let mut settled: Vec<Option<Run>> = Vec::with_capacity(events.len());
        let share = inv.duration / (inv.taken.max(1) as u32);
        let run_of = |i: usize, outcome, effects, note| {
            let (event, _, trace) = &events[i];
            let attempt = event.retry_count + 1;
            let inv = Invocation {
                outcome,
                effects,
                started_at: inv.started_at.clone(),
                duration: share,
                note,
            };
            self.run_of(handler, event, attempt, inv, trace.as_deref(), started)
        };
        match inv.per_event {
            Err(failure) if inv.taken <= 1 => {
                // Only the first event ran: the failure is its own.
                settled.push(Some(run_of(0, failure, Default::default(), inv.note)));
            }
            Err(failure) => {
                let why = failure.error().unwrap_or_default();
                tracing::warn!(handler = %handler.name, events = events.len(), taken = inv.taken,
                    "a batch call failed as a whole ({why}); its events run again alone");
            }
            Ok(taken) => {
                let calls = inv.taken as u32;
                for (i, t) in taken.into_iter().enumerate() {
                    let failed_with_writes = t.outcome != RunOutcome::Completed && t.wrote;
                    let mut run = run_of(i, t.outcome, t.effects, t.note);
                    run.call_events = if i == 0 { calls } else { 0 };
                    settled.push(Some(run));
                    if failed_with_writes {
                        // The events after it may have read what it wrote,
                        // which is never committed: they run again alone.
                        break;
                    }
                }
            }
        }
        if self.registry.has_candidates() {
            let snapshot = self.registry.snapshot();
            for (run, (event, origin, _)) in settled.iter_mut().zip(events) {
                if let Some(run) = run {
                    self.rollouts
                        .after_run(&snapshot, handler, event, origin, run);
                }
            }
        }
        settled.resize_with(events.len(), || None);
        settled
    }

    /// Runs `handlers` on `event` one after the other, each under its own
    /// limits and deadline, reading the pending state of `unit`.
    pub async fn run_handlers(
        &self,
        event: &Event,
        handlers: &[Arc<LoadedHandler>],
        unit: &str,
        origin: &Origin,
        trace: Option<&EventSpan>,
    ) -> Vec<Run> {
        let native = self.native.read_locked().clone();
        let attempt = event.retry_count + 1;
        let mut runs = Vec::with_capacity(handlers.len());
        let candidates = self
            .registry
            .has_candidates()
            .then(|| self.registry.snapshot());
        for handler in handlers {
            let mut target = handler.handle_ref();
            target.record_io = candidates
                .as_ref()
                .is_some_and(|s| s.shadow_of(&handler.name).is_some());
            let started = std::time::SystemTime::now();
            let clock = std::time::Instant::now();
            // A panic in host code during the call (a host import, the
            // runtime) fails this run like a trap, instead of killing the
            // lane and leaving the event in flight.
            let inv = match &native {
                None => {
                    let call = std::pin::pin!(
                        self.runtime
                            .invoke(target, event, unit, origin, attempt, &self.env,)
                    );
                    CatchPanic(call).await
                }
                Some(f) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    call_native(f, &handler.name, event)
                }))
                .map_err(panic_message),
            }
            .unwrap_or_else(|message| panicked(message, started, clock));
            let mut run = self.run_of(handler, event, attempt, inv, trace, started);
            if let Some(snapshot) = &candidates {
                self.rollouts
                    .after_run(snapshot, handler, event, origin, &mut run);
            }
            runs.push(run);
        }
        runs
    }

    /// The record of one handler's attempt at `event`.
    fn run_of(
        &self,
        handler: &LoadedHandler,
        event: &Event,
        attempt: u32,
        inv: Invocation,
        trace: Option<&EventSpan>,
        started: std::time::SystemTime,
    ) -> Run {
        let verdict = Verdict::decide(&inv.outcome, attempt, &handler.manifest.retry, now_millis());
        if let Some(error) = inv.outcome.error() {
            tracing::warn!(handler = %handler.name, event_id = %event.id, attempt, verdict = ?verdict, "{error}");
        }
        let mut run = handler.run(attempt, inv, verdict);
        if let Some(t) = trace {
            self.traces.handler_ran(t, &mut run, started);
        }
        run
    }

    /// What happens to `event` after `runs`: its [`Resolution`].
    pub fn finish(
        &self,
        event: Event,
        subscribers: usize,
        earlier: &[String],
        held: &[(Arc<str>, Arc<str>)],
        runs: Vec<Run>,
        trace: Option<&mut EventSpan>,
    ) -> Resolution {
        let mut resolution = Resolution::summarize(event, subscribers, earlier, runs);
        if !held.is_empty() {
            resolution = resolution.waiting_for(held, crate::event::now_millis() + WAIT_MS);
        }
        if let (Some(t), crate::outcome::Next::Final { error: Some(e), .. }) =
            (trace, &resolution.next)
        {
            t.set_error(e.clone());
        }
        resolution
    }
}

/// How long an event waits for a held handler before it is tried again,
/// unless a reload wakes it first (see `Registry::reload`).
const WAIT_MS: i64 = 30_000;

/// The handlers an event is for now (see [`Dispatcher::subscribers`]).
#[derive(Default)]
pub struct Subscribers {
    pub handlers: Vec<Arc<LoadedHandler>>,
    /// The ledger outcomes of those that finished it in earlier attempts.
    pub earlier: Vec<String>,
    /// Held handlers (refused by `[trust]`, or not pulled yet) it waits
    /// for, with why.
    pub held: Vec<(Arc<str>, Arc<str>)>,
}

/// An event of a batch: where it came from, and its dispatch span.
pub type Batched = (Arc<Event>, Origin, Option<Arc<EventSpan>>);

/// Handlers of one event that run in one ordering unit.
pub struct Part {
    pub unit: Unit,
    pub handlers: Vec<Arc<LoadedHandler>>,
}

/// An ordering unit: its events run one at a time, in order, and its
/// handlers' calls read each other's pending state writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Unit {
    /// The event's project (handlers ordered by project).
    Project,
    /// A handler's events of one project with one key.
    Key(KeyUnit),
    /// The event alone (a handler with no order).
    Alone,
}

/// A lane of one handler: its events of one project with one key, or, for
/// a project-ordered handler that takes batches, all its events of the
/// project (`key: None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyUnit {
    pub handler: Arc<str>,
    pub project: String,
    pub key: Option<String>,
}

impl KeyUnit {
    /// The unit's name in the state overlay: the project's for a project
    /// lane; for a key, apart from every project's, since a project id is
    /// trimmed and so never starts with a newline, and from every other
    /// key's (the project's length comes first).
    pub fn overlay_name(&self) -> String {
        match &self.key {
            None => self.project.clone(),
            Some(key) => format!("\n{}:{}\n{}", self.project.len(), self.project, key),
        }
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

/// A run whose call panicked in host code.
fn panicked(
    message: String,
    started: std::time::SystemTime,
    clock: std::time::Instant,
) -> crate::runtime::Invocation {
    crate::runtime::Invocation {
        outcome: crate::outcome::RunOutcome::Failed {
            kind: crate::outcome::FailureKind::Trap,
            message: format!("the host panicked during the call: {message}"),
        },
        effects: Default::default(),
        started_at: humantime::format_rfc3339_micros(started).to_string(),
        duration: clock.elapsed(),
        note: None,
    }
}

/// Polls a future, and answers `Err(message)` if it panics (it is not
/// polled again; dropping it drops the call's store and slots).
struct CatchPanic<'a, F>(std::pin::Pin<&'a mut F>);

impl<F: std::future::Future> std::future::Future for CatchPanic<'_, F> {
    type Output = Result<F::Output, String>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic_message(panic))),
        }
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(s) => *s,
        Err(panic) => match panic.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}
