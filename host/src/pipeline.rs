//! The pipeline: takes deliveries from the sources, runs them in lanes,
//! one per ordering unit, and hands durable outcomes back to each source's
//! [`Sink`].
//!
//! ```text
//! source ──submit──> lanes (one per project, in order) ──> committer ──> Sink::commit
//!                    tokio tasks on the handler threads     one thread,   (store, offsets,
//!                                                           batches       notices)
//! ```
//!
//! - **No batch barrier.** Each project with work has a lane: a task that
//!   takes its events one at a time, in the order they were submitted, and
//!   sends each outcome to the committer as soon as it is known. A slow call
//!   (up to its deadline) delays only the later events of its own project;
//!   every other lane keeps running, and the committer keeps committing
//!   whatever is ready, many outcomes per transaction.
//! - **Order per unit** holds for both sources: the SQLite poller claims
//!   in publish order and Kafka delivers a partition in order, and a lane
//!   never runs two events of its unit at once. The unit is the project
//!   unless a handler's `[ordering]` says otherwise: then its events run in
//!   a lane per (handler, project, key), or each alone, and the event is a
//!   [`Tracked`] one whose outcome waits for all its parts.
//! - **Batches.** A handler with `[batch]` has a lane of its own per unit
//!   (a [`KeyUnit`], keyless when it orders by project); the lane hands up
//!   to `max_events` of its queued events to one `handle-batch` call,
//!   waiting up to `max_wait_ms` for more while the batch is not full. The
//!   events the call did not settle run alone after it, in order
//!   (`Dispatcher::run_batch`).
//! - **Bounded.** At most `runtime.max_in_flight` events are between submit
//!   and commit; a source submitting more waits. A project whose lane holds
//!   `runtime.lane_depth` events is reported by [`Pipeline::full_lanes`], so
//!   the poller claims other projects' events instead of filling the pipeline
//!   with one stuck project.
//! - **State reads are serial per project.** Before a lane sends a
//!   completed outcome on, it puts the call's state writes in the overlay
//!   (`runtime::StateOverlay`), so the project's next event reads them
//!   although they are not committed yet; the committer drops them once
//!   committed. Outcomes are committed in the order they were sent, and a
//!   commit is retried until it lands (the sinks do that), so no outcome is
//!   ever committed before one whose writes it may have read.
//! - **A shutdown that ends.** [`Pipeline::close`] refuses new work at once,
//!   lets calls in flight finish for the grace period, then abandons the
//!   rest: nothing of theirs is committed, and each sink hears which events
//!   were abandoned (the SQLite one returns them to `pending`; the Kafka one
//!   stores no offset past them).

use crate::dispatch::{Delivery, Dispatcher, KeyUnit, Ledger, Part, Unit};
use crate::event::Event;
use crate::fast_map::FastMap;
use crate::manifest::Batching;
use crate::outcome::{Resolution, Run};
use crate::registry::LoadedHandler;
use crate::runtime::{Origin, Written};
use crate::store::StoreError;
use persona_bus_model::sync::{Locked, Waits};
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most outcomes committed in one transaction.
const COMMIT_BATCH: usize = 4096;
/// While more events are in flight than a batch holds, the committer waits
/// up to this long for their outcomes, until the batch has
/// [`LINGER_UNTIL`]. Under load each transaction then carries more
/// outcomes than the few that happen to be ready, and the writer (shared
/// with publishers and the poller, and the bottleneck of one-event
/// publishes) is held for less per event: the committer's share fell by
/// about a tenth here. An event alone in flight (a low rate) never waits.
const COMMIT_LINGER: Duration = Duration::from_micros(500);
const LINGER_UNTIL: usize = 64;

/// What a tracked event runs: its handlers still to run, grouped in parts.
struct Plan {
    subscribers: usize,
    earlier: Vec<String>,
    held: Vec<(Arc<str>, Arc<str>)>,
    parts: Vec<Part>,
}

/// An event's outcome with where it came from.
pub struct Finished {
    pub resolution: Resolution,
    pub origin: Origin,
}

