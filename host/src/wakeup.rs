//! An in-process doorbell: `publish` rings it so the poller picks a new
//! event up at once instead of at its next interval.
//!
//! Two signals share it. A ring says rows were stored for the poller to
//! claim. A nudge says only that events were handed over in memory (see
//! `source::handoff`): the poller submits them without asking SQLite for
//! rows, which under a stream of handed-over publishes would be an empty
//! claim, a write statement on the busy writer, for every wake.

use persona_bus_model::sync::{Locked, Waits};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Wakeup {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    rung: bool,
    nudged: bool,
    /// Threads asleep in `wait`.
    sleeping: u32,
}

impl Wakeup {
    /// Rings the bell. Under a stream of publishes the poller is mostly
    /// awake, and std's `notify_all` is a futex syscall whether or not
    /// anyone sleeps: only a sleeper is woken, and only by the first ring.
    pub fn ring(&self) {
        let mut st = self.state.locked();
        if st.rung {
            return;
        }
        st.rung = true;
        if st.sleeping > 0 {
            self.cv.notify_all();
        }
    }

    /// Wakes the waiter without a ring (see the module doc).
    pub fn nudge(&self) {
        let mut st = self.state.locked();
        if st.nudged || st.rung {
            return;
        }
        st.nudged = true;
        if st.sleeping > 0 {
            self.cv.notify_all();
        }
    }

    /// Waits until rung or `timeout` passes; returns whether it was rung.
    /// A ring that came before the wait is not lost.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.wait_for(timeout) == Woke::Rung
    }

    /// Waits until rung or nudged, or `timeout` passes, and says which
    /// (a ring wins over a nudge). Signals that came before the wait are
    /// not lost.
    pub fn wait_for(&self, timeout: Duration) -> Woke {
        let mut st = self.state.locked();
        if !st.rung && !st.nudged {
            st.sleeping += 1;
            st = self
                .cv
                .wait_on_while(st, timeout, |st| !st.rung && !st.nudged);
            st.sleeping -= 1;
        }
        let nudged = std::mem::replace(&mut st.nudged, false);
        if std::mem::replace(&mut st.rung, false) {
            Woke::Rung
        } else if nudged {
            Woke::Nudged
        } else {
            Woke::TimedOut
        }
    }

    /// Whether it was rung since the last wait, without waiting (the ring
    /// is taken; a nudge is left).
    pub fn take_ring(&self) -> bool {
        let mut st = self.state.locked();
        std::mem::replace(&mut st.rung, false)
    }
}

/// What ended a [`Wakeup::wait_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    Rung,
    Nudged,
    TimedOut,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ring_before_or_during_a_wait_is_seen_once() {
        let bell = Wakeup::default();
        bell.ring();
        bell.ring();
        assert!(bell.wait(Duration::from_secs(5)), "rung before the wait");
        assert!(!bell.wait(Duration::from_millis(10)), "taken by that wait");

        let bell = Arc::new(Wakeup::default());
        let sleeper = {
            let bell = bell.clone();
            std::thread::spawn(move || bell.wait(Duration::from_secs(30)))
        };
        while bell.state.lock().unwrap().sleeping == 0 {
            std::thread::yield_now();
        }
        let asked = std::time::Instant::now();
        bell.ring();
        assert!(sleeper.join().unwrap(), "woken by the ring");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "not by the timeout"
        );
    }

    #[test]
    fn a_nudge_wakes_without_a_ring_and_a_ring_wins() {
        let bell = Wakeup::default();
        bell.nudge();
        assert!(!bell.take_ring(), "a nudge is not a ring");
        assert_eq!(bell.wait_for(Duration::from_secs(5)), Woke::Nudged);
        assert_eq!(bell.wait_for(Duration::from_millis(10)), Woke::TimedOut);
        bell.nudge();
        bell.ring();
        assert_eq!(bell.wait_for(Duration::from_secs(5)), Woke::Rung);
        assert_eq!(bell.wait_for(Duration::from_millis(10)), Woke::TimedOut);
        bell.ring();
        assert!(bell.take_ring());
        assert!(!bell.take_ring(), "taken once");
    }
}
