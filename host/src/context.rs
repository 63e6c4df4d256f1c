//! What the parts of a running host share: configuration, the store, the
//! wakeups, the source switch, metrics and live notices.
//!
//! The sources (SQLite poller, Kafka groups) get this and a
//! [`crate::pipeline::Pipeline`], never the [`crate::Bus`]: data flows one
//! way, source -> pipeline -> dispatch -> outcome -> store.

use crate::config::Config;
use crate::event::{Event, EventStatus};
use crate::outcome::{Next, Resolution};
use crate::store::{ClaimScope, Store};
use crate::supervisor::StopToken;
use crate::switch::SourceSwitch;
use crate::wakeup::Wakeup;
use persona_bus_model::sync::Locked;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::broadcast;

/// The kind of write the committer makes, in [`StoreHealth`].
const COMMIT: &str = "commit outcomes";

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
    /// Partitions the Kafka event processor owns now (see `source::archive`).
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
    /// Whether the store takes writes now (`/ready`, alerts, the API).
    pub store_health: StoreHealth,
    /// Fired once at shutdown; every thread of the host watches it.
    token: StopToken,
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
        let token = StopToken::default();
        for bell in [&wakeup, &outbox_wakeup] {
            let bell = bell.clone();
            token.on_stop(move || bell.ring());
        }
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
            store_health: Default::default(),
            token,
            notices,
        }
    }

    /// Why the store refuses writes now, oldest first: commits or
    /// publishes SQLite failed (a full disk), or less free space than
    /// `store.min_free_mb`.
    pub fn store_refusals(&self) -> Vec<Refusal> {
        let mut refusals = self.store_health.refusals();
        if let Err(e) = self.store.check_room() {
            refusals.push(Refusal {
                what: "new events (free-space floor)",
                reason: e.to_string(),
                since: crate::event::now_rfc3339(),
            });
        }
        refusals
    }

    /// Set once the host is shutting down: sources take no new work.
    pub fn stopping(&self) -> bool {
        self.token.is_stopped()
    }

    /// The token every thread of the host watches (see `supervisor`).
    pub fn token(&self) -> &StopToken {
        &self.token
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

    /// Runs `commit` until the store takes it: outcomes are kept in memory
    /// meanwhile (the pipeline waits, and sources with it), with a backoff
    /// of 50 ms doubling to 1 s so that once space returns the backlog
    /// moves within a second. Gives up only when the host is stopping
    /// (None: nothing was committed).
    pub(crate) fn commit_until_taken<T>(
        &self,
        events: usize,
        mut commit: impl FnMut() -> Result<T, crate::store::StoreError>,
    ) -> Option<T> {
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            match commit() {
                Ok(done) => {
                    self.store_health.recovered(COMMIT);
                    return Some(done);
                }
                Err(e) if self.stopping() => {
                    tracing::error!(error = %e, events, "stopping with outcomes the store refused; their events are handled again after a restart");
                    return None;
                }
                Err(e) => {
                    if self.store_health.refused(COMMIT, &e) {
                        tracing::error!(error = %e, events, "the store refuses to commit outcomes; keeping them and retrying until it takes them");
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
            }
        }
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
                Next::Retry { error, .. } | Next::Wait { reason: error, .. } => {
                    (EventStatus::Pending, Some(error.clone()))
                }
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

/// Whether the store refuses writes, and since when. Set by the committer
/// and by publishes when SQLite fails them, cleared by the next success of
/// the same kind (a small publish may fit where a commit does not).
#[derive(Default)]
pub struct StoreHealth {
    /// Fast path: a successful write only reads this.
    refusing: AtomicBool,
    refusals: std::sync::Mutex<Vec<Refusal>>,
}

/// Why the store refuses writes.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// What was refused: `commit outcomes`, `publish`.
    pub what: &'static str,
    pub reason: String,
    /// When the refusals began (RFC 3339).
    pub since: String,
}

impl StoreHealth {
    /// Records a refused write; true if writes of this kind went through
    /// until now (log it then, not at every retry).
    pub fn refused(&self, what: &'static str, error: &dyn std::fmt::Display) -> bool {
        let mut refusals = self.refusals.locked();
        let reason = error.to_string();
        self.refusing.store(true, Ordering::Release);
        match refusals.iter_mut().find(|r| r.what == what) {
            Some(r) => {
                r.reason = reason;
                false
            }
            None => {
                refusals.push(Refusal {
                    what,
                    reason,
                    since: crate::event::now_rfc3339(),
                });
                true
            }
        }
    }

    /// A write of this kind went through.
    pub fn recovered(&self, what: &'static str) {
        if !self.refusing.load(Ordering::Acquire) {
            return;
        }
        let mut refusals = self.refusals.locked();
        if let Some(i) = refusals.iter().position(|r| r.what == what) {
            let r = refusals.remove(i);
            tracing::info!(what, refused_since = %r.since, "the store takes writes again");
        }
        self.refusing.store(!refusals.is_empty(), Ordering::Release);
    }

    /// The kinds of write refused now, oldest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        if !self.refusing.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.refusals.locked().clone()
    }
}
