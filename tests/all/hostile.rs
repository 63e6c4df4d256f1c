//! Hostile guests are stopped at their limits with the reason recorded, and
//! the host and the well-behaved handlers keep going.

use persona_bus::{Bus, EventStatus};
use persona_bus_tests::{Sandbox, event, events_of_type, guests, wait_final};
use std::time::Duration;

/// Installs a hostile guest subscribed to `hostile` with one attempt, and
/// the audit handler subscribed to everything.
fn with_audit(name: &str, wasm: &str, extra: &str) -> (Sandbox, Bus) {
    let sb = Sandbox::new();
    sb.install(
        name,
        wasm,
        &format!("[[subscriptions]]\nevent_type = \"hostile\"\n[retry]\nmax_attempts = 1\n{extra}"),
    );
    sb.install(
        "audit",
        guests::AUDIT,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    let bus = sb.open();
    (sb, bus)
}

/// Publishes two hostile events between ordinary ones and checks that every
/// ordinary event completed and audit saw every event. Returns the hostile
/// handler's execution rows.
fn run_beside_audit(bus: &Bus, hostile: &str) -> Vec<persona_bus::store::Execution> {
    bus.start().unwrap();
    let mut ids = Vec::new();
    let mut hostile_ids = Vec::new();
    for i in 0..10 {
        if i % 5 == 2 {
            hostile_ids.push(bus.publish(event("hostile")).unwrap().id);
        } else {
            ids.push(bus.publish(event("custom")).unwrap().id);
        }
    }
    for id in &ids {
        assert_eq!(
            wait_final(bus, id, Duration::from_secs(30)).status,
            EventStatus::Completed
        );
    }
    let mut runs = Vec::new();
    for id in &hostile_ids {
        let e = wait_final(bus, id, Duration::from_secs(30));
        assert_eq!(e.status, EventStatus::DeadLetter, "{e:?}");
        runs.extend(
            bus.store()
                .executions(id)
                .unwrap()
                .into_iter()
                .filter(|r| r.handler == hostile),
        );
    }
    let audited = bus.store().state_counter("audit", "events").unwrap();
    assert!(audited >= 10, "audit saw {audited} of the 10 events");
    assert_eq!(bus.store().dead_letters(100).unwrap().len(), 2);
    runs
}

#[test]
fn infinite_loop_is_stopped_at_its_timeout() {
    let (_sb, bus) = with_audit("spin", guests::LOOP, "[limits]\ntimeout_ms = 100");
    let runs = run_beside_audit(&bus, "spin");
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert_eq!(r.outcome, "timeout", "{r:?}");
        assert!(r.error.as_deref().unwrap().contains("100 ms timeout"));
        assert!(
            (90_000..2_000_000).contains(&r.duration_us),
            "stopped after {} us",
            r.duration_us
        );
    }
}

#[test]
fn memory_bomb_is_stopped_at_its_memory_limit() {
    let (_sb, bus) = with_audit("bomb", guests::MEMBOMB, "[limits]\nmemory_mb = 8");
    for r in run_beside_audit(&bus, "bomb") {
        assert_eq!(r.outcome, "out_of_memory", "{r:?}");
        assert!(r.error.as_deref().unwrap().contains("8 MiB"), "{r:?}");
    }
}

#[test]
fn trap_is_recorded_with_the_panic_message() {
    let (_sb, bus) = with_audit("crash", guests::TRAP, "");
    for r in run_beside_audit(&bus, "crash") {
        assert_eq!(r.outcome, "trap", "{r:?}");
        let error = r.error.unwrap();
        assert!(error.contains("wasm trap"), "{error}");
        assert!(
            error.contains("guest-trap refuses event"),
            "the guest's panic message is kept: {error}"
        );
    }
}

#[test]
fn fuel_limit_stops_a_busy_guest() {
    let (_sb, bus) = with_audit(
        "spin",
        guests::LOOP,
        "[limits]\ntimeout_ms = 10000\nfuel = 1000000",
    );
    for r in run_beside_audit(&bus, "spin") {
        assert_eq!(r.outcome, "out_of_fuel", "{r:?}");
    }
}

