//! The WebAssembly runtime: one engine, one linker, a fresh store per call.
//!
//! Isolation per event is the default because it is cheap here: with the
//! pooling allocator an instance of a small Rust guest costs microseconds
//! (see BENCHMARKS.md), and a fresh instance means one event can never see
//! another's memory.
//!
//! Every call ends by its deadline, whatever the guest does. Calls are
//! async (`call_async` on a fiber, WASI p2 linked in async mode), so:
//! - running wasm code is stopped by epoch interruption: a ticker thread
//!   bumps the engine's epoch every `epoch_tick_ms`; at each tick the store
//!   yields to the executor (so other calls on the same thread move on) or,
//!   past its deadline, traps;
//! - a guest waiting inside an import (sleeping, polling a clock, reading a
//!   stream) is a pending future: a tokio deadline around the call drops it,
//!   and with it the instance and the call's buffered effects.
//!
//! The ticker holds only a weak reference, so it ends with the engine.

pub mod bindings;
mod cache;
pub mod config;
mod host_api;
mod http_pool;
mod limits;
pub mod outbound;
mod overlay;

pub use cache::{compile_child_main, compile_in_child, digest, digest_file};
pub use overlay::{StateOverlay, Written};

use bindings::v2::persona::bus::types as wit2;
use bindings::v2::{BatchHandler, BatchHandlerIndices};
use bindings::v2_single::persona::bus::types as wit;
use bindings::v2_single::{Handler, HandlerIndices};
use config::RuntimeConfig;
use limits::{LimitHit, Limiter};
use persona_bus_model::event::{Event, SchemaError, now_rfc3339};
use persona_bus_model::limits::HostLimits;
use persona_bus_model::manifest::{InstancePolicy, Manifest};
use persona_bus_model::outcome::{Effects, FailureKind, RunOutcome};
use persona_bus_model::sync::Locked;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::component::{InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Linear memory and table bytes kept resident between instances when the
/// kernel can tell which pages were touched.
const KEEP_RESIDENT: usize = 2 << 20;

/// Bytes of a guest's stderr kept for the error message of a failed call
/// (a Rust panic message lands there).
const STDERR_CAPTURE: usize = 4096;

/// A runtime that could not start, or a component it refused.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    #[error("{file}: cannot read component: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not a valid component: {reason}")]
    Compile { file: PathBuf, reason: String },
    #[error("{file}: does not implement the persona:bus `handler` world: {reason}")]
    World { file: PathBuf, reason: String },
}

/// Which version of the WIT contract a component was built against, read
/// from what it imports and exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `persona:bus@0.1.0`: `handle` only.
    V0_1,
    /// `persona:bus@0.2.0`, the `handler` world: `handle` only.
    V0_2,
    /// `persona:bus@0.2.0`, the `batch-handler` world: also `handle-batch`.
    V0_2Batch,
}

impl Contract {
    /// The package version, as `handlers list` shows it.
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 | Contract::V0_2Batch => "0.2.0",
        }
    }

    pub fn batches(self) -> bool {
        self == Contract::V0_2Batch
    }
}

impl std::fmt::Display for Contract {
    /// `0.1.0`, `0.2.0`, or `0.2.0+batch` when it exports `handle-batch`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.version())?;
        if self.batches() {
            f.write_str("+batch")?;
        }
        Ok(())
    }
}

/// Where an event was read from, for the guest's `origin` field.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Sqlite,
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

/// A component compiled and linked against the host API, ready to
/// instantiate; one per loaded handler.
pub struct Prepared {
    pre: InstancePre<HostState>,
    handle: HandlerIndices,
    /// Set when the component exports `handle-batch`.
    batch: Option<BatchHandlerIndices>,
    pub contract: Contract,
    pub digest: String,
    /// Warm instances kept by the `reuse` policy.
    warm: Mutex<Vec<Warm>>,
    /// Calls running now, against the manifest's `concurrency` (made on the
    /// first call, when the manifest is at hand).
    slots: OnceLock<Semaphore>,
}

