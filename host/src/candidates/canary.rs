//! Canary versions: live for a share of projects (see
//! `persona_bus_model::rollout::Canary::takes`), rolled back at once when
//! their error rate over the window is more than `rollback_above` points
//! above the live version's.
//!
//! A run counts as an error when it did not complete (retry, reject, trap,
//! limit): the same count as the `error_rate` alert. The rates compare the
//! two versions over the same window of wall-clock seconds; the canary is
//! judged only once it has `min_events` runs in it, and the live version
//! with no runs in the window counts as 0 %.

use crate::outcome::Run;
use crate::registry::LoadedHandler;
use crate::store::Store;
use persona_bus_model::rollout::{Canary, Rollout};
use persona_bus_model::sync::Locked;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Runs and errors of one version in one second.
#[derive(Debug, Clone, Copy, Default)]
struct Second {
    at: u64,
    runs: u64,
    errors: u64,
}

/// A version's seconds within the window, oldest first.
#[derive(Debug, Default)]
struct Window(VecDeque<Second>);

impl Window {
    fn add(&mut self, now: u64, error: bool) {
        match self.0.back_mut() {
            Some(s) if s.at == now => {
                s.runs += 1;
                s.errors += u64::from(error);
            }
            _ => self.0.push_back(Second {
                at: now,
                runs: 1,
                errors: u64::from(error),
            }),
        }
    }

    fn trim(&mut self, now: u64, secs: u64) {
        while self.0.front().is_some_and(|s| s.at + secs <= now) {
            self.0.pop_front();
        }
    }

    /// (runs, errors) in the window.
    fn sum(&self) -> (u64, u64) {
        self.0
            .iter()
            .fold((0, 0), |(r, e), s| (r + s.runs, e + s.errors))
    }
}

#[derive(Default)]
struct Pair {
    live: Window,
    canary: Window,
}

/// Rollbacks so far (for `/metrics`), and the windows of each canary.
pub struct CanaryWatch {
    started: Instant,
    windows: Mutex<HashMap<Arc<str>, Pair>>,
    store: Arc<Store>,
    pub rollbacks: AtomicU64,
}

/// A rollback, as the log, the store and the alert tell it.
#[derive(Debug, Clone)]
pub struct RolledBack {
    pub handler: String,
    pub version: String,
    pub reason: String,
}

impl CanaryWatch {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            started: Instant::now(),
            windows: Mutex::default(),
            store,
            rollbacks: AtomicU64::new(0),
        }
    }

    /// Counts `run` of `live`'s version or of its canary `canary`, and
    /// rolls the canary back if it now errs too much. Returns the rollback.
    pub fn observe(&self, canary: &Arc<LoadedHandler>, run: &Run) -> Option<RolledBack> {
        let Some(Rollout::Canary(settings)) = &canary.manifest.rollout else {
            return None;
        };
        if canary.rolled_back.load(Ordering::Relaxed) {
            return None;
        }
        let now = self.started.elapsed().as_secs();
        let secs = settings.window.as_secs();
        let error = run.outcome != crate::outcome::RunOutcome::Completed;
        let on_canary = Arc::ptr_eq(&run.version, &canary.version);
        let verdict = {
            let mut windows = self.windows.locked();
            let pair = windows.entry(canary.name.clone()).or_default();
            let w = if on_canary {
                &mut pair.canary
            } else {
                &mut pair.live
            };
            w.add(now, error);
            pair.live.trim(now, secs);
            pair.canary.trim(now, secs);
            judge(settings, pair.live.sum(), pair.canary.sum())
        }?;
        // One rollback per canary, whichever run saw it first.
        if canary.rolled_back.swap(true, Ordering::Relaxed) {
            return None;
        }
        self.rollbacks.fetch_add(1, Ordering::Relaxed);
        self.windows.locked().remove(&canary.name);
        let rolled = RolledBack {
            handler: canary.name.to_string(),
            version: canary.version.to_string(),
            reason: verdict,
        };
        tracing::error!(handler = %rolled.handler, canary = %rolled.version,
            "canary rolled back: {}; every project runs the live version again", rolled.reason);
        if let Err(e) = self.store.record_rollback(
            &rolled.handler,
            &rolled.version,
            &canary.prepared.digest,
            &rolled.reason,
        ) {
            tracing::warn!(error = %e, "the rollback could not be recorded; it holds until the host restarts");
        }
        let _ = self.store.set_handler_status(
            &canary.record_name(),
            "rolled_back",
            Some(&format!("rolled back: {}", rolled.reason)),
        );
        Some(rolled)
    }
}

/// Why the canary must go, if it must.
fn judge(
    c: &Canary,
    (live_runs, live_errors): (u64, u64),
    (runs, errors): (u64, u64),
) -> Option<String> {
    if runs < u64::from(c.min_events) {
        return None;
    }
    let rate = |e: u64, r: u64| {
        if r == 0 {
            0.0
        } else {
            e as f64 * 100.0 / r as f64
        }
    };
    let (canary, live) = (rate(errors, runs), rate(live_errors, live_runs));
    (canary - live > c.rollback_above).then(|| {
        format!(
            "its error rate over {} s was {canary:.1} % ({errors} of {runs} runs) against the live version's {live:.1} % ({live_errors} of {live_runs}), more than {} points above",
            c.window.as_secs(),
            c.rollback_above
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn canary() -> Canary {
        Canary {
            share: 10.0,
            rollback_above: 5.0,
            window: Duration::from_secs(60),
            min_events: 20,
        }
    }

    #[test]
    fn a_canary_is_judged_on_enough_runs_against_the_live_rate() {
        let c = canary();
        assert!(judge(&c, (100, 0), (19, 19)).is_none(), "too few runs");
        assert!(
            judge(&c, (100, 10), (20, 3)).is_none(),
            "15 % vs 10 %: 5 points"
        );
        assert!(judge(&c, (100, 10), (20, 4)).is_some(), "20 % vs 10 %");
        assert!(judge(&c, (0, 0), (20, 2)).is_some(), "10 % vs no live runs");
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let mut w = Window::default();
        w.add(0, true);
        w.add(0, false);
        w.add(30, true);
        assert_eq!(w.sum(), (3, 2));
        w.trim(60, 60);
        assert_eq!(w.sum(), (1, 1));
    }
}
