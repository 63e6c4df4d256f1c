//! Kafka, plan phase 1 (dual write: write both, read SQLite), against the
//! real broker that `make kafka-up` starts (`PERSONA_BUS_TEST_KAFKA`, default
//! 127.0.0.1:9092). Every test uses its own random topic names.

use crate::cli_with_env;
use persona_bus::config::Config;
use persona_bus::kafka::wire::WireEvent;
use persona_bus::{Bus, BusError, EventStatus, NewEvent};
use persona_bus_tests::kafka::{self as k, brokers};
use persona_bus_tests::{Sandbox, event, guests, wait_final, wait_for};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// A phase-1 config (write both, read SQLite) on topics named
/// `<random>.events` etc.
pub(crate) fn kafka_config(sb: &Sandbox, brokers: &str) -> (Config, String) {
    let prefix = k::prefix();
    let mut c = sb.config();
    k::consuming(&mut c, &prefix);
    c.kafka.dual_write = true;
    c.kafka.brokers = brokers.into();
    (c, prefix)
}

struct Record {
    topic: String,
    partition: i32,
    key: String,
    headers: BTreeMap<String, String>,
    event: WireEvent,
}

/// Reads `topics` from the beginning until `expect` records came (or 60 s).
fn consume(topics: &[&str], expect: usize) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("test-{}", ulid::Ulid::new()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expect && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.unwrap();
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
            headers,
            event: serde_json::from_slice(msg.payload().unwrap()).unwrap(),
        });
    }
    // A little longer: anything beyond `expect` would be a duplicate.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(Ok(extra)) = consumer.poll(Duration::from_millis(200)) {
            panic!(
                "more records than expected: {:?} at offset {}",
                extra.topic(),
                extra.offset()
            );
        }
    }
    out
}

#[test]
#[ignore = "needs services: make test"]
fn dual_write_puts_every_event_on_kafka_once_keyed_and_in_order() {
    let sb = Sandbox::new();
    sb.install_shipped("router", guests::ROUTER, guests::ROUTER_MANIFEST)
        .install_shipped("counter", guests::COUNTER, guests::COUNTER_MANIFEST);
    let (config, prefix) = kafka_config(&sb, &brokers());
    let device = config.kafka.client_id.clone();
    let bus = Bus::open(config).unwrap();
    bus.start().unwrap();
    let mut published: Vec<(String, String)> = Vec::new();
    for i in 0..100 {
        let project = format!("p{}", i % 5);
        let e = bus
            .publish(NewEvent {
                project_id: Some(project.clone()),
                ..event("task_created")
            })
            .unwrap();
        published.push((project, e.id));
    }
    for (_, id) in &published {
        assert_eq!(
            wait_final(&bus, id, Duration::from_secs(30)).status,
            EventStatus::Completed
        );
    }
    wait_for(Duration::from_secs(30), "the outbox to drain", || {
        bus.store().unfinished().unwrap() == 0 && bus.store().outbox_len().unwrap() == 0
    });
    let stored = bus
        .store()
        .list_events(&persona_bus::store::EventFilter {
            limit: 1_000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        stored.total, 200,
        "100 tasks + 100 persona_action follow-ups from the router"
    );

    let events_topic = format!("{prefix}.events");
    let actions_topic = format!("{prefix}.actions");
    let records = consume(&[&events_topic, &actions_topic], 200);
    assert_eq!(
        records.len(),
        200,
        "as many records as stored events, no duplicates"
    );
    let ids: HashSet<&str> = records.iter().map(|r| r.event.id.as_str()).collect();
    let stored_ids: HashSet<&str> = stored.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, stored_ids, "the same events in SQLite and Kafka");
    for r in &records {
        assert_eq!(r.key, r.event.project_id, "key = project_id");
        assert_eq!(r.headers["event-id"], r.event.id);
        assert_eq!(r.headers["event-type"], r.event.event_type);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["schema-version"], "1");
        assert_eq!(r.headers["origin-device"], device);
        assert_eq!(r.headers["chain-depth"], r.event.chain_depth.to_string());
        assert!(r.headers.contains_key("source"));
        let want = if r.event.event_type == "persona_action" {
            &actions_topic
        } else {
            &events_topic
        };
        assert_eq!(&r.topic, want);
        assert!((0..6).contains(&r.partition));
    }
    // One project, one partition, publish order.
    let mut by_project: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut partition_of: HashMap<&str, HashSet<i32>> = HashMap::new();
    for r in records.iter().filter(|r| r.topic == events_topic) {
        by_project
            .entry(&r.event.project_id)
            .or_default()
            .push(&r.event.id);
        partition_of
            .entry(&r.event.project_id)
            .or_default()
            .insert(r.partition);
    }
    for (project, ids) in &by_project {
        let sent: Vec<&str> = published
            .iter()
            .filter(|(p, _)| p == project)
            .map(|(_, id)| id.as_str())
            .collect();
        assert_eq!(ids, &sent, "project {project} kept its order");
        assert_eq!(partition_of[project].len(), 1);
    }
    // The host created the topics with 6 partitions.
    let meta_client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let meta = meta_client
        .fetch_metadata(Some(&events_topic), Duration::from_secs(10))
        .unwrap();
    assert_eq!(meta.topics()[0].partitions().len(), 6);
}

