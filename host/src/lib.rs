//! persona-bus: an event bus host that dispatches events to sandboxed
//! WebAssembly handler components.
//!
//! The layers below it are crates of their own: `persona-bus-model`
//! (events, matching, manifests, outcomes, limits) and `persona-bus-store`
//! (the SQL), re-exported here under their module names. The command line
//! is the binary's (`src/main.rs`, `src/commands/<verb>.rs`).
//!
//! Module map, in the order an event meets them:
//!
//! | module     | what it is |
//! |------------|------------|
//! | [`config`] | combines each section's settings: one TOML file, one table of environment variables |
//! | [`event`]  | the event model and input validation (model crate) |
//! | [`store`]  | SQLite: events, subscriptions, executions, ledger, dead letters, state, Kafka outbox (store crate) |
//! | [`kafka`]  | Kafka: client settings, topics, wire format, outbox relay, consumer groups, replay |
//! | [`source`] | where events come from: the SQLite poller, and the switch between it and Kafka |
//! | [`context`] | what the running parts share: config, store, wakeups, source switch, metrics, notices |
//! | [`pipeline`] | per-project lanes from the sources to the committer, bounded, with a shutdown that ends |
//! | [`breaker`] | the circuit breaker that decides when Kafka is given up on and retried |
//! | [`matching`] | which subscriptions want an event (model crate) |
//! | [`manifest`] | handler manifests (`name.toml`) (model crate) |
//! | [`registry`] | loading handlers from the handlers folder |
//! | [`runtime`] | wasmtime: engine, limits, host imports, compiled-component cache |
//! | [`dispatch`] | running the matching handlers on one event |
//! | [`outcome`] | what a run produced and what happens next (model crate) |
//! | [`retention`] | the thread that prunes the store past `[store.retention]` and gives space back |
//! | [`metrics`] | counters and histograms for `/metrics` |
//! | [`traces`] | OTLP spans per event (publish, dispatch, handler calls, commit), W3C `traceparent` in headers |
//! | [`alerts`] | the host's own alert rules, their state in SQLite and signed webhook deliveries |
//! | [`bus`]    | all of the above wired together (the sources see only `context` and `pipeline`) |
//! | [`api`]    | the HTTP API, webhooks, health, metrics and the dashboard |

pub mod alerts;
pub mod api;
pub mod breaker;
pub mod bus;
pub mod call_host;
pub mod config;
pub mod context;
pub mod dispatch;
pub mod http_client;
pub mod kafka;
pub mod metrics;
pub mod outputs;
pub mod pipeline;
pub mod registry;
pub mod retention;
pub mod schemas;
pub mod signature;
pub mod source;
pub mod switch;
pub mod traces;
pub mod wakeup;

// The layers below the host, under the names the host's modules use.
pub use persona_bus_model::{event, fast_map, manifest, matching, outcome, secrets, sync};
pub use persona_bus_runtime as runtime;
pub use persona_bus_store as store;

pub use bus::{Bus, BusError, Notice};
pub use config::Config;
pub use event::{Event, EventStatus, NewEvent};

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
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let server = listener.map(|listener| {
        let mut stopped = http_stopped.clone();
        let bus = bus.clone();
        tokio::spawn(async move {
            let until = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = api::serve(bus, listener, until).await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        })
    });
    let demo = options.demo.then(|| {
        let bus = bus.clone();
        let every = options.demo_every.unwrap_or(Duration::from_secs(2));
        tokio::spawn(async move { demo_traffic(bus, every).await })
    });
    shutdown.await;
    tracing::info!(
        grace_ms = bus.config().shutdown_grace_ms,
        "shutting down: no new work; handler calls in flight may finish within the grace period (a second signal exits at once)"
    );
    if let Some(demo) = demo {
        demo.abort();
    }
    let _ = stop_http.send(true);
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
