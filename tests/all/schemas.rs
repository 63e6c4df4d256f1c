//! Payload schemas (plan phase 4) against the real registry (Apicurio, from
//! `make registry-up`, or a private one a test stops) and the real broker:
//! pushing versions, refusing bad payloads at publish with their path, Avro
//! on the wire between devices, mixed JSON and framed topics, a registry
//! outage mid-run, the folder-of-schemas default, and turning schemas off.

use crate::cli_with_env;
use crate::http::Server;
use persona_bus::config::Config;
use persona_bus::event::{EventError, EventLimits, NewEvent};
use persona_bus::kafka::wire::framed_headers;
use persona_bus::schemas::{SchemaError, Schemas};
use persona_bus::{Bus, BusError, Event};
use persona_bus_tests::kafka as k;
use persona_bus_tests::registry::{self as reg, PrivateRegistry};
use persona_bus_tests::{Sandbox, guests, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

const ORDER_V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"id","type":"string"},{"name":"qty","type":"int"},
  {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
  {"name":"note","type":["null","string"],"default":null}]}"#;
/// Backward-compatible: a new field with a default.
const ORDER_V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"id","type":"string"},{"name":"qty","type":"int"},
  {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
  {"name":"note","type":["null","string"],"default":null},
  {"name":"channel","type":"string","default":"web"}]}"#;
/// Not backward-compatible: a new field without a default.
const ORDER_BAD: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"id","type":"string"},{"name":"qty","type":"int"},
  {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
  {"name":"note","type":["null","string"],"default":null},
  {"name":"warehouse","type":"string"}]}"#;

fn order(event_type: &str, project: &str, n: usize) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        source_type: "shop".into(),
        project_id: Some(project.into()),
        payload: Some(
            json!({"id": format!("o-{n}"), "qty": n as i64 + 1, "tags": ["a", "ü"], "note": null}),
        ),
        ..Default::default()
    }
}

fn stored(e: NewEvent) -> Event {
    e.validate(
        EventLimits {
            max_payload_bytes: 1 << 20,
        },
        0,
    )
    .unwrap()
}

/// A device on `prefix`'s topics with a consumer group of its own, the
/// echo handler on `event_type`, and schemas on (or off) with `registry`.
fn device(
    prefix: &str,
    name: &str,
    event_type: &str,
    registry: Option<&str>,
    enabled: bool,
) -> (Sandbox, Config) {
    let sb = Sandbox::new();
    sb.install(
        "echo",
        guests::ECHO,
        &format!("[[subscriptions]]\nevent_type = \"{event_type}\""),
    );
    let mut c = sb.config();
    k::consuming(&mut c, prefix);
    c.kafka.client_id = format!("{prefix}-{name}");
    c.kafka.consumer_group = format!("{prefix}.{name}");
    c.kafka.audit_group = format!("{prefix}.{name}.audit");
    c.kafka.webhook_group = format!("{prefix}.{name}.webhooks");
    c.schemas.enabled = enabled;
    c.schemas.registry_url = registry.map(str::to_owned);
    c.schemas.registry_timeout_ms = 1_000;
    (sb, c)
}

fn register(url: &str, subject: &str, schema: &str) -> u32 {
    reg::client(url)
        .register(subject, schema, "AVRO")
        .expect("register")
}

/// The payload the echo handler saw for `id`, once it ran.
fn echoed(bus: &Bus, id: &str) -> Option<Value> {
    let raw = bus.store().state_get("echo", id).unwrap()?;
    Some(serde_json::from_slice(&raw).unwrap())
}

fn wait_echoed(bus: &Bus, ids: &[String], timeout: Duration) {
    wait_for(timeout, &format!("{} events handled", ids.len()), || {
        ids.iter().all(|id| echoed(bus, id).is_some())
    });
}

