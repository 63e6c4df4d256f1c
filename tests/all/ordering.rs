//! Ordering chosen per handler (`[ordering]` in the manifest): events of
//! one key run in order, one at a time, different keys at once, while a
//! project-ordered handler of the same events keeps project order. With a
//! real compiled guest (`keyed`) waiting on a real local HTTP service, for
//! both sources, through a call that times out and a `kill -9`.

use crate::consume::completed;
use persona_bus::event::{EventLimits, NewEvent};
use persona_bus::store::Store;
use persona_bus::{Bus, Event};
use persona_bus_tests::kafka as k;
use persona_bus_tests::service::SlowService;
use persona_bus_tests::{Sandbox, guests, wait_final, wait_for};
use persona_bus_tests::{state_number as number, state_text as text};
use std::time::{Duration, Instant};

const KEYS: u64 = 200;
const PER_KEY: u64 = 10;

/// `keyed` by key, waiting `service` on each event, and `rmw` (strict,
/// project-ordered) on the same events.
fn install(sb: &Sandbox, service: &SlowService, extra: &str) {
    install_keyed(sb, service, extra);
    sb.install(
        "rmw",
        guests::RMW,
        "[[subscriptions]]\nevent_type = \"keyed\"\n[config]\nstrict = \"true\"\n",
    );
}

fn install_keyed(sb: &Sandbox, service: &SlowService, extra: &str) {
    sb.install(
        "keyed",
        guests::KEYED,
        &format!(
            "allowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n\
             [[subscriptions]]\nevent_type = \"keyed\"\n\
             [ordering]\nby = \"key\"\nkey = \"/key\"\nmax_in_flight = 32\n\
             [config]\nurl = \"{}\"\n{extra}",
            service.url()
        ),
    );
}

/// Key `k<i>` gets seq 1..=PER_KEY; the keys interleave, and `n` counts
/// every event of the project (for the project-ordered `rmw`).
fn events() -> Vec<NewEvent> {
    let mut n = 0;
    let mut out = Vec::new();
    for seq in 1..=PER_KEY {
        for key in 0..KEYS {
            n += 1;
            out.push(NewEvent {
                event_type: "keyed".into(),
                source_type: "system".into(),
                project_id: Some("p0".into()),
                payload: Some(serde_json::json!({ "key": format!("k{key}"), "seq": seq, "n": n })),
                ..Default::default()
            });
        }
    }
    out
}

/// Every key saw its events in order, each call read what the one before
/// it wrote, and the project-ordered handler saw the project in order.
fn assert_ordered(store: &Store) {
    let total = KEYS * PER_KEY;
    assert_eq!(
        number(store, "keyed", "out_of_order"),
        0,
        "a key ran out of order"
    );
    assert_eq!(number(store, "keyed", "bad_readback"), 0);
    assert_eq!(number(store, "keyed", "done"), total as i64);
    let serial: Vec<String> = (1..=PER_KEY).map(|s| s.to_string()).collect();
    for key in 0..KEYS {
        assert_eq!(
            text(store, "keyed", &format!("seen:k{key}")),
            Some(serial.join(",")),
            "key k{key}"
        );
    }
    assert_eq!(number(store, "rmw", "stale"), 0, "project order broke");
    assert_eq!(number(store, "rmw", "count:p0"), total as i64);
    assert_eq!(number(store, "rmw", "last:p0"), total as i64);
}

