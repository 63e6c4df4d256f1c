//! Retention of the store (`[store.retention]`): finished events go with
//! their entries once past it, `status` says what it would delete, and
//! events Kafka may deliver again are kept with their ledger, so a replay
//! still skips them.

use crate::cli;
use crate::consume::{backlog_from_elsewhere, env_for, topics_toml, work};
use persona_bus::Bus;
use persona_bus::store::Store;
use persona_bus_tests::kafka as k;
use persona_bus_tests::{Sandbox, wait_for};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A second, in hours.
const SECOND: f64 = 1.0 / 3600.0;

fn short_retention(c: &mut persona_bus::Config, every_secs: u64) {
    // Ids merge into their index at once (only merged events are pruned).
    c.store.id_tail = 1;
    let r = &mut c.store.retention;
    r.events_hours = SECOND;
    r.executions_hours = SECOND;
    r.dead_letters_hours = SECOND;
    r.every_secs = every_secs;
}

fn publish_work(bus: &Bus, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let e = work(&format!("p{}", i % 4), i);
            bus.publish(persona_bus::event::NewEvent {
                event_type: e.event_type,
                source_type: e.source_type,
                project_id: Some(e.project_id),
                ..Default::default()
            })
            .unwrap()
            .id
        })
        .collect()
}

#[test]
fn finished_events_past_retention_go_with_their_entries_and_status_says_so() {
    let sb = Sandbox::new();
    sb.install_slow(0);
    // First without a pass (an hour apart): the events stay.
    let mut c = sb.config();
    short_retention(&mut c, 3_600);
    let ids = {
        let bus = Bus::open(c.clone()).unwrap();
        bus.start().unwrap();
        let ids = publish_work(&bus, 40);
        wait_for(Duration::from_secs(30), "40 handled", || {
            bus.store().ledger_count("slow").unwrap() == 40
        });
        // One more commit after the last merge was prepared.
        std::thread::sleep(Duration::from_millis(300));
        publish_work(&bus, 1);
        wait_for(Duration::from_secs(30), "41 handled", || {
            bus.store().ledger_count("slow").unwrap() == 41
        });
        bus.shutdown();
        ids
    };
    std::thread::sleep(Duration::from_millis(1_100));

    // `status` with the same short retention says what a pass would delete.
    let toml = sb.root.path().join("retention.toml");
    std::fs::write(
        &toml,
        format!("[store.retention]\nevents_hours = {SECOND}\nexecutions_hours = {SECOND}\n"),
    )
    .unwrap();
    let (ok, out, err) = cli(
        &sb,
        &["--config", toml.to_str().unwrap(), "status", "--json"],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let would = &v["store"]["retention_would_delete"];
    assert!(
        would["events"].as_u64().unwrap() >= 30,
        "most of the 41 events are merged and finished: {v}"
    );
    assert!(would["executions"].as_u64().unwrap() >= 40, "{v}");
    assert!(
        v["store"]["size"]["file_bytes"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["store"]["size"]["gives_back"], true, "{v}");
    let (ok, text, err) = cli(&sb, &["--config", toml.to_str().unwrap(), "status"]);
    assert!(ok, "{err}");
    assert!(text.contains("retention would delete"), "{text}");

    // Now with a pass every second: they go, entries and all.
    short_retention(&mut c, 1);
    let bus = Bus::open(c).unwrap();
    bus.start().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the finished events pruned",
        || bus.metrics().pruned[0].load(Ordering::Relaxed) >= would["events"].as_u64().unwrap(),
    );
    let store = bus.store();
    let gone: Vec<_> = ids.iter().filter(|id| store.event(id).is_err()).collect();
    assert!(gone.len() >= 30, "{} of 40 gone", gone.len());
    for id in &gone {
        assert!(store.executions(id).unwrap().is_empty());
    }
    assert!(
        store.ledger_count("slow").unwrap() <= 41 - gone.len() as u64,
        "their ledger entries went with them"
    );
    // The store keeps serving: new events are handled as before.
    let more = publish_work(&bus, 5);
    wait_for(Duration::from_secs(30), "new events handled", || {
        more.iter().all(|id| {
            store
                .event(id)
                .is_ok_and(|e| e.status == persona_bus::EventStatus::Completed)
        })
    });
    let metrics = bus.metrics().render("");
    assert!(
        metrics.contains("persona_bus_store_pruned_total{kind=\"events\"}"),
        "{metrics}"
    );
    bus.shutdown();
}

#[test]
#[ignore = "needs services: make test"]
fn events_kafka_may_deliver_again_are_kept_and_a_replay_still_skips_them() {
    let sb = Sandbox::new();
    sb.install_slow(0);
    let prefix = k::prefix();
    let mut config = sb.config();
    k::consuming(&mut config, &prefix);
    // The topics keep records for days: so does the store, whatever its
    // own retention says.
    assert!(config.kafka.topics.events.retention_hours >= 1);
    short_retention(&mut config, 1);
    let events: Vec<_> = (0..20).map(|i| work(&format!("p{}", i % 3), i)).collect();
    backlog_from_elsewhere(&config, &events);
    let run = |settle: Duration| {
        let bus = Bus::open(config.clone()).unwrap();
        bus.start().unwrap();
        wait_for(Duration::from_secs(60), "the events read", || {
            bus.store().ledger_count("slow").unwrap() == 20
        });
        // Several retention passes.
        std::thread::sleep(settle);
        let pruned = bus.metrics().pruned[0].load(Ordering::Relaxed);
        bus.shutdown();
        pruned
    };
    assert_eq!(run(Duration::from_secs(4)), 0, "no event pruned");
    let store = Store::open(&sb.data_dir()).unwrap();
    for e in &events {
        assert!(store.event(&e.id).is_ok(), "{} kept", e.id);
    }
    assert!(
        store.executions(&events[0].id).unwrap().is_empty(),
        "execution rows follow their own retention"
    );

    let toml = topics_toml(&sb, &prefix, "");
    let env = env_for(&prefix, "device-retention");
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let (ok, out, err) = crate::cli_with_env(
        &sb,
        &[
            "--config",
            toml.to_str().unwrap(),
            "replay",
            "--to",
            "earliest",
        ],
        &env,
    );
    assert!(ok, "{err}");
    assert!(out.contains("will read 20 records again"), "{out}");
    run(Duration::from_secs(2));
    assert_eq!(
        store.state_counter("slow", "count").unwrap(),
        20,
        "read again and skipped by the ledger, not run"
    );
}