#[test]
fn publish_flood_is_cut_at_the_per_call_limit() {
    let sb = Sandbox::new();
    sb.install(
        "flood",
        guests::PUBLISH_LOOP,
        "[[subscriptions]]\nevent_type = \"hostile\"\n[limits]\nmax_publishes = 5",
    );
    sb.install(
        "audit",
        guests::AUDIT,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    let bus = sb.open();
    let e = bus.publish(event("hostile")).unwrap();
    bus.drain().unwrap();
    assert_eq!(
        bus.store().event(&e.id).unwrap().status,
        EventStatus::Completed
    );
    let runs = bus.store().executions(&e.id).unwrap();
    let flood = runs.iter().find(|r| r.handler == "flood").unwrap();
    assert_eq!(flood.outcome, "completed");
    assert!(
        flood
            .error
            .as_deref()
            .unwrap()
            .contains("limit of 5 events per call"),
        "{flood:?}"
    );
    // The 5 accepted follow-ups were committed and handled (by audit; flood never hears itself).
    let page = bus
        .store()
        .list_events(&persona_bus::store::EventFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.total, 6);
    assert_eq!(bus.store().state_counter("audit", "events").unwrap(), 6);
}

#[test]
fn a_failed_call_leaves_no_effects() {
    // guest-trap never commits; guest-flaky's `done` counter is only written
    // on success. A retried call's state writes must vanish with it.
    let sb = Sandbox::new();
    sb.install("flaky", guests::FLAKY, "[[subscriptions]]\nevent_type = \"job\"\n[retry]\nmax_attempts = 1\n[config]\nsucceed_on = 9");
    let bus = sb.open();
    bus.publish(event("job")).unwrap();
    bus.drain().unwrap();
    assert!(bus.store().state_entries("flaky").unwrap().is_empty());
}

#[test]
fn deep_recursion_is_a_trap() {
    let (_sb, bus) = with_audit("deep", guests::HOSTILE, "[config]\nmode = \"recurse\"");
    for r in run_beside_audit(&bus, "deep") {
        assert_eq!(r.outcome, "trap", "{r:?}");
        assert!(
            r.error.as_deref().unwrap().contains("call stack exhausted"),
            "{r:?}"
        );
    }
}

#[test]
fn log_flood_is_stopped_at_max_log_lines() {
    let (_sb, bus) = with_audit(
        "noisy",
        guests::HOSTILE,
        "[limits]\nmax_log_lines = 50\n[config]\nmode = \"logflood\"",
    );
    for r in run_beside_audit(&bus, "noisy") {
        assert_eq!(r.outcome, "limit", "{r:?}");
        assert!(
            r.error.as_deref().unwrap().contains("more than 50 lines"),
            "{r:?}"
        );
    }
}

#[test]
fn oversized_output_is_refused_at_max_output_bytes() {
    let (_sb, bus) = with_audit(
        "big",
        guests::HOSTILE,
        "[limits]\nmax_output_bytes = 100000\nmax_publishes = 1000\n[config]\nmode = \"bigoutput\"",
    );
    for r in run_beside_audit(&bus, "big") {
        assert_eq!(r.outcome, "rejected", "{r:?}");
        assert!(
            r.error
                .as_deref()
                .unwrap()
                .contains("above limits.max_output_bytes = 100000"),
            "{r:?}"
        );
    }
    // Nothing the refused calls published was committed.
    assert_eq!(events_of_type(&bus, "big").total, 0);
}

#[test]
fn an_event_above_the_handlers_input_limit_is_dead_lettered_unrun() {
    let sb = Sandbox::new();
    sb.install(
        "small",
        guests::AUDIT,
        "[[subscriptions]]\nevent_type = \"custom\"\n[limits]\nmax_event_bytes = 64",
    );
    let bus = sb.open();
    let big = bus
        .publish(persona_bus::NewEvent {
            payload: Some(serde_json::json!({"blob": "y".repeat(200)})),
            ..event("custom")
        })
        .unwrap();
    let ok = bus.publish(event("custom")).unwrap();
    bus.drain().unwrap();
    assert_eq!(
        bus.store().event(&big.id).unwrap().status,
        EventStatus::DeadLetter
    );
    assert_eq!(
        bus.store().event(&ok.id).unwrap().status,
        EventStatus::Completed
    );
    let runs = bus.store().executions(&big.id).unwrap();
    assert_eq!(
        (runs.len(), runs[0].outcome.as_str()),
        (1, "input_too_large")
    );
    assert_eq!(
        bus.store().dead_letters(10).unwrap()[0].reason,
        "input_too_large"
    );
    assert_eq!(
        bus.store().state_counter("small", "events").unwrap(),
        1,
        "the big event never reached the guest"
    );
}

#[test]
fn instance_policy_fresh_isolates_and_reuse_keeps_warm_instances() {
    let sb = Sandbox::new();
    sb.install(
        "fresh",
        guests::HOSTILE,
        "[[subscriptions]]\nevent_type = \"tick\"\n[config]\nmode = \"statics\"",
    );
    sb.install("warm", guests::HOSTILE, "[[subscriptions]]\nevent_type = \"tick\"\n[instances]\npolicy = \"reuse\"\nconcurrency = 1\n[config]\nmode = \"statics\"");
    sb.install("warm-bad", guests::TRAP, "[[subscriptions]]\nevent_type = \"tick\"\n[retry]\nmax_attempts = 1\n[instances]\npolicy = \"reuse\"");
    let bus = sb.open();
    for _ in 0..5 {
        bus.publish(event("tick")).unwrap();
    }
    bus.drain().unwrap();
    let seen = |h: &str| {
        String::from_utf8(
            bus.store()
                .state_get(h, "calls_seen_by_instance")
                .unwrap()
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        seen("fresh"),
        "1",
        "a fresh instance per event sees no earlier call"
    );
    assert_eq!(
        seen("warm"),
        "5",
        "one warm instance served all five events"
    );
    // A reused instance that traps is dropped, and the next event still runs.
    let traps = bus.store().dead_letters(10).unwrap();
    assert_eq!(traps.len(), 5);
    assert!(
        traps
            .iter()
            .all(|d| d.handler == "warm-bad" && d.last_error.contains("guest-trap refuses event"))
    );
}
