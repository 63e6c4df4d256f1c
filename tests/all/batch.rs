//! Batches of events per call (`[batch]`, the `handle-batch` export of
//! `persona:bus@0.2.0`): each event's effects commit once, with its own
//! outcome; one event that rejects or retries is dead-lettered or retried
//! alone while the rest of its batch commits; a call that fails as a whole
//! commits nothing and its events run again alone; and components built
//! against 0.1.0 run beside 0.2.0 ones. With the real compiled `batch` and
//! `v1-echo` guests, for both sources.

use persona_bus::event::{EventLimits, NewEvent};
use persona_bus::store::Store;
use persona_bus::{Bus, Event, EventStatus};
use persona_bus_tests::kafka as k;
use persona_bus_tests::{Sandbox, completed, guests, wait_final, wait_for};
use persona_bus_tests::{state_number as number, state_text as text};
use std::time::{Duration, Instant};

const KEYS: u64 = 40;
const PER_KEY: u64 = 25;

/// `batch` on `b` events with `manifest` (after its subscription), and the
/// 0.1.0 `v1-echo` on the same events.
fn install(sb: &Sandbox, manifest: &str) {
    sb.install(
        "batch",
        guests::BATCH,
        &format!("[[subscriptions]]\nevent_type = \"b\"\n{manifest}"),
    );
    sb.install(
        "echo1",
        guests::V1_ECHO,
        "[[subscriptions]]\nevent_type = \"b\"\n",
    );
}

fn event(payload: serde_json::Value) -> NewEvent {
    NewEvent {
        event_type: "b".into(),
        source_type: "system".into(),
        project_id: Some("p0".into()),
        payload: Some(payload),
        ..Default::default()
    }
}

/// Key `k<i>` gets seq 1..=PER_KEY, the keys interleaved.
fn keyed_events() -> Vec<NewEvent> {
    let mut out = Vec::new();
    for seq in 1..=PER_KEY {
        for key in 0..KEYS {
            out.push(event(
                serde_json::json!({ "key": format!("k{key}"), "seq": seq }),
            ));
        }
    }
    out
}

/// Every key in order, every read saw the write before it, every event
/// committed once by both handlers, and the calls were batches.
fn assert_batched_in_order(store: &Store, ids: &[String]) {
    let total = (KEYS * PER_KEY) as i64;
    assert_eq!(
        number(store, "batch", "out_of_order"),
        0,
        "a key ran out of order"
    );
    assert_eq!(number(store, "batch", "bad_readback"), 0);
    assert_eq!(number(store, "batch", "done"), total);
    let serial: Vec<String> = (1..=PER_KEY).map(|s| s.to_string()).collect();
    for key in 0..KEYS {
        assert_eq!(
            text(store, "batch", &format!("seen:k{key}")),
            Some(serial.join(",")),
            "key k{key}"
        );
    }
    for id in ids {
        assert_eq!(number(store, "batch", &format!("n:{id}")), 1, "event {id}");
        assert!(
            text(store, "echo1", id).is_some(),
            "0.1.0 handler missed {id}"
        );
    }
    assert_eq!(number(store, "echo1", "done"), total);
    let calls = number(store, "batch", "batch_calls");
    let batched = number(store, "batch", "batched");
    assert!(calls > 0, "no batch call committed");
    assert!(
        batched / calls >= 4,
        "{batched} events in {calls} batch calls: hardly batches"
    );
}

