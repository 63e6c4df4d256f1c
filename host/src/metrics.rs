//! Counters and histograms the host keeps about itself, rendered in the
//! Prometheus text format by `GET /metrics`. Updated once per batch (one
//! lock for the per-handler maps), read by scrapes and benchmarks.

use crate::outcome::{Next, Resolution};
use persona_bus_model::sync::Locked;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Upper bounds (seconds) of the handler-latency histogram buckets.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
];

/// Upper bounds (seconds) of the publish-to-handled histogram: from a
/// local event handled at once to a backlog drained after minutes.
/// Upper bounds of the events-per-call histogram (`[batch] max_events` is
/// at most 1024).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

const E2E_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn record(&mut self, secs: f64) {
        for (i, le) in self.bounds.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    /// Appends the series of `name` with `labels` (`key="value",` or empty).
    fn render(&self, s: &mut String, name: &str, labels: &str) {
        for (i, le) in self.bounds.iter().enumerate() {
            let _ = writeln!(s, "{name}_bucket{{{labels}le=\"{le}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(s, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let plain = labels.trim_end_matches(',');
        let braced = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(s, "{name}_sum{braced} {}", self.sum);
        let _ = writeln!(s, "{name}_count{braced} {}", self.count);
    }
}

struct PerHandler {
    /// (handler, version, outcome label) -> runs. Keys share the
    /// handler's name and version (`Arc`): counting a run allocates nothing.
    runs: BTreeMap<(Arc<str>, Arc<str>, &'static str), u64>,
    latency: BTreeMap<Arc<str>, Histogram>,
    /// Events handed to each call: its count is calls, its sum events.
    per_call: BTreeMap<Arc<str>, Histogram>,
    /// Publish (the event's `created_at`) to its final outcome.
    end_to_end: Histogram,
}

impl Default for PerHandler {
    fn default() -> Self {
        Self {
            runs: BTreeMap::new(),
            latency: BTreeMap::new(),
            per_call: BTreeMap::new(),
            end_to_end: Histogram::new(E2E_BUCKETS),
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    pub published: AtomicU64,
    /// Published events handed to the poller already claimed (see
    /// `source::handoff`); the rest waited `pending` for a claim.
    pub handed_over: AtomicU64,
    /// Kafka records the event processor consumed.
    pub consumed: AtomicU64,
    /// Events that reached a final status, and retries scheduled.
    completed: AtomicU64,
    skipped: AtomicU64,
    dead_letter: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    /// Deliveries that left their event waiting for a held handler.
    waited: AtomicU64,
    pub undecodable: AtomicU64,
    /// Rows retention deleted: events, execution rows, dead letters.
    pub pruned: [AtomicU64; 3],
    /// The longest a pruning or vacuum step held the writer, in µs.
    pub prune_step_max_us: AtomicU64,
    /// Pages the incremental vacuum gave back to the file system.
    pub vacuumed_pages: AtomicU64,
    handlers: Mutex<PerHandler>,
}

impl Metrics {
    /// Counts a committed batch of outcomes.
    pub fn resolved(&self, resolutions: &[Resolution]) {
        let mut per = self.handlers.locked();
        for r in resolutions {
            let counter = match &r.next {
                Next::Retry { .. } => &self.retried,
                Next::Wait { .. } => &self.waited,
                Next::Final { status, .. } => match status.as_str() {
                    "completed" => &self.completed,
                    "skipped" => &self.skipped,
                    "dead_letter" => &self.dead_letter,
                    _ => &self.failed,
                },
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if matches!(r.next, Next::Final { .. })
                && let Ok(created) = humantime::parse_rfc3339_weak(&r.event.created_at)
            {
                let waited = created.elapsed().unwrap_or_default();
                per.end_to_end.record(waited.as_secs_f64());
            }
            for run in &r.runs {
                *per.runs
                    .entry((
                        run.handler.clone(),
                        run.version.clone(),
                        run.outcome.label(),
                    ))
                    .or_default() += 1;
                per.latency
                    .entry(run.handler.clone())
                    .or_insert_with(|| Histogram::new(BUCKETS))
                    .record(run.duration.as_secs_f64());
                if run.call_events > 0 {
                    per.per_call
                        .entry(run.handler.clone())
                        .or_insert_with(|| Histogram::new(BATCH_BUCKETS))
                        .record(f64::from(run.call_events));
                }
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
            &self.waited,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// Runs and errors per handler: (handler, runs, failed runs).
    pub fn handler_runs(&self) -> BTreeMap<String, (u64, u64)> {
        let per = self.handlers.locked();
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for ((h, _, outcome), n) in &per.runs {
            let e = out.entry(h.to_string()).or_default();
            e.0 += n;
            if *outcome != "completed" {
                e.1 += n;
            }
        }
        out
    }

    /// Runs of `handler` per version and outcome (a canary beside its
    /// live version).
    pub fn version_runs(&self, handler: &str) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        let per = self.handlers.locked();
        let mut out: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for ((h, version, outcome), n) in &per.runs {
            if **h == *handler {
                *out.entry(version.to_string())
                    .or_default()
                    .entry(outcome)
                    .or_default() += n;
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
            "persona_bus_events_handed_over_total",
            "Published events handed to the handlers already claimed, without waiting pending for the poller.",
            self.handed_over.load(Ordering::Relaxed),
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
            "# HELP persona_bus_store_pruned_total Rows deleted by the store's retention.\n# TYPE persona_bus_store_pruned_total counter"
        );
        for (kind, n) in ["events", "executions", "dead_letters"]
            .iter()
            .zip(&self.pruned)
        {
            let _ = writeln!(
                s,
                "persona_bus_store_pruned_total{{kind=\"{kind}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP persona_bus_store_prune_step_max_seconds The longest a retention step held the store's writer.\n# TYPE persona_bus_store_prune_step_max_seconds gauge\npersona_bus_store_prune_step_max_seconds {:.6}",
            self.prune_step_max_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        c(
            &mut s,
            "persona_bus_store_vacuumed_pages_total",
            "Free pages the incremental vacuum gave back to the file system.",
            self.vacuumed_pages.load(Ordering::Relaxed),
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
            ("waiting", &self.waited),
        ] {
            let _ = writeln!(
                s,
                "persona_bus_events_handled_total{{outcome=\"{label}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let per = self.handlers.locked();
        let _ = writeln!(
            s,
            "# HELP persona_bus_handler_runs_total Handler runs by outcome (errors by kind: trap, timeout, ...).\n# TYPE persona_bus_handler_runs_total counter"
        );
        let mut by_handler: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for ((h, _, outcome), n) in &per.runs {
            *by_handler.entry((h, outcome)).or_default() += n;
        }
        for ((h, outcome), n) in by_handler {
            let _ = writeln!(
                s,
                "persona_bus_handler_runs_total{{handler=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(h)
            );
        }
        let _ = writeln!(
            s,
            "# HELP persona_bus_handler_version_runs_total Handler runs by version and outcome: a canary beside its live version.\n# TYPE persona_bus_handler_version_runs_total counter"
        );
        for ((h, version, outcome), n) in &per.runs {
            let _ = writeln!(
                s,
                "persona_bus_handler_version_runs_total{{handler=\"{}\",version=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(h),
                escape(version)
            );
        }
        let _ = writeln!(
            s,
            "# HELP persona_bus_handler_duration_seconds Handler call duration.\n# TYPE persona_bus_handler_duration_seconds histogram"
        );
        for (h, hist) in &per.latency {
            hist.render(
                &mut s,
                "persona_bus_handler_duration_seconds",
                &format!("handler=\"{}\",", escape(h)),
            );
        }
        let _ = writeln!(
            s,
            "# HELP persona_bus_handler_events_per_call Events handed to each committed handler call (`handle`: 1; `handle-batch`: up to [batch] max_events); _count is calls, _sum events.\n# TYPE persona_bus_handler_events_per_call histogram"
        );
        for (h, hist) in &per.per_call {
            hist.render(
                &mut s,
                "persona_bus_handler_events_per_call",
                &format!("handler=\"{}\",", escape(h)),
            );
        }
        let _ = writeln!(
            s,
            "# HELP persona_bus_event_latency_seconds Publish (created_at) to final outcome, per event.\n# TYPE persona_bus_event_latency_seconds histogram"
        );
        per.end_to_end
            .render(&mut s, "persona_bus_event_latency_seconds", "");
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