/// Where a source's outcomes go. Called on the committer thread.
pub trait Sink: Send + Sync {
    /// Makes a batch of outcomes durable and does what follows (Kafka
    /// offsets, notices). The batch holds outcomes in the order they were
    /// ready: per project, that is submit order. Keeps trying while the
    /// store refuses the commit; returns false only if the host is
    /// stopping and the batch is still not committed (the committer then
    /// commits nothing after it: later outcomes may have read its writes).
    fn commit(&self, batch: Vec<Finished>) -> bool;
    /// Events whose calls were abandoned at shutdown: nothing of theirs was
    /// committed.
    fn abandoned(&self, events: Vec<(String, Origin)>);
}

/// Why [`Pipeline::submit`] did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the pipeline is closed (the host is shutting down)")]
    Closed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[expect(
    clippy::large_enum_variant,
    reason = "`Whole` is every event's job by default: boxing it would allocate once per event"
)]
enum Job {
    /// Every handler of the event, in its project's lane: how events run
    /// while every handler orders by project (the default).
    Whole {
        ticket: u64,
        delivery: Delivery,
        done: Vec<(String, String)>,
    },
    /// Some of a tracked event's handlers, in one unit (see [`Tracked`]).
    Part(PartJob),
}

struct PartJob {
    ticket: u64,
    event: Arc<Event>,
    origin: Origin,
    handlers: Vec<Arc<LoadedHandler>>,
    /// The unit's name in the state overlay.
    unit: String,
    trace: Option<Arc<crate::traces::EventSpan>>,
}

impl PartJob {
    /// `[batch]` of its handler, if this part can join a batch: a part of
    /// one handler that takes batches (of more than one event).
    fn batching(&self) -> Option<Batching> {
        match self.handlers.as_slice() {
            [h] => h.manifest.batch.filter(|b| b.max_events > 1),
            _ => None,
        }
    }

    /// Whether `other` can be in the same batch call: the same handler
    /// version (a reload between them starts a new batch).
    fn same_handler(&self, other: &PartJob) -> bool {
        matches!((self.handlers.as_slice(), other.handlers.as_slice()),
            ([a], [b]) if Arc::ptr_eq(a, b))
    }
}

/// A lane: a project's, or a key-ordered handler's key's.
#[derive(Clone, PartialEq, Eq, Hash)]
enum LaneId {
    Project(String),
    Key(KeyUnit),
}

/// An event whose handlers run in more than one unit, or in a unit other
/// than its project (some handler orders by key or not at all). Its parts
/// run in their lanes independently; its outcome is sent to the committer
/// once every part is done and every event before it in each of its lanes
/// has been sent: an outcome is never committed before one whose state
/// writes it may have read. While any event is tracked, every new event is
/// (so that order holds across a reload that changes handlers' ordering).
struct Tracked {
    /// Taken when its outcome is made.
    event: Option<Arc<Event>>,
    origin: Origin,
    /// Handlers still to run on it, and the ledger outcomes of the others.
    subscribers: usize,
    earlier: Vec<String>,
    /// Held handlers it waits for (see `dispatch::Subscribers`).
    held: Vec<(Arc<str>, Arc<str>)>,
    runs: Vec<Run>,
    written: Vec<Written>,
    parts_left: usize,
    /// Events before it in its lanes, not sent to the committer yet.
    waiting: usize,
    /// Events after it in its lanes that count it in their `waiting`.
    successors: Vec<u64>,
    lanes: Vec<LaneId>,
    trace: Option<Arc<crate::traces::EventSpan>>,
    /// The outcome, once every part is done.
    ready: Option<Ready>,
}

/// An outcome on its way to the committer.
struct Ready {
    ticket: u64,
    finished: Finished,
    /// The dispatch span, ended once the outcome is committed.
    trace: Option<crate::traces::EventSpan>,
    /// State its calls left in the overlay, released once committed.
    written: Vec<Written>,
}

/// What is in flight: submitted, not yet committed. The committer finds an
/// outcome's sink here, by its ticket.
struct Entry {
    event_id: String,
    origin: Origin,
    sink: Arc<dyn Sink>,
}