#[test]
#[ignore = "needs services: make test"]
fn pushing_an_incompatible_version_is_refused_with_the_registrys_reason() {
    let sb = Sandbox::new();
    let event_type = format!("order.{}", k::prefix());
    let url = reg::url();
    let env = [("KAFKA_SCHEMA_REGISTRY_URL", url.as_str())];
    let dir = sb.root.path();
    for (f, text) in [
        ("v1.avsc", ORDER_V1),
        ("v2.avsc", ORDER_V2),
        ("bad.avsc", ORDER_BAD),
    ] {
        std::fs::write(dir.join(f), text).unwrap();
    }
    let file = |f: &str| dir.join(f).display().to_string();
    let push = |f: &str, extra: &[&str]| {
        let mut args = vec!["schemas", "push"];
        let path = file(f);
        args.push(&path);
        args.extend(["--type", &event_type]);
        args.extend(extra);
        cli_with_env(&sb, &args, &env)
    };
    let (ok, out, err) = push("v1.avsc", &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("version 1"), "{out}");
    let (ok, out, err) = push("v2.avsc", &["--version", "2"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("version 2"), "{out}");
    // The check refuses it without registering...
    let bad = file("bad.avsc");
    let (ok, _, err) = cli_with_env(
        &sb,
        &["schemas", "check", &bad, "--type", &event_type],
        &env,
    );
    assert!(!ok && err.contains("not compatible"), "{err}");
    // ...and push prints the registry's own reason (the offending field).
    let (ok, out, err) = push("bad.avsc", &[]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("BACKWARD") && err.contains("warehouse"),
        "{err}"
    );
    // A version number that is not the next is refused before registering.
    let (ok, _, err) = push("v2.avsc", &["--version", "5"]);
    assert!(!ok && err.contains("the next is 3"), "{err}");
    let (ok, out, err) = cli_with_env(&sb, &["schemas", "list", "--json"], &env);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
    let mine: Vec<u64> = rows
        .iter()
        .filter(|r| r["subject"].as_str().unwrap().ends_with(&event_type))
        .map(|r| r["version"].as_u64().unwrap())
        .collect();
    assert_eq!(mine, [1, 2], "{out}");
}

#[test]
#[ignore = "needs services: make test"]
fn a_valid_event_is_stored_and_an_invalid_one_is_refused_with_its_path() {
    let prefix = k::prefix();
    let event_type = "order.placed";
    let subject = format!("{prefix}.events-{event_type}");
    register(&reg::url(), &subject, ORDER_V1);
    let url = reg::url();
    let s = Server::start(Sandbox::new(), |c| {
        k::consuming(c, &prefix);
        c.schemas.enabled = true;
        c.schemas.registry_url = Some(url.clone());
    });
    let good = json!({"event_type": event_type, "source_type": "shop", "payload": {"id": "o-1", "qty": 2}});
    let (code, v) = s.send("POST", "/api/personas/events", &good.to_string(), &[]);
    assert!(code < 300, "{code} {v}");
    let bad = json!({"event_type": event_type, "source_type": "shop", "payload": {"id": "o-2", "qty": "two"}});
    let (code, v) = s.send("POST", "/api/personas/events", &bad.to_string(), &[]);
    assert_eq!(code, 400, "{v}");
    let message = v.to_string();
    for part in [event_type, "version 1", "/qty", "expected an integer"] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    // An unknown version is an unknown type: it passes (not strict).
    let (code, v) = s.send(
        "POST",
        "/api/personas/events",
        &json!({"event_type": "other.thing", "source_type": "shop", "payload": {"x": 1}})
            .to_string(),
        &[],
    );
    assert!(code < 300, "{code} {v}");
    let (_, list) = s.get(&format!(
        "/api/personas/events?limit=10&event_type={event_type}"
    ));
    let list: Value = serde_json::from_str(&list).unwrap();
    let payloads: Vec<String> = list["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"].to_string())
        .collect();
    assert_eq!(
        payloads.len(),
        1,
        "only the valid event is stored: {payloads:?}"
    );
    assert!(payloads[0].contains("o-1"), "{payloads:?}");
    let (_, metrics) = s.get("/metrics");
    assert!(
        metrics.contains("persona_bus_schema_refusals_total 1\n"),
        "{metrics}"
    );
}