/// A warm instance (the `reuse` policy) and its captured stderr.
struct Warm {
    store: wasmtime::Store<HostState>,
    handler: Handler,
    batch: Option<BatchHandler>,
    stderr: MemoryOutputPipe,
    /// Bytes of stderr already attributed to earlier calls.
    stderr_seen: usize,
}

/// Warm instances kept per handler when the manifest sets no concurrency.
const DEFAULT_WARM: u32 = 16;

/// What a call may ask of the host beyond its own instance. Everything
/// else a call does (publishes, state writes, log lines) is buffered in its
/// [`Effects`] and committed by the host only if the call completes, so
/// this is all the runtime needs of the host: the runtime never sees the
/// store, the schema registry or the sources.
pub trait HostView: Send + Sync {
    /// The committed value of `key` in `handler`'s state.
    fn state_get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Checks an event a handler publishes, as any other entry checks it
    /// (its payload schema).
    fn check_published(&self, event: &Event) -> Result<(), SchemaError>;
}

/// What a handler sees of the host during one call.
pub struct CallEnv {
    /// Committed state and the publish check (see [`HostView`]).
    pub host: Arc<dyn HostView>,
    pub limits: HostLimits,
    /// Uncommitted state writes of completed calls, read by later calls of
    /// the same unit (see `overlay`).
    pub overlay: Arc<StateOverlay>,
    /// `handlers test`: what each call does (log lines, state reads,
    /// outbound requests), in order. None in a running host.
    pub transcript: Option<Transcript>,
}

/// Lines a dry run prints (see [`CallEnv::transcript`]).
pub type Transcript = Arc<std::sync::Mutex<Vec<String>>>;

/// A handler as the runtime needs it: its compiled form and manifest.
pub struct HandlerRef<'a> {
    pub name: &'a Arc<str>,
    pub manifest: &'a Manifest,
    pub config: &'a Arc<BTreeMap<String, String>>,
    pub prepared: &'a Prepared,
    /// Record what a `handle` call reads and the requests it makes
    /// (`Effects::reads`, `Effects::requests`): set for a handler with a
    /// shadow, and for the shadow.
    pub record_io: bool,
}

/// The result of one `handle` call.
pub struct Invocation {
    pub outcome: RunOutcome,
    /// Empty unless the call completed.
    pub effects: Effects,
    pub started_at: String,
    pub duration: Duration,
    pub note: Option<String>,
}

/// The engine settings that shape compiled code: the host's engine and the
/// child compiler (`persona-bus compile-component`) both start from these,
/// so the child's artifacts load in the host.
pub(crate) fn codegen_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        // Fuel is only charged against handlers that set `limits.fuel`;
        // the others run with an unbounded tank.
        .consume_fuel(true)
        // Calls are async (so a deadline can end them), but nothing uses
        // the component model's own concurrency (`run_concurrent`,
        // streams): without its per-call task bookkeeping a call costs
        // less, and no internal error is formatted per call (which
        // captured a backtrace each time under RUST_BACKTRACE=1).
        .concurrency_support(false);
    config
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    /// Handler calls in progress at once, whatever the handler: each holds
    /// an instance slot of the pooling allocator, so this stays below
    /// `pool_slots` (warm instances of the `reuse` policy take the rest).
    calls: Semaphore,
    /// The size of `calls`.
    max_calls: usize,
    /// Most calls of one handler at once when its manifest sets no
    /// `concurrency`: half of `calls`, so one slow handler never takes every
    /// call slot from the others.
    default_concurrency: usize,
    /// Handlers' kept-alive outbound connections.
    http_pool: Arc<http_pool::HttpPool>,
}

impl Runtime {
    /// Handler calls running now (each holds a call slot; its handler
    /// version was chosen before it took one).
    pub fn calls_running(&self) -> usize {
        self.max_calls - self.calls.available_permits()
    }

