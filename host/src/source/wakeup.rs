//! An in-process doorbell: `publish` rings it so the poller picks a new
//! event up at once instead of at its next interval.

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
    /// Threads asleep in `wait`.
    sleeping: u32,
}

impl Wakeup {
    /// Rings the bell. Under a stream of publishes the poller is mostly
    /// awake, and std's `notify_all` is a futex syscall whether or not
    /// anyone sleeps: only a sleeper is woken, and only by the first ring.
    pub fn ring(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.rung {
            return;
        }
        st.rung = true;
        if st.sleeping > 0 {
            self.cv.notify_all();
        }
    }

    /// Waits until rung or `timeout` passes; returns whether it was rung.
    /// A ring that came before the wait is not lost.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.rung {
            st.sleeping += 1;
            st = self
                .cv
                .wait_timeout_while(st, timeout, |st| !st.rung)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.sleeping -= 1;
        }
        std::mem::replace(&mut st.rung, false)
    }
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
}
