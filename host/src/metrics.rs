//! Counters and histograms the host keeps about itself, rendered in the
//! Prometheus text format by `GET /metrics`. Updated once per batch (one
//! lock for the per-handler maps), read by scrapes and benchmarks.

use crate::outcome::{Next, Resolution};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the handler-latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn record(&mut self, secs: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Default)]
struct PerHandler {
    /// (handler, outcome label) -> runs.
    runs: BTreeMap<(String, String), u64>,
    latency: BTreeMap<String, Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    pub published: AtomicU64,
    /// Kafka records the event processor consumed.
    pub consumed: AtomicU64,
    /// Events that reached a final status, and retries scheduled.
    completed: AtomicU64,
    skipped: AtomicU64,
    dead_letter: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    pub undecodable: AtomicU64,
    handlers: Mutex<PerHandler>,
}

impl Metrics {
    /// Counts a committed batch of outcomes.
    pub fn resolved(&self, resolutions: &[Resolution]) {
        let mut per = self.handlers.lock().unwrap_or_else(|p| p.into_inner());
        for r in resolutions {
            let counter = match &r.next {
                Next::Retry { .. } => &self.retried,
                Next::Final { status, .. } => match status.as_str() {
                    "completed" => &self.completed,
                    "skipped" => &self.skipped,
                    "dead_letter" => &self.dead_letter,
                    _ => &self.failed,
                },
            };
            counter.fetch_add(1, Ordering::Relaxed);
            for run in &r.runs {
                *per.runs
                    .entry((run.handler.to_string(), run.outcome.label().to_owned()))
                    .or_default() += 1;
                per.latency
                    .entry(run.handler.to_string())
                    .or_default()
                    .record(run.duration.as_secs_f64());
            }
        }
    }

    /// Events that reached a final status (or a scheduled retry) so far.
    pub fn resolved_total(&self) -> u64 {
        [
            &self.completed,
            &self.skipped,
            &self.dead_letter,
            &self.failed,
            &self.retried,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// Runs and errors per handler: (handler, runs, failed runs).
    pub fn handler_runs(&self) -> BTreeMap<String, (u64, u64)> {
        let per = self.handlers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for ((h, outcome), n) in &per.runs {
            let e = out.entry(h.clone()).or_default();
            e.0 += n;
            if outcome != "completed" {
                e.1 += n;
            }
        }
        out
    }

    /// The Prometheus text exposition of everything above; `extra` is
    /// appended (gauges the caller reads at scrape time).
    pub fn render(&self, extra: &str) -> String {
        let mut s = String::with_capacity(4096);
        let c = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        c(
            &mut s,
            "persona_bus_events_published_total",
            "Events published on this host.",
            self.published.load(Ordering::Relaxed),
        );
        c(
            &mut s,
            "persona_bus_events_consumed_total",
            "Kafka records consumed by the event processor.",
            self.consumed.load(Ordering::Relaxed),
        );
        c(
            &mut s,
            "persona_bus_records_undecodable_total",
            "Kafka records that could not be decoded (dead-lettered).",
            self.undecodable.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP persona_bus_events_handled_total Events by outcome.\n# TYPE persona_bus_events_handled_total counter"
        );
        for (label, counter) in [
            ("completed", &self.completed),
            ("skipped", &self.skipped),
            ("dead_letter", &self.dead_letter),
            ("failed", &self.failed),
            ("retry", &self.retried),
        ] {
            let _ = writeln!(
                s,
                "persona_bus_events_handled_total{{outcome=\"{label}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let per = self.handlers.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            s,
            "# HELP persona_bus_handler_runs_total Handler runs by outcome (errors by kind: trap, timeout, ...).\n# TYPE persona_bus_handler_runs_total counter"
        );
        for ((h, outcome), n) in &per.runs {
            let _ = writeln!(
                s,
                "persona_bus_handler_runs_total{{handler=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(h)
            );
        }
        let _ = writeln!(
            s,
            "# HELP persona_bus_handler_duration_seconds Handler call duration.\n# TYPE persona_bus_handler_duration_seconds histogram"
        );
        for (h, hist) in &per.latency {
            let h = escape(h);
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "persona_bus_handler_duration_seconds_bucket{{handler=\"{h}\",le=\"{le}\"}} {}",
                    hist.counts[i]
                );
            }
            let _ = writeln!(
                s,
                "persona_bus_handler_duration_seconds_bucket{{handler=\"{h}\",le=\"+Inf\"}} {}",
                hist.count
            );
            let _ = writeln!(
                s,
                "persona_bus_handler_duration_seconds_sum{{handler=\"{h}\"}} {}",
                hist.sum
            );
            let _ = writeln!(
                s,
                "persona_bus_handler_duration_seconds_count{{handler=\"{h}\"}} {}",
                hist.count
            );
        }
        s.push_str(extra);
        s
    }
}

/// Escapes a label value (backslash, quote, newline).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