    /// Builds the engine and linker. `cache_dir` holds compiled components
    /// (`None`: compile every time).
    pub fn new(
        cfg: &RuntimeConfig,
        limits: &HostLimits,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self, RuntimeError> {
        let engine_err = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        let slots = cfg.pool_slots;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .max_memory_size(((limits.max_memory_mb as usize) << 20).max(1 << 20));
        if pagemap_scan_supported() {
            // Reset only the pages an instance dirtied, in place, instead of
            // returning memory with madvise: no TLB shootdown per instance
            // and no page faults on the next one. Halves the cost of a fresh
            // instance here (BENCHMARKS.md). Without PAGEMAP_SCAN the same
            // setting would memset whole regions, which is slower than
            // madvise, so it is only used where the kernel has it.
            pool.linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT)
                .pagemap_scan(wasmtime::Enabled::Auto);
        }
        let mut config = codegen_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_err)?;

        let mut linker = Linker::new(&engine);
        // WASI is linked because wasm32-wasip2 guests import it (their std
        // does), but the context built per call grants nothing: no files, no
        // network, no environment, no arguments; stdout is discarded.
        // Async: a guest blocked in a WASI call (a sleep, a poll) is a
        // pending future the call's deadline can drop.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        // Outbound HTTP, deny by default: only the destinations a manifest
        // lists are reachable (`outbound`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_err)?;
        // Both versions of the host API: a 0.1.0 component imports
        // `persona:bus/host@0.1.0`, which no 0.2.0 name satisfies.
        bindings::v1::Handler::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(engine_err)?;
        BatchHandler::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(engine_err)?;

