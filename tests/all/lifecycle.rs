//! Handler lifecycle: hot reload under load, refused reloads that leave the
//! old version serving, removal, and dead letters brought back once the
//! handler is fixed.

use crate::cli;
use persona_bus::EventStatus;
use persona_bus_tests::{Sandbox, event, guests, wait_final, wait_for};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SUB: &str = "[[subscriptions]]\nevent_type = \"work\"";

fn versions_run(bus: &persona_bus::Bus, id: &str, handler: &str) -> Vec<String> {
    bus.store()
        .executions(id)
        .unwrap()
        .into_iter()
        .filter(|r| r.handler == handler)
        .map(|r| r.handler_version)
        .collect()
}

#[test]
fn hot_reload_under_load_swaps_versions_without_loss_or_duplicates() {
    let sb = Sandbox::new();
    sb.install_atomic("h", "1", guests::AUDIT, SUB);
    let bus = Arc::new(sb.open());
    bus.start().unwrap();

    // A steady stream of events while the handler is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bus, stop) = (bus.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                ids.push(bus.publish(event("work")).unwrap().id);
                std::thread::sleep(Duration::from_millis(2));
            }
            ids
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let swapped = Instant::now();
    sb.install_atomic("h", "2", guests::AUDIT, SUB);
    wait_for(Duration::from_secs(5), "version 2 to serve", || {
        bus.registry()
            .snapshot()
            .handlers
            .get("h")
            .is_some_and(|h| &*h.version == "2")
    });
    let took = swapped.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let ids = publisher.join().unwrap();
    assert!(
        took < Duration::from_secs(1),
        "the new version took {took:?} to serve"
    );

    let mut seen = std::collections::BTreeSet::new();
    for id in &ids {
        assert_eq!(
            wait_final(&bus, id, Duration::from_secs(20)).status,
            EventStatus::Completed
        );
        let runs = versions_run(&bus, id, "h");
        assert_eq!(runs.len(), 1, "event {id} ran {runs:?}");
        seen.insert(runs[0].clone());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["1", "2"],
        "both versions served, each execution names its version"
    );
    // Effects are exactly-once across the swap (state survives reloads).
    assert_eq!(
        bus.store().state_counter("h", "events").unwrap(),
        ids.len() as i64
    );
}

#[test]
fn refused_reloads_leave_the_old_version_serving() {
    let sb = Sandbox::new();
    sb.install_atomic("h", "1", guests::AUDIT, SUB);
    let bus = sb.open();
    bus.start().unwrap();
    let record = |bus: &persona_bus::Bus| {
        bus.store()
            .handler_records()
            .unwrap()
            .into_iter()
            .find(|r| r.name == "h")
            .unwrap()
    };

    let attempts: [(&str, &str, &str); 3] = [
        (
            "a component that does not compile",
            guests::NOOP,
            "not a valid component",
        ),
        (
            "a component of another world",
            guests::WRONG_WORLD,
            "does not implement the persona:bus `handler` world",
        ),
        (
            "a manifest with an unknown key",
            guests::AUDIT,
            "unknown field `colour`",
        ),
    ];
    for (i, (what, wasm, expected)) in attempts.into_iter().enumerate() {
        let version = format!("bad-{i}");
        if i == 0 {
            std::fs::write(
                sb.handlers_dir().join(".h.wasm.tmp"),
                b"\0asm\x01\0\0\0 torn",
            )
            .unwrap();
            std::fs::rename(
                sb.handlers_dir().join(".h.wasm.tmp"),
                sb.handlers_dir().join("h.wasm"),
            )
            .unwrap();
        } else if i == 2 {
            sb.install_atomic("h", &version, wasm, &format!("{SUB}\ncolour = \"blue\""));
        } else {
            sb.install_atomic("h", &version, wasm, SUB);
        }
        wait_for(Duration::from_secs(5), what, || {
            record(&bus).error.is_some_and(|e| e.contains(expected))
        });
        let r = record(&bus);
        assert!(
            r.error.as_deref().unwrap().contains("h."),
            "names the file: {r:?}"
        );
        assert_eq!(
            (r.status.as_str(), r.version.as_deref()),
            ("loaded", Some("1")),
            "{what}: v1 still serving"
        );
        let e = bus.publish(event("work")).unwrap();
        assert_eq!(
            wait_final(&bus, &e.id, Duration::from_secs(10)).status,
            EventStatus::Completed,
            "{what}"
        );
        assert_eq!(versions_run(&bus, &e.id, "h"), ["1"], "{what}");
    }
    // A good version clears the error and serves.
    sb.install_atomic("h", "3", guests::AUDIT, SUB);
    wait_for(Duration::from_secs(5), "version 3", || {
        record(&bus).version.as_deref() == Some("3")
    });
    assert!(record(&bus).error.is_none());
    let e = bus.publish(event("work")).unwrap();
    wait_final(&bus, &e.id, Duration::from_secs(10));
    assert_eq!(versions_run(&bus, &e.id, "h"), ["3"]);
}