#[derive(Default)]
struct State {
    /// Queued events per project; a project is here while its lane task
    /// runs (an empty queue means its last event is being handled).
    lanes: FastMap<String, VecDeque<Job>>,
    /// The same for the units of key-ordered handlers.
    key_lanes: FastMap<KeyUnit, VecDeque<Job>>,
    tracked: FastMap<u64, Tracked>,
    /// The last tracked event queued in each lane, until it is sent.
    tails: FastMap<LaneId, u64>,
    in_flight: FastMap<u64, Entry>,
    next_ticket: u64,
    closed: bool,
}

impl State {
    /// The queue of lane `id`, while its lane task runs.
    fn queue(&mut self, id: &LaneId) -> Option<&mut VecDeque<Job>> {
        match id {
            LaneId::Project(p) => self.lanes.get_mut(p),
            LaneId::Key(k) => self.key_lanes.get_mut(k),
        }
    }

    /// Puts `delivery` on the books, in flight until committed; its ticket.
    fn admit(&mut self, delivery: &Delivery, sink: &Arc<dyn Sink>) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.in_flight.insert(
            ticket,
            Entry {
                event_id: delivery.event.id.clone(),
                origin: delivery.origin.clone(),
                sink: sink.clone(),
            },
        );
        ticket
    }
}

pub struct Pipeline {
    dispatcher: Arc<Dispatcher>,
    /// The handler threads. Taken at close.
    threads: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    state: Mutex<State>,
    /// Signalled whenever events leave the pipeline, or it closes.
    freed: Condvar,
    to_committer: Mutex<Option<mpsc::Sender<Ready>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    max_in_flight: usize,
    lane_depth: usize,
}