#[test]
fn keys_run_at_once_and_each_key_in_order_from_sqlite() {
    let service = SlowService::start(Duration::from_millis(20));
    let sb = Sandbox::new();
    install(&sb, &service, "");
    let bus = sb.open();
    bus.start().unwrap();
    let started = Instant::now();
    for chunk in events().chunks(250) {
        bus.publish_batch(chunk.to_vec()).unwrap();
    }
    let store = bus.store().clone();
    wait_for(Duration::from_secs(120), "every event completed", || {
        completed(&store) == KEYS * PER_KEY
    });
    let took = started.elapsed();
    bus.shutdown();
    assert_ordered(&store);
    assert_eq!(service.requests(), KEYS * PER_KEY);
    // Kept-alive connections: about one per call at once (32), not one
    // per request.
    assert!(
        service.connections() <= 2 * 32,
        "{} connections for {} requests",
        service.connections(),
        service.requests()
    );
    // One lane would take 2,000 x 20 ms = 40 s.
    assert!(
        service.most_at_once() >= 8,
        "only {} calls waited on the service at once",
        service.most_at_once()
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
#[ignore = "needs services: make test"]
fn keys_run_at_once_and_each_key_in_order_from_kafka() {
    let service = SlowService::start(Duration::from_millis(20));
    let sb = Sandbox::new();
    install(&sb, &service, "");
    let prefix = k::prefix();
    let mut config = sb.config();
    k::consuming(&mut config, &prefix);
    let bus = Bus::open(config.clone()).unwrap();
    bus.start().unwrap();
    let limits = EventLimits {
        max_payload_bytes: 4096,
    };
    let p = k::producer(1);
    for e in events() {
        let e: Event = e.validate(limits, 0).unwrap();
        k::send(&p, &config.kafka.topics.events.name, &e, "device-elsewhere");
    }
    k::flush(&p);
    let store = bus.store().clone();
    wait_for(
        Duration::from_secs(120),
        "every record consumed and handled",
        || completed(&store) == KEYS * PER_KEY,
    );
    bus.shutdown();
    assert_ordered(&store);
    assert!(service.most_at_once() >= 8, "{}", service.most_at_once());
    k::drop_topics(&prefix);
}

/// Without a project-ordered handler on the same events: with one, the
/// slow event's outcome (and so the project's later commits, which may
/// have read its state) waits for the call, although the calls go on.
#[test]
fn a_call_that_times_out_holds_up_only_its_key() {
    let service = SlowService::start(Duration::from_millis(1));
    let sb = Sandbox::new();
    install_keyed(
        &sb,
        &service,
        "[limits]\ntimeout_ms = 3000\n[retry]\nmax_attempts = 1\n",
    );
    let bus = sb.open();
    bus.start().unwrap();
    let slow = bus
        .publish(NewEvent {
            event_type: "keyed".into(),
            source_type: "system".into(),
            project_id: Some("p0".into()),
            payload: Some(
                serde_json::json!({ "key": "slow", "seq": 1, "n": 1, "sleep_ms": 60_000 }),
            ),
            ..Default::default()
        })
        .unwrap();
    let started = Instant::now();
    let others: Vec<NewEvent> = (0..100u64)
        .map(|i| NewEvent {
            event_type: "keyed".into(),
            source_type: "system".into(),
            project_id: Some("p0".into()),
            payload: Some(
                serde_json::json!({ "key": format!("k{}", i % 10), "seq": i / 10 + 1, "n": i + 2 }),
            ),
            ..Default::default()
        })
        .collect();
    bus.publish_batch(others).unwrap();
    let store = bus.store().clone();
    wait_for(Duration::from_secs(10), "the other keys' events", || {
        number(&store, "keyed", "done") == 100
    });
    // The other keys finished while the slow key's call was still running.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let row = store.event(&slow.id).unwrap();
    assert_eq!(row.status, persona_bus::EventStatus::Processing);
    let dead = wait_final(&bus, &slow.id, Duration::from_secs(10));
    assert_eq!(dead.status, persona_bus::EventStatus::DeadLetter);
    assert_eq!(number(&store, "keyed", "out_of_order"), 0);
    bus.shutdown();
}

#[test]
fn a_killed_host_keeps_every_keys_order_and_runs_each_event_once() {
    let service = SlowService::start(Duration::from_millis(5));
    let sb = Sandbox::new();
    install(&sb, &service, "");
    let config = sb.root.path().join("bus.toml");
    std::fs::write(&config, "[poll]\nbatch_size = 64\n").unwrap();
    let store = Store::open(&sb.data_dir()).unwrap();
    let limits = EventLimits {
        max_payload_bytes: 4096,
    };
    let events: Vec<Event> = events()
        .into_iter()
        .map(|e| e.validate(limits, 0).unwrap())
        .collect();
    store.insert_batch(&events).unwrap();
    let total = KEYS * PER_KEY;
    let start = || crate::crash::start_host(&sb, &config);
    let mut host = start();
    wait_for(Duration::from_secs(60), "some events handled", || {
        number(&store, "keyed", "done") >= 300
    });
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(completed(&store) < total, "the kill came too late");
    // What is committed is a prefix of each key's events.
    for key in 0..KEYS {
        let last = number(&store, "keyed", &format!("last:k{key}"));
        let seen = text(&store, "keyed", &format!("seen:k{key}")).unwrap_or_default();
        let prefix: Vec<String> = (1..=last).map(|s| s.to_string()).collect();
        assert_eq!(seen, prefix.join(","), "k{key} after the kill");
    }
    let host = start();
    wait_for(
        Duration::from_secs(120),
        "every event after the restart",
        || completed(&store) == total,
    );
    host.terminate();
    assert_ordered(&store);
    for e in &events {
        let done = store
            .executions(&e.id)
            .unwrap()
            .iter()
            .filter(|x| x.handler == "keyed" && x.outcome == "completed")
            .count();
        assert_eq!(done, 1, "event {} completed {done} times", e.id);
    }
}
