//! Crash recovery: kill -9 the host while events are `processing`, start it
//! again, and check that nothing was lost and nothing handled twice.

use crate::host_binary;
use persona_bus::EventStatus;
use persona_bus::event::{EventLimits, NewEvent};
use persona_bus::store::{EventFilter, Store};
use persona_bus_tests::{Sandbox, guests, wait_for};
use std::process::{Command, Stdio};
use std::time::Duration;

const EVENTS: usize = 300;

pub(crate) fn start_host(sb: &Sandbox, config: &std::path::Path) -> crate::Host {
    crate::Host(
        Command::new(host_binary())
            .args([
                "--data-dir",
                sb.data_dir().to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
            ])
            .args(["run", "--handlers", sb.handlers_dir().to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .env("PERSONA_BUS_HTTP_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn killed_host_loses_nothing_and_handles_nothing_twice() {
    let sb = Sandbox::new();
    sb.install(
        "slow",
        guests::SLOW,
        "[[subscriptions]]\nevent_type = \"work\"\n[config]\nsleep_ms = 10",
    );
    let config = sb.root.path().join("bus.toml");
    // Small batches so some commit before the kill and others are mid-flight.
    std::fs::write(
        &config,
        "[poll]\nbatch_size = 8\nactive_interval_ms = 10\nidle_interval_ms = 50\n",
    )
    .unwrap();

    // Another process's events, across projects.
    let store = Store::open(&sb.data_dir()).unwrap();
    let events: Vec<_> = (0..EVENTS)
        .map(|i| {
            NewEvent {
                event_type: "work".into(),
                source_type: "system".into(),
                project_id: Some(format!("p{}", i % 4)),
                ..Default::default()
            }
            .validate(
                EventLimits {
                    max_payload_bytes: 1024,
                },
                0,
            )
            .unwrap()
        })
        .collect();
    store.insert_batch(&events).unwrap();

    let mut host = start_host(&sb, &config);
    wait_for(Duration::from_secs(60), "some events to be handled", || {
        store.state_counter("slow", "count").unwrap() >= 40
    });
    host.kill().unwrap(); // SIGKILL: no chance to clean up
    host.wait().unwrap();

    let counts = store.status_counts().unwrap();
    let completed_at_kill = counts
        .iter()
        .find(|(s, _)| *s == EventStatus::Completed)
        .map_or(0, |(_, n)| *n);
    assert!(
        completed_at_kill < EVENTS as u64,
        "the kill came too late to test anything: {counts:?}"
    );
    assert!(
        counts
            .iter()
            .any(|(s, n)| *s == EventStatus::Processing && *n > 0),
        "expected rows left in processing: {counts:?}"
    );

    let host = start_host(&sb, &config);
    wait_for(
        Duration::from_secs(120),
        "every event to be handled after the restart",
        || {
            store
                .list_events(&EventFilter {
                    status: Some(EventStatus::Completed),
                    limit: 1,
                    ..Default::default()
                })
                .unwrap()
                .total
                == EVENTS as u64
        },
    );
    // A graceful stop (SIGTERM) drains and exits cleanly.
    host.terminate();

    assert_eq!(
        store.state_counter("slow", "count").unwrap(),
        EVENTS as i64,
        "each event counted exactly once"
    );
    let seen = store.state_entries("slow").unwrap();
    let per_event: Vec<_> = seen
        .iter()
        .filter(|(k, _)| k.starts_with("seen:"))
        .collect();
    assert_eq!(per_event.len(), EVENTS);
    assert!(
        per_event.iter().all(|(_, v)| v.as_slice() == b"1"),
        "an event's effects were applied twice"
    );
    assert_eq!(store.ledger_count("slow").unwrap(), EVENTS as u64);
    for e in &events {
        let completed = store
            .executions(&e.id)
            .unwrap()
            .iter()
            .filter(|r| r.outcome == "completed")
            .count();
        assert_eq!(
            completed, 1,
            "event {} has {completed} completed runs",
            e.id
        );
    }
}
