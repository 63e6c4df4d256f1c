//! Kafka as the source (plan phases 2-3), against the real broker: consume
//! and dispatch, order per project, redelivery after a kill, replay, the
//! audit logger, the webhook ingester and undecodable records. Every test
//! has its own topics and groups.

use crate::{cli_with_env, host_binary};
use persona_bus::event::{EventLimits, NewEvent};
use persona_bus::store::Store;
use persona_bus::{Bus, Event, EventStatus};
use persona_bus_tests::kafka::{self as k, brokers};
use persona_bus_tests::{Sandbox, guests, wait_for};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) fn work(project: &str, seq: usize) -> Event {
    NewEvent {
        event_type: "work".into(),
        source_type: "system".into(),
        project_id: Some(project.into()),
        payload: Some(serde_json::json!({ "seq": seq })),
        ..Default::default()
    }
    .validate(
        EventLimits {
            max_payload_bytes: 4096,
        },
        0,
    )
    .unwrap()
}

/// Puts `events` on `config`'s events topic as another device would, after
/// a first host (opened and closed here) has created the topics.
pub(crate) fn backlog_from_elsewhere(config: &persona_bus::Config, events: &[Event]) {
    drop(Bus::open(config.clone()).unwrap());
    let p = k::producer(1);
    for e in events {
        k::send(&p, &config.kafka.topics.events.name, e, "elsewhere");
    }
    k::flush(&p);
}

/// The environment that makes a host process consume `prefix`'s topics.
pub(crate) fn env_for(prefix: &str, device: &str) -> Vec<(String, String)> {
    [
        ("KAFKA_ENABLED", "true".to_owned()),
        ("KAFKA_DUAL_WRITE", "false".into()),
        ("KAFKA_BROKERS", brokers()),
        ("KAFKA_CLIENT_ID", device.into()),
        ("KAFKA_CONSUMER_GROUP", format!("{prefix}.processor")),
        ("KAFKA_AUTO_OFFSET_RESET", "earliest".into()),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b))
    .collect()
}

