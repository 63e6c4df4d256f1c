//! Each matching rule, end to end through real handlers: several copies of
//! the audit handler with different subscriptions, counting what each saw.

use persona_bus::store::NewSubscription;
use persona_bus::{Bus, NewEvent};
use persona_bus_tests::{Sandbox, event, guests};

fn audit_as(sb: &Sandbox, name: &str, subscriptions: &str) {
    sb.install(name, guests::AUDIT, subscriptions);
}

fn seen(bus: &Bus, handler: &str) -> i64 {
    bus.store().state_counter(handler, "events").unwrap()
}

fn sub(event_type: &str) -> String {
    format!("[[subscriptions]]\nevent_type = \"{event_type}\"\n")
}

#[test]
fn event_types_ignore_case_and_separators_and_take_globs() {
    let sb = Sandbox::new();
    audit_as(&sb, "exact", &sub("task_created"));
    audit_as(&sb, "glob", &sub("execution.*"));
    audit_as(&sb, "all", &sub("*"));
    let bus = sb.open();
    for t in [
        "Task-Created",
        "task.created",
        "TASK_CREATED",
        "execution_completed",
        "Execution-Failed",
        "custom",
    ] {
        bus.publish(event(t)).unwrap();
    }
    bus.drain().unwrap();
    assert_eq!(seen(&bus, "exact"), 3);
    assert_eq!(seen(&bus, "glob"), 2);
    assert_eq!(seen(&bus, "all"), 6);
}

#[test]
fn source_filters_plain_prefix_and_object() {
    let sb = Sandbox::new();
    audit_as(
        &sb,
        "exact",
        "[[subscriptions]]\nevent_type = \"custom\"\nsource_filter = \"watcher-1\"",
    );
    audit_as(
        &sb,
        "prefix",
        "[[subscriptions]]\nevent_type = \"custom\"\nsource_filter = \"watcher-*\"",
    );
    audit_as(
        &sb,
        "object",
        "[[subscriptions]]\nevent_type = \"custom\"\nsource_filter = { source_type = \"webhook\", payload_type = \"push,pr\" }",
    );
    audit_as(
        &sb,
        "nosystem",
        "[[subscriptions]]\nevent_type = \"custom\"\nsource_filter = { exclude_system = true }",
    );
    let bus = sb.open();
    let from = |source_type: &str, source_id: &str, payload: serde_json::Value| NewEvent {
        source_type: source_type.into(),
        source_id: Some(source_id.into()),
        payload: Some(payload),
        ..event("custom")
    };
    bus.publish(from("trigger", "watcher-1", serde_json::json!({})))
        .unwrap();
    bus.publish(from("trigger", "watcher-22", serde_json::json!({})))
        .unwrap();
    bus.publish(from("webhook", "github", serde_json::json!({"type": "pr"})))
        .unwrap();
    bus.publish(from(
        "webhook",
        "github",
        serde_json::json!({"type": "issue"}),
    ))
    .unwrap();
    bus.publish(from("system", "cron", serde_json::json!({})))
        .unwrap();
    bus.drain().unwrap();
    assert_eq!(seen(&bus, "exact"), 1);
    assert_eq!(seen(&bus, "prefix"), 2);
    assert_eq!(seen(&bus, "object"), 1);
    assert_eq!(seen(&bus, "nosystem"), 4);
}

#[test]
fn target_persona_restricts_and_own_events_are_not_delivered() {
    let sb = Sandbox::new();
    audit_as(&sb, "alice", &sub("persona_action"));
    audit_as(&sb, "bob", &sub("persona_action"));
    let bus = sb.open();
    bus.publish(NewEvent {
        target_persona_id: Some("bob".into()),
        ..event("persona_action")
    })
    .unwrap();
    bus.publish(NewEvent {
        source_type: "persona".into(),
        source_id: Some("alice".into()),
        ..event("persona_action")
    })
    .unwrap();
    bus.publish(event("persona_action")).unwrap();
    bus.drain().unwrap();
    assert_eq!(
        seen(&bus, "alice"),
        1,
        "alice: only the broadcast (not bob's, not her own)"
    );
    assert_eq!(seen(&bus, "bob"), 3);
}

#[test]
fn project_scoped_api_and_disabled_subscriptions() {
    let sb = Sandbox::new();
    audit_as(
        &sb,
        "scoped",
        "[[subscriptions]]\nevent_type = \"custom\"\nproject = \"p1\"",
    );
    let bus = sb.open();
    // A subscription added through the table (as the HTTP API does).
    bus.store()
        .create_subscription(&NewSubscription {
            persona_id: "scoped".into(),
            event_type: "extra".into(),
            source_filter: None,
            project_id: None,
            enabled: true,
        })
        .unwrap();
    bus.registry().refresh_subscriptions().unwrap();
    bus.publish(NewEvent {
        project_id: Some("p1".into()),
        ..event("custom")
    })
    .unwrap();
    bus.publish(NewEvent {
        project_id: Some("p2".into()),
        ..event("custom")
    })
    .unwrap();
    bus.publish(event("extra")).unwrap();
    bus.drain().unwrap();
    assert_eq!(
        seen(&bus, "scoped"),
        2,
        "p1's custom and the API subscription's extra"
    );

    bus.store().disable_subscriptions("scoped").unwrap();
    bus.registry().refresh_subscriptions().unwrap();
    bus.publish(event("extra")).unwrap();
    bus.publish(NewEvent {
        project_id: Some("p1".into()),
        ..event("custom")
    })
    .unwrap();
    bus.drain().unwrap();
    assert_eq!(
        seen(&bus, "scoped"),
        2,
        "disabled subscriptions deliver nothing"
    );
    assert!(
        bus.store()
            .subscriptions()
            .unwrap()
            .iter()
            .all(|s| !s.enabled),
        "disabled, not deleted"
    );
}

#[test]
fn chain_depth_really_counts_hops_and_stops_loops() {
    // Two copies of a handler that answers every `ping` with a `ping`: each
    // hears the other's events (never its own), so without a real depth
    // count they would ping-pong forever.
    let sb = Sandbox::new();
    let body = "[[subscriptions]]\nevent_type = \"ping\"\n[config]\nper_call = 1";
    sb.install("ping", guests::PUBLISH_LOOP, body)
        .install("pong", guests::PUBLISH_LOOP, body);
    let bus = sb.open();
    bus.publish(event("ping")).unwrap();
    bus.drain().unwrap();
    let page = bus
        .store()
        .list_events(&persona_bus::store::EventFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    // Root (depth 0) -> 2 at depth 1 -> 2 at depth 2 -> 2 at depth 3, then refused.
    assert_eq!(
        page.total,
        7,
        "{:?}",
        page.events
            .iter()
            .map(|e| (e.chain_depth, e.source_id.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(page.events.iter().map(|e| e.chain_depth).max(), Some(3));
    assert!(
        page.events
            .iter()
            .all(|e| e.status == persona_bus::EventStatus::Completed)
    );
    let deepest = page.events.iter().find(|e| e.chain_depth == 3).unwrap();
    let runs = bus.store().executions(&deepest.id).unwrap();
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("chain depth 4"),
        "{runs:?}"
    );
}
