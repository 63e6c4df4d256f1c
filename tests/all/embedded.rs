//! The embedded path end to end: publish -> poller -> handler -> completed.

use persona_bus::EventStatus;
use persona_bus_tests::{Sandbox, event, events_of_type, guests, wait_final, wait_for};
use std::time::{Duration, Instant};

#[test]
fn published_event_is_handled_and_recorded() {
    let sb = Sandbox::new();
    sb.install_shipped("audit", guests::AUDIT, guests::AUDIT_MANIFEST);
    let bus = sb.open();
    bus.start().unwrap();
    let mut new = event("task_created");
    new.payload = Some(serde_json::json!({"title": "ship it"}));
    let published = bus.publish(new).unwrap();
    let done = wait_final(&bus, &published.id, Duration::from_secs(10));
    assert_eq!(done.status, EventStatus::Completed);
    assert!(done.processed_at.is_some());

    let runs = bus.store().executions(&published.id).unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(
        (
            run.handler.as_str(),
            run.handler_version.as_str(),
            run.outcome.as_str(),
            run.attempt
        ),
        ("audit", "0.1.0", "completed", 1)
    );
    assert!(run.error.is_none() && run.duration_us > 0);
    assert_eq!(bus.store().state_counter("audit", "events").unwrap(), 1);
    assert_eq!(
        bus.store()
            .state_counter("audit", "type:task_created")
            .unwrap(),
        1
    );
}

#[test]
fn router_follow_up_reaches_counter_with_chain_metadata() {
    let sb = Sandbox::new();
    sb.install_shipped("audit", guests::AUDIT, guests::AUDIT_MANIFEST)
        .install_shipped("router", guests::ROUTER, guests::ROUTER_MANIFEST)
        .install_shipped("counter", guests::COUNTER, guests::COUNTER_MANIFEST);
    let bus = sb.open();
    let mut new = event("webhook_received");
    new.project_id = Some("p1".into());
    let root = bus.publish(new).unwrap();
    bus.drain().unwrap();

    assert_eq!(
        bus.store().event(&root.id).unwrap().status,
        EventStatus::Completed
    );
    assert_eq!(bus.store().state_counter("counter", "count").unwrap(), 1);
    assert_eq!(
        bus.store().state_counter("counter", "project:p1").unwrap(),
        1
    );
    let page = events_of_type(&bus, "persona_action");
    assert_eq!(page.total, 1);
    let action = &page.events[0];
    assert_eq!(action.chain_depth, 1);
    assert_eq!(action.source_id.as_deref(), Some("router"));
    assert_eq!(action.target_persona_id.as_deref(), Some("counter"));
    assert_eq!(action.project_id, "p1", "follow-ups stay in the project");
    assert!(
        action
            .headers
            .contains(&("parent-event-id".into(), root.id.clone()))
    );
    assert_eq!(action.status, EventStatus::Completed);
    // The action is addressed to counter, so audit (subscribed to `*`) only saw the webhook.
    assert_eq!(bus.store().state_counter("audit", "events").unwrap(), 1);
}

#[test]
fn event_nobody_wants_is_skipped() {
    let sb = Sandbox::new();
    sb.install_shipped("counter", guests::COUNTER, guests::COUNTER_MANIFEST);
    let bus = sb.open();
    let e = bus.publish(event("nobody_listens")).unwrap();
    bus.drain().unwrap();
    let row = bus.store().event(&e.id).unwrap();
    assert_eq!(row.status, EventStatus::Skipped);
    assert!(bus.store().executions(&e.id).unwrap().is_empty());
}

#[test]
fn in_process_publish_does_not_wait_for_the_poll_interval() {
    let sb = Sandbox::new();
    sb.install(
        "noop",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    let mut config = sb.config();
    config.poll.active_interval_ms = 5_000;
    config.poll.idle_interval_ms = 5_000;
    let bus = persona_bus::Bus::open(config).unwrap();
    bus.start().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // let the poller go to sleep
    let started = Instant::now();
    let e = bus.publish(event("custom")).unwrap();
    wait_for(Duration::from_secs(4), "the event to complete", || {
        bus.store().event(&e.id).unwrap().status == EventStatus::Completed
    });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}: the wake-up did not work",
        started.elapsed()
    );
}

/// Under a steady load the WAL starts over once it passes a few MiB (the
/// checkpointer holds the writer for the last bit); it used to grow for as
/// long as the load lasted, about 60 MB a second here.
#[test]
fn wal_stays_bounded_under_steady_load() {
    let sb = Sandbox::new();
    sb.install(
        "noop",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    let bus = std::sync::Arc::new(sb.open());
    bus.start().unwrap();
    let wal = sb.data_dir().join("bus.db-wal");
    let until = Instant::now() + Duration::from_secs(4);
    let publishers: Vec<_> = (0..2)
        .map(|_| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while Instant::now() < until {
                    bus.publish_batch((0..50).map(|_| event("load")).collect())
                        .unwrap();
                    n += 50;
                }
                n
            })
        })
        .collect();
    let mut largest = 0;
    while Instant::now() < until {
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let published: u64 = publishers.into_iter().map(|p| p.join().unwrap()).sum();
    wait_for(Duration::from_secs(60), "the load to be handled", || {
        bus.store().unfinished().unwrap() == 0
    });
    assert!(published >= 20_000, "only {published} events published");
    // 4,096 frames of 1 KiB start a restart; one round of the checkpointer
    // (100 ms) of full load comes on top.
    assert!(
        largest < 48 << 20,
        "the WAL reached {largest} bytes while {published} events were published"
    );
}
