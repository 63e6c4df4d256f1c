//! The circuit breaker between Kafka and the SQLite fallback (plan phase 2).
//!
//! A plain state machine: it is told about failures, successes and the
//! passing of time, and answers with the transition, if any. Who does what
//! on a transition (the poller takes over, the consumer pauses or probes)
//! lives in `switch`; keeping time and I/O out of here lets every
//! transition be tested directly.
//!
//! ```text
//!            `failures` in a row                 open_for elapsed
//!   Closed ---------------------> Open  -------------------------> HalfOpen
//!     ^                            ^                                  |
//!     |        probe fails         |                                  |
//!     |        -------------------------------------------------------+
//!     |        probe succeeds                                         |
//!     +---------------------------------------------------------------+
//! ```

use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Kafka is the source.
    Closed,
    /// Kafka is given up on for a while; SQLite is the source.
    Open,
    /// The open period is over: one probe decides.
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }
}

/// A change of state and why it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
    /// When it happened (RFC 3339), set by whoever applies it: the breaker
    /// itself runs on `Instant`s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

#[derive(Debug)]
pub struct Breaker {
    state: State,
    /// Consecutive failures while closed.
    failures: u32,
    threshold: u32,
    open_for: Duration,
    opened_at: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            state: State::Closed,
            failures: 0,
            threshold: threshold.max(1),
            open_for,
            opened_at: None,
        }
    }

    /// A breaker that starts open (Kafka was unreachable at start).
    pub fn new_open(
        threshold: u32,
        open_for: Duration,
        now: Instant,
        reason: &str,
    ) -> (Self, Transition) {
        let mut b = Self::new(threshold, open_for);
        let t = b.open(now, reason.to_owned());
        (b, t)
    }

    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    #[cfg(test)]
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// When an open breaker goes half-open.
    pub fn reopens_at(&self) -> Option<Instant> {
        (self.state == State::Open)
            .then_some(self.opened_at)
            .flatten()
            .map(|t| t + self.open_for)
    }

    /// A Kafka operation failed. Opens the breaker on the `threshold`-th
    /// consecutive failure while closed; a failed probe re-opens it.
    pub fn failure(&mut self, now: Instant, reason: &str) -> Option<Transition> {
        match self.state {
            State::Closed => {
                self.failures += 1;
                (self.failures >= self.threshold).then(|| {
                    self.open(
                        now,
                        format!(
                            "{} consecutive Kafka failures; last: {reason}",
                            self.failures
                        ),
                    )
                })
            }
            State::HalfOpen => Some(self.open(now, format!("probe failed: {reason}"))),
            // Already open: nothing to count.
            State::Open => None,
        }
    }

    /// A Kafka operation succeeded: the failure streak ends. A success while
    /// half-open is a passed probe and closes the breaker. Successes while
    /// open are ignored: only the probe decides.
    pub fn success(&mut self, reason: &str) -> Option<Transition> {
        match self.state {
            State::Closed => {
                self.failures = 0;
                None
            }
            State::HalfOpen => {
                self.failures = 0;
                self.opened_at = None;
                Some(self.go(State::Closed, format!("probe passed: {reason}")))
            }
            State::Open => None,
        }
    }

    /// Moves an open breaker to half-open once its time is up.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.reopens_at() {
            Some(at) if now >= at => Some(self.go(
                State::HalfOpen,
                format!("open for {:?}; probing Kafka", self.open_for),
            )),
            _ => None,
        }
    }

    fn open(&mut self, now: Instant, reason: String) -> Transition {
        self.opened_at = Some(now);
        self.failures = 0;
        self.go(State::Open, reason)
    }

    fn go(&mut self, to: State, reason: String) -> Transition {
        let from = std::mem::replace(&mut self.state, to);
        Transition {
            from,
            to,
            reason,
            at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(300);

    #[test]
    fn closed_stays_closed_below_the_threshold() {
        let mut b = Breaker::new(3, OPEN);
        let now = Instant::now();
        assert_eq!(b.failure(now, "x"), None);
        assert_eq!(b.failure(now, "x"), None);
        assert_eq!(b.consecutive_failures(), 2);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_success_resets_the_streak() {
        let mut b = Breaker::new(3, OPEN);
        let now = Instant::now();
        b.failure(now, "x");
        b.failure(now, "x");
        assert_eq!(b.success("ok"), None);
        assert_eq!(b.consecutive_failures(), 0);
        b.failure(now, "x");
        b.failure(now, "x");
        assert_eq!(b.state(), State::Closed, "only consecutive failures count");
    }

    #[test]
    fn closed_to_open_on_the_third_failure() {
        let mut b = Breaker::new(3, OPEN);
        let now = Instant::now();
        b.failure(now, "a");
        b.failure(now, "b");
        let t = b.failure(now, "all brokers down").expect("opens");
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert!(t.reason.contains("3 consecutive") && t.reason.contains("all brokers down"));
        assert_eq!(b.reopens_at(), Some(now + OPEN));
    }

    #[test]
    fn open_ignores_failures_and_successes_until_its_time_is_up() {
        let mut b = Breaker::new(1, OPEN);
        let now = Instant::now();
        b.failure(now, "down");
        assert_eq!(b.failure(now, "again"), None);
        assert_eq!(b.success("lucky"), None);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.tick(now + OPEN - Duration::from_millis(1)), None);
        let t = b.tick(now + OPEN).expect("half-opens");
        assert_eq!((t.from, t.to), (State::Open, State::HalfOpen));
    }

    #[test]
    fn half_open_closes_on_a_passed_probe() {
        let mut b = Breaker::new(1, OPEN);
        let now = Instant::now();
        b.failure(now, "down");
        b.tick(now + OPEN);
        let t = b.success("metadata and poll answered").expect("closes");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        assert_eq!(b.reopens_at(), None);
        assert_eq!(b.tick(now + OPEN * 10), None, "closed does not tick");
    }

    #[test]
    fn half_open_reopens_on_a_failed_probe_for_a_full_period() {
        let mut b = Breaker::new(3, OPEN);
        let now = Instant::now();
        for _ in 0..3 {
            b.failure(now, "down");
        }
        b.tick(now + OPEN);
        let later = now + OPEN + Duration::from_secs(1);
        let t = b.failure(later, "still down").expect("re-opens at once");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        assert!(t.reason.contains("probe failed"));
        assert_eq!(b.reopens_at(), Some(later + OPEN));
    }

    #[test]
    fn starting_open() {
        let now = Instant::now();
        let (b, t) = Breaker::new_open(3, OPEN, now, "unreachable at start");
        assert_eq!(b.state(), State::Open);
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert_eq!(b.reopens_at(), Some(now + OPEN));
    }

    #[test]
    fn state_round_trips_through_u8() {
        for s in [State::Closed, State::Open, State::HalfOpen] {
            assert_eq!(State::from_u8(s.to_u8()), s);
        }
    }
}
