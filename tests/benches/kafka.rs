//! Kafka benchmarks (`make bench-kafka`, part of `make bench`), against the
//! real broker `make kafka-up` starts. Prints the figures kept in
//! BENCHMARKS.md.
//!
//! 1. Sustained throughput: a separate load-generating process (this binary
//!    re-executed as `kafka --load-generator TOPIC N RATE`) produces events
//!    while the host consumes them, matches them, runs a trivial WASM
//!    handler (reused instance), commits executions + ledger to SQLite and
//!    stores offsets. Beside it, in the same run, the same pipeline with a
//!    native Rust handler (the WASM cost as a ratio), and both again from a
//!    backlog (all records on the topic before the host starts).
//! 2. Publish-to-handled latency at 1,000 events/s: from the generator's
//!    send time (carried in `created_at`, microseconds) to the outcome
//!    being durable in SQLite (the host's `Resolved` notice).

use hdrhistogram::Histogram;
use persona_bus::Bus;
use persona_bus::bus::Notice;
use persona_bus_tests::kafka as k;
use persona_bus_tests::{Sandbox, guests};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--load-generator") {
        return load_generator(
            &args[i + 1],
            args[i + 2].parse().unwrap(),
            args[i + 3].parse().unwrap(),
            IdShape::from_env(),
        );
    }
    let quick = args.iter().any(|a| a == "--quick");
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if args.iter().any(|a| a == "--latency") {
        return latency(1_000, Duration::from_secs(5));
    }
    let probe = persona_bus::config::KafkaConfig {
        brokers: k::brokers(),
        ..Default::default()
    };
    if let Err(e) = persona_bus::kafka::probe(&probe, Duration::from_secs(5)) {
        eprintln!("the Kafka benchmarks need the broker: run `make kafka-up` first ({e})");
        std::process::exit(1);
    }
    let n = if quick { 30_000 } else { 300_000 };
    println!(
        "persona-bus Kafka benchmarks ({} cores, broker {})",
        cores(),
        k::brokers()
    );
    println!(
        "events: {n} per run, ids: {}, 64 projects, 6 partitions, handler: noop (reused instance); load generator warmed up before each timed window\n",
        IdShape::from_env().describe()
    );
    // Latency first, on a quiet broker (after the throughput runs the
    // broker is busy with a million records, and its pauses show up here).
    latency(1_000, Duration::from_secs(if quick { 5 } else { 20 }));
    println!();
    println!(
        "{:<44} {:>12} {:>14}",
        "pipeline", "events/s", "host window"
    );
    let wasm = throughput(n, Handler::Wasm, Load::Concurrent);
    let native = throughput(n, Handler::Native, Load::Concurrent);
    println!(
        "  WASM / native throughput: {:.2} (WASM keeps {:.0}% of native)",
        wasm / native,
        100.0 * wasm / native
    );
    let wasm_b = throughput(n, Handler::Wasm, Load::Backlog);
    let native_b = throughput(n, Handler::Native, Load::Backlog);
    println!("  WASM / native from a backlog: {:.2}", wasm_b / native_b);
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Clone, Copy, PartialEq)]
enum Handler {
    Wasm,
    Native,
}

#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// The generator produces while the host consumes.
    Concurrent,
    /// Every record is on the topic before the host starts.
    Backlog,
}

/// A host consuming fresh topics with the noop handler.
fn host(handler: Handler, prefix: &str) -> (Sandbox, Bus) {
    let sb = Sandbox::new();
    sb.install(
        "noop",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"*\"\n[instances]\npolicy = \"reuse\"",
    );
    let mut c = sb.config();
    k::consuming(&mut c, prefix);
    // The host reports only its own outcomes here (no audit copies).
    c.kafka.publish_executions = true;
    let bus = Bus::open(c).expect("open bus");
    if handler == Handler::Native {
        bus.set_native_handler(Some(std::sync::Arc::new(|_, _| Ok(()))));
    }
    (sb, bus)
}

/// Starts the load generator and waits until it is warmed up (connected,
/// idempotent producer id in hand, a first record acknowledged): none of
/// that is load, so it stays out of the timed window. It sends nothing
/// until [`go`].
fn spawn_generator(topic: &str, n: usize, rate: u32) -> Child {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--load-generator", topic, &n.to_string(), &rate.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the load generator");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("generator stdout"))
        .read_line(&mut line)
        .expect("read from the load generator");
    assert_eq!(line.trim(), "ready", "load generator did not warm up");
    child
}

/// Lets a warmed-up generator send.
fn go(generator: &mut Child) {
    use std::io::Write;
    let stdin = generator.stdin.as_mut().expect("generator stdin");
    writeln!(stdin, "go")
        .and_then(|()| stdin.flush())
        .expect("start the load generator");
}

