//! Which source is in charge: the Kafka consumer or the SQLite poller.
//!
//! Wraps the [`Breaker`] with what its transitions mean for the host:
//! the poller's claim scope, waking the poller when SQLite takes over, a
//! status file for `persona-bus status`, and counters for metrics. Every
//! transition is logged with its reason.

use crate::breaker::{Breaker, State, Transition};
use crate::kafka::config::KafkaConfig;
use crate::store::ClaimScope;
use persona_bus_model::sync::Locked;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::wakeup::Wakeup;

/// What `persona-bus status` and `/ready` read (also written to
/// `<data_dir>/control/source.json` on every transition).
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// `sqlite` (Kafka off or dual write) or `kafka`.
    pub configured: &'static str,
    /// Who handles events now: `kafka` or `sqlite`.
    pub active: &'static str,
    pub breaker: State,
    pub required: bool,
    /// Events are handled from the configured source (false only with
    /// `KAFKA_REQUIRED` while the breaker is not closed).
    pub healthy: bool,
    pub transitions: u64,
    pub last_transition: Option<Transition>,
    /// The latest transitions, oldest first (at most 32).
    pub history: Vec<Transition>,
    pub at: String,
}

pub struct SourceSwitch {
    consuming: bool,
    required: bool,
    state: AtomicU8,
    breaker: Mutex<Breaker>,
    history: Mutex<std::collections::VecDeque<Transition>>,
    transitions: AtomicU64,
    /// Counts per destination state, for metrics: closed, open, half-open.
    to_state: [AtomicU64; 3],
    poller: Arc<Wakeup>,
    /// The outbox relay's: rung when Kafka comes back.
    relay: Arc<Wakeup>,
    status_file: Option<PathBuf>,
    /// When the breaker last closed (see [`SourceSwitch::settling`]).
    closed_at: Mutex<Option<Instant>>,
    /// The last connectivity check of [`SourceSwitch::reachable`].
    reach: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// How long a connectivity check of [`SourceSwitch::reachable`] serves.
const REACH_FRESH: Duration = Duration::from_secs(5);

/// How long after the breaker closes a consumer error must be confirmed
/// before it counts (see [`SourceSwitch::settling`]).
const SETTLE: Duration = Duration::from_secs(10);

impl SourceSwitch {
    /// `status_dir`: where `source.json` is written (None in unit tests).
    pub fn new(
        k: &KafkaConfig,
        poller: Arc<Wakeup>,
        relay: Arc<Wakeup>,
        status_dir: Option<PathBuf>,
    ) -> Self {
        let b = &k.breaker;
        let s = Self {
            consuming: k.consuming(),
            required: k.required,
            state: AtomicU8::new(State::Closed.to_u8()),
            breaker: Mutex::new(Breaker::new(b.failures, Duration::from_secs(b.open_secs))),
            history: Mutex::new(Default::default()),
            transitions: AtomicU64::new(0),
            to_state: Default::default(),
            poller,
            relay,
            status_file: status_dir.map(|d| d.join("source.json")),
            closed_at: Mutex::new(None),
            reach: Mutex::new(None),
        };
        s.write_status();
        s
    }

