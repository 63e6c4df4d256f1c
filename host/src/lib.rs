//! persona-bus: an event bus host that dispatches events to sandboxed
//! WebAssembly handler components.
//!
//! The layers below it are crates of their own, re-exported here under
//! their module names: `persona-bus-model` (events, matching, manifests,
//! outcomes, limits), `persona-bus-store` (the SQL) and
//! `persona-bus-runtime` (wasmtime; it reaches the host only through its
//! `HostView` trait, answered by [`CallHost`]). The command line is the
//! binary's (`src/main.rs`, `src/commands/<verb>.rs`).
//!
//! Modules, bottom to top; each imports only from the rows above it (a
//! subsystem's `config` leaf excepted, which [`config`] combines), and
//! `tests/all/layers.rs` fails on a cycle:
//!
//! | module | what it is |
//! |--------|------------|
//! | `supervisor`, `wakeup`, `breaker`, `metrics`, `traces`, `signature`, `http_client` | leaves: the stop token and the threads it stops, the poller's bell, the circuit breaker, counters, OTLP spans, HMAC, the outbound HTTP agent |
//! | [`config`] | combines each section's settings: one TOML file, one table of environment variables |
//! | [`schemas`] | payload schemas: checks at every entry, the registry, the wire codec |
//! | [`kafka`] | the Kafka client: settings, topics, wire format, consumer-group machinery, lag, admin |
//! | [`registry`] | loading handlers from the handlers folder, hot reload |
//! | `candidates` | shadow and canary versions beside the live one: the shadow runner, the canary watch |
//! | `dispatch`, `pipeline`, `call_host`, [`replay`] | running the matching handlers on one event; per-project lanes to the committer; what a call may ask of the host; one handler replayed over past events |
//! | `switch`, `context` | who is in charge (SQLite or Kafka); what the running parts share |
//! | `source`, `outbox`, [`retention`], [`alerts`] | the sources behind one `Source` trait (SQLite poller, Kafka groups); the relay to Kafka; pruning; the host's own alerts |
//! | [`bus`] | all of the above wired together, started and stopped by one supervisor |
//! | [`api`] | the HTTP API, webhooks, health, metrics and the dashboard |

pub mod alerts;
pub mod api;
mod breaker;
pub mod bus;
mod call_host;
mod candidates;
pub mod config;
mod context;
mod dispatch;
mod http_client;
pub mod kafka;
mod metrics;
mod outbox;
mod pipeline;
pub mod registry;
pub mod replay;
pub mod retention;
pub mod schemas;
mod signature;
mod source;
mod supervisor;
mod switch;
mod traces;
mod wakeup;

// The layers below the host, under the names the host's modules use.
use persona_bus_model::fast_map;
pub use persona_bus_model::{event, manifest, matching, outcome, rollout, sync};
pub use persona_bus_runtime as runtime;
pub use persona_bus_store as store;

pub use breaker::State as BreakerState;
pub use bus::{Bus, BusError, Notice};
pub use call_host::CallHost;
pub use config::Config;
pub use event::{Event, EventStatus, NewEvent};
pub use switch::{SourceStatus, SourceSwitch};

/// What integration tests, benchmarks and the fuzzer reach for beyond the
/// host's own API: pieces they drive directly, on purpose.
pub mod testing {
    pub use crate::dispatch::NativeHandler;
    pub use crate::signature::{sign, verify};
    pub use crate::source::webhooks::to_event as webhook_to_event;
}

use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Options of `persona-bus run` beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Publish a little demo traffic every `demo_every` so a newcomer can
    /// watch events being handled.
    pub demo: bool,
    pub demo_every: Option<Duration>,
}

/// Runs the host until `shutdown` resolves, then stops: no new work, calls
/// in flight get `shutdown_grace_ms` to finish, the rest are abandoned
/// (their events handled again at the next start).
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let bus = tokio::task::spawn_blocking(move || Bus::open(config)).await??;
    let bus = Arc::new(bus);
    // Bind before starting, so a taken port fails the start, not later.
    let http = &bus.config().http;
    let listener = if http.enabled {
        let listener = api::bind(&http.addr)
            .await
            .with_context(|| format!("cannot listen on {} (http.addr / --http-addr)", http.addr))?;
        // Where it listens (port 0 picks one), for tools and tests.
        let addr = listener.local_addr()?;
        let control = bus.config().data_dir.join("control");
        std::fs::create_dir_all(&control)?;
        std::fs::write(control.join("http.addr"), addr.to_string())?;
        Some(listener)
    } else {
        None
    };
    bus.start()?;
    let snapshot = bus.registry().snapshot();
    tracing::info!(
        handlers = snapshot.handlers.len(),
        refused = snapshot.failures.len(),
        data_dir = %bus.config().data_dir.display(),
        handlers_dir = %bus.config().handlers_dir.display(),
        source = bus.source().status().active,
        "persona-bus is running; ctrl-c stops it"
    );
    // The front (HTTP, demo traffic) stops first, on its own token, so the
    // requests in flight still reach a running bus.
    let front = supervisor::StopToken::default();
    let server = listener.map(|listener| {
        let (bus, front) = (bus.clone(), front.clone());
        tokio::spawn(async move {
            if let Err(e) = api::serve(bus, listener, async move { front.stopped().await }).await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        })
    });
    let demo = options.demo.then(|| {
        let (bus, front) = (bus.clone(), front.clone());
        let every = options.demo_every.unwrap_or(Duration::from_secs(2));
        tokio::spawn(async move {
            tokio::select! {
                () = demo_traffic(bus, every) => {}
                () = front.stopped() => {}
            }
        })
    });
    shutdown.await;
    tracing::info!(
        grace_ms = bus.config().shutdown_grace_ms,
        "shutting down: no new work; handler calls in flight may finish within the grace period (a second signal exits at once)"
    );
    front.stop();
    if let Some(demo) = demo {
        let _ = demo.await;
    }
    if let Some(server) = server {
        // Live event streams never end by themselves: give requests in
        // flight a moment, then go.
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    tokio::task::spawn_blocking(move || bus.shutdown()).await?;
    Ok(())
}

/// A small loop of realistic events: new tasks and webhooks (which the
/// router turns into actions for the counter) and custom events.
async fn demo_traffic(bus: Arc<Bus>, every: Duration) {
    let kinds = [
        (
            "task_created",
            "system",
            r#"{"title":"Write the release notes"}"#,
        ),
        (
            "webhook_received",
            "webhook",
            r#"{"trigger_id":"github","body":{"action":"opened"}}"#,
        ),
        ("custom", "trigger", r#"{"note":"hello from the demo"}"#),
    ];
    let mut tick = tokio::time::interval(every);
    for n in 0u64.. {
        tick.tick().await;
        let (event_type, source_type, payload) = kinds[(n % kinds.len() as u64) as usize];
        let new = NewEvent {
            event_type: event_type.into(),
            source_type: source_type.into(),
            source_id: Some("demo".into()),
            project_id: Some(format!("demo-{}", n % 2)),
            payload: serde_json::from_str(payload).ok(),
            ..Default::default()
        };
        match bus.publish(new) {
            Ok(e) => tracing::info!(event_id = %e.id, event_type, "demo: published"),
            Err(e) => tracing::warn!(error = %e, "demo: publish failed"),
        }
    }
}