/// Waits until the host has resolved `n` events (its own counter, read
/// every millisecond); returns (count, when the first was seen, last).
fn count_resolved(bus: &Bus, n: usize) -> (usize, Option<Instant>, Instant) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let seen = bus.metrics().resolved_total() as usize;
        if seen > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if seen >= n || Instant::now() > deadline {
            return (seen, first, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn throughput(n: usize, handler: Handler, load: Load) -> f64 {
    let prefix = k::prefix();
    let (_sb, bus) = host(handler, &prefix);
    let topic = format!("{prefix}.events");
    if load == Load::Backlog {
        let mut g = spawn_generator(&topic, n, 0);
        go(&mut g);
        assert!(g.wait().unwrap().success(), "load generator failed");
    }
    let mut generator = (load == Load::Concurrent).then(|| spawn_generator(&topic, n, 0));
    let started = Instant::now();
    bus.start().unwrap();
    if let Some(g) = generator.as_mut() {
        go(g);
    }
    let (seen, first, last) = count_resolved(&bus, n);
    if let Some(mut g) = generator {
        assert!(g.wait().unwrap().success(), "load generator failed");
    }
    let ledger = bus.store().ledger_count("noop").unwrap();
    bus.shutdown();
    assert_eq!(seen, n, "not every event was handled");
    assert_eq!(ledger, n as u64, "ledger rows");
    let total = last - started;
    let window = last - first.unwrap_or(started);
    let rate = n as f64 / total.as_secs_f64();
    println!(
        "{:<44} {:>12.0} {:>13.0}/s",
        format!(
            "{} handler, {}",
            if handler == Handler::Wasm {
                "WASM noop"
            } else {
                "native noop"
            },
            if load == Load::Concurrent {
                "generator running alongside"
            } else {
                "from a backlog"
            }
        ),
        rate,
        n as f64 / window.as_secs_f64()
    );
    rate
}

fn latency(rate: u32, run: Duration) {
    let prefix = k::prefix();
    let (_sb, bus) = host(Handler::Wasm, &prefix);
    let mut notices = bus.subscribe();
    bus.start().unwrap();
    // Let the consumer join and get its partitions before measuring.
    std::thread::sleep(Duration::from_secs(4));
    let n = (rate as f64 * run.as_secs_f64()) as usize;
    let mut g = spawn_generator(&format!("{prefix}.events"), n, rate);
    go(&mut g);
    let t0 = Instant::now();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let deadline = Instant::now() + run + Duration::from_secs(30);
    let mut seen = 0;
    while seen < n && Instant::now() < deadline {
        if let Ok(Notice::Resolved { created_at, .. }) = notices.blocking_recv() {
            seen += 1;
            if let Ok(sent) = humantime::parse_rfc3339(&created_at)
                && let Ok(d) = SystemTime::now().duration_since(sent)
            {
                hist.record(d.as_micros().max(1) as u64).unwrap();
                if d > Duration::from_millis(50) && std::env::var_os("BENCH_DETAIL").is_some() {
                    eprintln!("  slow: #{seen} at {:?}: {:?}", t0.elapsed(), d);
                }
            }
        }
    }
    let _ = g.wait();
    bus.shutdown();
    if std::env::var_os("BENCH_DETAIL").is_some() {
        for q in [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999] {
            eprintln!(
                "  q{q}: {:.2} ms",
                hist.value_at_quantile(q) as f64 / 1000.0
            );
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "latency at {rate} events/s, generator send -> outcome durable in SQLite ({seen} events): \
         p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
}

/// The shape of the event ids the generator sends: random UUIDv4 strings
/// by default (what most producers send), or time-ordered ULIDs with
/// `BENCH_IDS=ulid` (kind to SQLite's B-trees; for comparison).
#[derive(Clone, Copy)]
enum IdShape {
    Uuid,
    Ulid,
}

impl IdShape {
    fn from_env() -> Self {
        match std::env::var("BENCH_IDS").as_deref() {
            Ok("ulid") => Self::Ulid,
            _ => Self::Uuid,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Uuid => "random UUIDv4 (BENCH_IDS=ulid for time-ordered ULIDs)",
            Self::Ulid => "ULID (time-ordered; BENCH_IDS=ulid)",
        }
    }

    fn next(self) -> String {
        match self {
            Self::Ulid => ulid::Ulid::new().to_string(),
            Self::Uuid => {
                let mut b = fastrand::u128(..).to_be_bytes();
                b[6] = (b[6] & 0x0f) | 0x40; // version 4
                b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
                let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            }
        }
    }
}

/// The load generator: produces `n` events to `topic` as another device
/// would (rate 0 = as fast as it can), each stamped with its send time in
/// microseconds, over 64 projects. Waits for every acknowledgement.
fn load_generator(topic: &str, n: usize, rate: u32, ids: IdShape) {
    let p = k::producer(if rate == 0 { 20 } else { 0 });
    // Warm up before the clock starts: a metadata answer is not enough, the
    // idempotent producer fetches its producer id after that, and records
    // sent meanwhile wait (that was a 300-500 ms p99 at 1,000 events/s).
    // One acknowledged record on a topic of its own proves both.
    let warm_up = format!("{topic}.warmup");
    loop {
        match p.send(BaseRecord::<(), str>::to(&warm_up).payload("warm-up")) {
            Ok(()) => break,
            Err(_) => p.poll(Duration::from_millis(5)),
        }
    }
    k::flush(&p);
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let started = Instant::now();
    let projects: Vec<String> = (0..64).map(|p| format!("project-{p}")).collect();
    for i in 0..n {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        // The wire format and the plan's headers, written directly: a
        // generator should spend the shared cores on load, not on itself.
        let id = ids.next();
        let project = &projects[i % 64];
        let sent = humantime::format_rfc3339_micros(SystemTime::now());
        let value = format!(
            r#"{{"id":"{id}","project_id":"{project}","event_type":"task_created","source_type":"system","source_id":null,"target_persona_id":null,"payload":{{"n":{i}}},"headers":[],"schema_version":1,"chain_depth":0,"created_at":"{sent}"}}"#
        );
        let mut headers = OwnedHeaders::new_with_capacity(7);
        for (key, v) in [
            ("event-id", id.as_str()),
            ("event-type", "task_created"),
            ("schema-version", "1"),
            ("content-type", "application/json"),
            ("source", "system:"),
            ("chain-depth", "0"),
            ("origin-device", "load-generator"),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = BaseRecord::to(topic)
            .key(project.as_str())
            .payload(&value)
            .headers(headers);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
    }
    k::flush(&p);
    eprintln!("load generator: {n} events in {:.2?}", started.elapsed());
}