#[test]
#[ignore = "needs services: make test"]
fn the_outbox_keeps_events_while_kafka_is_unreachable() {
    let sb = Sandbox::new();
    sb.install_shipped("audit", guests::AUDIT, guests::AUDIT_MANIFEST);
    // Nothing listens on port 1: every produce times out or is refused.
    let (mut config, prefix) = kafka_config(&sb, "127.0.0.1:1");
    let bus = Bus::open(config.clone()).unwrap();
    bus.start().unwrap();
    let ids: Vec<String> = (0..30)
        .map(|_| bus.publish(event("custom")).unwrap().id)
        .collect();
    for id in &ids {
        assert_eq!(
            wait_final(&bus, id, Duration::from_secs(20)).status,
            EventStatus::Completed,
            "SQLite keeps working"
        );
    }
    assert_eq!(bus.store().outbox_len().unwrap(), 30, "all kept for Kafka");
    drop(bus);

    // Kafka is back: the same data dir, the real brokers.
    config.kafka.brokers = brokers();
    let bus = Bus::open(config).unwrap();
    wait_for(Duration::from_secs(30), "the outbox to drain", || {
        bus.store().outbox_len().unwrap() == 0
    });
    let records = consume(&[&format!("{prefix}.events")], 30);
    let got: HashSet<String> = records.iter().map(|r| r.event.id.clone()).collect();
    assert_eq!(records.len(), 30, "no duplicates");
    assert_eq!(got, ids.into_iter().collect::<HashSet<_>>());
}

#[test]
fn kafka_required_fails_fast_naming_the_brokers() {
    let sb = Sandbox::new();
    let (mut config, _) = kafka_config(&sb, "127.0.0.1:1");
    config.kafka.required = true;
    let started = Instant::now();
    let err = Bus::open(config)
        .err()
        .expect("must not start without Kafka");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, BusError::Kafka(_)), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");

    // The same through the binary, configured by the plan's variables.
    let started = Instant::now();
    let handlers = sb.handlers_dir();
    let env = [
        ("KAFKA_ENABLED", "true"),
        ("KAFKA_DUAL_WRITE", "true"),
        ("KAFKA_REQUIRED", "true"),
        ("KAFKA_BROKERS", "127.0.0.1:1"),
    ];
    let (ok, _, stderr) = cli_with_env(
        &sb,
        &["run", "--handlers", handlers.to_str().unwrap()],
        &env,
    );
    assert!(!ok);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        stderr.contains("no Kafka broker answered at 127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs services: make test"]
fn cli_publish_is_queued_for_kafka_and_status_reports_the_check() {
    let sb = Sandbox::new();
    // A CLI publish under the plan's variables queues the event for the
    // host's relay (it is stored first either way).
    let dual = [("KAFKA_ENABLED", "true"), ("KAFKA_DUAL_WRITE", "true")];
    let (ok, _, err) = cli_with_env(
        &sb,
        &[
            "publish",
            "--event-type",
            "custom",
            "--source-type",
            "system",
        ],
        &dual,
    );
    assert!(ok, "{err}");
    let store = persona_bus::store::Store::open(&sb.data_dir()).unwrap();
    assert_eq!(store.outbox_len().unwrap(), 1);

    // `status` reports the connectivity check and the outbox.
    let status = |brokers: &str| {
        let (ok, out, err) = cli_with_env(
            &sb,
            &["status", "--json"],
            &[dual[0], dual[1], ("KAFKA_BROKERS", brokers)],
        );
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["kafka"].clone()
    };
    let up = status(&brokers());
    assert_eq!(
        (up["reachable"].as_bool(), up["outbox"].as_u64()),
        (Some(true), Some(1)),
        "{up}"
    );
    let down = status("127.0.0.1:1");
    assert_eq!(down["reachable"].as_bool(), Some(false), "{down}");
    assert!(
        down["error"].as_str().unwrap().contains("127.0.0.1:1"),
        "{down}"
    );
}