/// A TOML file naming `prefix`'s topics and groups (what env cannot set).
pub(crate) fn topics_toml(sb: &Sandbox, prefix: &str, extra: &str) -> std::path::PathBuf {
    let path = sb.root.path().join("bus.toml");
    let mut text = format!(
        "[kafka]\naudit_group = \"{prefix}.audit\"\nwebhook_group = \"{prefix}.webhooks\"\n\
         # small batches, so a kill lands between commits\nconsumer_batch = 25\n"
    );
    for t in ["events", "webhooks", "actions", "executions", "dlq"] {
        text += &format!("[kafka.topics.{t}]\nname = \"{prefix}.{t}\"\nretention_hours = 1\n");
    }
    text += extra;
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn spawn_host(
    sb: &Sandbox,
    data_dir: &std::path::Path,
    config: &std::path::Path,
    env: &[(String, String)],
) -> crate::Host {
    crate::Host(
        Command::new(host_binary())
            .args([
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
            ])
            .args(["run", "--handlers", sb.handlers_dir().to_str().unwrap()])
            // A port of its own unless `env` names one.
            .env("PERSONA_BUS_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(a, b)| (a.as_str(), b.as_str())))
            .stdout(Stdio::null())
            // Kept beside the data dir, for when a test fails.
            .stderr(std::fs::File::create(data_dir.with_extension("log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Waits until `topic` exists with its partitions (the host creates it).
pub(crate) fn wait_for_topic(topic: &str) {
    wait_for_topic_on(&brokers(), topic)
}

/// Waits until `topic` exists on `brokers`.
pub(crate) fn wait_for_topic_on(brokers: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    wait_for(Duration::from_secs(60), &format!("topic {topic}"), || {
        c.fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && !t.partitions().is_empty() && t.error().is_none())
            })
            .unwrap_or(false)
    });
}

pub(crate) use persona_bus_tests::completed;

/// Each event ran exactly once on `handler`: one ledger row, one execution
/// row and a per-event counter of 1.
pub(crate) fn assert_each_once(store: &Store, handler: &str, events: &[Event]) {
    assert_eq!(store.ledger_count(handler).unwrap(), events.len() as u64);
    for e in events {
        let runs = store.executions(&e.id).unwrap();
        assert_eq!(runs.len(), 1, "event {} ran {} times", e.id, runs.len());
        assert_eq!(
            store
                .state_counter(handler, &format!("seen:{}", e.id))
                .unwrap(),
            1
        );
    }
}

#[test]
#[ignore = "needs services: make test"]
fn consumes_dispatches_and_keeps_order_within_a_project() {
    let sb = Sandbox::new();
    sb.install_slow(0);
    let prefix = k::prefix();
    let mut config = sb.config();
    k::consuming(&mut config, &prefix);
    let bus = Bus::open(config.clone()).unwrap();
    bus.start().unwrap();

    // Another device's events, 8 projects interleaved, over 6 partitions.
    let events: Vec<Event> = (0..400).map(|i| work(&format!("p{}", i % 8), i)).collect();
    let p = k::producer(1);
    for e in &events {
        k::send(&p, &config.kafka.topics.events.name, e, "device-elsewhere");
    }
    k::flush(&p);
    let store = bus.store().clone();
    wait_for(
        Duration::from_secs(60),
        "all 400 consumed and handled",
        || completed(&store) == 400,
    );
    assert_each_once(&store, "slow", &events);
    assert_eq!(store.state_counter("slow", "count").unwrap(), 400);

    // Order within a project: execution rows are written in the order the
    // handler ran, so their ids rise with the publish sequence.
    let mut by_project: HashMap<&str, Vec<(i64, usize)>> = HashMap::new();
    for (seq, e) in events.iter().enumerate() {
        let run = &store.executions(&e.id).unwrap()[0];
        by_project
            .entry(e.project_id.as_str())
            .or_default()
            .push((run.id, seq));
    }
    for (project, mut runs) in by_project {
        runs.sort();
        let seqs: Vec<usize> = runs.iter().map(|r| r.1).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "project {project} ran out of order: {seqs:?}"
        );
    }

    // The rows are events of another device, shown like local ones.
    let shown = store.event(&events[0].id).unwrap();
    assert_eq!(shown.status, EventStatus::Completed);
    assert_eq!(shown.payload, r#"{"seq":0}"#);

    // A local publish goes out through the outbox and comes back through the
    // consumer (not the poller): its execution says so.
    let local = bus
        .publish(NewEvent {
            project_id: Some("p0".into()),
            ..persona_bus_tests::event("work")
        })
        .unwrap();
    let done = persona_bus_tests::wait_final(&bus, &local.id, Duration::from_secs(30));
    assert_eq!(done.status, EventStatus::Completed);
    wait_for(
        Duration::from_secs(10),
        "the outbox to be marked sent",
        || store.outbox_len().unwrap() == 0,
    );
    bus.shutdown();

    // Execution records reached the executions topic.
    let execs = read_topic(&config.kafka.topics.executions.name, 401);
    assert_eq!(execs.len(), 401);
    let rec: serde_json::Value = serde_json::from_slice(&execs[0]).unwrap();
    assert_eq!(rec["status"], "completed", "{rec}");
    assert_eq!(rec["device"], config.kafka.client_id.as_str());
    assert_eq!(rec["kind"], "run", "{rec}");
    assert_eq!(rec["handler"], "slow", "{rec}");
    assert_eq!(rec["verdict"], "done", "{rec}");
    assert!(rec["duration_us"].is_u64() && rec["attempt"] == 1, "{rec}");
}

/// Reads up to `expect` record values of `topic` from the beginning.
pub(crate) fn read_topic(topic: &str, expect: usize) -> Vec<Vec<u8>> {
    read_topic_on(&brokers(), topic, expect)
}

/// Reads up to `expect` record values of `topic` on `brokers`.
pub(crate) fn read_topic_on(brokers: &str, topic: &str, expect: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    read_until(brokers, topic, |value| {
        out.push(value.to_vec());
        out.len() >= expect
    });
    out
}

/// The event ids on `topic`, read until `expect` distinct ones were seen
/// (or 30 s passed), and how many records carried them. Kafka delivery from
/// the outbox is at least once: a record whose acknowledgement an outage
/// swallowed is sent again, and consumers drop the copy by its id.
pub(crate) fn read_ids_on(
    brokers: &str,
    topic: &str,
    expect: usize,
) -> (std::collections::HashSet<String>, usize) {
    let mut ids = std::collections::HashSet::new();
    let mut records = 0;
    read_until(brokers, topic, |value| {
        records += 1;
        let event: serde_json::Value = serde_json::from_slice(value).unwrap();
        ids.insert(event["id"].as_str().unwrap().to_owned());
        ids.len() >= expect
    });
    (ids, records)
}

/// Feeds the record values of `topic`, from its start, to `done` until it
/// says so or 30 s passed.
fn read_until(brokers: &str, topic: &str, mut done: impl FnMut(&[u8]) -> bool) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", ulid::Ulid::new()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200))
            && done(m.payload().unwrap_or_default())
        {
            return;
        }
    }
}

#[test]
#[ignore = "needs services: make test"]
fn undecodable_records_are_dead_lettered_and_do_not_block_the_partition() {
    let sb = Sandbox::new();
    sb.install_slow(0);
    let prefix = k::prefix();
    let mut config = sb.config();
    k::consuming(&mut config, &prefix);
    // One partition: the bad records sit between good ones.
    config.kafka.partitions = 1;
    let bus = Bus::open(config.clone()).unwrap();
    bus.start().unwrap();
    let topic = &config.kafka.topics.events.name;
    let p = k::producer(1);
    let good: Vec<Event> = (0..3).map(|i| work("p", i)).collect();
    k::send(&p, topic, &good[0], "x");
    k::send_raw(&p, topic, "p", b"{not json");
    k::send(&p, topic, &good[1], "x");
    k::send_raw(&p, topic, "p", br#"{"id":"","project_id":"p","event_type":"work","source_type":"s","source_id":null,"target_persona_id":null,"payload":{},"headers":[],"schema_version":1,"chain_depth":0,"created_at":"x"}"#);
    k::send(&p, topic, &good[2], "x");
    k::flush(&p);
    let store = bus.store().clone();
    wait_for(Duration::from_secs(30), "the good events handled", || {
        completed(&store) == 3
    });
    let letters = store.dead_letters(10).unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters.iter().all(
            |l| l.handler == "(decode)" && l.event_id.starts_with(&format!("kafka:{topic}/0@"))
        )
    );
    assert!(
        letters
            .iter()
            .any(|l| l.last_error.contains("not a persona event")),
        "{letters:?}"
    );
    assert!(
        letters.iter().any(|l| l.last_error.contains("`id`")),
        "{letters:?}"
    );
    bus.shutdown();
    // The raw records went to the dlq topic.
    let raw = read_topic(&config.kafka.topics.dlq.name, 2);
    assert!(raw.iter().any(|r| r == b"{not json"), "{raw:?}");
}

#[test]
#[ignore = "needs services: make test"]
fn a_killed_consumer_is_redelivered_to_but_runs_nothing_twice() {
    let sb = Sandbox::new();
    sb.install_slow(2);
    let prefix = k::prefix();
    let toml = topics_toml(&sb, &prefix, "");
    let env = env_for(&prefix, "device-a");
    let events: Vec<Event> = (0..1500).map(|i| work(&format!("p{}", i % 6), i)).collect();
    let mut host = spawn_host(&sb, &sb.data_dir(), &toml, &env);
    // Topics exist once the host is up; then another device produces.
    let store = Store::open(&sb.data_dir()).unwrap();
    wait_for_topic(&format!("{prefix}.events"));
    let p = k::producer(1);
    for e in &events {
        k::send(&p, &format!("{prefix}.events"), e, "device-b");
    }
    k::flush(&p);
    wait_for(Duration::from_secs(60), "some events handled", || {
        store.ledger_count("slow").unwrap() >= 100
    });
    host.kill().unwrap(); // SIGKILL: offsets of the last batches not committed
    host.wait().unwrap();
    let at_kill = store.ledger_count("slow").unwrap();
    assert!(
        at_kill < 1500,
        "killed too late to test anything ({at_kill})"
    );

    let mut host = spawn_host(&sb, &sb.data_dir(), &toml, &env);
    wait_for(
        Duration::from_secs(90),
        "all 1500 handled after the restart",
        || store.ledger_count("slow").unwrap() == 1500,
    );
    // A little longer: any late duplicate would show now.
    std::thread::sleep(Duration::from_secs(2));
    host.kill().unwrap();
    host.wait().unwrap();
    assert_each_once(&store, "slow", &events);
    assert_eq!(store.state_counter("slow", "count").unwrap(), 1500);
}

#[test]
#[ignore = "needs services: make test"]
fn replay_rereads_skips_what_was_handled_and_rehandle_runs_it_again() {
    let sb = Sandbox::new();
    sb.install_slow(0);
    let prefix = k::prefix();
    let mut config = sb.config();
    k::consuming(&mut config, &prefix);
    let events: Vec<Event> = (0..50).map(|i| work(&format!("p{}", i % 3), i)).collect();
    let run_once = |expect_notices: usize| {
        let bus = Bus::open(config.clone()).unwrap();
        let notices = bus.subscribe();
        bus.start().unwrap();
        let mut notices = notices;
        let mut resolved = 0;
        wait_for(Duration::from_secs(60), "the events to be read", || {
            while let Ok(n) = notices.try_recv() {
                if matches!(n, persona_bus::Notice::Resolved { .. }) {
                    resolved += 1;
                }
            }
            resolved >= expect_notices
        });
        bus.shutdown();
        resolved
    };
    backlog_from_elsewhere(&config, &events);
    run_once(50);
    let store = Store::open(&sb.data_dir()).unwrap();
    assert_eq!(store.state_counter("slow", "count").unwrap(), 50);

    let env: Vec<(String, String)> = env_for(&prefix, "device-replay");
    let toml = topics_toml(&sb, &prefix, "");
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let replay = |args: &[&str]| {
        let mut all = vec!["--config", toml.to_str().unwrap(), "replay"];
        all.extend_from_slice(args);
        cli_with_env(&sb, &all, &env_ref)
    };

    // Replay to earliest: all 50 are read again, and skipped by the ledger.
    let (ok, out, err) = replay(&["--to", "earliest"]);
    assert!(ok, "{err}");
    assert!(out.contains("will read 50 records again"), "{out}");
    assert_eq!(run_once(50), 50);
    assert_eq!(
        store.state_counter("slow", "count").unwrap(),
        50,
        "skipped, not run"
    );
    assert_eq!(store.executions(&events[0].id).unwrap().len(), 1);

    // With --rehandle slow, they run again.
    let (ok, out, err) = replay(&["--to", "earliest", "--rehandle", "slow"]);
    assert!(ok, "{err}");
    assert!(out.contains("cleared 50 ledger entries"), "{out}");
    run_once(50);
    wait_for(
        Duration::from_secs(10),
        "the rehandled runs counted",
        || store.state_counter("slow", "count").unwrap() == 100,
    );
    assert_eq!(store.executions(&events[0].id).unwrap().len(), 2);

    // partition:offset and a time parse and move; a live group is refused.
    let (ok, out, err) = replay(&["--to", "0:0", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["moved"].as_array().unwrap().len(), 1, "{v}");
    let (ok, _, err) = replay(&["--to", "2020-01-01T00:00:00Z"]);
    assert!(ok, "{err}");
    let bus = Bus::open(config.clone()).unwrap();
    bus.start().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the group to have a member",
        || {
            let (_, out, _) = cli_with_env(
                &sb,
                &["--config", toml.to_str().unwrap(), "status", "--json"],
                &env_ref,
            );
            serde_json::from_str::<serde_json::Value>(&out)
                .map(|v| {
                    v["kafka"]["group"]["members"]
                        .as_array()
                        .is_some_and(|m| !m.is_empty())
                })
                .unwrap_or(false)
        },
    );
    let (ok, _, err) = replay(&["--to", "earliest"]);
    assert!(!ok);
    assert!(
        err.contains("live member") && err.contains("stop those hosts first"),
        "{err}"
    );
    // status shows the member's partitions and lag.
    let (_, out, _) = cli_with_env(
        &sb,
        &["--config", toml.to_str().unwrap(), "status"],
        &env_ref,
    );
    assert!(
        out.contains("member(s)") && out.contains("assigned to"),
        "{out}"
    );
    bus.shutdown();
}

#[test]
#[ignore = "needs services: make test"]
fn an_event_published_on_device_a_is_handled_on_device_b() {
    // Two devices: separate data dirs, client ids and processes, one group.
    let sb = Sandbox::new();
    sb.install_slow(0);
    let prefix = k::prefix();
    let toml = topics_toml(&sb, &prefix, "");
    let dir_a = sb.root.path().join("device-a");
    let dir_b = sb.root.path().join("device-b");
    let env_a = env_for(&prefix, "device-a");
    let env_b = env_for(&prefix, "device-b");
    let mut a = spawn_host(&sb, &dir_a, &toml, &env_a);
    let mut b = spawn_host(&sb, &dir_b, &toml, &env_b);
    let (store_a, store_b) = (Store::open(&dir_a).unwrap(), Store::open(&dir_b).unwrap());
    // Both in the group before anything is published, so the partitions
    // are shared out between them.
    let env_ref: Vec<(&str, &str)> = env_a
        .iter()
        .map(|(x, y)| (x.as_str(), y.as_str()))
        .collect();
    let status_a = || {
        let (ok, out, err) = crate::run_in(
            &dir_a,
            &["--config", toml.to_str().unwrap(), "status", "--json"],
            &env_ref,
        );
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    wait_for(
        Duration::from_secs(60),
        "two members sharing the partitions",
        || {
            status_a()["kafka"]["group"]["members"]
                .as_array()
                .is_some_and(|m| {
                    m.len() == 2
                        && m.iter()
                            .all(|m| m["partitions"].as_array().is_some_and(|p| !p.is_empty()))
                })
        },
    );

    // Published on device A (a CLI publish into A's store; A's relay
    // produces it), over many projects so both devices own some.
    const N: usize = 60;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(crate::publish_work(
            &dir_a,
            &toml,
            &env_ref,
            &format!("proj-{i}"),
            None,
        ));
    }
    wait_for(
        Duration::from_secs(60),
        "every event handled once across the devices",
        || {
            store_a.ledger_count("slow").unwrap() + store_b.ledger_count("slow").unwrap()
                == N as u64
        },
    );
    let on_b = store_b.ledger_count("slow").unwrap();
    let logs = || {
        format!(
            "device A:\n{}\ndevice B:\n{}",
            std::fs::read_to_string(dir_a.with_extension("log")).unwrap_or_default(),
            std::fs::read_to_string(dir_b.with_extension("log")).unwrap_or_default()
        )
    };
    assert!(on_b > 0, "device B handled none of A's events\n{}", logs());
    assert!(
        on_b < N as u64,
        "device A handled none of its own events\n{}",
        logs()
    );
    // A's dashboard shows every one completed, including B's (from B's
    // execution records); B's archive has all of A's events.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while completed(&store_a) != N as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "A does not see B's outcomes: {:?}\n{}",
            store_a.status_counts().unwrap(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for(
        Duration::from_secs(30),
        "B to archive all of A's events",
        || ids.iter().all(|id| store_b.event(id).is_ok()),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        store_a.ledger_count("slow").unwrap() + store_b.ledger_count("slow").unwrap(),
        N as u64,
        "no event was handled on both devices"
    );
    let status = status_a();
    assert_eq!(status["kafka"]["total_lag"], 0, "{status}");
    for child in [&mut a, &mut b] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
#[ignore = "needs services: make test"]
fn webhooks_on_the_webhooks_topic_become_events_once() {
    let sb = Sandbox::new();
    sb.install(
        "slow",
        guests::SLOW,
        "[[subscriptions]]\nevent_type = \"webhook_received\"",
    );
    let prefix = k::prefix();
    let mut config = sb.config();
    k::consuming(&mut config, &prefix);
    let bus = Bus::open(config.clone()).unwrap();
    bus.start().unwrap();
    let topic = &config.kafka.topics.webhooks.name;
    let p = k::producer(1);
    let hook = serde_json::json!({
        "id": "wh-01", "trigger_id": "github", "project_id": "repo-1",
        "body": {"action": "opened"}, "received_at": "2026-11-27T09:00:00Z"
    });
    let bytes = serde_json::to_vec(&hook).unwrap();
    k::send_raw(&p, topic, "github", &bytes);
    k::send_raw(&p, topic, "github", &bytes); // a redelivery
    k::send_raw(&p, topic, "github", br#"{"trigger_id":"github"}"#);
    k::flush(&p);
    let store = bus.store().clone();
    let e = persona_bus_tests::wait_final(&bus, "wh-01", Duration::from_secs(30));
    assert_eq!(e.status, EventStatus::Completed);
    assert_eq!(
        (
            e.event_type.as_str(),
            e.source_type.as_str(),
            e.project_id.as_str()
        ),
        ("webhook_received", "webhook", "repo-1")
    );
    assert_eq!(e.source_id.as_deref(), Some("github"));
    let payload: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
    assert_eq!(payload["body"]["action"], "opened");
    wait_for(
        Duration::from_secs(10),
        "the bad record dead-lettered",
        || {
            store
                .dead_letters(10)
                .unwrap()
                .iter()
                .any(|l| l.handler == "(decode)")
        },
    );
    let letter = store
        .dead_letters(10)
        .unwrap()
        .into_iter()
        .find(|l| l.handler == "(decode)")
        .unwrap();
    assert!(letter.last_error.contains("missing field"), "{letter:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(store.ledger_count("slow").unwrap(), 1, "routed once");
    assert_eq!(store.state_counter("slow", "count").unwrap(), 1);
    bus.shutdown();
}
