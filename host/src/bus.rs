//! The bus: the store, the runtime, the registry, the pipeline and the
//! sources, wired together. [`Bus::open`] validates and loads everything
//! before any event moves; [`Bus::start`] starts the sources;
//! [`Bus::shutdown`] stops them, giving calls in flight
//! `shutdown_grace_ms` to finish.

use crate::call_host::CallHost;
use crate::config::Config;
use crate::context::HostContext;
pub use crate::context::Notice;
use crate::dispatch::Dispatcher;
use crate::event::{Event, EventError, EventLimits, NewEvent};
use crate::pipeline::{Pipeline, Sink};
use crate::registry::Registry;
use crate::runtime::{CallEnv, Runtime, RuntimeError};
use crate::source::{SourceContext, commit_published, poller};
use crate::store::{GroupCommit, Role, Store, StoreError, Sync};
use crate::supervisor::{StartError, Supervisor};
use crate::switch::SourceSwitch;
use crate::wakeup::Wakeup;
use persona_bus_model::sync::Locked;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Why the bus could not start or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("invalid event: {0}")]
    Event(#[from] EventError),
    #[error("another persona-bus host is already running on {0} (one host per data directory)")]
    Locked(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaError),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// The kind of write publishes make, in `HostContext::store_health`.
const PUBLISH: &str = "publish";

pub struct Bus {
    ctx: Arc<HostContext>,
    pipeline: Arc<Pipeline>,
    /// Where the outcomes of events claimed from SQLite go.
    sqlite: Arc<dyn Sink>,
    limits: EventLimits,
    inserts: GroupCommit,
    /// Publishes may be handed to the poller already claimed (set once the
    /// poller runs).
    handing_over: AtomicBool,
    /// Whether the sources were started (`start` is idempotent).
    started: Mutex<bool>,
    /// Every thread of the host but the pipeline's: the sources, the
    /// outbox relay, the WAL checkpointer, the handlers watcher, the
    /// alerts, the retention thread. Stopped by the context's token.
    tasks: Supervisor,
    /// Held for the life of the bus: one host per data directory.
    _lock: File,
}

impl Bus {
    /// Opens the store, takes the host lock, returns rows a crashed host
    /// left in `processing`, starts the runtime and loads the handlers.
    pub fn open(config: Config) -> Result<Self, BusError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BusError::Io {
            what: format!("create {}", config.data_dir.display()),
            source,
        })?;
        let lock = take_lock(&config)?;
        let store = Arc::new(Store::open_tuned(
            &config.data_dir,
            Sync::Normal,
            Role::Host,
            config.store.clone(),
        )?);
        // We hold the lock, so nothing is being processed: every
        // `processing` row belongs to a host that died.
        let returned = store.reap(i64::MAX)?;
        if returned > 0 {
            tracing::warn!(
                events = returned,
                "recovered events a previous host left in processing"
            );
        }
        let wakeup = Arc::new(Wakeup::default());
        let outbox_wakeup = Arc::new(Wakeup::default());
        let source = Arc::new(SourceSwitch::new(
            &config.kafka,
            wakeup.clone(),
            outbox_wakeup.clone(),
            Some(config.data_dir.join("control")),
        ));
        if config.kafka.enabled {
            if let Err(reason) = start_kafka(&config.kafka)? {
                // Not required: serve from SQLite until a probe finds Kafka.
                source.open_at_start(&format!("Kafka unreachable at start: {reason}"));
            }
            store.enable_outbox();
        }
        let runtime = Arc::new(Runtime::new(
            &config.runtime,
            &config.limits,
            Some(config.compile_cache_dir()),
        )?);
        let sources = crate::registry::Sources::of(&config).map_err(|reason| BusError::Io {
            what: "read the [trust] keys".into(),
            source: std::io::Error::other(reason),
        })?;
        let registry = Arc::new(Registry::new(
            config.handlers_dir.clone(),
            runtime.clone(),
            store.clone(),
            config.limits.clone(),
            Arc::new(sources),
        ));
        registry.wake_poller_with(wakeup.clone());
        registry.reload()?;
        let schemas = Arc::new(crate::schemas::Schemas::new(&config));
        let traces = Arc::new(crate::traces::Traces::new(
            &config.traces,
            &config.kafka.client_id,
        ));
        let env = Arc::new(CallEnv {
            host: Arc::new(CallHost {
                store: store.clone(),
                schemas: schemas.clone(),
            }),
            limits: config.limits.clone(),
            overlay: Default::default(),
            transcript: None,
        });
        let dispatcher = Arc::new(
            Dispatcher::new(runtime, store.clone(), registry, env, traces.clone()).map_err(
                |source| BusError::Io {
                    what: "start the shadow runner".into(),
                    source,
                },
            )?,
        );
        let pipeline = Pipeline::start(
            dispatcher,
            config.workers(),
            config.runtime.max_in_flight,
            config.runtime.lane_depth,
        )
        .map_err(|source| BusError::Io {
            what: "start the handler threads".into(),
            source,
        })?;
        let limits = config.limits.event_limits();
        let ctx = Arc::new(HostContext::new(
            config,
            store,
            source,
            wakeup,
            outbox_wakeup,
            schemas,
            traces,
        ));
        let sqlite: Arc<dyn Sink> = Arc::new(poller::SqliteSink { ctx: ctx.clone() });
        let bus = Self {
            tasks: Supervisor::new(ctx.token().clone()),
            ctx,
            pipeline,
            sqlite,
            limits,
            inserts: GroupCommit::default(),
            handing_over: AtomicBool::new(false),
            started: Mutex::new(false),
            _lock: lock,
        };
        // On a failure below, dropping `bus` stops what did start.
        bus.start_housekeeping()?;
        Ok(bus)
    }

    /// The threads that run from `open` on, whether or not the sources do:
    /// the outbox relay (events reach Kafka even while handled from
    /// SQLite), the WAL checkpointer, the handlers watcher, the alerts and
    /// the retention thread.
    fn start_housekeeping(&self) -> Result<(), BusError> {
        let (ctx, tasks) = (&self.ctx, &self.tasks);
        if ctx.config.kafka.enabled {
            crate::outbox::start(
                ctx.store.clone(),
                ctx.config.kafka.clone(),
                ctx.outbox_wakeup.clone(),
                ctx.source.clone(),
                ctx.schemas.clone(),
                tasks,
            )?;
        }
        start_checkpointer(ctx.clone(), tasks)?;
        if ctx.config.watch_handlers {
            let registry = self.pipeline.dispatcher().registry().clone();
            let control = ctx.config.data_dir.join("control");
            crate::registry::start_watcher(registry, &control, tasks).map_err(|e| {
                BusError::Io {
                    what: "watch the handlers folder".into(),
                    source: std::io::Error::other(e),
                }
            })?;
        }
        {
            let registry = self.pipeline.dispatcher().registry().clone();
            crate::registry::start_follower(registry, tasks).map_err(|e| BusError::Io {
                what: "follow OCI references".into(),
                source: std::io::Error::other(e),
            })?;
        }
        crate::alerts::start(ctx.clone(), tasks)?;
        crate::retention::start(ctx.clone(), tasks)?;
        Ok(())
    }

    /// Starts the sources the configuration asks for: the SQLite poller
    /// and, when Kafka is the source, its consumer groups (idempotent).
    pub fn start(&self) -> Result<(), BusError> {
        let mut started = self.started.locked();
        if *started {
            return Ok(());
        }
        let cx = SourceContext {
            ctx: self.ctx.clone(),
            pipeline: self.pipeline.clone(),
            sqlite: self.sqlite.clone(),
        };
        for source in crate::source::configured(&self.ctx) {
            source.start(&cx, &self.tasks)?;
        }
        *started = true;
        self.handing_over.store(true, Ordering::Release);
        Ok(())
    }

    /// Checks an event from outside: its fields and limits, then its payload
    /// against its schema (when schemas are on).
    fn admit(&self, new: NewEvent) -> Result<Event, EventError> {
        let mut event = new.validate(self.limits, 0)?;
        self.ctx.schemas.check(&event)?;
        self.ctx.traces.published(&mut event);
        Ok(event)
    }

    /// Validates and durably stores an event, and wakes the poller.
    /// Concurrent callers share a transaction (group commit).
    pub fn publish(&self, new: NewEvent) -> Result<Event, BusError> {
        let event = self.admit(new)?;
        self.store_published(vec![event.clone()])?;
        self.ctx.metrics.published.fetch_add(1, Ordering::Relaxed);
        Ok(event)
    }

    /// Validates every event first, then stores them all in one transaction:
    /// one bad event stores none.
    pub fn publish_batch(&self, batch: Vec<NewEvent>) -> Result<Vec<Event>, BusError> {
        let events = batch
            .into_iter()
            .map(|n| self.admit(n))
            .collect::<Result<Vec<_>, _>>()?;
        self.store_published(events.clone())?;
        self.ctx
            .metrics
            .published
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(events)
    }

    /// Publishes independent events together: each is validated on its
    /// own (a bad one gets its error, the others go ahead) and the valid
    /// ones are stored in one transaction. For ingest paths that gather
    /// many small requests (the HTTP API).
    pub fn publish_each(&self, batch: Vec<NewEvent>) -> Vec<Result<Event, BusError>> {
        let mut results: Vec<Result<Event, BusError>> = batch
            .into_iter()
            .map(|n| self.admit(n).map_err(BusError::from))
            .collect();
        let valid: Vec<Event> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        if valid.is_empty() {
            return results;
        }
        if let Err(e) = self.store_published(valid.clone()) {
            // Each caller gets the error as text; a full disk must still
            // read as one (a 507 and a retry, not a 500), also when it was
            // recognised from the free space rather than from its words.
            let full = e.is_out_of_space();
            let message = e.to_string();
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(BusError::Store(match full {
                    true => StoreError::Full(message.clone()),
                    false => StoreError::GroupCommit(message.clone()),
                }));
            }
            return results;
        }
        self.ctx
            .metrics
            .published
            .fetch_add(valid.len() as u64, Ordering::Relaxed);
        results
    }

    /// Stores validated events durably, sharing a transaction with
    /// concurrent publishers (group commit), announces them to subscribers
    /// (`Notice::Published`, before they can be handled), and wakes whoever
    /// takes them from here; once the poller runs, the events are stored
    /// claimed and handed to it in memory when that keeps order (see
    /// `source::handoff`).
    fn store_published(&self, events: Vec<Event>) -> Result<(), StoreError> {
        // Below the free-space floor nothing new is taken, so what was
        // accepted can still be handled and committed.
        self.ctx.store.check_room()?;
        let hand_over = self.handing_over.load(Ordering::Acquire);
        let stored = self
            .inserts
            .insert(events, |take| {
                commit_published(&self.ctx, &self.pipeline, hand_over, take)
            })
            .map_err(|e| self.ctx.store.name_full_disk(e));
        let health = &self.ctx.store_health;
        match &stored {
            Ok(()) => health.recovered(PUBLISH),
            Err(e) if e.is_out_of_space() => {
                if health.refused(PUBLISH, e) {
                    tracing::error!(error = %e, "the store refuses new events (disk full); publishers are told to retry");
                }
            }
            Err(_) => {}
        }
        stored
    }

    /// Processes what is pending now on the calling thread, without the
    /// poller (tests, `run --once`). Returns how many events it processed.
    pub fn drain(&self) -> Result<usize, BusError> {
        Ok(poller::drain(
            &self.ctx,
            &self.pipeline,
            &self.sqlite,
            self.ctx.config.poll.batch_size,
        )?)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.ctx.store
    }

    /// Why the store refuses writes now, oldest first: commits or
    /// publishes SQLite failed (a full disk), or less free space than
    /// `store.min_free_mb`.
    pub fn store_refusals(&self) -> Vec<crate::context::Refusal> {
        self.ctx.store_refusals()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        self.pipeline.dispatcher().registry()
    }

    /// Shadows and canaries: their counters.
    pub(crate) fn rollouts(&self) -> &crate::candidates::Rollouts {
        self.pipeline.dispatcher().rollouts()
    }

    /// Handler calls running now. An event's status says less: it is
    /// `processing` from its claim on, while it may still wait in its lane.
    pub fn handler_calls_running(&self) -> usize {
        self.pipeline.dispatcher().runtime().calls_running()
    }

    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// Replaces every handler's WebAssembly call with a native function
    /// (benchmarks only: see [`crate::dispatch::NativeHandler`]).
    pub fn set_native_handler(&self, f: Option<crate::dispatch::NativeHandler>) {
        self.pipeline.dispatcher().set_native(f);
    }

    /// Events were stored by another path (a webhook, a dead-letter retry):
    /// wake whoever takes them from here.
    pub fn wake(&self) {
        self.ctx.wakeup.ring();
        self.ctx.outbox_wakeup.ring();
    }

    /// `n` events were stored without [`Bus::publish`] (webhooks): count
    /// them and wake the poller and the relay.
    pub fn published_elsewhere(&self, n: u64) {
        self.ctx.metrics.published.fetch_add(n, Ordering::Relaxed);
        self.ctx.stored();
    }

    /// Payload schemas (checks and the wire codec).
    pub fn schemas(&self) -> &crate::schemas::Schemas {
        &self.ctx.schemas
    }

    /// Counters and histograms (`GET /metrics`).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.ctx.metrics
    }

    /// Consumer lag, sampled at most every [`crate::kafka::lag::FRESH_FOR`].
    pub fn lag(&self) -> &crate::kafka::lag::LagReader {
        &self.ctx.lag
    }

    /// Who is handling events now, and the breaker's state.
    pub fn source(&self) -> &Arc<SourceSwitch> {
        &self.ctx.source
    }

    /// Live notices of publishes and outcomes.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.ctx.subscribe()
    }

    /// Stops taking new work at once, gives handler calls in flight up to
    /// `shutdown_grace_ms` to finish and commits their outcomes, abandons
    /// the calls still running then (their events return to `pending`, no
    /// Kafka offset passes them), and stops every thread. Idempotent.
    pub fn shutdown(&self) {
        self.ctx.token().stop();
        let grace = Duration::from_millis(self.ctx.config.shutdown_grace_ms);
        self.pipeline.close(grace);
        self.tasks.stop_and_join(grace);
        // A publish that raced the poller's stop may have handed events
        // over after its last look.
        poller::release_handed(&self.ctx);
        self.ctx.traces.shutdown();
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How often the WAL is checkpointed into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// WAL frames (1 KiB pages) past which the checkpointer holds the writer for
/// a moment so the WAL starts over: about 4 MiB of WAL, a few tenths of a
/// second of full load.
const WAL_RESTART_FRAMES: i64 = 4096;

/// Copies the WAL into the database in the background. The host's own
/// connections never checkpoint on commit, so the fsync a checkpoint needs
/// happens here, off the event path. Under a steady load the WAL would
/// never start over by itself (see [`Store::checkpoint_holding_writer`]);
/// once it is past [`WAL_RESTART_FRAMES`], the rest is copied with the
/// writer held, which keeps the WAL file near that size.
///
/// [`Store::checkpoint_holding_writer`]: crate::store::Store::checkpoint_holding_writer
fn start_checkpointer(ctx: Arc<HostContext>, tasks: &Supervisor) -> Result<(), StartError> {
    tasks.spawn("wal-checkpoint", move || {
        loop {
            let stopping = ctx.stopping();
            let done = ctx.store.checkpoint().and_then(|c| {
                if c.wal_frames >= WAL_RESTART_FRAMES {
                    ctx.store.checkpoint_holding_writer()
                } else {
                    Ok(c)
                }
            });
            if let Err(e) = done {
                tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
            }
            // Off the committer: its merge steps then only write.
            ctx.store.prepare_id_merge();
            if stopping {
                break;
            }
            std::thread::park_timeout(CHECKPOINT_EVERY);
        }
    })
}

/// Checks the brokers and creates the topics. With `KAFKA_REQUIRED` an
/// unreachable broker stops the host (within 10 s, naming the brokers);
/// without it the host starts and returns why Kafka is not usable: the
/// outbox keeps events until Kafka answers, and when Kafka is the source the
/// breaker starts open (SQLite in charge) until a probe finds it.
fn start_kafka(k: &crate::kafka::config::KafkaConfig) -> Result<Result<(), String>, BusError> {
    let wait = std::time::Duration::from_secs(if k.required { 10 } else { 3 });
    // A broker that answered gets longer to create and alter topics: on a
    // busy broker that takes seconds, and failing it only defers the work to
    // the breaker's first probe.
    let ready = crate::kafka::probe(k, wait)
        .and_then(|()| crate::kafka::topics::ensure(k, wait.max(Duration::from_secs(10))));
    match ready {
        Ok(()) => {
            if k.consuming() {
                tracing::info!(brokers = %k.brokers, group = %k.consumer_group, "Kafka is up: events are consumed from Kafka (SQLite keeps every event and is the fallback)");
            } else {
                tracing::info!(brokers = %k.brokers, "Kafka is up: events are written to SQLite and Kafka, and handled from SQLite (dual write)");
            }
            Ok(Ok(()))
        }
        Err(e) if k.required => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "Kafka is not reachable; events are kept in the SQLite outbox and handled from SQLite until it is");
            Ok(Err(e.to_string()))
        }
    }
}

/// Takes the data folder's host lock, held while the returned file lives:
/// one host per folder, and no `store compact` beside a host.
pub fn take_lock(config: &Config) -> Result<File, BusError> {
    let path = config.data_dir.join("host.lock");
    let file = File::create(&path).map_err(|source| BusError::Io {
        what: format!("create {}", path.display()),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(BusError::Locked(config.data_dir.clone())),
        Err(std::fs::TryLockError::Error(source)) => Err(BusError::Io {
            what: format!("lock {}", path.display()),
            source,
        }),
    }
}