impl Pipeline {
    /// Starts `workers` handler threads and the committer thread.
    pub fn start(
        dispatcher: Arc<Dispatcher>,
        workers: usize,
        max_in_flight: usize,
        lane_depth: usize,
    ) -> std::io::Result<Arc<Self>> {
        let threads = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("handler")
            .enable_time()
            // Handlers' outbound HTTP (wasi:http) connects on these threads.
            .enable_io()
            .build()?;
        let (to_committer, ready) = mpsc::channel();
        let pipeline = Arc::new(Self {
            dispatcher,
            handle: threads.handle().clone(),
            threads: Mutex::new(Some(threads)),
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
            to_committer: Mutex::new(Some(to_committer)),
            committer: Mutex::new(None),
            max_in_flight: max_in_flight.max(1),
            lane_depth: lane_depth.max(1),
        });
        let weak = Arc::downgrade(&pipeline);
        let committer = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || commit_loop(weak, ready))?;
        *pipeline.committer.locked() = Some(committer);
        Ok(pipeline)
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Queues deliveries in their projects' lanes, in order; outcomes go to
    /// `sink` once durable. Waits while the pipeline is full (a batch larger
    /// than the whole bound is taken when the pipeline is empty).
    pub fn submit(
        self: &Arc<Self>,
        deliveries: Vec<Delivery>,
        sink: &Arc<dyn Sink>,
    ) -> Result<(), Refused> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut ledger = self.dispatcher.ledger_for(&deliveries)?;
        let n = deliveries.len();
        // Planning (matching, ordering keys) happens here, outside the
        // lock, when some handler orders otherwise than by project.
        let mut plans = if self.dispatcher.registry().snapshot().all_by_project() {
            None
        } else {
            Some(self.plan(&deliveries, &mut ledger))
        };
        let mut state = self.state.locked();
        while !state.closed
            && !state.in_flight.is_empty()
            && state.in_flight.len() + n > self.max_in_flight
        {
            state = self.freed.wait_on(state);
        }
        if state.closed {
            return Err(Refused::Closed);
        }
        if plans.is_none() && !state.tracked.is_empty() {
            // Tracked events are still in flight after a reload made every
            // handler project-ordered: these must be tracked too (rare).
            plans = Some(self.plan(&deliveries, &mut ledger));
        }
        if let Some(plans) = plans {
            return self.submit_tracked(state, deliveries, plans, sink);
        }
        let mut start = Vec::new();
        for delivery in deliveries {
            let ticket = state.admit(&delivery, sink);
            let done = ledger.remove(&delivery.event.id).unwrap_or_default();
            let project = delivery.event.project_id.clone();
            let job = Job::Whole {
                ticket,
                delivery,
                done,
            };
            match state.lanes.get_mut(&project) {
                Some(queue) => queue.push_back(job),
                None => {
                    state.lanes.insert(project.clone(), VecDeque::from([job]));
                    start.push(project);
                }
            }
        }
        drop(state);
        for project in start {
            self.handle
                .spawn(lane(self.clone(), LaneId::Project(project)));
        }
        Ok(())
    }

    /// Each delivery's ledger entries, handlers still to run and parts.
    fn plan(&self, deliveries: &[Delivery], ledger: &mut Ledger) -> Vec<Plan> {
        deliveries
            .iter()
            .map(|d| {
                let done = ledger.remove(&d.event.id).unwrap_or_default();
                let subs = self.dispatcher.subscribers(&d.event, &done);
                let subscribers = subs.handlers.len();
                let parts = self.dispatcher.plan(&d.event, subs.handlers);
                Plan {
                    subscribers,
                    earlier: subs.earlier,
                    held: subs.held,
                    parts,
                }
            })
            .collect()
    }

    /// [`Pipeline::submit`] for tracked events (see [`Tracked`]).
    fn submit_tracked(
        self: &Arc<Self>,
        mut state: std::sync::MutexGuard<'_, State>,
        deliveries: Vec<Delivery>,
        plans: Vec<Plan>,
        sink: &Arc<dyn Sink>,
    ) -> Result<(), Refused> {
        let to_committer = self.to_committer.locked().clone();
        let mut start = Vec::new();
        let mut alone = Vec::new();
        let mut finished = Vec::new();
        for (delivery, plan) in deliveries.into_iter().zip(plans) {
            let ticket = state.admit(&delivery, sink);
            let trace = self
                .dispatcher
                .traces()
                .dispatching(&delivery.event)
                .map(Arc::new);
            let event = Arc::new(delivery.event);
            let mut lanes = Vec::new();
            let mut waiting = 0;
            for part in plan.parts {
                let (lane, unit) = match part.unit {
                    Unit::Project => (
                        Some(LaneId::Project(event.project_id.clone())),
                        event.project_id.clone(),
                    ),
                    Unit::Key(k) => {
                        let unit = k.overlay_name();
                        (Some(LaneId::Key(k)), unit)
                    }
                    // Its own unit: no other call reads its pending writes
                    // (apart from projects and keys: see `KeyUnit`).
                    Unit::Alone => (None, format!("\n\n{}", event.id)),
                };
                let job = PartJob {
                    ticket,
                    event: event.clone(),
                    origin: delivery.origin.clone(),
                    handlers: part.handlers,
                    unit,
                    trace: trace.clone(),
                };
                let Some(lane) = lane else {
                    alone.push(job);
                    continue;
                };
                if let Some(before) = state.tails.insert(lane.clone(), ticket)
                    && let Some(t) = state.tracked.get_mut(&before)
                {
                    t.successors.push(ticket);
                    waiting += 1;
                }
                match state.queue(&lane) {
                    Some(queue) => queue.push_back(Job::Part(job)),
                    None => {
                        let queue = VecDeque::from([Job::Part(job)]);
                        match &lane {
                            LaneId::Project(p) => state.lanes.insert(p.clone(), queue),
                            LaneId::Key(k) => state.key_lanes.insert(k.clone(), queue),
                        };
                        start.push(lane.clone());
                    }
                }
                lanes.push(lane);
            }
            let parts_left = lanes.len() + alone.iter().filter(|j| j.ticket == ticket).count();
            state.tracked.insert(
                ticket,
                Tracked {
                    event: Some(event),
                    origin: delivery.origin,
                    subscribers: plan.subscribers,
                    earlier: plan.earlier,
                    held: plan.held,
                    runs: Vec::new(),
                    written: Vec::new(),
                    parts_left,
                    waiting,
                    successors: Vec::new(),
                    lanes,
                    trace,
                    ready: None,
                },
            );
            if parts_left == 0 {
                // No handler to run (none matches, or all finished it).
                finished.push(ticket);
            }
        }
        for ticket in finished {
            self.complete(&mut state, ticket, to_committer.as_ref());
        }
        drop(state);
        for lane_id in start {
            self.handle.spawn(lane(self.clone(), lane_id));
        }
        for job in alone {
            let pipeline = self.clone();
            self.handle
                .spawn(async move { pipeline.run_part(job).await });
        }
        Ok(())
    }

    /// Runs one part of a tracked event, puts its calls' state writes in
    /// the overlay (its unit's next event reads them), and records it.
    async fn run_part(self: &Arc<Self>, job: PartJob) {
        let PartJob {
            ticket,
            event,
            origin,
            handlers,
            unit,
            trace,
        } = job;
        let runs = self
            .dispatcher
            .run_handlers(&event, &handlers, &unit, &origin, trace.as_deref())
            .await;
        drop((event, trace));
        self.part_done(ticket, runs, &unit);
    }

    /// Runs a batch of parts: one handler's, of one unit, in order (see
    /// `Dispatcher::run_batch`). The events the batch call did not settle
    /// run alone after it, each reading what the ones before it wrote.
    async fn run_batch(self: &Arc<Self>, jobs: Vec<PartJob>) {
        let handler = jobs[0].handlers[0].clone();
        let unit = jobs[0].unit.clone();
        let events: Vec<_> = jobs
            .iter()
            .map(|j| (j.event.clone(), j.origin.clone(), j.trace.clone()))
            .collect();
        let settled = self.dispatcher.run_batch(&handler, &events, &unit).await;
        drop(events);
        for (job, run) in jobs.into_iter().zip(settled) {
            let runs = match run {
                Some(run) => vec![run],
                None => {
                    self.dispatcher
                        .run_handlers(
                            &job.event,
                            &job.handlers,
                            &unit,
                            &job.origin,
                            job.trace.as_deref(),
                        )
                        .await
                }
            };
            self.part_done(job.ticket, runs, &unit);
        }
    }

    /// A part of `ticket` ran: puts its calls' state writes in the overlay
    /// (its unit's next event reads them), and records it.
    fn part_done(&self, ticket: u64, mut runs: Vec<Run>, unit: &str) {
        let written = self.leave_writes(&mut runs, unit);
        let to_committer = self.to_committer.locked().clone();
        let mut state = self.state.locked();
        let Some(t) = state.tracked.get_mut(&ticket) else {
            // Closed meanwhile: abandoned with the rest.
            return;
        };
        t.runs.extend(runs);
        t.written.extend(written);
        t.parts_left -= 1;
        if t.parts_left == 0 {
            self.complete(&mut state, ticket, to_committer.as_ref());
        }
    }

    /// Moves whatever the shared queue of lane `id` holds to the back of
    /// `jobs`; false if it held nothing.
    fn take_queued(&self, id: &LaneId, jobs: &mut VecDeque<Job>) -> bool {
        let mut state = self.state.locked();
        match state.queue(id) {
            Some(queue) if !queue.is_empty() => {
                jobs.extend(queue.drain(..));
                true
            }
            _ => false,
        }
    }

    /// Puts what `runs` wrote in the state overlay under `unit`, for the
    /// unit's next calls to read until it is committed; what to release
    /// then.
    fn leave_writes(&self, runs: &mut [Run], unit: &str) -> Vec<Written> {
        let overlay = &self.dispatcher.env().overlay;
        let mut written = Vec::new();
        for run in runs {
            let view = std::mem::take(&mut run.effects.view);
            if !view.is_empty() {
                written.push(overlay.apply(&run.handler, unit, view));
            }
        }
        written
    }

    /// Every part of `ticket` is done: its outcome is ready, and sent with
    /// every outcome it held back once nothing before them is unsent.
    fn complete(&self, state: &mut State, ticket: u64, to_committer: Option<&mpsc::Sender<Ready>>) {
        let Some(t) = state.tracked.get_mut(&ticket) else {
            return;
        };
        let Some(event) = t.event.take() else {
            return;
        };
        let event = Arc::try_unwrap(event).unwrap_or_else(|shared| (*shared).clone());
        let mut trace = t.trace.take().and_then(|span| Arc::try_unwrap(span).ok());
        let runs = std::mem::take(&mut t.runs);
        let resolution = self.dispatcher.finish(
            event,
            t.subscribers,
            &t.earlier,
            &t.held,
            runs,
            trace.as_mut(),
        );
        t.ready = Some(Ready {
            ticket,
            finished: Finished {
                resolution,
                origin: t.origin.clone(),
            },
            trace,
            written: std::mem::take(&mut t.written),
        });
        if t.waiting > 0 {
            return;
        }
        // Sent under the state lock, so an outcome always reaches the
        // committer before the outcomes that waited for it.
        let mut send = vec![ticket];
        while let Some(ticket) = send.pop() {
            let Some(mut t) = state.tracked.remove(&ticket) else {
                continue;
            };
            for lane in &t.lanes {
                if state.tails.get(lane) == Some(&ticket) {
                    state.tails.remove(lane);
                }
            }
            for s in std::mem::take(&mut t.successors) {
                if let Some(next) = state.tracked.get_mut(&s) {
                    next.waiting -= 1;
                    if next.waiting == 0 && next.ready.is_some() {
                        send.push(s);
                    }
                }
            }
            if let (Some(ready), Some(tx)) = (t.ready.take(), to_committer) {
                // Closed: abandoned with the rest.
                let _ = tx.send(ready);
            }
        }
    }

    /// Projects whose lanes are full, their own or one of their keys':
    /// claim none of their events for now (a slow key holds up its project's
    /// claims, never the memory of the whole pipeline).
    pub fn full_lanes(&self) -> Vec<String> {
        let state = self.state.locked();
        let mut full: Vec<String> = state
            .lanes
            .iter()
            .filter(|(_, q)| q.len() >= self.lane_depth)
            .map(|(p, _)| p.clone())
            .collect();
        for (k, q) in &state.key_lanes {
            if q.len() >= self.lane_depth && !full.contains(&k.project) {
                full.push(k.project.clone());
            }
        }
        full
    }

    /// Waits until the pipeline has room, and returns how many events it
    /// can take now without waiting (any number when nothing is in
    /// flight; 0 once it is closed).
    pub fn wait_for_room(&self) -> usize {
        let mut state = self.state.locked();
        while !state.closed && state.in_flight.len() >= self.max_in_flight {
            state = self.freed.wait_on(state);
        }
        if state.closed {
            0
        } else if state.in_flight.is_empty() {
            usize::MAX
        } else {
            self.max_in_flight - state.in_flight.len()
        }
    }

    /// Whether `events` would be taken now without waiting, after `queued`
    /// others: the pipeline is open and has room for them all, and none of
    /// their projects' lanes is full. (A publish hands its events over only
    /// then, and otherwise leaves them `pending` for the poller.)
    pub fn would_take(&self, events: &[crate::event::Event], queued: usize) -> bool {
        let state = self.state.locked();
        let after = state.in_flight.len() + queued;
        !state.closed
            && (after == 0 || after + events.len() <= self.max_in_flight)
            && events.iter().all(|e| {
                state
                    .lanes
                    .get(&e.project_id)
                    .is_none_or(|q| q.len() < self.lane_depth)
            })
    }

    /// Ids of the events in flight (the reaper leaves them alone).
    pub fn in_flight_ids(&self) -> Vec<String> {
        self.state
            .locked()
            .in_flight
            .values()
            .map(|e| e.event_id.clone())
            .collect()
    }

    /// Waits until nothing is in flight, or `timeout` has passed; true when
    /// idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let until = Instant::now().checked_add(timeout);
        let mut state = self.state.locked();
        while !state.in_flight.is_empty() {
            state = match until {
                None => self.freed.wait_on(state),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.freed.wait_on_for(state, left)
                }
            };
        }
        true
    }

    /// Refuses new work at once, waits up to `grace` for what is in flight,
    /// then abandons the rest (see the module doc). Returns how many events
    /// were abandoned. Idempotent.
    pub fn close(&self, grace: Duration) -> usize {
        {
            let mut state = self.state.locked();
            state.closed = true;
        }
        self.freed.notify_all();
        let idle = self.wait_idle(grace);
        // Stop the handler threads: a lane still running is dropped at its
        // next await point (a running guest yields at every epoch tick), and
        // with it the instance and the call's buffered effects.
        if let Some(threads) = self.threads.locked().take() {
            threads.shutdown_background();
        }
        // Let the committer finish what was handed to it, then stop.
        drop(self.to_committer.locked().take());
        if let Some(committer) = self.committer.locked().take() {
            let _ = committer.join();
        }
        // Whatever is left was never committed.
        let left: Vec<Entry> = {
            let mut state = self.state.locked();
            state.lanes.clear();
            state.key_lanes.clear();
            state.tracked.clear();
            state.tails.clear();
            state.in_flight.drain().map(|(_, e)| e).collect()
        };
        self.freed.notify_all();
        let abandoned = left.len();
        if !idle && abandoned > 0 {
            tracing::warn!(
                events = abandoned,
                grace_ms = grace.as_millis() as u64,
                "shutdown: handler calls still running after the grace period were abandoned; their events are handled again after a restart"
            );
        }
        for (sink, events) in by_sink(left.into_iter().map(|e| (e.sink, (e.event_id, e.origin)))) {
            sink.abandoned(events);
        }
        abandoned
    }

    /// The sinks of these in-flight events, in order.
    fn sinks_of(&self, tickets: &[u64]) -> Vec<Arc<dyn Sink>> {
        let state = self.state.locked();
        // Entries leave only through `retire` (after their commit) or
        // `close` (after the committer has stopped): all are still here.
        tickets
            .iter()
            .map(|t| state.in_flight[t].sink.clone())
            .collect()
    }

    /// Events submitted and not yet committed.
    fn in_flight(&self) -> usize {
        self.state.locked().in_flight.len()
    }

    /// The committer took these outcomes off the books.
    fn retire(&self, tickets: &[u64]) {
        let mut state = self.state.locked();
        for t in tickets {
            state.in_flight.remove(t);
        }
        drop(state);
        self.freed.notify_all();
    }
}