    /// Kafka is the configured source (plan phases 2-3).
    pub fn consuming(&self) -> bool {
        self.consuming
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether the Kafka consumer should be consuming now.
    pub fn kafka_active(&self) -> bool {
        self.consuming && self.state() == State::Closed
    }

    /// Whether the outbox relay should hand events to Kafka now: always in
    /// dual write; with Kafka as the source, only while the breaker is
    /// closed (or with `KAFKA_REQUIRED`, where nothing else handles them).
    pub fn may_produce(&self) -> bool {
        !self.consuming || self.required || self.state() == State::Closed
    }

    /// What the poller may claim. With `KAFKA_REQUIRED` there is no
    /// fallback: Kafka-bound events wait in SQLite for Kafka to return.
    pub fn claim_scope(&self) -> ClaimScope {
        if !self.consuming || (!self.required && self.state() != State::Closed) {
            ClaimScope::Local
        } else {
            ClaimScope::Leftovers
        }
    }

    /// Healthy means events are being handled from the configured source.
    pub fn healthy(&self) -> bool {
        !self.consuming || !self.required || self.state() == State::Closed
    }

    /// Whether a broker answers a metadata request now: the plan's phase-1
    /// health check. While Kafka is not the source (dual write only) the
    /// breaker does not watch it, so this is what reports a broker that is
    /// down. Asks at most every 5 s (blocking up to 2 s when it does).
    pub fn reachable(&self, k: &crate::kafka::config::KafkaConfig) -> Result<(), String> {
        let mut reach = self.reach.locked();
        if let Some((at, result)) = reach.as_ref()
            && at.elapsed() < REACH_FRESH
        {
            return result.clone();
        }
        let result = crate::kafka::probe(k, Duration::from_secs(2)).map_err(|e| e.to_string());
        *reach = Some((Instant::now(), result.clone()));
        result
    }

    pub fn failure(&self, reason: &str) {
        if !self.consuming {
            return;
        }
        let t = self.lock().failure(Instant::now(), reason);
        self.apply(t);
    }

    /// Whether the breaker closed only moments ago. librdkafka reports the
    /// connection failures of an outage late, some only after the broker is
    /// back (queued errors, reconnect attempts of its other connections):
    /// counted as they come, they reopened the breaker within milliseconds of
    /// every successful probe, for another `open_secs`. While settling, a
    /// consumer error counts only if a metadata request fails too.
    pub fn settling(&self) -> bool {
        self.closed_at().is_some_and(|at| at.elapsed() < SETTLE)
    }

    fn closed_at(&self) -> Option<Instant> {
        *self.closed_at.locked()
    }

    /// What the outbox relay saw: acknowledgements, and when the newest
    /// failed produce was handed to librdkafka, with its error. Only while the breaker is closed
    /// (half-open is the probe's to judge), and a failure only if that
    /// produce came after the breaker last closed: a produce queued during
    /// the outage times out up to `message.timeout.ms` after it ended.
    pub fn produced(&self, acked: bool, newest_failure: Option<(Instant, &str)>) {
        if self.state() != State::Closed {
            return;
        }
        if let Some((produced_at, reason)) = newest_failure {
            let stale = self.closed_at().is_some_and(|closed| closed > produced_at);
            if !stale {
                self.failure(&format!("produce: {reason}"));
                return;
            }
        }
        if acked {
            self.success("produce acknowledged");
        }
    }

    pub fn success(&self, reason: &str) {
        if !self.consuming || self.state() == State::Open {
            return;
        }
        let t = self.lock().success(reason);
        self.apply(t);
    }

    /// Starts open: Kafka was unreachable when the host started.
    pub fn open_at_start(&self, reason: &str) {
        let mut b = self.lock();
        let (fresh, t) = Breaker::new_open(b.threshold(), b.open_for(), Instant::now(), reason);
        *b = fresh;
        drop(b);
        self.apply(Some(t));
    }

    /// Moves an open breaker to half-open when its time is up; returns
    /// true when a probe is due now.
    pub fn tick(&self) -> bool {
        if !self.consuming {
            return false;
        }
        let t = self.lock().tick(Instant::now());
        self.apply(t);
        self.state() == State::HalfOpen
    }

    /// How long until an open breaker half-opens (None unless open).
    pub fn until_probe(&self) -> Option<Duration> {
        self.lock()
            .reopens_at()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    pub fn status(&self) -> SourceStatus {
        let history = self.history();
        let state = self.state();
        SourceStatus {
            configured: if self.consuming { "kafka" } else { "sqlite" },
            active: if self.consuming && (state == State::Closed || self.required) {
                "kafka"
            } else {
                "sqlite"
            },
            breaker: state,
            required: self.required,
            healthy: self.healthy(),
            transitions: self.transitions.load(Ordering::Relaxed),
            last_transition: history.last().cloned(),
            history,
            at: crate::event::now_rfc3339(),
        }
    }

    fn history(&self) -> Vec<Transition> {
        self.history.locked().iter().cloned().collect()
    }

    /// Transitions into each state so far: (closed, open, half_open).
    pub fn transition_counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.to_state[i].load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.locked()
    }

    fn apply(&self, t: Option<Transition>) {
        let Some(mut t) = t else { return };
        t.at = Some(crate::event::now_rfc3339());
        self.state.store(t.to.to_u8(), Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        self.to_state[t.to.to_u8() as usize].fetch_add(1, Ordering::Relaxed);
        if t.to == State::Closed {
            *self.closed_at.locked() = Some(Instant::now());
        }
        match t.to {
            State::Open if self.required => tracing::error!(
                from = t.from.as_str(), reason = %t.reason,
                "circuit breaker OPEN: KAFKA_REQUIRED is set, so events wait in SQLite until Kafka is back (unhealthy)"
            ),
            State::Open => tracing::warn!(
                from = t.from.as_str(), reason = %t.reason,
                "circuit breaker OPEN: the SQLite poller takes over"
            ),
            State::HalfOpen => {
                tracing::info!(from = t.from.as_str(), reason = %t.reason, "circuit breaker HALF-OPEN")
            }
            State::Closed => tracing::info!(
                from = t.from.as_str(), reason = %t.reason,
                "circuit breaker CLOSED: consuming from Kafka again"
            ),
        }
        {
            let mut h = self.history.locked();
            h.push_back(t);
            while h.len() > 32 {
                h.pop_front();
            }
        }
        // SQLite may be in charge now (or no longer): let the poller look;
        // and the relay, which holds events while the breaker is open.
        self.poller.ring();
        self.relay.ring();
        self.write_status();
    }

    fn write_status(&self) {
        let Some(path) = &self.status_file else {
            return;
        };
        let Ok(json) = serde_json::to_vec_pretty(&self.status()) else {
            return;
        };
        // Written then renamed, so a reader never sees half a file.
        let tmp = path.with_extension("json.tmp");
        let result = std::fs::create_dir_all(path.parent().unwrap_or(path))
            .and_then(|()| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the source status file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(failures: u32) -> SourceSwitch {
        let mut k = KafkaConfig {
            enabled: true,
            ..Default::default()
        };
        k.breaker.failures = failures;
        k.breaker.open_secs = 0;
        SourceSwitch::new(&k, Default::default(), Default::default(), None)
    }

    /// Opens the breaker, then closes it through a passed probe.
    fn reopen_and_close(s: &SourceSwitch) {
        s.open_at_start("test");
        assert!(s.tick(), "open_secs = 0: a probe is due at once");
        s.success("probe passed");
        assert_eq!(s.state(), State::Closed);
    }

    #[test]
    fn a_produce_that_failed_from_before_the_close_is_stale() {
        let s = switch(1);
        let during_outage = Instant::now();
        reopen_and_close(&s);
        assert!(s.settling());
        s.produced(false, Some((during_outage, "Message timed out")));
        assert_eq!(s.state(), State::Closed, "stale: not counted");
        s.produced(false, Some((Instant::now(), "Message timed out")));
        assert_eq!(s.state(), State::Open, "a fresh failure counts");
    }

    #[test]
    fn produce_outcomes_do_not_decide_a_half_open_breaker() {
        let s = switch(1);
        s.open_at_start("test");
        assert!(s.tick());
        assert_eq!(s.state(), State::HalfOpen);
        s.produced(true, None);
        assert_eq!(s.state(), State::HalfOpen, "an ack is not the probe");
        s.produced(false, Some((Instant::now(), "Message timed out")));
        assert_eq!(s.state(), State::HalfOpen, "nor is a failure");
    }
}
