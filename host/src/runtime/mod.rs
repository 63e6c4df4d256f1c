//! The WebAssembly runtime: one engine, one linker, a fresh store per call.
//!
//! Isolation per event is the default because it is cheap here: with the
//! pooling allocator an instance of a small Rust guest costs microseconds
//! (see BENCHMARKS.md), and a fresh instance means one event can never see
//! another's memory. Timeouts use epoch interruption: a ticker thread bumps
//! the engine's epoch every `epoch_tick_ms`, and each store gets a deadline
//! of its handler's timeout in ticks. The ticker holds only a weak reference,
//! so it ends with the engine.

pub mod bindings;
mod cache;
mod host_api;
mod limits;

pub use cache::digest;

use crate::config::{HostLimits, RuntimeConfig};
use crate::event::{Event, EventLimits, now_rfc3339};
use crate::manifest::Manifest;
use crate::outcome::{Effects, FailureKind, RunOutcome};
use crate::store::Store;
use bindings::persona::bus::types as wit;
use bindings::{Handler, HandlerPre};
use limits::{LimitHit, Limiter};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Trap};
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
    pub(crate) pre: HandlerPre<HostState>,
    pub digest: String,
}

/// What a handler sees of the host during one call.
pub struct CallEnv {
    pub store: Arc<Store>,
    pub limits: HostLimits,
}

/// A handler as the runtime needs it: its compiled form and manifest.
pub struct HandlerRef<'a> {
    pub name: &'a Arc<str>,
    pub manifest: &'a Manifest,
    pub config: &'a Arc<BTreeMap<String, String>>,
    pub prepared: &'a Prepared,
}

/// The result of one call.
pub struct Invocation {
    pub outcome: RunOutcome,
    /// Empty unless the call completed.
    pub effects: Effects,
    pub started_at: String,
    pub duration: Duration,
    pub note: Option<String>,
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    tick: Duration,
}

impl Runtime {
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
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Fuel is only charged against handlers that set `limits.fuel`;
            // the others run with an unbounded tank.
            .consume_fuel(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_err)?;

        let mut linker = Linker::new(&engine);
        // WASI is linked because wasm32-wasip2 guests import it (their std
        // does), but the context built per call grants nothing: no files, no
        // network, no environment, no arguments; stdout is discarded.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        Handler::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
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
        Ok(Self {
            engine,
            linker,
            cache_dir,
            tick,
        })
    }

    /// Compiles (or loads from the cache) and links a component, checking
    /// that it is a `handler`: every import it needs is one the host
    /// provides, and it exports `handle` with the right type.
    pub fn prepare(&self, file: &std::path::Path) -> Result<Prepared, RuntimeError> {
        let wasm = std::fs::read(file).map_err(|source| RuntimeError::Read {
            file: file.to_owned(),
            source,
        })?;
        self.prepare_bytes(file, &wasm)
    }

    /// [`Runtime::prepare`] for bytes already read; `file` names them in errors.
    pub fn prepare_bytes(
        &self,
        file: &std::path::Path,
        wasm: &[u8],
    ) -> Result<Prepared, RuntimeError> {
        let digest = cache::digest(wasm);
        let component =
            cache::load_or_compile(&self.engine, self.cache_dir.as_deref(), wasm, &digest)
                .map_err(|e| RuntimeError::Compile {
                    file: file.to_owned(),
                    reason: format!("{e:#}"),
                })?;
        let world = |e: wasmtime::Error| RuntimeError::World {
            file: file.to_owned(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(world)?;
        let pre = HandlerPre::new(instance_pre).map_err(world)?;
        Ok(Prepared { pre, digest })
    }

    /// Runs `handle` on a fresh instance under the handler's limits. Never
    /// fails: whatever the guest does becomes the [`RunOutcome`].
    pub fn invoke(
        &self,
        h: HandlerRef<'_>,
        event: &Event,
        origin: &Origin,
        attempt: u32,
        env: &Arc<CallEnv>,
    ) -> Invocation {
        let started = Instant::now();
        let started_at = now_rfc3339();
        let limits = &h.manifest.limits;
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut wasi = WasiCtxBuilder::new();
        if h.manifest.capabilities.stdio {
            wasi.inherit_stdout().inherit_stderr();
        } else {
            wasi.stderr(stderr.clone());
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(limits.memory_bytes),
            call: host_api::Call {
                handler: h.name.clone(),
                config: h.config.clone(),
                limits: limits.clone(),
                event_id: event.id.clone(),
                project_id: event.project_id.clone(),
                chain_depth: event.chain_depth,
                env: env.clone(),
                event_limits: EventLimits {
                    max_payload_bytes: env.limits.max_payload_bytes,
                },
                effects: Effects::default(),
                log_lines: 0,
                note: None,
            },
        };
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Cannot fail: fuel is enabled on this engine.
        let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
        store.set_epoch_deadline(
            limits.timeout.as_nanos().div_ceil(self.tick.as_nanos()) as u64 + 1,
        );
        store.epoch_deadline_trap();

        let input = to_wit(event, origin, attempt);
        let result = match h.prepared.pre.instantiate(&mut store) {
            Ok(instance) => instance
                .call_handle(&mut store, &input)
                .map_err(|e| (e, false)),
            Err(e) => Err((e, true)),
        };
        let outcome = match result {
            Ok(Ok(())) => RunOutcome::Completed,
            Ok(Err(wit::HandlerError::Retry(reason))) => RunOutcome::Retry(reason),
            Ok(Err(wit::HandlerError::Reject(reason))) => RunOutcome::Rejected(reason),
            Err((error, instantiating)) => {
                let kind = classify(&error, store.data().limiter.hit, instantiating);
                RunOutcome::Failed {
                    kind,
                    message: describe(&error, kind, limits, &stderr),
                }
            }
        };
        let call = store.into_data().call;
        let effects = if outcome == RunOutcome::Completed {
            call.effects
        } else {
            Effects::default()
        };
        Invocation {
            outcome,
            effects,
            started_at,
            duration: started.elapsed(),
            note: call.note,
        }
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
    limits: &crate::manifest::Limits,
    stderr: &MemoryOutputPipe,
) -> String {
    let mut text = match kind {
        FailureKind::Timeout => format!("ran past its {} ms timeout", limits.timeout.as_millis()),
        FailureKind::OutOfMemory => format!(
            "tried to grow memory past its {} MiB limit",
            limits.memory_bytes >> 20
        ),
        FailureKind::OutOfFuel => format!("used up its fuel ({})", limits.fuel.unwrap_or_default()),
        _ => match error.downcast_ref::<Trap>() {
            Some(trap) => format!("wasm trap: {trap}"),
            None => error.to_string(),
        },
    };
    let printed = stderr.contents();
    let printed = String::from_utf8_lossy(&printed);
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

fn to_wit(e: &Event, origin: &Origin, attempt: u32) -> wit::Event {
    wit::Event {
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
            Origin::Sqlite => wit::Origin::Sqlite,
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => wit::Origin::Kafka(wit::KafkaPosition {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            }),
        },
        attempt,
    }
}

/// Per-call store data: the WASI context (granting nothing), the memory
/// limiter and the call's buffered effects.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    call: host_api::Call,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
