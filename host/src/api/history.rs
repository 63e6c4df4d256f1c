//! The dashboard's memory: a bounded ring of samples of the series its
//! charts draw, taken every `http.history_sample_ms` for the last
//! `http.history_minutes`, so that a page opened now starts with the recent
//! past instead of empty charts (`GET /api/personas/history`).
//!
//! A sample is the `/metrics` text cut down to the charted series, so the
//! page reads it with the same parser and arithmetic as a live scrape.
//! Handler runs are summed over handlers (completed / not completed): the
//! error-rate chart needs no more, and a host with many handlers would
//! otherwise keep a line per handler and outcome per sample.

use crate::bus::Bus;
use persona_bus_model::sync::Locked;
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Series the charts draw, kept as they are.
const CHARTED: &[&str] = &[
    "persona_bus_events_published_total",
    "persona_bus_events_handled_total",
    "persona_bus_event_latency_seconds_bucket",
    "persona_bus_dead_letters",
    LAG,
];
const LAG: &str = "persona_bus_consumer_lag";
const RUNS: &str = "persona_bus_handler_runs_total";

#[derive(Clone, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    /// The charted series in the Prometheus text format.
    pub metrics: String,
}

pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    keep: usize,
    pub every: Duration,
}

impl History {
    pub fn new(every: Duration, span: Duration) -> Self {
        let keep = (span.as_millis() / every.as_millis().max(1)).max(1) as usize;
        Self {
            samples: Mutex::new(VecDeque::with_capacity(keep.min(4096))),
            keep,
            every,
        }
    }

    /// Keeps the charted series of one `/metrics` text taken at `t`,
    /// dropping the oldest sample past the span.
    pub fn record(&self, t: u64, text: &str) {
        let mut kept = String::new();
        let (mut completed, mut other) = (0.0, 0.0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if name == LAG && !line.contains("role=\"processor\"") {
                // The lag chart is the event processor's.
                continue;
            }
            if CHARTED.contains(&name) {
                kept.push_str(line);
                kept.push('\n');
            } else if name == RUNS {
                let value: f64 = line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                if line.contains("outcome=\"completed\"") {
                    completed += value;
                } else {
                    other += value;
                }
            }
        }
        let _ = writeln!(kept, "{RUNS}{{outcome=\"completed\"}} {completed}");
        let _ = writeln!(kept, "{RUNS}{{outcome=\"failed\"}} {other}");
        let mut samples = self.samples.locked();
        if samples.len() >= self.keep {
            samples.pop_front();
        }
        samples.push_back(Sample { t, metrics: kept });
    }

    /// Every sample kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.locked().iter().cloned().collect()
    }
}

/// Samples `/metrics` into `history` every `history.every`, for as long as
/// the runtime it is spawned on runs.
pub async fn sample(bus: Arc<Bus>, history: Arc<History>) {
    let mut tick = tokio::time::interval(history.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let b = bus.clone();
        match super::blocking(move || super::ops::metrics_text(&b)).await {
            Ok(text) => history.record(persona_bus_model::event::now_millis() as u64, &text),
            Err(e) => tracing::debug!(error = %e.1, "no dashboard history sample"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_the_charted_series_sums_runs_and_stays_bounded() {
        let h = History::new(Duration::from_secs(5), Duration::from_secs(15));
        let text = "# HELP x\n\
            persona_bus_events_published_total 10\n\
            persona_bus_events_handled_total{outcome=\"completed\"} 8\n\
            persona_bus_handler_runs_total{handler=\"a\",outcome=\"completed\"} 5\n\
            persona_bus_handler_runs_total{handler=\"b\",outcome=\"completed\"} 2\n\
            persona_bus_handler_runs_total{handler=\"b\",outcome=\"trap\"} 1\n\
            persona_bus_handler_duration_seconds_bucket{handler=\"a\",le=\"0.1\"} 5\n\
            persona_bus_dead_letters 1\n\
            persona_bus_consumer_lag{role=\"processor\",group=\"g\",topic=\"t\",partition=\"0\"} 4\n\
            persona_bus_consumer_lag{role=\"audit\",group=\"a\",topic=\"t\",partition=\"0\"} 9\n";
        for t in 0..5 {
            h.record(t, text);
        }
        let samples = h.samples();
        assert_eq!(samples.iter().map(|s| s.t).collect::<Vec<_>>(), [2, 3, 4]);
        let m = &samples[0].metrics;
        assert!(m.contains("persona_bus_events_published_total 10\n"), "{m}");
        assert!(m.contains("persona_bus_dead_letters 1\n"), "{m}");
        assert!(
            m.contains("persona_bus_handler_runs_total{outcome=\"completed\"} 7\n"),
            "{m}"
        );
        assert!(
            m.contains("persona_bus_handler_runs_total{outcome=\"failed\"} 1\n"),
            "{m}"
        );
        assert!(!m.contains("duration"), "{m}");
        assert!(
            m.contains("role=\"processor\"") && !m.contains("role=\"audit\""),
            "{m}"
        );
    }
}
