//! No handler can stall the host: a call blocked inside a host import (a
//! sleep, a stdin read) ends at its deadline, other projects' events keep
//! flowing meanwhile, and a host with such a call in flight still shuts
//! down within its grace period.

use crate::crash::start_host;
use persona_bus::event::{EventLimits, NewEvent};
use persona_bus::store::Store;
use persona_bus::{Bus, EventStatus};
use persona_bus_tests::{Sandbox, event, guests, wait_final, wait_for};
use std::process::Command;
use std::time::{Duration, Instant};

/// `stuck` (the hostile guest in `mode`) on `stuck` events, one second to
/// run, two attempts; `good` (noop) on `work` events.
fn stuck_beside_good(mode: &str, sleep_ms: u64) -> (Sandbox, Bus) {
    let sb = Sandbox::new();
    sb.install(
        "stuck",
        guests::HOSTILE,
        &format!(
            "[[subscriptions]]\nevent_type = \"stuck\"\n[limits]\ntimeout_ms = 1000\n\
             [retry]\nmax_attempts = 2\nbackoff_ms = 50\n\
             [config]\nmode = \"{mode}\"\nsleep_ms = \"{sleep_ms}\""
        ),
    );
    sb.install(
        "good",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"work\"",
    );
    let bus = sb.open();
    (sb, bus)
}

/// Publishes a `stuck` event in `project` and waits until its call runs
/// (`processing` alone is not enough: a publish is stored already claimed
/// and may still wait in its lane, with its handler's version not chosen).
fn publish_stuck(bus: &Bus, project: &str) -> persona_bus::Event {
    let stuck = bus
        .publish(NewEvent {
            project_id: Some(project.into()),
            ..event("stuck")
        })
        .unwrap();
    wait_for(Duration::from_secs(10), "the stuck call to start", || {
        bus.store().event(&stuck.id).unwrap().status == EventStatus::Processing
            && bus.handler_calls_running() >= 1
    });
    stuck
}

/// Publishes a `stuck` event, then 200 `work` events of 20 other projects
/// right after it: they all complete within 2 s while the stuck call
/// waits. The stuck event is stopped at each deadline (outcome `timeout`),
/// retried once, then dead-lettered, with none of its effects kept.
fn blocked_call_ends_at_its_deadline(mode: &str) {
    let (_sb, bus) = stuck_beside_good(mode, 600_000);
    bus.start().unwrap();
    // Let the stuck call start, so the others really run beside it.
    let stuck = publish_stuck(&bus, "stuck-project");
    let started = Instant::now();
    let work: Vec<NewEvent> = (0..200)
        .map(|i| NewEvent {
            project_id: Some(format!("p{}", i % 20)),
            ..event("work")
        })
        .collect();
    let published = bus.publish_batch(work).unwrap();
    for e in &published {
        let done = wait_final(&bus, &e.id, Duration::from_secs(10));
        assert_eq!(done.status, EventStatus::Completed);
    }
    let took = started.elapsed();
    println!("{mode}: 200 events of other projects completed in {took:?} beside the blocked call");
    assert!(
        took <= Duration::from_secs(2),
        "200 events of other projects took {took:?} beside a {mode} call"
    );
    assert_eq!(
        bus.store().event(&stuck.id).unwrap().status,
        EventStatus::Processing,
        "the stuck call was still in its first attempt meanwhile"
    );

    let dead = wait_final(&bus, &stuck.id, Duration::from_secs(15));
    assert_eq!(dead.status, EventStatus::DeadLetter, "{dead:?}");
    let runs = bus.store().executions(&stuck.id).unwrap();
    assert_eq!(runs.len(), 2, "one run per attempt: {runs:?}");
    for run in &runs {
        assert_eq!(run.outcome, "timeout", "{run:?}");
        let ms = run.duration_us / 1000;
        println!(
            "{mode}: attempt {} stopped as timeout after {ms} ms",
            run.attempt
        );
        assert!(
            (950..2000).contains(&ms),
            "stopped at its 1000 ms deadline, not after {ms} ms"
        );
        assert!(
            run.error
                .as_deref()
                .unwrap_or_default()
                .contains("1000 ms timeout"),
            "{run:?}"
        );
    }
    assert_eq!(
        bus.store().state_counter("stuck", "slept").unwrap(),
        0,
        "a call that timed out leaves no effects"
    );
    let letters = bus.store().dead_letters(10).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
}

#[test]
fn a_guest_sleeping_past_its_timeout_is_stopped_and_holds_up_no_one() {
    blocked_call_ends_at_its_deadline("sleep");
}

#[test]
fn a_guest_waiting_on_stdin_is_stopped_and_holds_up_no_one() {
    blocked_call_ends_at_its_deadline("stdin");
}

#[test]
fn a_short_sleep_inside_the_timeout_simply_completes() {
    let (_sb, bus) = stuck_beside_good("sleep", 10);
    bus.start().unwrap();
    let e = bus.publish(event("stuck")).unwrap();
    let done = wait_final(&bus, &e.id, Duration::from_secs(10));
    assert_eq!(done.status, EventStatus::Completed);
    assert_eq!(bus.store().state_counter("stuck", "slept").unwrap(), 1);
    let runs = bus.store().executions(&e.id).unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].duration_us >= 10_000, "{runs:?}");
}

