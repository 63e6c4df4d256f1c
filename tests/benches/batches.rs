//! Events per call: a backlog through a JavaScript (`tally-js`) and a
//! Python (`tally-py`) handler, one event per call (`handle`) against
//! batches (`[batch] max_events = 64`, `handle-batch`). Both handlers do
//! the same per event: parse the payload, two state increments, a log
//! line. Under each instance policy: `fresh` (the host's default: a new
//! instance per call, so per batch with `[batch]`) and `reuse` (warm
//! instances); the host's other settings at their defaults.
//!
//! ```text
//! cargo bench -p persona-bus-tests --bench batches -- [--events N]
//!     [--projects N] [--batch N] [--rounds N] [--lang js|python|both]
//!     [--policy fresh|reuse|both]
//! ```
//!
//! Each round runs one event per call, then batches, on a fresh store
//! holding the whole backlog before the host starts (ids are random UUIDs,
//! as real producers send). The summary gives medians, ranges and the
//! ratio of the medians.

use persona_bus_tests::{Sandbox, guests};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: u64| persona_bus_tests::arg_number(&args, name, default);
    let events = value("--events", 100_000);
    let projects = value("--projects", 1);
    let batch = value("--batch", 64);
    let rounds = persona_bus_tests::rounds(&args, 3);
    let lang = persona_bus_tests::arg_word(&args, "--lang", "both");
    let policies: Vec<&str> = match persona_bus_tests::arg_word(&args, "--policy", "both") {
        "both" => vec!["fresh", "reuse"],
        one => vec![one],
    };
    let langs: Vec<(&str, &str)> = [
        ("JavaScript", guests::TALLY_JS),
        ("Python", guests::TALLY_PY),
    ]
    .into_iter()
    .filter(|(name, _)| match lang {
        "js" => *name == "JavaScript",
        "python" => *name == "Python",
        _ => true,
    })
    .collect();
    println!(
        "batches benchmark: a backlog of {events} events over {projects} project(s); \
         one event per call against batches of {batch}; {rounds} round(s)"
    );
    println!("{}", persona_bus_tests::speed_line());
    for (name, wasm) in langs {
        // Warm-up: the compiled component lands in the cache.
        run(wasm, "reuse", None, 2_000, projects);
        for &policy in &policies {
            let (mut single, mut batched) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                println!("{}", persona_bus_tests::round_line(round, rounds));
                let one = run(wasm, policy, None, events, projects);
                let many = run(wasm, policy, Some(batch), events, projects);
                println!(
                    "  {name}, {policy}: one per call {one:.0} events/s, batches of {batch} {many:.0} events/s"
                );
                single.push(one);
                batched.push(many);
            }
            single.sort_by(f64::total_cmp);
            batched.sort_by(f64::total_cmp);
            let ratio = persona_bus_tests::median(&batched) / persona_bus_tests::median(&single);
            println!(
                "{name}, {policy}: one per call {}; batches of {batch} {}; batches / one per call {ratio:.1}x",
                persona_bus_tests::rate_summary(&single),
                persona_bus_tests::rate_summary(&batched)
            );
        }
    }
}

/// Events/s of a backlog of `events` through the handler in `wasm`, in
/// batches of `batch` events per call (None: `handle`, one per call).
fn run(wasm: &str, policy: &str, batch: Option<u64>, events: u64, projects: u64) -> f64 {
    let sb = Sandbox::new();
    let batch = batch.map_or(String::new(), |n| format!("[batch]\nmax_events = {n}\n"));
    sb.install(
        "tally",
        wasm,
        &format!(
            "[[subscriptions]]\nevent_type = \"work\"\n\
             [instances]\npolicy = \"{policy}\"\n\
             [limits]\ntimeout_ms = 10000\nmemory_mb = 128\n{batch}"
        ),
    );
    let bus = persona_bus::Bus::open(sb.config()).unwrap();
    let backlog = persona_bus_tests::uuid_backlog(
        events,
        projects,
        "work",
        |i| serde_json::json!({ "n": i }),
    );
    let rate = persona_bus_tests::drain_backlog(&bus, backlog);
    assert_eq!(
        bus.store().state_counter("tally", "events").unwrap(),
        events as i64,
        "the handler's count is off"
    );
    bus.shutdown();
    rate
}