#[test]
fn a_batch_keeps_its_units_order_and_commits_each_event_once_from_sqlite() {
    for ordering in [
        "",
        "[ordering]\nby = \"key\"\nkey = \"/key\"\nmax_in_flight = 8\n",
    ] {
        let sb = Sandbox::new();
        install(
            &sb,
            &format!("{ordering}[batch]\nmax_events = 64\nmax_wait_ms = 5\n"),
        );
        let bus = sb.open();
        bus.start().unwrap();
        let snapshot = bus.registry().snapshot();
        let speaks = |name: &str| snapshot.handlers[name].prepared.contract;
        assert_eq!(speaks("batch").version(), "0.2.0");
        assert!(speaks("batch").batches());
        assert_eq!(speaks("echo1").version(), "0.1.0");
        let mut ids = Vec::new();
        for chunk in keyed_events().chunks(250) {
            ids.extend(
                bus.publish_batch(chunk.to_vec())
                    .unwrap()
                    .into_iter()
                    .map(|e| e.id),
            );
        }
        let store = bus.store().clone();
        wait_for(Duration::from_secs(60), "every event completed", || {
            completed(&store) == KEYS * PER_KEY
        });
        // Calls and events per call, for both handlers. The committer
        // counts a commit just after it lands: wait for the last one.
        let every = format!(
            "persona_bus_handler_events_per_call_sum{{handler=\"echo1\"}} {}",
            KEYS * PER_KEY
        );
        wait_for(Duration::from_secs(10), "metrics of every event", || {
            bus.metrics().render("").contains(&every)
        });
        let metrics = bus.metrics().render("");
        bus.shutdown();
        assert_batched_in_order(&store, &ids);
        assert!(
            metrics.contains("persona_bus_handler_events_per_call_count{handler=\"batch\"}"),
            "{metrics}"
        );
    }
}

#[test]
#[ignore = "needs services: make test"]
fn a_batch_keeps_its_units_order_and_commits_each_event_once_from_kafka() {
    let sb = Sandbox::new();
    install(
        &sb,
        "[ordering]\nby = \"key\"\nkey = \"/key\"\n[batch]\nmax_events = 64\nmax_wait_ms = 5\n",
    );
    let prefix = k::prefix();
    let mut config = sb.config();
    k::consuming(&mut config, &prefix);
    let bus = Bus::open(config.clone()).unwrap();
    bus.start().unwrap();
    let limits = EventLimits {
        max_payload_bytes: 4096,
    };
    let p = k::producer(1);
    let mut ids = Vec::new();
    for e in keyed_events() {
        let e: Event = e.validate(limits, 0).unwrap();
        k::send(&p, &config.kafka.topics.events.name, &e, "device-elsewhere");
        ids.push(e.id);
    }
    k::flush(&p);
    let store = bus.store().clone();
    wait_for(
        Duration::from_secs(120),
        "every record consumed and handled",
        || completed(&store) == KEYS * PER_KEY,
    );
    bus.shutdown();
    assert_batched_in_order(&store, &ids);
    k::drop_topics(&prefix);
}

/// Publishes `events` at once (so they queue together: one batch) and
/// waits until each is final.
fn run_one_batch(manifest: &str, events: Vec<NewEvent>) -> (Sandbox, Bus, Vec<Event>) {
    let sb = Sandbox::new();
    install(
        &sb,
        &format!(
            "[batch]\nmax_events = 64\nmax_wait_ms = 50\n\
             [retry]\nmax_attempts = 2\nbackoff_ms = 10\nbackoff_max_ms = 10\n{manifest}"
        ),
    );
    let bus = sb.open();
    bus.start().unwrap();
    let published = bus.publish_batch(events).unwrap();
    for e in &published {
        wait_final(&bus, &e.id, Duration::from_secs(30));
    }
    (sb, bus, published)
}

/// The `batch` handler's runs of `id`: (attempt, outcome), in order.
fn runs(store: &Store, id: &str) -> Vec<(u32, String)> {
    store
        .executions(id)
        .unwrap()
        .into_iter()
        .filter(|x| x.handler == "batch")
        .map(|x| (x.attempt, x.outcome))
        .collect()
}

/// `e` ran once on `batch`, on its first attempt, and committed once.
fn completed_once(store: &Store, e: &Event) {
    let what = &e.payload;
    assert_eq!(runs(store, &e.id), [(1, "completed".to_owned())], "{what}");
    assert_eq!(number(store, "batch", &format!("n:{}", e.id)), 1, "{what}");
}