        let tick = Duration::from_millis(cfg.epoch_tick_ms);
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(tick);
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let calls = (cfg.max_calls as usize).max(1);
        Ok(Self {
            engine,
            linker,
            cache_dir,
            calls: Semaphore::new(calls),
            max_calls: calls,
            default_concurrency: (calls / 2).max(1),
            http_pool: Default::default(),
        })
    }

    /// Loads from the compiled-component cache (or compiles) and links the
    /// component in `file`, checking that it is a `handler`: every import it
    /// needs is one the host provides, and it exports `handle` with the
    /// right type. `digest` is the file's (`cache::digest_file`): on a cache
    /// hit the file is not read again; on a miss it is read whole, and
    /// `Prepared::digest` is that of the bytes compiled (the file may have
    /// changed since it was digested).
    pub fn prepare(&self, file: &std::path::Path, digest: &str) -> Result<Prepared, RuntimeError> {
        let compile = |e: wasmtime::Error| RuntimeError::Compile {
            file: file.to_owned(),
            reason: format!("{e:#}"),
        };
        let dir = self.cache_dir.as_deref();
        let (component, digest) = match cache::cached(&self.engine, dir, digest) {
            Some(component) => (component, digest.to_owned()),
            None => {
                let wasm = std::fs::read(file).map_err(|source| RuntimeError::Read {
                    file: file.to_owned(),
                    source,
                })?;
                let digest = cache::digest(&wasm);
                let component =
                    cache::load_or_compile(&self.engine, dir, &wasm, &digest).map_err(compile)?;
                (component, digest)
            }
        };
        let world = |e: wasmtime::Error| RuntimeError::World {
            file: file.to_owned(),
            reason: format!("{e:#}"),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(world)?;
        let handle = HandlerIndices::new(&pre).map_err(world)?;
        let exports_batch = component
            .component_type()
            .exports(&self.engine)
            .any(|(name, _)| name == "handle-batch");
        let batch = if exports_batch {
            Some(BatchHandlerIndices::new(&pre).map_err(world)?)
        } else {
            None
        };
        let speaks_0_2 = component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name.starts_with("persona:bus/") && name.ends_with("@0.2.0"));
        // `handle` is the same at both versions: a component that imports
        // nothing of the bus's speaks the older one as well.
        let contract = match (&batch, speaks_0_2) {
            (Some(_), _) => Contract::V0_2Batch,
            (None, true) => Contract::V0_2,
            (None, false) => Contract::V0_1,
        };
        Ok(Prepared {
            pre,
            handle,
            batch,
            contract,
            digest,
            warm: Mutex::new(Vec::new()),
            slots: OnceLock::new(),
        })
    }

    /// Runs `handle` under the handler's limits, on a fresh instance or a
    /// warm one as its manifest says. Never fails: whatever the guest does
    /// becomes the [`RunOutcome`], and it returns by the handler's deadline
    /// (`limits.timeout_ms` after the call starts) at the latest.
    pub async fn invoke(
        &self,
        h: HandlerRef<'_>,
        event: &Event,
        unit: &str,
        origin: &Origin,
        attempt: u32,
        env: &Arc<CallEnv>,
    ) -> Invocation {
        let limits = &h.manifest.limits;
        if let Some(message) = too_large(event, limits) {
            return Invocation {
                outcome: RunOutcome::Failed {
                    kind: FailureKind::InputTooLarge,
                    message,
                },
                effects: Effects::default(),
                started_at: now_rfc3339(),
                duration: Duration::ZERO,
                note: None,
            };
        }
        let mut call = host_api::Call::new(
            h.name,
            (h.config, &h.manifest.secrets),
            limits,
            (event, unit),
            env,
        );
        if h.record_io {
            call.reads = Some(Vec::new());
        }
        let headers: Vec<(&str, &str)> = event
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let input = Entry::Handle(to_wit(event, &headers, origin, attempt));
        let (ended, started_at, duration) = self.run(&h, call, input).await;
        let secrets = &h.manifest.secrets;
        let outcome = match ended.result {
            Ok(Returned::One(outcome)) => outcome,
            Ok(Returned::Many(_)) => unreachable!("`handle` returns one result"),
            Err(failed) => failed,
        };
        let effects = if outcome == RunOutcome::Completed {
            ended.effects
        } else {
            Effects {
                reads: ended.effects.reads,
                requests: ended.effects.requests,
                ..Effects::default()
            }
        };
        Invocation {
            outcome: scrub(outcome, secrets),
            effects,
            started_at,
            duration,
            note: ended.note.map(|n| secrets.scrub(n)),
        }
    }

    /// Runs `handle-batch` on `events` (of one ordering unit, in order)
    /// under the handler's limits: one call, whose deadline is the
    /// handler's `limits.timeout_ms`. Never fails; see [`BatchInvocation`]
    /// for what the caller does with each event.
    pub async fn invoke_batch(
        &self,
        h: HandlerRef<'_>,
        events: Vec<(Arc<Event>, Origin, u32)>,
        unit: &str,
        env: &Arc<CallEnv>,
    ) -> BatchInvocation {
        let limits = &h.manifest.limits;
        let first = events[0].0.clone();
        let mut call = host_api::Call::new(
            h.name,
            (h.config, &h.manifest.secrets),
            limits,
            (&first, unit),
            env,
        );
        let count = events.len() as u32;
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        call.batch = Some(host_api::Batch::new(
            events
                .into_iter()
                .map(|(event, origin, attempt)| host_api::BatchEvent {
                    event,
                    origin,
                    attempt,
                })
                .collect(),
            taken.clone(),
        ));
        let (ended, started_at, duration) = self.run(&h, call, Entry::Batch(count)).await;
        let taken = taken.load(std::sync::atomic::Ordering::Relaxed);
        let secrets = &h.manifest.secrets;
        let per_event = match ended.result {
            Ok(Returned::Many(results)) => {
                let mut done = ended.per_event.into_iter();
                let mut per_event = Vec::with_capacity(taken);
                for result in results.into_iter().take(taken) {
                    let (effects, note) = done.next().unwrap_or_default();
                    let outcome = scrub(result, secrets);
                    let wrote = !effects.view.is_empty();
                    let effects = if outcome == RunOutcome::Completed {
                        effects
                    } else {
                        Effects::default()
                    };
                    per_event.push(Taken {
                        outcome,
                        wrote,
                        effects,
                        note: note.map(|n| secrets.scrub(n)),
                    });
                }
                Ok(per_event)
            }
            Ok(Returned::One(_)) => unreachable!("`handle-batch` returns a list"),
            Err(failed) => Err(scrub(failed, secrets)),
        };
        BatchInvocation {
            per_event,
            taken,
            started_at,
            duration,
            note: ended.note.map(|n| secrets.scrub(n)),
        }
    }

    /// One call of `input`, under the handler's slots and deadline.
    async fn run(
        &self,
        h: &HandlerRef<'_>,
        call: host_api::Call,
        input: Entry<'_>,
    ) -> (Ended, String, Duration) {
        let limits = &h.manifest.limits;
        // A slot of this handler, then one of the host's. Neither semaphore
        // is ever closed, so acquiring only waits. The wait is not part of
        // the call's time: the deadline starts with the call.
        let own = h.prepared.slots.get_or_init(|| {
            Semaphore::new(
                h.manifest
                    .instances
                    .concurrency
                    .map_or(self.default_concurrency, |c| c as usize),
            )
        });
        let _own = own.acquire().await;
        let _slot = self.calls.acquire().await;
        let started = Instant::now();
        let started_at = now_rfc3339();
        let deadline = started + limits.timeout;
        let run = async {
            match h.manifest.instances.policy {
                InstancePolicy::Fresh => self.invoke_fresh(h, call, input, deadline).await,
                InstancePolicy::Reuse => self.invoke_warm(h, call, input, deadline).await,
            }
        };
        // Running wasm traps at the deadline by itself (the epoch callback);
        // this ends a call that waits inside an import. Dropping the future
        // drops its store: the instance and the buffered effects go with it.
        // Boxed: the call's future is ~4 KiB (wasmtime's instantiate and
        // call futures), and unboxed it made every future around it that big
        // (`Dispatcher::resolve`'s was 5,216 bytes, now 1,472), each moved
        // whole as it is created, for every event.
        let run = Box::pin(run);
        let ended = match tokio::time::timeout_at(deadline.into(), run).await {
            Ok(done) => done,
            Err(_) => Ended::failed(RunOutcome::Failed {
                kind: FailureKind::Timeout,
                message: format!(
                    "ran past its {} ms timeout (stopped while waiting in a host call)",
                    limits.timeout.as_millis()
                ),
            }),
        };
        (ended, started_at, started.elapsed())
    }

    /// The `fresh` policy: a new instance for this call only.
    async fn invoke_fresh(
        &self,
        h: &HandlerRef<'_>,
        call: host_api::Call,
        input: Entry<'_>,
        deadline: Instant,
    ) -> Ended {
        let (mut store, stderr) = self.new_store(h, call, deadline);
        let result = match h.prepared.pre.instantiate_async(&mut store).await {
            Ok(instance) => match load(h.prepared, &mut store, &instance) {
                Ok((handler, batch)) => enter(&handler, batch.as_ref(), &mut store, input)
                    .await
                    .map_err(|e| (e, false)),
                Err(e) => Err((e, true)),
            },
            Err(e) => Err((e, true)),
        };
        let memory_hit = store.data().limiter.hit;
        let mut data = store.into_data();
        Ended::new(
            result,
            memory_hit,
            &h.manifest.limits,
            &stderr.contents(),
            &mut data,
        )
    }

    /// A store for one handler, armed with its limits for one call.
    fn new_store(
        &self,
        h: &HandlerRef<'_>,
        call: host_api::Call,
        deadline: Instant,
    ) -> (wasmtime::Store<HostState>, MemoryOutputPipe) {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut wasi = WasiCtxBuilder::new();
        if h.manifest.capabilities.stdio {
            wasi.inherit_stdout().inherit_stderr();
        } else {
            wasi.stderr(stderr.clone());
        }
        let outbound = outbound::Outbound::for_call(h, &call, deadline, &self.http_pool);
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(h.manifest.limits.memory_bytes),
            call,
            deadline,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            outbound,
        };
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // At every epoch tick: past the deadline, trap (reported as a
        // timeout); before it, let the executor run other calls, then go on.
        store.epoch_deadline_callback(|ctx| {
            Ok(if Instant::now() >= ctx.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });
        Self::arm(&mut store, &h.manifest.limits, deadline);
        (store, stderr)
    }

    /// Sets a store's fuel and deadline for the next call.
    fn arm(
        store: &mut wasmtime::Store<HostState>,
        limits: &persona_bus_model::manifest::Limits,
        deadline: Instant,
    ) {
        // Cannot fail: fuel is enabled on this engine.
        let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
        store.data_mut().deadline = deadline;
        store.set_epoch_deadline(1);
    }

    /// The `reuse` policy: call a warm instance, or make one. An instance
    /// that fails in any way (a timeout included) is dropped, never reused.
    async fn invoke_warm(
        &self,
        h: &HandlerRef<'_>,
        call: host_api::Call,
        input: Entry<'_>,
        deadline: Instant,
    ) -> Ended {
        let limits = &h.manifest.limits;
        let pooled = h.prepared.warm.locked().pop();
        let mut warm = match pooled {
            Some(mut w) => {
                let state = w.store.data_mut();
                state.outbound = outbound::Outbound::for_call(h, &call, deadline, &self.http_pool);
                state.call = call;
                state.limiter.hit = false;
                Self::arm(&mut w.store, limits, deadline);
                w
            }
            None => {
                let (mut store, stderr) = self.new_store(h, call, deadline);
                let loaded = match h.prepared.pre.instantiate_async(&mut store).await {
                    Ok(instance) => load(h.prepared, &mut store, &instance),
                    Err(e) => Err(e),
                };
                match loaded {
                    Ok((handler, batch)) => Warm {
                        store,
                        handler,
                        batch,
                        stderr,
                        stderr_seen: 0,
                    },
                    Err(e) => {
                        let memory_hit = store.data().limiter.hit;
                        let mut data = store.into_data();
                        return Ended::new(
                            Err((e, true)),
                            memory_hit,
                            limits,
                            &stderr.contents(),
                            &mut data,
                        );
                    }
                }
            }
        };
        let result = enter(&warm.handler, warm.batch.as_ref(), &mut warm.store, input)
            .await
            .map_err(|e| (e, false));
        let printed = warm.stderr.contents();
        let memory_hit = warm.store.data().limiter.hit;
        // The call's record stays in the store until the next call replaces
        // it; only what it produced is taken out.
        let ended = Ended::new(
            result,
            memory_hit,
            limits,
            &printed[warm.stderr_seen.min(printed.len())..],
            warm.store.data_mut(),
        );
        warm.stderr_seen = printed.len();
        if ended.result.is_ok() {
            let mut pool = h.prepared.warm.locked();
            if pool.len() < h.manifest.instances.concurrency.unwrap_or(DEFAULT_WARM) as usize {
                pool.push(warm);
            }
        }
        ended
    }
}

