//! Handlers in a second language (JavaScript, componentize-js) on the same
//! WIT, and the per-language templates under `examples/`.

use persona_bus::{EventStatus, NewEvent};
use persona_bus_tests::{Sandbox, event, events_of_type, guests, wait_final};
use std::path::Path;
use std::time::Duration;

fn require(component: &str) {
    assert!(
        Path::new(component).exists(),
        "{component} is missing: build it with `make js-handlers` (`make test` does)"
    );
}

fn with_payload(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        payload: Some(payload),
        ..event(event_type)
    }
}

#[test]
#[ignore = "needs services: make test"]
fn javascript_handler_completes_retries_rejects_and_publishes() {
    tally(
        "tally-js",
        (guests::TALLY_JS, guests::TALLY_JS_MANIFEST),
        "js",
    );
}

/// The Python twin of `tally-js` (componentize-py, `make py-handlers`).
#[test]
#[ignore = "needs services: make test"]
fn python_handler_completes_retries_rejects_and_publishes() {
    tally(
        "tally-py",
        (guests::TALLY_PY, guests::TALLY_PY_MANIFEST),
        "python",
    );
}

/// A first-party `tally` handler (`name`, in language `lang`): completes,
/// retries, rejects, keeps state and publishes follow-ups.
fn tally(name: &str, (wasm, manifest): (&str, &str), lang: &str) {
    require(wasm);
    let sb = Sandbox::new();
    sb.install_shipped(name, wasm, manifest).install_shipped(
        "counter",
        guests::COUNTER,
        guests::COUNTER_MANIFEST,
    );
    let bus = sb.open();
    bus.start().unwrap();
    let ok = bus
        .publish(with_payload(
            "task_created",
            serde_json::json!({"title": "a"}),
        ))
        .unwrap();
    let rejected = bus
        .publish(with_payload("custom", serde_json::json!({"reject": true})))
        .unwrap();
    let retried = bus
        .publish(with_payload(
            "task_created",
            serde_json::json!({"retry": true}),
        ))
        .unwrap();
    let wait = |id: &str| wait_final(&bus, id, Duration::from_secs(60));

    assert_eq!(wait(&ok.id).status, EventStatus::Completed);
    assert_eq!(wait(&rejected.id).status, EventStatus::DeadLetter);
    assert_eq!(wait(&retried.id).status, EventStatus::Completed);

    let runs = |id: &str| {
        bus.store()
            .executions(id)
            .unwrap()
            .into_iter()
            .filter(|r| r.handler == name)
            .map(|r| (r.attempt, r.outcome))
            .collect::<Vec<_>>()
    };
    assert_eq!(runs(&ok.id), [(1, "completed".to_string())]);
    assert_eq!(
        runs(&retried.id),
        [(1, "retry".to_string()), (2, "completed".to_string())]
    );
    let dead = bus.store().dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].handler.as_str(), dead[0].reason.as_str()),
        (name, "rejected")
    );
    assert!(
        dead[0]
            .last_error
            .contains(&format!("{lang} handler rejects")),
        "{:?}",
        dead[0]
    );

    // State (BigInt increments) and follow-up events (records, options, lists).
    assert_eq!(bus.store().state_counter(name, "events").unwrap(), 2);
    assert_eq!(
        bus.store()
            .state_counter(name, "type:task_created")
            .unwrap(),
        2
    );
    persona_bus_tests::wait_for(
        Duration::from_secs(30),
        "the counter to count the forwarded actions",
        || bus.store().state_counter("counter", "count").unwrap() == 2,
    );
    let actions = events_of_type(&bus, "persona_action");
    assert!(
        actions
            .events
            .iter()
            .all(|e| e.source_id.as_deref() == Some(name)
                && e.headers.contains(&("lang".into(), lang.into())))
    );
}

#[test]
#[ignore = "needs services: make test"]
fn both_templates_build_load_and_handle_events() {
    require(guests::TEMPLATE_JS);
    let sb = Sandbox::new();
    sb.install_shipped(
        "handler-template-rust",
        guests::TEMPLATE_RUST,
        guests::TEMPLATE_RUST_MANIFEST,
    )
    .install_shipped(
        "handler-template-js",
        guests::TEMPLATE_JS,
        guests::TEMPLATE_JS_MANIFEST,
    );
    let bus = sb.open();
    assert_eq!(
        bus.registry().snapshot().handlers.len(),
        2,
        "{:?}",
        bus.registry().snapshot().failures
    );
    bus.publish(event("custom")).unwrap();
    bus.publish(event("custom")).unwrap();
    let bad = bus
        .publish(with_payload("custom", serde_json::json!({"invalid": true})))
        .unwrap();
    bus.drain().unwrap();
    for h in ["handler-template-rust", "handler-template-js"] {
        assert_eq!(bus.store().state_counter(h, "seen").unwrap(), 2, "{h}");
    }
    assert_eq!(
        bus.store().event(&bad.id).unwrap().status,
        EventStatus::DeadLetter
    );
    let dead = bus.store().dead_letters(10).unwrap();
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter()
            .all(|d| d.reason == "rejected" && d.last_error.contains("payload marked invalid")),
        "{dead:?}"
    );
}

/// The Python template (componentize-py, `make py-handlers`) loads, handles
/// events on fresh and reused instances, and rejects what it rejects.
#[test]
#[ignore = "needs services: make test"]
fn python_template_handles_events_fresh_and_reused() {
    require(guests::TEMPLATE_PY);
    let sb = Sandbox::new();
    sb.install_shipped(
        "handler-template-python",
        guests::TEMPLATE_PY,
        guests::TEMPLATE_PY_MANIFEST,
    );
    sb.install(
        "py-fresh",
        guests::TEMPLATE_PY,
        "[[subscriptions]]\nevent_type = \"custom\"\n[[subscriptions]]\nevent_type = \"reject-me\"\n[limits]\nmemory_mb = 128\n[retry]\nmax_attempts = 1",
    );
    let bus = sb.open();
    bus.start().unwrap();
    for _ in 0..3 {
        let e = bus.publish(persona_bus_tests::event("custom")).unwrap();
        let done = persona_bus_tests::wait_final(&bus, &e.id, std::time::Duration::from_secs(60));
        assert_eq!(done.status, persona_bus::EventStatus::Completed);
    }
    for h in ["handler-template-python", "py-fresh"] {
        assert_eq!(bus.store().state_counter(h, "seen").unwrap(), 3, "{h}");
    }
    let e = bus.publish(persona_bus_tests::event("reject-me")).unwrap();
    let done = persona_bus_tests::wait_final(&bus, &e.id, std::time::Duration::from_secs(60));
    assert_eq!(done.status, persona_bus::EventStatus::DeadLetter);
    let runs = bus.store().executions(&e.id).unwrap();
    assert!(
        runs.iter()
            .any(|r| r.error.as_deref().unwrap_or("").contains("asked to reject")),
        "{runs:?}"
    );
}