/// One lane: its events, one at a time, in submit order. It takes
/// everything queued at once (one lock per wave, not per event: the lock is
/// shared with every other lane and the sources) and ends when it finds the
/// queue empty.
async fn lane(pipeline: Arc<Pipeline>, id: LaneId) {
    let Some(to_committer) = pipeline.to_committer.locked().clone() else {
        return;
    };
    // The lane's queue and this buffer trade places at each turn, so
    // neither is grown again from nothing: jobs are large, and a queue
    // taken empty regrew push by push, moving them all at each growth.
    let mut jobs = VecDeque::new();
    loop {
        {
            let mut state = pipeline.state.locked();
            match state.queue(&id) {
                Some(queue) if !queue.is_empty() => std::mem::swap(queue, &mut jobs),
                _ => {
                    match &id {
                        LaneId::Project(p) => state.lanes.remove(p),
                        LaneId::Key(k) => state.key_lanes.remove(k),
                    };
                    return;
                }
            }
        }
        while let Some(job) = jobs.pop_front() {
            let (ticket, delivery, done) = match job {
                Job::Part(part) => {
                    match part.batching() {
                        Some(b) => {
                            let batch = gather(&pipeline, &id, part, &mut jobs, b).await;
                            if batch.len() == 1 {
                                // A batch of one is a `handle` call.
                                let part = batch.into_iter().next().expect("one part");
                                pipeline.run_part(part).await;
                            } else {
                                pipeline.run_batch(batch).await;
                            }
                        }
                        None => pipeline.run_part(part).await,
                    }
                    continue;
                }
                Job::Whole {
                    ticket,
                    delivery,
                    done,
                } => (ticket, delivery, done),
            };
            let origin = delivery.origin;
            let (mut resolution, trace) = pipeline
                .dispatcher
                .resolve(delivery.event, &done, &origin)
                .await;
            // Before the outcome goes on: the project's next event reads
            // these writes (only completed calls have any).
            let written = pipeline.leave_writes(&mut resolution.runs, &resolution.event.project_id);
            let ready = Ready {
                ticket,
                finished: Finished { resolution, origin },
                trace,
                written,
            };
            if to_committer.send(ready).is_err() {
                // Closed: this outcome is abandoned with the rest.
                return;
            }
        }
    }
}