/// What a call enters the guest with.
enum Entry<'a> {
    Handle(wit::Event<'a>),
    /// `handle-batch` with this many events in the store's `Call`.
    Batch(u32),
}

/// What the guest returned.
enum Returned {
    One(RunOutcome),
    Many(Vec<RunOutcome>),
}

/// The typed exports of a new instance.
fn load(
    prepared: &Prepared,
    store: &mut wasmtime::Store<HostState>,
    instance: &wasmtime::component::Instance,
) -> wasmtime::Result<(Handler, Option<BatchHandler>)> {
    let handler = prepared.handle.load(&mut *store, instance)?;
    let batch = match &prepared.batch {
        Some(indices) => Some(indices.load(&mut *store, instance)?),
        None => None,
    };
    Ok((handler, batch))
}

/// Calls the export `input` names.
async fn enter(
    handler: &Handler,
    batch: Option<&BatchHandler>,
    store: &mut wasmtime::Store<HostState>,
    input: Entry<'_>,
) -> wasmtime::Result<Returned> {
    match input {
        Entry::Handle(event) => {
            let result = handler.call_handle(store, event).await?;
            Ok(Returned::One(match result {
                Ok(()) => RunOutcome::Completed,
                Err(wit::HandlerError::Retry(reason)) => RunOutcome::Retry(reason),
                Err(wit::HandlerError::Reject(reason)) => RunOutcome::Rejected(reason),
            }))
        }
        Entry::Batch(count) => match batch {
            Some(b) => {
                let results = b.call_handle_batch(store, count).await?;
                Ok(Returned::Many(
                    results
                        .into_iter()
                        .map(|r| match r {
                            Ok(()) => RunOutcome::Completed,
                            Err(wit2::HandlerError::Retry(reason)) => RunOutcome::Retry(reason),
                            Err(wit2::HandlerError::Reject(reason)) => RunOutcome::Rejected(reason),
                        })
                        .collect(),
                ))
            }
            None => Err(wasmtime::Error::msg(
                "the component does not export `handle-batch`",
            )),
        },
    }
}