#[test]
#[ignore = "needs services: make test"]
fn avro_json_schema_framed_and_plain_json_records_on_one_topic_are_handled_on_another_device_as_the_same_json()
 {
    let prefix = k::prefix();
    let event_type = "order.placed";
    let subject = format!("{prefix}.events-{event_type}");
    let id = register(&reg::url(), &subject, ORDER_V1);
    let url = reg::url();
    // Device A publishes with schemas on: its relay writes Avro.
    let (_sa, ca) = device(&prefix, "a", "nothing.here", Some(&url), true);
    let a = Bus::open(ca.clone()).unwrap();
    a.start().unwrap();
    // Device B handles (echo).
    let (_sb, cb) = device(&prefix, "b", "order.*", Some(&url), true);
    let b = Bus::open(cb).unwrap();
    b.start().unwrap();
    let mut sent: Vec<(String, Value)> = Vec::new();
    for n in 0..20 {
        let e = a
            .publish(order(event_type, &format!("p{}", n % 3), n))
            .unwrap();
        sent.push((e.id.clone(), serde_json::from_str(&e.payload).unwrap()));
    }
    // An old device, on JSON records, on the same topic.
    let p = k::producer(1);
    for n in 20..30 {
        let e = stored(order(event_type, &format!("p{}", n % 3), n));
        k::send(&p, &ca.kafka.topics.events.name, &e, "old-device");
        sent.push((e.id.clone(), serde_json::from_str(&e.payload).unwrap()));
    }
    // A producer using a JSON Schema serializer: the same framing, a JSON
    // body, and only the `event-type` header (its id is its position).
    let json_type = "order.json";
    let json_id = reg::client(&url)
        .register(
            &format!("{prefix}.events-{json_type}"),
            r#"{"type":"object","required":["sku"],"properties":{"sku":{"type":"string"}}}"#,
            "JSON",
        )
        .unwrap();
    let mut value = vec![0];
    value.extend_from_slice(&json_id.to_be_bytes());
    value.extend_from_slice(br#"{"sku":"s-1"}"#);
    let e = stored(order(json_type, "p0", 0));
    let only_type = [("event-type", json_type.to_owned())];
    k::send_with(&p, &ca.kafka.topics.events.name, &e, &value, &only_type);
    k::flush(&p);
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    wait_echoed(&b, &ids, Duration::from_secs(60));
    for (id, payload) in &sent {
        assert_eq!(echoed(&b, id).as_ref(), Some(payload), "event {id}");
    }
    wait_for(
        Duration::from_secs(30),
        "the JSON Schema-framed record",
        || b.store().state_entries("echo").unwrap().len() == 31,
    );
    let entries = b.store().state_entries("echo").unwrap();
    let (key, payload) = entries
        .iter()
        .find(|(key, _)| key.starts_with("kafka:"))
        .expect("the record without an event-id, keyed by its position");
    let payload: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(payload, json!({"sku": "s-1"}), "{key}");
    assert_eq!(
        b.store().ledger_count("echo").unwrap(),
        31,
        "each handled once"
    );
    assert!(b.store().dead_letters(10).unwrap().is_empty());
    // On the wire, A's records are the payload in the registry framing.
    let framed = raw_values(&ca.kafka.topics.events.name, 31);
    let avro = framed
        .iter()
        .filter(|v| v.first() == Some(&0) && v[1..5] == id.to_be_bytes())
        .count();
    assert_eq!(avro, 20, "A's 20 records are Avro-framed");
    a.shutdown();
    b.shutdown();
}

/// The first `n` record values of `topic`, from the beginning.
fn raw_values(topic: &str, n: usize) -> Vec<Vec<u8>> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = k::client()
        .set("group.id", format!("{topic}.raw"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    assert_eq!(out.len(), n, "records on {topic}");
    out
}

#[test]
#[ignore = "needs services: make test"]
fn with_the_registry_stopped_mid_run_nothing_is_lost_and_held_records_complete_when_it_is_back() {
    let r = PrivateRegistry::start();
    let prefix = k::prefix();
    let (known, fresh) = ("order.known", "order.fresh");
    let (_sb, cb) = device(&prefix, "b", "order.*", Some(&r.url()), true);
    let topic = cb.kafka.topics.events.name.clone();
    // Distinct texts: a registry gives the same text the same id.
    for (t, schema) in [(known, ORDER_V1), (fresh, ORDER_V2)] {
        register(&r.url(), &format!("{topic}-{t}"), schema);
    }
    // The producing side (another device) has both schemas cached.
    let encoder = Schemas::new(&cb);
    for t in [known, fresh] {
        encoder.lookup(t, 1).unwrap().expect("registered");
    }
    let p = k::producer(1);
    let send = |event_type: &str, project: &str, n: usize| -> String {
        let e = stored(order(event_type, project, n));
        let (id, value) = encoder.wire_value(&e).unwrap().expect("framed");
        k::send_with(&p, &topic, &e, &value, &framed_headers(&e, "device-x", id));
        e.id
    };
    let b = Bus::open(cb.clone()).unwrap();
    b.start().unwrap();
    let mut ids: Vec<String> = (0..5).map(|n| send(known, "p1", n)).collect();
    k::flush(&p);
    wait_echoed(&b, &ids, Duration::from_secs(60));
    // B has the id of `order.known` cached; `order.fresh` it has never seen.
    r.stop();
    let held: Vec<String> = (5..10).map(|n| send(fresh, "p2", n)).collect();
    let more: Vec<String> = (10..15).map(|n| send(known, "p1", n)).collect();
    k::flush(&p);
    std::thread::sleep(Duration::from_secs(4));
    for id in &held {
        assert!(
            echoed(&b, id).is_none(),
            "{id} handled while its schema was out of reach"
        );
    }
    assert!(
        b.store().dead_letters(10).unwrap().is_empty(),
        "an outage is not a bad record"
    );
    r.resume();
    ids.extend(held);
    ids.extend(more);
    wait_echoed(&b, &ids, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        b.store().ledger_count("echo").unwrap(),
        15,
        "each handled once"
    );
    assert!(b.store().dead_letters(10).unwrap().is_empty());
    b.shutdown();
}

#[test]
#[ignore = "needs services: make test"]
fn without_a_registry_a_schema_folder_checks_publish_and_dead_letters_bad_records_from_kafka() {
    let prefix = k::prefix();
    let event_type = "order.placed";
    let (sb, mut c) = device(&prefix, "b", event_type, None, true);
    let dir = sb.root.path().join("schemas");
    std::fs::create_dir_all(dir.join(event_type)).unwrap();
    std::fs::write(
        dir.join(event_type).join("1.json"),
        r#"{"type":"object","required":["id","qty"],"properties":{"id":{"type":"string"},"qty":{"type":"integer","minimum":1}}}"#,
    )
    .unwrap();
    c.schemas.dir = dir;
    let b = Bus::open(c.clone()).unwrap();
    b.start().unwrap();
    let ok = b.publish(order(event_type, "p", 1)).unwrap();
    let mut bad = order(event_type, "p", 2);
    bad.payload = Some(json!({"id": "o-2", "qty": 0}));
    match b.publish(bad) {
        Err(BusError::Event(EventError::Schema(SchemaError::Invalid { path, rule, .. }))) => {
            assert_eq!(path, "/qty");
            assert!(rule.contains("minimum"), "{rule}");
        }
        other => panic!("{other:?}"),
    }
    // From another device, a bad record then a good one, same partition.
    let p = k::producer(1);
    let mut bad = stored(order(event_type, "p", 3));
    bad.payload = r#"{"id":"o-3"}"#.into();
    let good = stored(order(event_type, "p", 4));
    k::send(&p, &c.kafka.topics.events.name, &bad, "other");
    k::send(&p, &c.kafka.topics.events.name, &good, "other");
    k::flush(&p);
    wait_echoed(
        &b,
        &[ok.id.clone(), good.id.clone()],
        Duration::from_secs(60),
    );
    wait_for(
        Duration::from_secs(10),
        "the bad record dead-lettered",
        || !b.store().dead_letters(10).unwrap().is_empty(),
    );
    let letters = b.store().dead_letters(10).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let e = &letters[0].last_error;
    assert!(
        e.contains(event_type) && e.contains("qty") && e.contains("required"),
        "{e}"
    );
    assert!(echoed(&b, &bad.id).is_none());
    b.shutdown();
}

#[test]
#[ignore = "needs services: make test"]
fn turning_schemas_off_loses_nothing() {
    let prefix = k::prefix();
    let event_type = "order.placed";
    let url = reg::url();
    register(&url, &format!("{prefix}.events-{event_type}"), ORDER_V1);
    // A still has schemas on: Avro on the wire. B turned them off (the
    // plan's rollback) but keeps the registry address for framed records.
    let (_sa, ca) = device(&prefix, "a", "nothing.here", Some(&url), true);
    let a = Bus::open(ca).unwrap();
    a.start().unwrap();
    let (_sb, cb) = device(&prefix, "b", event_type, Some(&url), false);
    let b = Bus::open(cb).unwrap();
    b.start().unwrap();
    let mut sent = Vec::new();
    for n in 0..10 {
        let e = a.publish(order(event_type, "p", n)).unwrap();
        sent.push((
            e.id.clone(),
            serde_json::from_str::<Value>(&e.payload).unwrap(),
        ));
    }
    // With schemas off B takes any payload, and publishes JSON.
    let mut loose = order(event_type, "p", 99);
    loose.payload = Some(json!({"anything": true}));
    let e = b.publish(loose).unwrap();
    sent.push((e.id.clone(), json!({"anything": true})));
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    wait_echoed(&b, &ids, Duration::from_secs(60));
    for (id, payload) in &sent {
        assert_eq!(echoed(&b, id).as_ref(), Some(payload));
    }
    assert!(b.store().dead_letters(10).unwrap().is_empty());
    a.shutdown();
    b.shutdown();
}

#[test]
fn an_event_a_handler_publishes_is_checked_like_any_other() {
    let sb = Sandbox::new();
    // The router turns a task into a `persona_action` with `"action": "handle"`.
    sb.install_shipped("router", guests::ROUTER, guests::ROUTER_MANIFEST);
    let dir = sb.root.path().join("schemas");
    std::fs::create_dir_all(dir.join("persona_action")).unwrap();
    std::fs::write(
        dir.join("persona_action").join("1.json"),
        r#"{"type":"object","properties":{"action":{"enum":["review"]}}}"#,
    )
    .unwrap();
    let mut c = sb.config();
    c.schemas.enabled = true;
    c.schemas.dir = dir;
    let bus = Bus::open(c).unwrap();
    bus.start().unwrap();
    let task = bus
        .publish(persona_bus_tests::event("task_created"))
        .unwrap();
    let done = persona_bus_tests::wait_final(&bus, &task.id, Duration::from_secs(30));
    assert_eq!(done.status, persona_bus::EventStatus::DeadLetter);
    let letters = bus.store().dead_letters(10).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let error = &letters[0].last_error;
    assert!(
        error.contains("persona_action") && error.contains("/action"),
        "{error}"
    );
    let actions = persona_bus_tests::events_of_type(&bus, "persona_action");
    assert_eq!(actions.total, 0, "nothing refused is stored");
    bus.shutdown();
}