#[test]
fn one_event_rejects_and_one_retries_the_rest_of_the_batch_commits_once() {
    let mut events: Vec<NewEvent> = (1..=8)
        .map(|seq| event(serde_json::json!({ "key": "a", "seq": seq })))
        .collect();
    events.insert(
        3,
        event(serde_json::json!({ "key": "x", "seq": 1, "do": "reject" })),
    );
    events.insert(
        6,
        event(serde_json::json!({ "key": "y", "seq": 1, "do": "retry" })),
    );
    let (_sb, bus, published) = run_one_batch("", events);
    let store = bus.store().clone();
    bus.shutdown();
    let (rejected, retried) = (&published[3], &published[6]);
    // One batch call, whose first event committed its count.
    assert_eq!(number(&store, "batch", "batch_calls"), 1);
    assert_eq!(number(&store, "batch", "batched"), 10);
    assert_eq!(
        text(&store, "batch", "seen:a").as_deref(),
        Some("1,2,3,4,5,6,7,8")
    );
    assert_eq!(number(&store, "batch", "out_of_order"), 0);
    for e in published
        .iter()
        .filter(|e| e.id != rejected.id && e.id != retried.id)
    {
        completed_once(&store, e);
    }
    // The rejected one is dead-lettered, nothing of it committed.
    assert_eq!(
        store.event(&rejected.id).unwrap().status,
        EventStatus::DeadLetter
    );
    assert_eq!(runs(&store, &rejected.id), [(1, "rejected".to_owned())]);
    assert_eq!(store.dead_letters_of(&rejected.id).unwrap().len(), 1);
    assert_eq!(number(&store, "batch", &format!("n:{}", rejected.id)), 0);
    // The retried one ran again, alone, later, and committed once.
    assert_eq!(
        store.event(&retried.id).unwrap().status,
        EventStatus::Completed
    );
    assert_eq!(
        runs(&store, &retried.id),
        [(1, "retry".to_owned()), (2, "completed".to_owned())]
    );
    assert_eq!(number(&store, "batch", &format!("n:{}", retried.id)), 1);
    assert_eq!(text(&store, "batch", "seen:y").as_deref(), Some("1"));
}

#[test]
fn events_after_a_failed_event_that_wrote_run_again_alone_without_its_writes() {
    let events = vec![
        event(serde_json::json!({ "key": "a", "seq": 1 })),
        event(serde_json::json!({ "key": "w", "seq": 1, "do": "write-retry" })),
        event(serde_json::json!({ "key": "a", "seq": 2, "do": "peek:w" })),
        event(serde_json::json!({ "key": "j", "seq": 1, "do": "write-reject" })),
        event(serde_json::json!({ "key": "a", "seq": 3, "do": "peek:w" })),
    ];
    let (_sb, bus, published) = run_one_batch("", events);
    let store = bus.store().clone();
    bus.shutdown();
    // Inside the batch call the peeks read 999999, which was never
    // committed: they ran again alone, and read what was.
    for e in [&published[2], &published[4]] {
        assert_eq!(
            text(&store, "batch", &format!("peeked:{}", e.id)).as_deref(),
            Some("none"),
            "{}",
            e.payload
        );
        assert_eq!(runs(&store, &e.id), [(1, "completed".to_owned())]);
    }
    assert_eq!(text(&store, "batch", "last:w").as_deref(), Some("1"));
    assert_eq!(
        text(&store, "batch", &format!("junk:{}", published[3].id)),
        None
    );
    assert_eq!(
        store.event(&published[3].id).unwrap().status,
        EventStatus::DeadLetter
    );
    assert_eq!(text(&store, "batch", "seen:a").as_deref(), Some("1,2,3"));
    for e in &published {
        let n = number(&store, "batch", &format!("n:{}", e.id));
        let expected = i64::from(e.id != published[3].id);
        assert_eq!(n, expected, "{}", e.payload);
    }
}

#[test]
fn a_batch_call_that_traps_runs_its_events_alone_and_only_the_culprit_is_charged() {
    let mut events: Vec<NewEvent> = (1..=6)
        .map(|seq| event(serde_json::json!({ "key": "a", "seq": seq })))
        .collect();
    events.insert(
        2,
        event(serde_json::json!({ "key": "t", "seq": 1, "do": "trap" })),
    );
    let (_sb, bus, published) = run_one_batch("", events);
    let store = bus.store().clone();
    bus.shutdown();
    // The batch call's effects (its count) were dropped with it.
    assert_eq!(number(&store, "batch", "batch_calls"), 0);
    let culprit = &published[2];
    let culprit_runs = runs(&store, &culprit.id);
    assert_eq!(culprit_runs.len(), 2, "{culprit_runs:?}");
    assert_eq!(culprit_runs[0], (1, "trap".to_owned()));
    assert_eq!(culprit_runs[1], (2, "completed".to_owned()));
    for e in published.iter().filter(|e| e.id != culprit.id) {
        completed_once(&store, e);
    }
    for e in &published {
        assert_eq!(number(&store, "batch", &format!("n:{}", e.id)), 1);
        assert_eq!(store.event(&e.id).unwrap().status, EventStatus::Completed);
    }
    assert_eq!(
        text(&store, "batch", "seen:a").as_deref(),
        Some("1,2,3,4,5,6")
    );
}

