//! Handlers that wait on the world: one project's events through a handler
//! that makes one outbound HTTP call per event to a local service answering
//! in `--delay-ms` (20 ms), ordered by project (one lane: the baseline) and
//! by key (`[ordering] by = "key"`, `--keys` keys, `--in-flight` calls at
//! once). In Rust (`tests/guests/keyed`, which also checks each key's
//! order) and JavaScript (`tests/guests-js/fetch.js`, `reuse` instances).
//!
//! ```text
//! cargo bench -p persona-bus-tests --bench ordering -- [--events N]
//!     [--keys N] [--in-flight N] [--delay-ms N] [--rounds N] [--lang rust|js|both]
//! ```
//!
//! Each round runs the project-ordered baseline (`--baseline-events`, 200:
//! about four seconds at 20 ms a call) and then the key-ordered run, and
//! prints both rates; the summary gives medians and ranges and the ratio of
//! the medians.

use persona_bus::event::NewEvent;
use persona_bus_tests::service::SlowService;
use persona_bus_tests::{Sandbox, guests};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Lang {
    Rust,
    Js,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: u64| persona_bus_tests::arg_number(&args, name, default);
    let events = value("--events", 4000);
    let keys = value("--keys", 400);
    let in_flight = value("--in-flight", 64);
    let delay = Duration::from_millis(value("--delay-ms", 20));
    let baseline = value("--baseline-events", 200);
    let rounds = persona_bus_tests::rounds(&args, 3);
    let lang = persona_bus_tests::arg_word(&args, "--lang", "both");
    let langs: Vec<Lang> = match lang {
        "rust" => vec![Lang::Rust],
        "js" => vec![Lang::Js],
        _ => vec![Lang::Rust, Lang::Js],
    };
    println!(
        "ordering benchmark: one project, one outbound call of {delay:?} per event; \
         by project: {baseline} events; by key: {events} events over {keys} keys, \
         {in_flight} calls at once; {rounds} round(s)"
    );
    println!("{}", persona_bus_tests::speed_line());
    let service = SlowService::start(delay);
    for lang in langs {
        let name = if lang == Lang::Rust {
            "Rust"
        } else {
            "JavaScript"
        };
        // Warm-up: the compiled component lands in the cache, the service's
        // threads and the host's connection path are made once.
        run(lang, &service, None, 50, 10);
        let (mut by_project, mut by_key) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            println!("{}", persona_bus_tests::round_line(round, rounds));
            let p = run(lang, &service, None, baseline, keys);
            let k = run(lang, &service, Some(in_flight), events, keys);
            println!("  {name}: by project {p:.0} events/s, by key {k:.0} events/s");
            by_project.push(p);
            by_key.push(k);
        }
        by_project.sort_by(f64::total_cmp);
        by_key.sort_by(f64::total_cmp);
        let ratio = persona_bus_tests::median(&by_key) / persona_bus_tests::median(&by_project);
        println!(
            "{name}: by project {}; by key {}; by key / by project {ratio:.0}x",
            persona_bus_tests::rate_summary(&by_project),
            persona_bus_tests::rate_summary(&by_key)
        );
    }
}

/// Events/s of `events` events over `keys` keys of one project, ordered by
/// key with `in_flight` calls at once, or by project when `None`.
fn run(lang: Lang, service: &SlowService, in_flight: Option<u64>, events: u64, keys: u64) -> f64 {
    let sb = Sandbox::new();
    let ordering = match in_flight {
        Some(n) => format!("[ordering]\nby = \"key\"\nkey = \"/key\"\nmax_in_flight = {n}\n"),
        None => String::new(),
    };
    let (wasm, extra) = match lang {
        Lang::Rust => (guests::KEYED, ""),
        Lang::Js => (guests::FETCH_JS, "[instances]\npolicy = \"reuse\"\n"),
    };
    // The JavaScript guest fetches `url` as it is; the Rust one adds the
    // key and seq to it.
    sb.install(
        "waits",
        wasm,
        &format!(
            "allowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n\
             [[subscriptions]]\nevent_type = \"work\"\n{ordering}{extra}\
             [limits]\ntimeout_ms = 10000\n[config]\nurl = \"{}\"\n",
            service.url()
        ),
    );
    let mut config = sb.config();
    // Room for `in_flight` calls of this handler at once.
    config.runtime.max_calls = config.runtime.max_calls.max(in_flight.unwrap_or(0) as u32);
    config.runtime.pool_slots = config.runtime.pool_slots.max(2 * config.runtime.max_calls);
    let bus = persona_bus::Bus::open(config).unwrap();
    // Keys as a real producer sends them: random UUIDs (order ids).
    let names: Vec<String> = (0..keys).map(|_| persona_bus_tests::uuid_v4()).collect();
    let batch: Vec<NewEvent> = (0..events)
        .map(|i| NewEvent {
            event_type: "work".into(),
            source_type: "system".into(),
            project_id: Some("p0".into()),
            payload: Some(serde_json::json!({
                "key": names[(i % keys) as usize],
                "seq": i / keys + 1,
            })),
            ..Default::default()
        })
        .collect();
    // Stored first, then the sources start: the window is the handling.
    let mut notices = bus.subscribe();
    for chunk in batch.chunks(1000) {
        bus.publish_batch(chunk.to_vec()).unwrap();
    }
    let started = Instant::now();
    bus.start().unwrap();
    persona_bus_tests::wait_resolved(&bus, &mut notices, events, Duration::from_secs(600));
    let store = bus.store().clone();
    let rate = events as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        persona_bus_tests::completed(&store),
        events,
        "some events did not complete"
    );
    if lang == Lang::Rust {
        let bad = store
            .state_get("waits", "out_of_order")
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap());
        assert_eq!(bad, None, "a key ran out of order");
    }
    bus.shutdown();
    rate
}
