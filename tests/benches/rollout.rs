//! Changing a handler without fear, measured.
//!
//! `--shadow`: what a shadow costs its live version. A backlog through the
//! `rmw` guest (reads, writes and reads again per event) alone, then with
//! a shadow of the same handler loaded beside it (`[rollout] shadow =
//! true`), on the host's defaults. The shadow runs on spare CPU only; what
//! it cannot keep up with is dropped and counted, never waited for. Each
//! round runs without, then with, on a fresh store holding the whole
//! backlog before the host starts (random UUID ids).
//!
//! `--replay`: `persona-bus replay --handler rmw` over a stored backlog of
//! `--replay-events` (100,000) events, from the SQLite table, into a fresh
//! ledger generation: events looked at per second.
//!
//! ```text
//! cargo bench -p persona-bus-tests --bench rollout -- [--shadow | --replay]
//!     [--events N] [--projects N] [--replay-events N] [--rounds N]
//! ```
//!
//! Summaries give medians, ranges and ratios of the medians.

use persona_bus_tests::{Sandbox, guests};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: u64| persona_bus_tests::arg_number(&args, name, default);
    let only = |name: &str| args.iter().any(|a| a == name);
    let both = !only("--shadow") && !only("--replay");
    println!("{}", persona_bus_tests::speed_line());
    let rounds = persona_bus_tests::rounds(&args, 5);
    let projects = value("--projects", 8);
    if both || only("--shadow") {
        shadow(value("--events", 50_000), projects, rounds);
    }
    if both || only("--replay") {
        replay(value("--replay-events", 100_000), projects, rounds.min(3));
    }
}

fn shadow(events: u64, projects: u64, rounds: usize) {
    println!(
        "shadow benchmark: a backlog of {events} events over {projects} project(s) through rmw, \
         alone and with a shadow of itself; {rounds} round(s)"
    );
    // Warm-up: the compiled component lands in the cache.
    run(false, 5_000, projects);
    let (mut alone, mut shadowed, mut ran, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        println!("{}", persona_bus_tests::round_line(round, rounds));
        let (a, _) = run(false, events, projects);
        let (s, share) = run(true, events, projects);
        println!(
            "  alone {a:.0} events/s, with a shadow {s:.0} events/s ({:.0} % of the events shadowed)",
            share * 100.0
        );
        alone.push(a);
        shadowed.push(s);
        ratios.push(s / a);
        ran.push(share * 100.0);
    }
    for v in [&mut alone, &mut shadowed, &mut ran, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    let ratio = persona_bus_tests::median(&shadowed) / persona_bus_tests::median(&alone);
    // The machine's speed drifts between rounds; each round's pair runs
    // back to back, so its own ratio is the steadier figure.
    println!(
        "with / alone per round: median {:.2} ({:.2}-{:.2})",
        persona_bus_tests::median(&ratios),
        ratios[0],
        ratios[ratios.len() - 1]
    );
    println!(
        "alone {}; with a shadow {}; with / alone {ratio:.2}; shadowed {:.0}-{:.0} % of the events",
        persona_bus_tests::rate_summary(&alone),
        persona_bus_tests::rate_summary(&shadowed),
        ran[0],
        ran[ran.len() - 1]
    );
}

/// A stored backlog of `events` rmw events over `projects` (random UUIDs):
/// `n` counts 1, 2, ... in each project.
fn backlog(events: u64, projects: u64) -> Vec<persona_bus::Event> {
    persona_bus_tests::uuid_backlog(
        events,
        projects,
        "rmw",
        |i| serde_json::json!({ "n": i / projects + 1 }),
    )
}

fn replay(events: u64, projects: u64, rounds: usize) {
    println!(
        "replay benchmark: `replay --handler rmw` over a stored backlog of {events} events; {rounds} round(s)"
    );
    let mut rates = Vec::new();
    for round in 0..rounds {
        println!("{}", persona_bus_tests::round_line(round, rounds));
        let sb = Sandbox::new();
        sb.install(
            "rmw",
            guests::RMW,
            "[[subscriptions]]\nevent_type = \"rmw\"\n",
        );
        let config = sb.config();
        let store = std::sync::Arc::new(persona_bus::store::Store::open(&config.data_dir).unwrap());
        let from = persona_bus::event::now_rfc3339();
        for chunk in backlog(events, projects).chunks(5_000) {
            store.insert_batch(chunk).unwrap();
        }
        let subs = persona_bus::store::NewSubscription {
            persona_id: "rmw".into(),
            event_type: "rmw".into(),
            source_filter: None,
            project_id: None,
            enabled: true,
        };
        store.create_subscription(&subs).unwrap();
        let req = persona_bus::replay::ReplayRequest {
            handler: "rmw".into(),
            from,
            to: None,
            project: None,
        };
        let mut pages = persona_bus::replay::SqlitePages::open(store.clone(), &req).unwrap();
        let started = Instant::now();
        let r = persona_bus::replay::replay(
            &config,
            store.clone(),
            &req,
            ("sqlite", &mut pages),
            |_| {},
        )
        .unwrap();
        let rate = r.done as f64 / started.elapsed().as_secs_f64();
        assert_eq!((r.done, r.completed), (events, events), "{r:?}");
        assert_eq!(store.state_counter("rmw", "total").unwrap(), events as i64);
        println!("  {rate:.0} events/s");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "replay of one handler: {}",
        persona_bus_tests::rate_summary(&rates)
    );
}

/// Events/s of the live version over the backlog, and the share of the
/// events the shadow ran by the time the live version was done.
fn run(shadow: bool, events: u64, projects: u64) -> (f64, f64) {
    let sb = Sandbox::new();
    sb.install(
        "rmw",
        guests::RMW,
        "[[subscriptions]]\nevent_type = \"rmw\"\n",
    );
    if shadow {
        let dir = sb.handlers_dir();
        std::fs::copy(guests::RMW, dir.join("rmw.shadow.wasm")).unwrap();
        std::fs::write(
            dir.join("rmw.shadow.toml"),
            "name = \"rmw\"\nversion = \"2\"\n[rollout]\nshadow = true\n[[subscriptions]]\nevent_type = \"rmw\"\n",
        )
        .unwrap();
    }
    let bus = persona_bus::Bus::open(sb.config()).unwrap();
    assert_eq!(
        bus.registry().snapshot().candidates.len(),
        usize::from(shadow)
    );
    let rate = persona_bus_tests::drain_backlog(&bus, backlog(events, projects));
    let store = bus.store().clone();
    assert_eq!(store.state_counter("rmw", "total").unwrap(), events as i64);
    bus.shutdown();
    let shadowed = store
        .shadow_tallies("rmw")
        .unwrap()
        .iter()
        .map(|t| t.agreed + t.differed)
        .sum::<u64>();
    (rate, shadowed as f64 / events as f64)
}