#[test]
fn a_batch_call_that_times_out_runs_its_events_alone_under_their_own_deadline() {
    let mut events: Vec<NewEvent> = (1..=6)
        .map(|seq| event(serde_json::json!({ "key": "a", "seq": seq })))
        .collect();
    events.insert(
        1,
        event(serde_json::json!({ "key": "s", "seq": 1, "do": "sleep:5000" })),
    );
    let started = Instant::now();
    let (_sb, bus, published) = run_one_batch("[limits]\ntimeout_ms = 500\n", events);
    let took = started.elapsed();
    let store = bus.store().clone();
    bus.shutdown();
    let sleeper = &published[1];
    // The batch call (500 ms), then the sleeper alone twice (its attempts).
    assert_eq!(
        store.event(&sleeper.id).unwrap().status,
        EventStatus::DeadLetter
    );
    let outcomes: Vec<String> = runs(&store, &sleeper.id).into_iter().map(|r| r.1).collect();
    assert_eq!(outcomes, ["timeout", "timeout"]);
    for e in published.iter().filter(|e| e.id != sleeper.id) {
        completed_once(&store, e);
    }
    assert_eq!(
        text(&store, "batch", "seen:a").as_deref(),
        Some("1,2,3,4,5,6")
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_manifest_asking_for_batches_of_a_component_without_them_is_refused() {
    let sb = Sandbox::new();
    sb.install(
        "old",
        guests::V1_ECHO,
        "[[subscriptions]]\nevent_type = \"b\"\n[batch]\nmax_events = 8\n",
    );
    let bus = sb.open();
    let failures = bus.registry().snapshot().failures.clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let error = &failures[0].error;
    assert!(
        error.contains("[batch]")
            && error.contains("persona:bus@0.1.0")
            && error.contains("batch-handler"),
        "{error}"
    );
    bus.shutdown();
}

/// In a batch call, each event's outbound requests carry its own
/// idempotency keys (derived from its id, counted from 0), so a receiver
/// sees the same keys when the event runs again alone.
#[test]
fn each_event_of_a_batch_sends_its_own_idempotency_keys() {
    let service = persona_bus_tests::service::SlowService::start(Duration::from_millis(1));
    let sb = Sandbox::new();
    sb.install(
        "batch",
        guests::BATCH,
        &format!(
            "allowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n\
             [[subscriptions]]\nevent_type = \"b\"\n[batch]\nmax_events = 8\n\
             [config]\nurl = \"{}\"\n",
            service.url()
        ),
    );
    let events = sb.root.path().join("events.jsonl");
    let lines: String = (1..=3)
        .map(|seq| {
            format!(
                "{{\"event_type\": \"b\", \"source_type\": \"system\", \"payload\": {{\"key\": \"a\", \"seq\": {seq}}}}}\n"
            )
        })
        .collect();
    std::fs::write(&events, lines).unwrap();
    let manifest = sb.handlers_dir().join("batch.toml");
    let (ok, out, err) = crate::cli(
        &sb,
        &[
            "handlers",
            "test",
            manifest.to_str().unwrap(),
            "--event",
            events.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("one handle-batch call on 3 events"), "{out}");
    let ids: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("event "))
        .filter_map(|l| l.rsplit(' ').next())
        .collect();
    assert_eq!(ids.len(), 3, "{out}");
    for id in ids {
        let key = persona_bus::runtime::outbound::idempotency_key(id, "batch", 0);
        assert!(
            out.contains(&format!("(idempotency-key {key})")),
            "{id}: {out}"
        );
    }
    assert_eq!(service.requests(), 3);
}