#[test]
fn a_removed_handler_stops_receiving_and_its_subscriptions_are_disabled() {
    let sb = Sandbox::new();
    sb.install_atomic("h", "1", guests::AUDIT, SUB);
    let bus = sb.open();
    bus.start().unwrap();
    std::fs::remove_file(sb.handlers_dir().join("h.toml")).unwrap();
    wait_for(Duration::from_secs(5), "h to be removed", || {
        bus.registry().snapshot().handlers.is_empty()
    });
    let e = bus.publish(event("work")).unwrap();
    assert_eq!(
        wait_final(&bus, &e.id, Duration::from_secs(10)).status,
        EventStatus::Skipped
    );
    let subs = bus.store().subscriptions().unwrap();
    assert!(
        !subs.is_empty() && subs.iter().all(|s| !s.enabled),
        "disabled, not deleted: {subs:?}"
    );
    let r = bus.store().handler_records().unwrap();
    assert_eq!(r[0].status, "removed");
}

#[test]
fn dead_letter_comes_back_and_completes_once_the_handler_is_fixed() {
    let sb = Sandbox::new();
    sb.install_atomic(
        "picky",
        "1",
        guests::FLAKY,
        "[[subscriptions]]\nevent_type = \"job\"\n[config]\nmode = \"reject\"",
    );
    sb.install_atomic(
        "audit",
        "1",
        guests::AUDIT,
        "[[subscriptions]]\nevent_type = \"job\"",
    );
    let bus = sb.open();
    bus.start().unwrap();
    let dead = bus
        .publish(persona_bus::NewEvent {
            headers: vec![("k".into(), "v".into())],
            ..event("job")
        })
        .unwrap();
    let other = bus.publish(event("other")).unwrap();
    assert_eq!(
        wait_final(&bus, &dead.id, Duration::from_secs(10)).status,
        EventStatus::DeadLetter
    );
    wait_final(&bus, &other.id, Duration::from_secs(10));

    let (ok, out, _) = cli(&sb, &["dlq", "list", "--json", "--handler", "picky"]);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let letter = &list[0];
    assert_eq!(
        (
            letter["event_id"].as_str(),
            letter["reason"].as_str(),
            letter["event_type"].as_str()
        ),
        (Some(dead.id.as_str()), Some("rejected"), Some("job"))
    );
    assert_eq!(letter["headers"], serde_json::json!([["k", "v"]]));
    let (ok, out, _) = cli(&sb, &["dlq", "list", "--json", "--handler", "audit"]);
    assert!(ok && out.trim() == "[]", "{out}");
    let (ok, out, _) = cli(
        &sb,
        &["dlq", "list", "--json", "--since", "2999-01-01T00:00:00Z"],
    );
    assert!(ok && out.trim() == "[]", "{out}");
    let id = letter["id"].as_i64().unwrap().to_string();
    let (ok, out, _) = cli(&sb, &["dlq", "show", &id]);
    assert!(
        ok && out.contains("rejected") && out.contains("picky@1"),
        "{out}"
    );

    // Fix the handler (hot reload), then bring the event back.
    sb.install_atomic(
        "picky",
        "2",
        guests::FLAKY,
        "[[subscriptions]]\nevent_type = \"job\"\n[config]\nsucceed_on = 1",
    );
    wait_for(Duration::from_secs(5), "picky v2", || {
        bus.registry()
            .snapshot()
            .handlers
            .get("picky")
            .is_some_and(|h| &*h.version == "2")
    });
    let (ok, out, _) = cli(&sb, &["dlq", "retry", &id]);
    assert!(ok && out.contains("1 dead letters sent back"), "{out}");
    wait_for(
        Duration::from_secs(10),
        "the retried event to complete",
        || bus.store().event(&dead.id).unwrap().status == EventStatus::Completed,
    );
    assert_eq!(bus.store().state_counter("picky", "done").unwrap(), 1);
    assert_eq!(versions_run(&bus, &dead.id, "picky"), ["1", "2"]);
    assert_eq!(
        versions_run(&bus, &dead.id, "audit"),
        ["1"],
        "audit had finished and did not run again"
    );
    let (_, out, _) = cli(&sb, &["dlq", "retry", &id]);
    assert!(out.contains("already retried"), "{out}");
    let (ok, out, _) = cli(&sb, &["dlq", "list", "--json"]);
    assert!(
        ok && out.trim() == "[]",
        "retried letters are hidden by default: {out}"
    );

    let (ok, _, out) = cli(&sb, &["dlq", "purge"]);
    assert!(!ok && out.contains("--yes"), "{out}");
    let (ok, out, _) = cli(&sb, &["dlq", "purge", "--include-retried", "--yes"]);
    assert!(ok && out.contains("purged 1"), "{out}");

    let (ok, out, _) = cli(&sb, &["handlers", "reload"]);
    assert!(ok && out.contains("rescan"), "{out}");
    assert!(
        sb.data_dir()
            .join("control")
            .join("reload-request")
            .exists()
    );
}
