//! Monitoring (plan phase 4): the shipped alert rules pass `promtool`, and a
//! real Prometheus (Debian's, `make prometheus-deps`) scrapes a host under a
//! known load and answers PromQL for its dead letters, outcomes, consumer
//! lag of the three groups and outbox.

use crate::http::Server;
use persona_bus_tests::kafka as k;
use persona_bus_tests::{Sandbox, guests, wait_for};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/alerts.yml"
);

#[test]
#[ignore = "needs services: make test"]
fn the_shipped_alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules", ALERTS])
        .output()
        .expect("promtool (make prometheus-deps installs Debian's prometheus)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
}

/// A Prometheus scraping `target` every second; stopped on drop.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nrule_files: [\"{ALERTS}\"]\nscrape_configs:\n  - job_name: persona-bus\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = k::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (make prometheus-deps installs Debian's)");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of an instant PromQL query with one result, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        let mut r = ureq::get(format!("{}/api/v1/query", self.base))
            .query("query", promql)
            .call()
            .ok()?;
        let v: Value = r.body_mut().read_json().ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    fn wait_for_value(&self, promql: &str, want: f64) {
        let mut last = None;
        wait_for(
            Duration::from_secs(60),
            &format!("{promql} == {want}"),
            || {
                last = self.query(promql);
                last == Some(want)
            },
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs services: make test"]
fn prometheus_scrapes_the_host_and_promql_sees_the_known_load() {
    let sb = Sandbox::new();
    sb.install(
        "crash",
        guests::TRAP,
        "[[subscriptions]]\nevent_type = \"boom\"\n[retry]\nmax_attempts = 1",
    );
    sb.install(
        "noop",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"fine\"",
    );
    let prefix = k::prefix();
    let s = Server::start(sb, |c| k::consuming(c, &prefix));
    for (event_type, n) in [("boom", 4), ("fine", 6)] {
        for _ in 0..n {
            let body = serde_json::json!({"event_type": event_type, "source_type": "test"});
            let (code, v) = s.send("POST", "/api/personas/events", &body.to_string(), &[]);
            assert_eq!(code, 201, "{v}");
        }
    }
    let target = s.base.trim_start_matches("http://").to_owned();
    let p = Prometheus::start(&target);
    p.wait_for_value("up{job=\"persona-bus\"}", 1.0);
    p.wait_for_value("persona_bus_dead_letters", 4.0);
    p.wait_for_value(
        "persona_bus_events_handled_total{outcome=\"dead_letter\"}",
        4.0,
    );
    p.wait_for_value(
        "persona_bus_events_handled_total{outcome=\"completed\"}",
        6.0,
    );
    p.wait_for_value(
        "sum(persona_bus_handler_runs_total{handler=\"crash\"})",
        4.0,
    );
    p.wait_for_value("persona_bus_event_latency_seconds_count", 10.0);
    // Every event went through Kafka and was consumed: the three groups
    // report their partitions; the processor and the webhook ingester are
    // not behind (the audit logger skips this device's own partitions).
    p.wait_for_value(
        "count(count by (role, group) (persona_bus_consumer_lag))",
        3.0,
    );
    p.wait_for_value("sum(persona_bus_consumer_lag{role!=\"audit\"})", 0.0);
    p.wait_for_value("persona_bus_outbox_events", 0.0);
    p.wait_for_value("persona_bus_breaker_state", 0.0);

    // Lag is sampled: a burst of scrapes (a dashboard, a benchmark) asks
    // the broker at most once per group, and every scrape still has it.
    let scrape = || {
        ureq::get(format!("{}/metrics", s.base))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let reads = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("persona_bus_consumer_lag_reads_total "))
            .and_then(|v| v.parse().ok())
            .expect("persona_bus_consumer_lag_reads_total in /metrics")
    };
    let before = reads(&scrape());
    let mut last = String::new();
    for _ in 0..20 {
        last = scrape();
        assert!(
            last.contains("persona_bus_consumer_lag{role=\"processor\""),
            "{last}"
        );
    }
    let asked = reads(&last) - before;
    assert!(
        asked <= 3,
        "20 scrapes asked the broker for lag {asked} times"
    );
}
