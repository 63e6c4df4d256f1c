//! An in-process doorbell: `publish` rings it so the poller picks a new
//! event up at once instead of at its next interval.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Wakeup {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Wakeup {
    pub fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits until rung or `timeout` passes; returns whether it was rung.
    /// A ring that came before the wait is not lost.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = self.rung.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |rung| !*rung)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, false)
    }
}