/// How a call ended, before secrets are scrubbed.
struct Ended {
    /// What the guest returned, or the failure that stopped it.
    result: Result<Returned, RunOutcome>,
    /// `handle`: what the call did (the caller keeps it only if it
    /// completed).
    effects: Effects,
    /// `handle-batch`: each taken event's effects and note, in order.
    per_event: Vec<(Effects, Option<String>)>,
    note: Option<String>,
}

impl Ended {
    fn new(
        result: Result<Returned, (wasmtime::Error, bool)>,
        memory_hit: bool,
        limits: &persona_bus_model::manifest::Limits,
        printed: &[u8],
        data: &mut HostState,
    ) -> Self {
        let result = result.map_err(|(error, instantiating)| {
            let kind = classify(&error, memory_hit, instantiating);
            RunOutcome::Failed {
                kind,
                message: describe(&error, kind, limits, printed),
            }
        });
        let (effects, per_event, note) = if data.call.batch.is_some() {
            let note = data.take_note();
            (Effects::default(), data.call.finish_batch(note), None)
        } else {
            let mut effects = data.call.take_effects();
            if let Some(requests) = &mut data.outbound.requests {
                effects.requests = std::mem::take(requests);
            }
            (effects, Vec::new(), data.take_note())
        };
        Self {
            result,
            effects,
            per_event,
            note,
        }
    }