/// The batch that starts with `first`: the parts after it in the lane for
/// the same handler version, up to `max_events`, waiting up to `max_wait`
/// for more to be queued while it is not full.
async fn gather(
    pipeline: &Pipeline,
    id: &LaneId,
    first: PartJob,
    jobs: &mut VecDeque<Job>,
    b: Batching,
) -> Vec<PartJob> {
    let max = b.max_events as usize;
    let until = Instant::now() + b.max_wait;
    let mut batch = vec![first];
    loop {
        while batch.len() < max {
            match jobs.front() {
                Some(Job::Part(next)) if next.same_handler(&batch[0]) => {
                    let Some(Job::Part(next)) = jobs.pop_front() else {
                        unreachable!("just matched")
                    };
                    batch.push(next);
                }
                _ => break,
            }
        }
        // Full, or the lane holds other work next: run what there is.
        if batch.len() >= max || !jobs.is_empty() {
            return batch;
        }
        if pipeline.take_queued(id, jobs) {
            continue;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return batch;
        }
        tokio::time::sleep(left.min(BATCH_POLL)).await;
        pipeline.take_queued(id, jobs);
    }
}

/// How often a batch waiting to fill looks at its lane's queue.
const BATCH_POLL: Duration = Duration::from_millis(1);

/// Commits whatever outcomes are ready, in batches, until the pipeline
/// closes.
fn commit_loop(pipeline: std::sync::Weak<Pipeline>, ready: mpsc::Receiver<Ready>) {
    while let Ok(first) = ready.recv() {
        // Room for a lingered batch up front: an outcome is large, and
        // growing the vector one push at a time moved them all each time.
        let mut batch = Vec::with_capacity(LINGER_UNTIL);
        batch.push(first);
        while batch.len() < COMMIT_BATCH {
            match ready.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(pipeline) = pipeline.upgrade() else {
            return;
        };
        let until = Instant::now() + COMMIT_LINGER;
        while batch.len() < LINGER_UNTIL && pipeline.in_flight() > batch.len() {
            match ready.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        tracing::debug!(outcomes = batch.len(), "committing");
        let tickets: Vec<u64> = batch.iter().map(|r| r.ticket).collect();
        let sinks = pipeline.sinks_of(&tickets);
        let started = std::time::SystemTime::now();
        let overlay = &pipeline.dispatcher.env().overlay;
        let tracer = pipeline.dispatcher.traces();
        // In order, a run of outcomes of one sink at a time: a later
        // outcome may have read an earlier one's writes.
        let mut batch = batch.into_iter();
        let mut sinks = sinks.into_iter().peekable();
        let mut at = 0;
        while let Some(sink) = sinks.next() {
            let mut n = 1;
            while sinks.next_if(|s| Arc::ptr_eq(s, &sink)).is_some() {
                n += 1;
            }
            let tickets = &tickets[at..at + n];
            at += n;
            let mut traces = Vec::new();
            let mut written = Vec::new();
            let finished = batch
                .by_ref()
                .take(n)
                .map(|r| {
                    traces.extend(r.trace);
                    written.extend(r.written);
                    r.finished
                })
                .collect();
            if !sink.commit(finished) {
                // Stopping, and the store still refuses: these and every
                // later outcome stay uncommitted, and `close` abandons them.
                tracing::warn!(
                    outcomes = tickets.len(),
                    "stopping with outcomes the store did not take; the committer commits nothing after them"
                );
                return;
            }
            overlay.release(written);
            pipeline.retire(tickets);
            for span in traces {
                tracer.committed(span, started);
            }
        }
    }
}

/// Items grouped by sink, in order within each. Usually one sink; two or
/// three while the source switches.
type BySink<T> = Vec<(Arc<dyn Sink>, Vec<T>)>;

fn by_sink<T>(items: impl IntoIterator<Item = (Arc<dyn Sink>, T)>) -> BySink<T> {
    let mut groups: BySink<T> = Vec::new();
    for (sink, item) in items {
        match groups.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &sink)) {
            Some((_, group)) => group.push(item),
            None => groups.push((sink, vec![item])),
        }
    }
    groups
}
