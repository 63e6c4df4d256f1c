//! What the parts of a running host share: configuration, the store, the
//! wakeups, the source switch, metrics and live notices.
//!
//! The sources (SQLite poller, Kafka groups) get this and a
//! [`crate::pipeline::Pipeline`], never the [`crate::Bus`]: data flows one
//! way, source -> pipeline -> dispatch -> outcome -> store.

use crate::config::Config;
use crate::event::{Event, EventStatus};
use crate::outcome::{Next, Resolution};
use crate::source::{SourceSwitch, Wakeup};
use crate::store::{ClaimScope, Store};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::broadcast;

/// What happened on the bus, for live views (SSE, dashboard) and benchmarks.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    Published {
        event: Box<Event>,
    },
    Resolved {
        event_id: String,
        status: EventStatus,
        error: Option<String>,
        /// When the event was published (RFC 3339), for latency views.
        created_at: String,
    },
}

pub struct HostContext {
    pub config: Config,
    pub store: Arc<Store>,
    /// Rung on publish so the poller picks new events up at once.
    pub wakeup: Arc<Wakeup>,
    /// Rung when events enter the outbox so the relay produces them at once.
    pub outbox_wakeup: Arc<Wakeup>,
    /// Kafka consumer or SQLite poller: who is in charge (the breaker).
    pub source: Arc<SourceSwitch>,
    pub metrics: crate::metrics::Metrics,
    /// Partitions the Kafka event processor owns now (see `kafka::archive`).
    pub processor_partitions: crate::kafka::group::Owned,
    /// Payload schemas: checks at every entry, and the wire codec.
    pub schemas: Arc<crate::schemas::Schemas>,
    /// Spans of publishes (a no-op when tracing is off).
    pub traces: Arc<crate::traces::Traces>,
    /// Consumer lag, sampled (for `/metrics` and the alerts).
    pub lag: crate::kafka::lag::LagReader,
    /// Events published here and stored already claimed, in publish order,
    /// for the poller to submit (see `source::handoff`). Its lock is held
    /// by a publish transaction that may add to it, and by the poller while
    /// it takes them and claims rows.
    pub(crate) handoff: std::sync::Mutex<Vec<Event>>,
    stopping: AtomicBool,
    notices: broadcast::Sender<Notice>,
}

impl HostContext {
    pub fn new(
        config: Config,
        store: Arc<Store>,
        source: Arc<SourceSwitch>,
        wakeup: Arc<Wakeup>,
        outbox_wakeup: Arc<Wakeup>,
        schemas: Arc<crate::schemas::Schemas>,
        traces: Arc<crate::traces::Traces>,
    ) -> Self {
        let (notices, _) = broadcast::channel(16 * 1024);
        Self {
            wakeup,
            outbox_wakeup,
            config,
            store,
            source,
            metrics: Default::default(),
            processor_partitions: Default::default(),
            schemas,
            traces,
            lag: Default::default(),
            handoff: Default::default(),
            stopping: AtomicBool::new(false),
            notices,
        }
    }

    /// Set once the host is shutting down: sources take no new work.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wakeup.ring();
        self.outbox_wakeup.ring();
    }

    /// New events are stored: wake whoever takes them from here.
    pub fn stored(&self) {
        if self.store.outbox_enabled() {
            self.outbox_wakeup.ring();
        }
        // With Kafka in charge the consumer brings them back; the poller
        // would find nothing it may take.
        if self.source.claim_scope() == ClaimScope::Local {
            self.wakeup.ring();
        }
    }

    /// `n` new events were stored claimed and handed to the poller in
    /// memory (`source::handoff`): count them, wake the relay, and nudge
    /// the poller (a ring would make it ask SQLite for rows in vain).
    pub(crate) fn handed_over(&self, n: usize) {
        self.metrics
            .handed_over
            .fetch_add(n as u64, Ordering::Relaxed);
        if self.store.outbox_enabled() {
            self.outbox_wakeup.ring();
        }
        self.wakeup.nudge();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    pub fn notify_published<'a>(&self, events: impl IntoIterator<Item = &'a Event>) {
        if self.notices.receiver_count() == 0 {
            return;
        }
        for event in events {
            let _ = self.notices.send(Notice::Published {
                event: Box::new(event.clone()),
            });
        }
    }

    pub fn notify_resolved(&self, resolutions: &[Resolution]) {
        self.metrics.resolved(resolutions);
        if self.notices.receiver_count() == 0 {
            return;
        }
        for r in resolutions {
            let (status, error) = match &r.next {
                Next::Final { status, error } => (*status, error.clone()),
                Next::Retry { error, .. } => (EventStatus::Pending, Some(error.clone())),
            };
            let _ = self.notices.send(Notice::Resolved {
                event_id: r.event.id.clone(),
                status,
                error,
                created_at: r.event.created_at.clone(),
            });
        }
    }
}
