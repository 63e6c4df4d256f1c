//! The one way the host's long-lived work stops. Every thread is started by
//! a [`Supervisor`] and watches its [`StopToken`]; async tasks await
//! [`StopToken::stopped`]. Shutdown fires the token once (which also rings
//! the bells registered with [`StopToken::on_stop`], so a thread asleep on
//! a condition variable wakes up) and joins every thread.

use persona_bus_model::sync::Locked;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Bell = Box<dyn Fn() + Send + Sync>;

/// Set once, never reset: the host is stopping.
#[derive(Clone, Default)]
pub struct StopToken(Arc<Inner>);

#[derive(Default)]
struct Inner {
    stopped: AtomicBool,
    bells: Mutex<Vec<Bell>>,
    notify: tokio::sync::Notify,
}

impl StopToken {
    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::Acquire)
    }

    /// Fires the token (idempotent): rings every bell and wakes every
    /// task awaiting [`StopToken::stopped`].
    pub fn stop(&self) {
        if self.0.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        for ring in self.0.bells.locked().iter() {
            ring();
        }
        self.0.notify.notify_waiters();
    }

    /// Calls `ring` when the token fires (at once if it has).
    pub fn on_stop(&self, ring: impl Fn() + Send + Sync + 'static) {
        let mut bells = self.0.bells.locked();
        if self.is_stopped() {
            drop(bells);
            ring();
        } else {
            bells.push(Box::new(ring));
        }
    }

    /// Resolves once the token has fired.
    pub async fn stopped(&self) {
        loop {
            // Registered before the check, so a `stop` between the two
            // still wakes this task.
            let notified = self.0.notify.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// Why a part of the host could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {part}: {source}")]
pub struct StartError {
    pub part: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StartError {
    pub fn new(
        part: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            part,
            source: source.into(),
        }
    }
}

/// The threads of a running host, and the token that stops them.
#[derive(Default)]
pub struct Supervisor {
    token: StopToken,
    threads: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

impl Supervisor {
    pub fn new(token: StopToken) -> Self {
        Self {
            token,
            threads: Mutex::default(),
        }
    }

    pub fn token(&self) -> &StopToken {
        &self.token
    }

    /// Starts `work` on a thread named `name`; it must return soon after
    /// the token fires.
    pub fn spawn(
        &self,
        name: &'static str,
        work: impl FnOnce() + Send + 'static,
    ) -> Result<(), StartError> {
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(work)
            .map_err(|e| StartError::new(name, e))?;
        self.threads.locked().push((name, handle));
        Ok(())
    }

    /// Fires the token and waits for every thread. Threads still running
    /// after `grace` are named in the log, then waited for: each holds the
    /// store or a Kafka client, which must be closed before the host lock
    /// is let go. Idempotent.
    pub fn stop_and_join(&self, grace: Duration) {
        self.token.stop();
        let threads = std::mem::take(&mut *self.threads.locked());
        // A thread asleep in `park_timeout` sees the token at once.
        for (_, handle) in &threads {
            handle.thread().unpark();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && threads.iter().any(|(_, h)| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let late: Vec<&str> = threads
            .iter()
            .filter(|(_, h)| !h.is_finished())
            .map(|(name, _)| *name)
            .collect();
        if !late.is_empty() {
            tracing::warn!(threads = ?late, ?grace, "still stopping after the grace period; waiting for them");
        }
        for (name, handle) in threads {
            if handle.join().is_err() {
                tracing::error!(thread = name, "thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn stop_wakes_threads_bells_and_tasks_once() {
        let tasks = Supervisor::default();
        let rung = Arc::new(AtomicUsize::new(0));
        let r = rung.clone();
        tasks.token().on_stop(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let token = tasks.token().clone();
        tasks
            .spawn("parked", move || {
                while !token.is_stopped() {
                    std::thread::park_timeout(Duration::from_secs(60));
                }
            })
            .unwrap();
        let token = tasks.token().clone();
        let waiter = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(token.stopped());
        });
        let started = Instant::now();
        tasks.stop_and_join(Duration::from_secs(5));
        tasks.stop_and_join(Duration::from_secs(5));
        waiter.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(rung.load(Ordering::SeqCst), 1);
        // A bell added after the stop rings at once.
        let r = rung.clone();
        tasks.token().on_stop(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(rung.load(Ordering::SeqCst), 2);
    }
}