    fn failed(outcome: RunOutcome) -> Self {
        Self {
            result: Err(outcome),
            effects: Effects::default(),
            per_event: Vec::new(),
            note: None,
        }
    }
}

/// The result of one `handle-batch` call.
pub struct BatchInvocation {
    /// One entry per event the guest took and returned a result for, in
    /// order. Events past the end (not taken, or no result) run again
    /// alone. `Err`: the call failed as a whole; none of its effects count
    /// and the events it took (`taken`) run again alone.
    pub per_event: Result<Vec<Taken>, RunOutcome>,
    pub taken: usize,
    pub started_at: String,
    pub duration: Duration,
    pub note: Option<String>,
}

/// One event's part of a batch call.
pub struct Taken {
    pub outcome: RunOutcome,
    /// Whether it wrote state, kept or not: the events after a failed one
    /// that wrote may have read what was dropped.
    pub wrote: bool,
    /// Empty unless it completed.
    pub effects: Effects,
    pub note: Option<String>,
}

/// Why `event` is refused before any call: too large for this handler.
fn too_large(event: &Event, limits: &persona_bus_model::manifest::Limits) -> Option<String> {
    (event.payload.len() > limits.max_event_bytes).then(|| {
        format!(
            "event payload is {} bytes; this handler takes at most {} (limits.max_event_bytes)",
            event.payload.len(),
            limits.max_event_bytes
        )
    })
}

/// What is recorded (execution row, dead letter, logs) never holds a
/// secret's value, whatever the guest put in its messages.
fn scrub(outcome: RunOutcome, secrets: &persona_bus_model::secrets::Secrets) -> RunOutcome {
    match outcome {
        RunOutcome::Retry(m) => RunOutcome::Retry(secrets.scrub(m)),
        RunOutcome::Rejected(m) => RunOutcome::Rejected(secrets.scrub(m)),
        RunOutcome::Failed { kind, message } => RunOutcome::Failed {
            kind,
            message: secrets.scrub(message),
        },
        done => done,
    }
}

/// PAGEMAP_SCAN came with Linux 6.7.
fn pagemap_scan_supported() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 7)
}

fn classify(error: &wasmtime::Error, memory_hit: bool, instantiating: bool) -> FailureKind {
    if error.downcast_ref::<LimitHit>().is_some() {
        return FailureKind::Limit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureKind::Timeout,
        Some(Trap::OutOfFuel) => FailureKind::OutOfFuel,
        // The guest's allocator aborts when the limiter refuses memory.
        _ if memory_hit => FailureKind::OutOfMemory,
        Some(_) => FailureKind::Trap,
        None if instantiating => FailureKind::Instantiate,
        None => FailureKind::Trap,
    }
}

