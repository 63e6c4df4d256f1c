//! Retries with backoff, dead letters, rejects.

use persona_bus::{EventStatus, NewEvent};
use persona_bus_tests::{Sandbox, event, guests, wait_final};
use std::time::Duration;

fn flaky(sb: &Sandbox, name: &str, retry: &str, config: &str) {
    sb.install(
        name,
        guests::FLAKY,
        &format!("[[subscriptions]]\nevent_type = \"job\"\n[retry]\n{retry}\n[config]\n{config}"),
    );
}

/// Milliseconds since the epoch of an RFC 3339 time as the store writes it.
fn ms(rfc3339: &str) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn retry_then_success_runs_again_with_the_next_attempt() {
    let sb = Sandbox::new();
    flaky(
        &sb,
        "flaky",
        "max_attempts = 3\nbackoff_ms = 50",
        "succeed_on = 2",
    );
    let bus = sb.open();
    bus.start().unwrap();
    let e = bus.publish(event("job")).unwrap();
    let done = wait_final(&bus, &e.id, Duration::from_secs(10));
    assert_eq!(done.status, EventStatus::Completed);
    assert_eq!(done.retry_count, 1);
    let runs = bus.store().executions(&e.id).unwrap();
    let outcomes: Vec<_> = runs
        .iter()
        .map(|r| (r.attempt, r.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [(1, "retry"), (2, "completed")]);
    assert_eq!(bus.store().state_counter("flaky", "done").unwrap(), 1);
    assert!(bus.store().dead_letters(10).unwrap().is_empty());
}

#[test]
fn exhausted_retries_become_a_dead_letter_with_its_context() {
    let sb = Sandbox::new();
    flaky(&sb, "flaky", "max_attempts = 3\nbackoff_ms = 20", "");
    let bus = sb.open();
    bus.start().unwrap();
    let e = bus
        .publish(NewEvent {
            headers: vec![("trace-id".into(), "abc".into())],
            ..event("job")
        })
        .unwrap();
    let done = wait_final(&bus, &e.id, Duration::from_secs(10));
    assert_eq!(done.status, EventStatus::DeadLetter);
    assert!(
        done.error_message
            .as_deref()
            .unwrap()
            .contains("attempt 3 is not enough"),
        "{done:?}"
    );
    let runs = bus.store().executions(&e.id).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(runs.iter().all(|r| r.outcome == "retry"));
    let dead = bus.store().dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        (
            d.event_id.as_str(),
            d.handler.as_str(),
            d.handler_version.as_str(),
            d.attempts,
            d.reason.as_str()
        ),
        (e.id.as_str(), "flaky", "1", 3, "attempts_exhausted")
    );
    assert!(d.last_error.contains("attempt 3"), "{d:?}");
    assert_eq!(d.headers, [("trace-id".to_string(), "abc".to_string())]);
}

#[test]
fn reject_dead_letters_at_once() {
    let sb = Sandbox::new();
    flaky(&sb, "picky", "max_attempts = 5", "mode = \"reject\"");
    let bus = sb.open();
    let e = bus.publish(event("job")).unwrap();
    bus.drain().unwrap();
    let row = bus.store().event(&e.id).unwrap();
    assert_eq!(row.status, EventStatus::DeadLetter);
    let runs = bus.store().executions(&e.id).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, "rejected");
    assert_eq!(bus.store().dead_letters(10).unwrap()[0].reason, "rejected");
}

#[test]
fn backoff_spaces_attempts_and_finished_handlers_do_not_rerun() {
    let sb = Sandbox::new();
    flaky(
        &sb,
        "flaky",
        "max_attempts = 3\nbackoff_ms = 200",
        "succeed_on = 3",
    );
    sb.install(
        "audit",
        guests::AUDIT,
        "[[subscriptions]]\nevent_type = \"job\"",
    );
    let bus = sb.open();
    bus.start().unwrap();
    let e = bus.publish(event("job")).unwrap();
    let done = wait_final(&bus, &e.id, Duration::from_secs(10));
    assert_eq!(done.status, EventStatus::Completed);
    let runs = bus.store().executions(&e.id).unwrap();
    let flaky: Vec<_> = runs.iter().filter(|r| r.handler == "flaky").collect();
    assert_eq!(flaky.len(), 3);
    // Equal jitter: the wait after attempt n is in [b*2^(n-1)/2, b*2^(n-1)].
    let gap1 = ms(&flaky[1].started_at) - ms(&flaky[0].started_at);
    let gap2 = ms(&flaky[2].started_at) - ms(&flaky[1].started_at);
    assert!((100..1000).contains(&gap1), "first backoff {gap1} ms");
    assert!((200..1500).contains(&gap2), "second backoff {gap2} ms");
    assert_eq!(
        runs.iter().filter(|r| r.handler == "audit").count(),
        1,
        "audit completed once and was not rerun"
    );
    assert_eq!(bus.store().state_counter("audit", "events").unwrap(), 1);
}
