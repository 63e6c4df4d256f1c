//! The embedded path end to end: publish -> poller -> handler -> completed.

use persona_bus::EventStatus;
use persona_bus_tests::{Sandbox, event, events_of_type, guests, wait_final, wait_for};
use std::sync::atomic::Ordering;
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

/// A started host with `noop` on every event, whose poller looks for rows
/// other processes wrote only every `interval_ms`.
fn started_noop_polling_every(interval_ms: u64) -> (Sandbox, persona_bus::Bus) {
    let sb = Sandbox::new();
    sb.install(
        "noop",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    let mut config = sb.config();
    config.poll.active_interval_ms = interval_ms;
    config.poll.idle_interval_ms = interval_ms;
    let bus = persona_bus::Bus::open(config).unwrap();
    bus.start().unwrap();
    (sb, bus)
}

#[test]
fn in_process_publish_does_not_wait_for_the_poll_interval() {
    let (_sb, bus) = started_noop_polling_every(5_000);
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

/// An event published in the host's process is stored already claimed and
/// handed to the handlers in memory (no second write of its row), but never
/// ahead of an earlier event of its project that another process (the CLI)
/// left `pending`, which the sleeping poller would only find at its next
/// interval: that publish waits `pending` behind it.
#[test]
fn a_handed_over_publish_never_overtakes_an_event_another_process_left_pending() {
    let (sb, bus) = started_noop_polling_every(300);
    let limits = bus.config().limits.event_limits();
    let cli = persona_bus::store::Store::open(&sb.data_dir()).unwrap();
    let step = || persona_bus::event::NewEvent {
        project_id: Some("p".into()),
        ..event("step")
    };
    // Every fourth event from the CLI, the rest published in the host.
    let mut order = Vec::new();
    for i in 0..120 {
        let id = if i % 4 == 0 {
            let e = step().validate(limits, 0).unwrap();
            cli.insert(&e).unwrap();
            e.id
        } else {
            bus.publish(step()).unwrap().id
        };
        order.push(id);
    }
    let runs = |ids: &[String]| -> Vec<i64> {
        ids.iter()
            .map(|id| {
                let done = wait_final(&bus, id, Duration::from_secs(20));
                assert_eq!(done.status, EventStatus::Completed);
                bus.store().executions(id).unwrap()[0].id
            })
            .collect()
    };
    // Execution rows are numbered in commit order, and a project's
    // outcomes commit in the order its events ran.
    let ran = runs(&order);
    assert!(
        ran.windows(2).all(|w| w[0] < w[1]),
        "the project's events ran out of publish order: {ran:?}"
    );

    // With nothing waiting, every publish is handed over.
    let before = bus.metrics().handed_over.load(Ordering::Relaxed);
    let quiet: Vec<String> = (0..30).map(|_| bus.publish(step()).unwrap().id).collect();
    let ran = runs(&quiet);
    assert!(ran.windows(2).all(|w| w[0] < w[1]), "{ran:?}");
    assert_eq!(
        bus.metrics().handed_over.load(Ordering::Relaxed) - before,
        30,
        "publishes with nothing pending skip the poller's claim"
    );
}

/// Subscribers (the dashboard's live table, SSE clients) hear of an event's
/// publish before its outcome, and of every publish, batches included. The
/// group commit hands events to the handlers from inside its transaction, so
/// a publisher that announced its event only once the commit returned could
/// be overtaken by the event's own outcome; and `publish_batch` announced
/// nothing (that half fails without the fix; the race itself is rare).
#[test]
fn every_publish_is_announced_before_its_outcome() {
    use persona_bus::Notice;
    let (_sb, bus) = started_noop_polling_every(5_000);
    let bus = std::sync::Arc::new(bus);
    let mut notices = bus.subscribe();
    const THREADS: usize = 4;
    const EACH: usize = 150;
    let publishers: Vec<_> = (0..THREADS)
        .map(|t| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    if t == 0 && i % 10 == 0 {
                        bus.publish_batch((0..10).map(|_| event("batch")).collect())
                            .unwrap();
                    } else {
                        bus.publish(event("single")).unwrap();
                    }
                }
            })
        })
        .collect();
    let expected = THREADS * EACH + (EACH / 10) * 9;
    let mut announced = std::collections::HashSet::new();
    let mut resolved = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while resolved < expected {
        assert!(
            Instant::now() < deadline,
            "{resolved} of {expected} resolved"
        );
        match notices.blocking_recv() {
            Ok(Notice::Published { event }) => {
                assert!(announced.insert(event.id.clone()), "announced twice");
            }
            Ok(Notice::Resolved { event_id, .. }) => {
                assert!(
                    announced.contains(&event_id),
                    "the outcome of {event_id} came before its publish"
                );
                resolved += 1;
            }
            Err(e) => panic!("notices lost ({e}): the test cannot tell the order"),
        }
    }
    for p in publishers {
        p.join().unwrap();
    }
    assert_eq!(announced.len(), expected, "every publish announced once");
}