/// A one-paragraph reason for the executions table: the kind of stop, the
/// trap, and the tail of what the guest printed to stderr (a panic message).
fn describe(
    error: &wasmtime::Error,
    kind: FailureKind,
    limits: &persona_bus_model::manifest::Limits,
    printed: &[u8],
) -> String {
    let mut text = match kind {
        FailureKind::Timeout => format!("ran past its {} ms timeout", limits.timeout.as_millis()),
        FailureKind::OutOfMemory => format!(
            "tried to grow memory past its {} MiB limit",
            limits.memory_bytes >> 20
        ),
        FailureKind::OutOfFuel => format!("used up its fuel ({})", limits.fuel.unwrap_or_default()),
        // The host's own words, not wasmtime's backtrace wrapper around them.
        FailureKind::Limit => error
            .downcast_ref::<LimitHit>()
            .map_or_else(|| error.to_string(), |hit| hit.0.clone()),
        _ => match error.downcast_ref::<Trap>() {
            Some(trap) => format!("wasm trap: {trap}"),
            None => error.to_string(),
        },
    };
    let printed = String::from_utf8_lossy(printed);
    let printed = printed.trim();
    if !printed.is_empty() {
        let tail: String = printed
            .chars()
            .rev()
            .take(1000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        text.push_str(" | stderr: ");
        text.push_str(&tail);
    }
    text
}

/// The event as the guest receives it, borrowing every string from the
/// host's copy (lowering copies them into guest memory once, so cloning
/// them here first would copy each twice). `headers` is the event's
/// headers as borrowed pairs, kept by the caller.
fn to_wit<'a>(
    e: &'a Event,
    headers: &'a [(&'a str, &'a str)],
    origin: &'a Origin,
    attempt: u32,
) -> wit::Event<'a> {
    wit::Event {
        id: &e.id,
        project_id: &e.project_id,
        event_type: &e.event_type,
        source_type: &e.source_type,
        source_id: e.source_id.as_deref(),
        target_persona_id: e.target_persona_id.as_deref(),
        payload: &e.payload,
        headers,
        schema_version: e.schema_version,
        created_at: &e.created_at,
        chain_depth: e.chain_depth,
        origin: match origin {
            Origin::Sqlite => wit::Origin::Sqlite,
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => wit::Origin::Kafka(wit::KafkaPosition {
                topic,
                partition: *partition,
                offset: *offset,
            }),
        },
        attempt,
    }
}

/// An event as `batch.next` returns it (an owned copy: the guest takes it
/// from the host, not the other way round).
pub(crate) fn to_wit_owned(e: &Event, origin: &Origin, attempt: u32) -> wit2::EventResult {
    wit2::EventResult {
        id: e.id.clone(),
        project_id: e.project_id.clone(),
        event_type: e.event_type.clone(),
        source_type: e.source_type.clone(),
        source_id: e.source_id.clone(),
        target_persona_id: e.target_persona_id.clone(),
        payload: e.payload.clone(),
        headers: e.headers.clone(),
        schema_version: e.schema_version,
        created_at: e.created_at.clone(),
        chain_depth: e.chain_depth,
        origin: match origin {
            Origin::Sqlite => wit2::OriginResult::Sqlite,
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => wit2::OriginResult::Kafka(wit2::KafkaPositionResult {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            }),
        },
        attempt,
    }
}

/// Per-call store data: the WASI context (granting nothing), the memory
/// limiter, the call's buffered effects and its deadline.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    call: host_api::Call,
    deadline: Instant,
    http: wasmtime_wasi_http::WasiHttpCtx,
    outbound: outbound::Outbound,
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl HostState {
    /// The call's note: its own (a refused publish, ...) and outbound
    /// HTTP's (a refused destination, ...).
    fn take_note(&mut self) -> Option<String> {
        match (self.call.note.take(), self.outbound.take_note()) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