/// A host whose only event is stuck in a 60 s sleep: the stuck handler, a
/// config with `shutdown_grace_ms`, and the event stored by this process.
fn host_with_a_stuck_call(grace_ms: u64) -> (Sandbox, std::path::PathBuf, Store, String) {
    let sb = Sandbox::new();
    install_sleeper(&sb, 60_000);
    let config = sb.root.path().join("bus.toml");
    std::fs::write(
        &config,
        format!(
            "shutdown_grace_ms = {grace_ms}\n[poll]\nactive_interval_ms = 10\nidle_interval_ms = 50\n"
        ),
    )
    .unwrap();
    let store = Store::open(&sb.data_dir()).unwrap();
    let stuck = event("stuck")
        .validate(
            EventLimits {
                max_payload_bytes: 1024,
            },
            0,
        )
        .unwrap();
    store.insert(&stuck).unwrap();
    (sb, config, store, stuck.id)
}

fn install_sleeper(sb: &Sandbox, sleep_ms: u64) {
    sb.install_atomic(
        "stuck",
        "1",
        guests::HOSTILE,
        &format!(
            "[[subscriptions]]\nevent_type = \"stuck\"\n[limits]\ntimeout_ms = 60000\n\
             [config]\nmode = \"sleep\"\nsleep_ms = \"{sleep_ms}\""
        ),
    );
}

fn signal(host: &crate::Host, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &host.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

/// Waits up to `limit` for the process to exit; returns how long it took.
fn exits_within(host: &mut crate::Host, limit: Duration) -> (Duration, std::process::ExitStatus) {
    let t = Instant::now();
    loop {
        if let Some(status) = host.try_wait().unwrap() {
            return (t.elapsed(), status);
        }
        assert!(
            t.elapsed() < limit,
            "the host did not exit within {limit:?} of the signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_host_with_a_stuck_call_exits_within_its_grace_and_handles_the_event_once_after_restart() {
    let grace = Duration::from_millis(1000);
    let (sb, config, store, id) = host_with_a_stuck_call(grace.as_millis() as u64);
    let mut host = start_host(&sb, &config);
    wait_for(Duration::from_secs(30), "the stuck call to start", || {
        store.event(&id).unwrap().status == EventStatus::Processing
    });
    std::thread::sleep(Duration::from_millis(200));
    signal(&host, "INT");
    let (took, status) = exits_within(&mut host, grace + Duration::from_secs(2));
    println!("SIGINT with a stuck call, grace {grace:?}: exited ({status}) after {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= grace - Duration::from_millis(100),
        "it waited its grace first ({took:?})"
    );
    let left = store.event(&id).unwrap();
    assert_eq!(
        left.status,
        EventStatus::Pending,
        "abandoned, back to pending"
    );
    assert!(
        store.executions(&id).unwrap().is_empty(),
        "nothing of an abandoned call is committed"
    );

    // The next start handles it, once.
    install_sleeper(&sb, 0);
    let mut host = start_host(&sb, &config);
    wait_for(Duration::from_secs(30), "the event to be handled", || {
        store.event(&id).unwrap().status == EventStatus::Completed
    });
    signal(&host, "TERM");
    let (_, status) = exits_within(&mut host, Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    let runs = store.executions(&id).unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].outcome, "completed");
    assert_eq!(store.state_counter("stuck", "slept").unwrap(), 1);
}

#[test]
fn a_second_signal_exits_at_once() {
    let (sb, config, store, id) = host_with_a_stuck_call(60_000);
    let mut host = start_host(&sb, &config);
    wait_for(Duration::from_secs(30), "the stuck call to start", || {
        store.event(&id).unwrap().status == EventStatus::Processing
    });
    signal(&host, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        host.try_wait().unwrap().is_none(),
        "still in its grace period"
    );
    signal(&host, "INT");
    let (took, _) = exits_within(&mut host, Duration::from_secs(2));
    println!("second signal: exited after {took:?}");
}

/// Swapping out a version whose call is stuck does not wait for it: the new
/// version serves at once, and the stuck call still ends at its deadline.
#[test]
fn a_reload_does_not_wait_for_a_stuck_call_of_the_old_version() {
    let sb = Sandbox::new();
    let manifest = |sleep_ms: u64| {
        format!(
            "[[subscriptions]]\nevent_type = \"stuck\"\n[limits]\ntimeout_ms = 3000\n\
             [retry]\nmax_attempts = 1\n\
             [config]\nmode = \"sleep\"\nsleep_ms = \"{sleep_ms}\""
        )
    };
    sb.install_versioned("stuck", "1", guests::HOSTILE, &manifest(600_000));
    let mut config = sb.config();
    config.watch_handlers = false;
    let bus = Bus::open(config).unwrap();
    bus.start().unwrap();
    let first = publish_stuck(&bus, "a");

    sb.install_atomic("stuck", "2", guests::HOSTILE, &manifest(0));
    let started = Instant::now();
    let report = bus.registry().reload().unwrap();
    assert_eq!(report.loaded, vec![("stuck".to_owned(), "2".to_owned())]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the reload waited {:?}",
        started.elapsed()
    );
    let mut second = event("stuck");
    second.project_id = Some("b".into());
    let second = bus.publish(second).unwrap();
    let done = wait_final(&bus, &second.id, Duration::from_secs(2));
    assert_eq!(done.status, EventStatus::Completed);
    assert_eq!(
        bus.store().executions(&second.id).unwrap()[0].handler_version,
        "2"
    );

    let dead = wait_final(&bus, &first.id, Duration::from_secs(10));
    assert_eq!(dead.status, EventStatus::DeadLetter);
    let run = &bus.store().executions(&first.id).unwrap()[0];
    assert_eq!(
        (run.outcome.as_str(), run.handler_version.as_str()),
        ("timeout", "1")
    );
}
