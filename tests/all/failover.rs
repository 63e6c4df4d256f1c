//! Failover (plan phase 2) with real faults: a private broker started by
//! the project's script and killed with `kill -9`, real host processes, a
//! separate process publishing. Nothing lost, nothing handled twice, order
//! kept per project, and the breaker's transitions as the plan says.

use crate::consume::{
    assert_each_once, completed, env_for, read_ids_on, read_topic_on, spawn_host, topics_toml,
    wait_for_topic_on,
};
use persona_bus::store::Store;
use persona_bus_tests::kafka::{self as k, PrivateBroker};
use persona_bus_tests::{Sandbox, wait_for};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The host's source status file (`control/source.json`).
fn source(dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join("control/source.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn wait_breaker(dir: &Path, state: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while source(dir)["breaker"] != state {
        assert!(
            started.elapsed() < within,
            "breaker not {state} within {within:?}: {}\nhost log:\n{}",
            source(dir),
            std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// The breaker's last transition was to closed, and it did not open again
/// within 2 s.
fn assert_stays_closed(dir: &Path) {
    std::thread::sleep(Duration::from_secs(2));
    let status = source(dir);
    assert_eq!(status["breaker"], "closed", "{status}");
    let history = status["history"].as_array().cloned().unwrap_or_default();
    let last = history.last().cloned().unwrap_or_default();
    assert_eq!(last["to"], "closed", "{status}");
}

/// Publishes through the CLI (a separate process each time, into the
/// host's store) every `every` until stopped; returns (id, project, seq).
fn publisher(
    dir: std::path::PathBuf,
    toml: std::path::PathBuf,
    env: Vec<(String, String)>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(String, String, usize)>> {
    std::thread::spawn(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let mut out = Vec::new();
        let mut seq = 0;
        while !stop.load(Ordering::Acquire) {
            let project = format!("p{}", seq % 4);
            let payload = format!("{{\"seq\":{seq}}}");
            let id = crate::publish_work(&dir, &toml, &env, &project, Some(&payload));
            out.push((id, project, seq));
            seq += 1;
            std::thread::sleep(every);
        }
        out
    })
}

/// Publishes a `work` event per number in `projects` (project `p<n>`)
/// through the CLI into `dir`; returns their ids.
fn publish_work(
    dir: &Path,
    toml: &Path,
    env: &[(String, String)],
    projects: std::ops::Range<usize>,
) -> Vec<String> {
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    projects
        .map(|i| crate::publish_work(dir, toml, &env, &format!("p{i}"), None))
        .collect()
}

fn with_brokers(
    mut env: Vec<(String, String)>,
    brokers: &str,
    required: bool,
) -> Vec<(String, String)> {
    env.retain(|(key, _)| key != "KAFKA_BROKERS");
    env.push(("KAFKA_BROKERS".into(), brokers.into()));
    env.push(("KAFKA_REQUIRED".into(), required.to_string()));
    env
}

/// Every published event ran once on `slow`, and in order per project.
fn assert_once_in_order(store: &Store, published: &[(String, String, usize)]) {
    let events: Vec<_> = published
        .iter()
        .map(|(id, ..)| store.event(id).unwrap())
        .collect();
    assert_each_once(store, "slow", &events);
    assert_eq!(
        store.state_counter("slow", "count").unwrap(),
        published.len() as i64
    );
    let mut by_project: HashMap<&str, Vec<(i64, usize)>> = HashMap::new();
    for (id, project, seq) in published {
        let run = &store.executions(id).unwrap()[0];
        by_project.entry(project).or_default().push((run.id, *seq));
    }
    for (project, mut runs) in by_project {
        runs.sort();
        let seqs: Vec<usize> = runs.iter().map(|r| r.1).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "project {project} out of order: {seqs:?}"
        );
    }
}

const BREAKER: &str = "[kafka.breaker]\nopen_secs = 6\nfailure_after_ms = 500\n";

#[test]
#[ignore = "needs services: make test"]
fn broker_killed_mid_stream_fails_over_to_sqlite_and_back_losing_nothing() {
    let broker = PrivateBroker::start();
    let sb = Sandbox::new();
    sb.install_slow(0);
    let prefix = k::prefix();
    let toml = topics_toml(&sb, &prefix, BREAKER);
    let env = with_brokers(env_for(&prefix, "device-a"), &broker.brokers(), false);
    let dir = sb.data_dir();
    let mut host = spawn_host(&sb, &dir, &toml, &env);
    wait_for_topic_on(&broker.brokers(), &format!("{prefix}.events"));
    let store = Store::open(&dir).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher(
        dir.clone(),
        toml.clone(),
        env.clone(),
        Duration::from_millis(20),
        stop.clone(),
    );
    // A fresh broker creates its offsets topic on the first group join.
    wait_for(
        Duration::from_secs(60),
        "events handled through Kafka",
        || completed(&store) > 20,
    );
    assert_eq!(source(&dir)["breaker"], "closed");

    broker.kill9();
    let takeover = wait_breaker(&dir, "open", Duration::from_secs(15));
    assert!(
        takeover <= Duration::from_secs(5),
        "SQLite took over after {takeover:?} (limit 5 s)"
    );
    // While the broker is dead, events published now are handled from SQLite.
    let during = completed(&store);
    wait_for(
        Duration::from_secs(10),
        "events handled while Kafka is down",
        || completed(&store) > during + 20,
    );

    broker.up();
    let back = wait_breaker(&dir, "closed", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Release);
    let published = publishing.join().unwrap();
    let n = published.len() as u64;
    wait_for(Duration::from_secs(60), "every event handled", || {
        store.ledger_count("slow").unwrap() == n
    });
    // Kafka gets every event too: the outbox drains once it is back.
    wait_for(Duration::from_secs(30), "the outbox to drain", || {
        store.outbox_len().unwrap() == 0
    });
    std::thread::sleep(Duration::from_secs(2)); // any duplicate would land now
    host.kill().unwrap();
    host.wait().unwrap();

    assert_once_in_order(&store, &published);
    let status = source(&dir);
    let path: Vec<(String, String)> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from"].as_str().unwrap().to_owned(),
                t["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ];
    let mut it = path.iter();
    for (from, to) in want {
        assert!(
            it.any(|(f, t)| f == from && t == to),
            "transitions {path:?} lack {from} -> {to}"
        );
    }
    // Kafka has every event now (the outbox caught up). A record whose
    // acknowledgement the kill swallowed may be there twice; consumers drop
    // the copy by its id, and the ledger above shows each ran once.
    let (ids, records) = read_ids_on(
        &broker.brokers(),
        &format!("{prefix}.events"),
        published.len(),
    );
    let missing: Vec<&String> = published
        .iter()
        .map(|(id, ..)| id)
        .filter(|id| !ids.contains(*id))
        .collect();
    assert!(missing.is_empty(), "not on the topic: {missing:?}");
    eprintln!(
        "failover: {records} records for {} events on the topic",
        ids.len()
    );
    eprintln!(
        "failover: {} events, SQLite took over {takeover:?} after the kill, Kafka back {back:?} after restart",
        published.len()
    );
}

#[test]
#[ignore = "needs services: make test"]
fn kafka_required_stops_handling_while_down_and_resumes_when_back() {
    let broker = PrivateBroker::start();
    let sb = Sandbox::new();
    sb.install_slow(0);
    let prefix = k::prefix();
    let toml = topics_toml(
        &sb,
        &prefix,
        "[kafka.breaker]\nopen_secs = 3\nfailure_after_ms = 500\n",
    );
    let env = with_brokers(env_for(&prefix, "device-r"), &broker.brokers(), true);
    let dir = sb.data_dir();
    let mut host = spawn_host(&sb, &dir, &toml, &env);
    wait_for_topic_on(&broker.brokers(), &format!("{prefix}.events"));
    let store = Store::open(&dir).unwrap();
    let publish = |n: usize| publish_work(&dir, &toml, &env, 0..n);
    let first = publish(10);
    wait_for(Duration::from_secs(30), "the first events handled", || {
        completed(&store) == 10
    });

    broker.kill9();
    wait_breaker(&dir, "open", Duration::from_secs(15));
    assert_eq!(source(&dir)["healthy"], false);
    // Publishes are still accepted (into SQLite), but not handled.
    let second = publish(10);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(completed(&store), 10, "no fallback with KAFKA_REQUIRED");

    broker.up();
    wait_breaker(&dir, "closed", Duration::from_secs(60));
    assert_eq!(source(&dir)["healthy"], true);
    wait_for(
        Duration::from_secs(60),
        "the held events handled from Kafka",
        || completed(&store) == 20,
    );
    // Closed for good: the outage's late errors (librdkafka reports some
    // after the broker is back) used to reopen it within milliseconds of the
    // probe, for another `open_secs`, under load for longer than this test
    // waited.
    assert_stays_closed(&dir);
    host.kill().unwrap();
    host.wait().unwrap();
    let all: Vec<_> = first
        .iter()
        .chain(&second)
        .map(|id| store.event(id).unwrap())
        .collect();
    assert_each_once(&store, "slow", &all);
}

#[test]
#[ignore = "needs services: make test"]
fn unreachable_at_start_serves_from_sqlite_then_switches_to_kafka() {
    let broker = PrivateBroker::start();
    broker.kill9();
    let sb = Sandbox::new();
    sb.install_slow(0);
    let prefix = k::prefix();
    let toml = topics_toml(
        &sb,
        &prefix,
        "[kafka.breaker]\nopen_secs = 3\nfailure_after_ms = 500\n",
    );
    let env = with_brokers(env_for(&prefix, "device-s"), &broker.brokers(), false);
    let dir = sb.data_dir();
    let mut host = spawn_host(&sb, &dir, &toml, &env);
    wait_breaker(&dir, "open", Duration::from_secs(30));
    let store = Store::open(&dir).unwrap();
    let publish = |from: usize| publish_work(&dir, &toml, &env, from..from + 10);
    let early = publish(0);
    wait_for(
        Duration::from_secs(30),
        "events handled from SQLite",
        || completed(&store) == 10,
    );

    broker.up();
    wait_breaker(&dir, "closed", Duration::from_secs(60));
    assert_eq!(source(&dir)["active"], "kafka");
    let late = publish(10);
    wait_for(Duration::from_secs(30), "events handled from Kafka", || {
        completed(&store) == 20
    });
    assert_stays_closed(&dir);
    let all: Vec<_> = early
        .iter()
        .chain(&late)
        .map(|id| store.event(id).unwrap())
        .collect();
    assert_each_once(&store, "slow", &all);
    // The late ones went through Kafka: their execution records are there.
    let records = read_topic_on(&broker.brokers(), &format!("{prefix}.executions"), 20);
    let recorded: std::collections::HashSet<String> = records
        .iter()
        .map(|v| {
            serde_json::from_slice::<serde_json::Value>(v).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        late.iter().all(|id| recorded.contains(id)),
        "late events not handled through Kafka: {} records {recorded:?}, late {late:?}\nsource {}\nlog:\n{}",
        records.len(),
        source(&dir),
        std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
    );
    // The early ones reached Kafka too (the outbox), marked as handled.
    wait_for(Duration::from_secs(10), "the outbox to drain", || {
        store.outbox_len().unwrap() == 0
    });
    host.kill().unwrap();
    host.wait().unwrap();
}
