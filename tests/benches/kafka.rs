//! Kafka benchmarks (`make bench-kafka`, part of `make bench`; `make
//! bench-peer` for the comparison with the migration plan's own stack),
//! against the real broker `make kafka-up` starts. Prints the figures kept
//! in BENCHMARKS.md.
//!
//! Every figure comes from a separate load-generating process (this binary
//! re-executed as `kafka --load-generator TOPIC N RATE`), warmed up (metadata,
//! producer id, one acknowledged record) before its timed window, sending
//! random UUIDv4 ids by default (`BENCH_IDS=ulid` for time-ordered ones) in
//! four event types (`task_created`, `task_updated`, `task_completed`,
//! `task_assigned`) over 64 projects.
//!
//! 1. Latency at 1,000 events/s: from the generator's send time (carried in
//!    `created_at`, microseconds) to the outcome being durable in SQLite
//!    (the host's `Resolved` notice), with the two handlers below at default
//!    settings, in-process.
//! 2. Throughput from a backlog: every record is on the topic before the
//!    host starts. The host is the real `persona-bus run` process, with two
//!    handlers (the noop guest on every event, and again on
//!    `task_completed`, a quarter of them), at default manifest settings
//!    (a fresh instance per event) and with `policy = "reuse"`. The rate is
//!    events over the window the host's data file records, from the first
//!    handler run's start to the last outcome (the consumer group's join is
//!    reported apart); peak RSS is the process's VmHWM.
//! 3. Idle RSS: the host on its embedded default with the first-party
//!    handlers, after start-up.
//!
//! `--peer` runs the plan's stack (KafkaJS + better-sqlite3,
//! `tools/bench-peer`) on the same topics in the same run and prints both
//! pipelines and the ratios. `--in-process` keeps the older in-process
//! comparison of the WASM handler with a native one.

use hdrhistogram::Histogram;
use persona_bus::Bus;
use persona_bus::bus::Notice;
use persona_bus_tests::kafka as k;
use persona_bus_tests::{Sandbox, guests};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The event types the generator cycles through; the second handler
/// subscribes to one of them (a quarter of the events).
const EVENT_TYPES: [&str; 4] = [
    "task_created",
    "task_updated",
    "task_completed",
    "task_assigned",
];

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
    if args.iter().any(|a| a == "--idle") {
        // The idle figures alone (no broker needed).
        return idle_rss();
    }
    if args.iter().any(|a| a == "--leader-kill") {
        // The pause when a partition leader dies in a healthy cluster
        // (`make kafka-up-cluster`).
        let run = persona_bus_tests::cluster::leader_kill();
        return println!("{}", run.line());
    }
    let probe = persona_bus::config::KafkaConfig {
        brokers: k::brokers(),
        ..Default::default()
    };
    if let Err(e) = persona_bus::kafka::probe(&probe, Duration::from_secs(5)) {
        eprintln!("the Kafka benchmarks need the broker: run `make kafka-up` first ({e})");
        std::process::exit(1);
    }
    // Topics that earlier test and benchmark runs left slow the broker down;
    // each run below also deletes its own when done.
    let stale = k::drop_stale_topics(Duration::from_secs(30 * 60));
    if stale > 0 {
        println!("deleted {stale} topics that runs over 30 minutes ago left on the broker\n");
    }
    let n = if quick { 30_000 } else { 300_000 };
    let latency_run = Duration::from_secs(if quick { 5 } else { 20 });
    let rounds = persona_bus_tests::rounds(&args, if quick { 1 } else { 3 });
    if args.iter().any(|a| a == "--latency") {
        warm_up_broker(n / 5);
        return latency_rounds(latency_run, rounds);
    }
    if args.iter().any(|a| a == "--tls") {
        return tls_comparison(n, quick);
    }
    if args.iter().any(|a| a == "--schemas") {
        return schemas_comparison(n);
    }
    if args.iter().any(|a| a == "--tracing") {
        return tracing_comparison(n);
    }
    if args.iter().any(|a| a == "--uncompressed") {
        // The peer's record format, for the backlog runs too.
        UNCOMPRESSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    println!(
        "persona-bus Kafka benchmarks ({} cores, broker {})",
        cores(),
        k::brokers()
    );
    println!(
        "events: {n} per run, ids: {}, 4 event types, 64 projects, 6 partitions; load generator warmed up before each timed window\n",
        IdShape::from_env().describe()
    );
    if args.iter().any(|a| a == "--in-process") {
        return in_process(n);
    }
    if args.iter().any(|a| a == "--peer") {
        warm_up_broker(n / 5);
        return peer_comparison(n, quick);
    }
    // `--throughput fresh|reuse|both`: only the backlog runs. (The value is
    // required: `cargo bench` appends `--bench` to the arguments.)
    let only = args
        .iter()
        .position(|a| a == "--throughput")
        .map(|i| args.get(i + 1).map(String::as_str).unwrap_or("both"));
    warm_up_broker(n / 5);
    if only.is_none() {
        // Latency first, on a quiet (but warm) broker.
        latency_rounds(latency_run, rounds);
    }
    let topic = backlog(n);
    let policies: Vec<Policy> = [(Policy::Fresh, "fresh"), (Policy::Reuse, "reuse")]
        .into_iter()
        .filter(|(_, name)| only.is_none_or(|o| o == *name || o == "both"))
        .map(|(policy, _)| policy)
        .collect();
    backlog_rounds(&topic, n, &policies, rounds);
    drop_topic_family(&topic);
    if only.is_none() {
        println!();
        idle_rss();
    }
}

/// Each policy's backlog run, `rounds` times over the same backlog (each
/// host a new consumer group), the policies alternating so a slow stretch
/// of the machine falls on both; then each one's median and range.
fn backlog_rounds(topic: &str, n: usize, policies: &[Policy], rounds: usize) {
    let mut runs: Vec<Vec<HostRun>> = policies.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        println!("{}", persona_bus_tests::round_line(round, rounds));
        println!("{}", HostRun::header());
        for (i, &policy) in policies.iter().enumerate() {
            let run = host_process(topic, n, policy);
            println!("{}", run.line());
            runs[i].push(run);
        }
        println!();
    }
    if rounds > 1 {
        for (policy, runs) in policies.iter().zip(&runs) {
            let rates: Vec<f64> = runs.iter().map(HostRun::rate).collect();
            let peak = runs.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max);
            println!(
                "{}: {}, peak RSS {peak:.0} MB at most",
                policy.label(),
                persona_bus_tests::rate_summary(&rates)
            );
        }
        println!();
    }
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

/// An in-process host (`--in-process`) consuming fresh topics with the noop
/// handler, reused, or a native one in its place.
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
/// Generators send uncompressed batches (for the peer: KafkaJS has no LZ4
/// codec of its own, and a JavaScript one would slow it down).
static UNCOMPRESSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn spawn_generator(topic: &str, n: usize, rate: u32) -> Child {
    spawn_generator_with(topic, n, rate, &[])
}

/// A generator with extra settings (`BENCH_PAYLOAD`, `BENCH_REGISTRY`).
fn spawn_generator_with(topic: &str, n: usize, rate: u32, env: &[(&str, String)]) -> Child {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--load-generator", topic, &n.to_string(), &rate.to_string()])
        .env(
            "PERSONA_BUS_TEST_KAFKA_SECURE",
            if k::secure() { "1" } else { "0" },
        )
        .env(
            "BENCH_COMPRESSION",
            if UNCOMPRESSED.load(std::sync::atomic::Ordering::Relaxed) {
                "none"
            } else {
                "lz4"
            },
        )
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

/// The in-process comparison (`--in-process`): the WASM noop against a
/// native Rust one, one subscription, reused instance.
fn in_process(n: usize) {
    println!(
        "{:<44} {:>12} {:>14}",
        "pipeline (in-process)", "events/s", "host window"
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

/// The host's latency at 1,000 events/s, `rounds` times, then the median
/// p99 and the range of the p99s.
fn latency_rounds(run: Duration, rounds: usize) {
    let mut p99s = Vec::new();
    for round in 0..rounds {
        println!("{}", persona_bus_tests::round_line(round, rounds));
        let l = latency(1_000, run);
        println!("{}\n", l.line("persona-bus"));
        p99s.push(l.p99);
    }
    if rounds > 1 {
        p99s.sort_by(f64::total_cmp);
        println!(
            "latency at 1,000 events/s, persona-bus: p99 median {:.2} ms ({rounds} rounds: {:.2}-{:.2} ms)\n",
            persona_bus_tests::median(&p99s),
            p99s[0],
            p99s[rounds - 1]
        );
    }
}

/// Publish-to-durable latency of one pipeline.
struct Latency {
    events: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn from_histogram(hist: &Histogram<u64>) -> Self {
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Self {
            events: hist.len() as usize,
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            max: hist.max() as f64 / 1000.0,
        }
    }

    fn line(&self, who: &str) -> String {
        format!(
            "latency at 1,000 events/s, {who}, generator send -> outcome durable in SQLite ({} events): \
             p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.events, self.p50, self.p90, self.p99, self.max
        )
    }
}

/// Latency of the host at default settings with the two benchmark handlers
/// (the same work as the throughput runs and the peer).
fn latency(rate: u32, run: Duration) -> Latency {
    let prefix = k::prefix();
    let sb = Sandbox::new();
    install_bench_handlers(&sb, Policy::Fresh);
    let mut c = sb.config();
    k::consuming(&mut c, &prefix);
    let bus = Bus::open(c).expect("open bus");
    let mut notices = bus.subscribe();
    bus.start().unwrap();
    // Let the consumer join and get its partitions before measuring.
    settle_broker();
    settle_disk();
    std::thread::sleep(Duration::from_secs(4));
    let n = (rate as f64 * run.as_secs_f64()) as usize;
    let mut g = spawn_generator(&format!("{prefix}.events"), LATENCY_WARM_UP + n, rate);
    go(&mut g);
    let t0 = Instant::now();
    let mut warm_up = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let deadline = Instant::now() + run + Duration::from_secs(30);
    let mut seen = 0;
    // With BENCH_DETAIL: per second of the window, how many events took
    // over 10 ms and the slowest, to tell a transient from a steady cost.
    let detail = std::env::var_os("BENCH_DETAIL").is_some();
    let mut per_second: Vec<(u32, Duration)> = Vec::new();
    while seen < LATENCY_WARM_UP + n && Instant::now() < deadline {
        if let Ok(Notice::Resolved { created_at, .. }) = notices.blocking_recv() {
            seen += 1;
            if let Ok(sent) = humantime::parse_rfc3339(&created_at)
                && let Ok(d) = SystemTime::now().duration_since(sent)
            {
                let us = d.as_micros().max(1) as u64;
                if seen <= LATENCY_WARM_UP {
                    warm_up.record(us).unwrap();
                } else {
                    hist.record(us).unwrap();
                }
                if detail {
                    let second = t0.elapsed().as_secs() as usize;
                    if per_second.len() <= second {
                        per_second.resize(second + 1, (0, Duration::ZERO));
                    }
                    let s = &mut per_second[second];
                    s.0 += u32::from(d > Duration::from_millis(10));
                    s.1 = s.1.max(d);
                }
            }
        }
    }
    for (second, (over, max)) in per_second.iter().enumerate() {
        eprintln!("  second {second}: {over} events over 10 ms, slowest {max:.2?}");
    }
    let _ = g.wait();
    bus.shutdown();
    println!(
        "latency warm-up: the first {LATENCY_WARM_UP} events of the stream, not counted: p99 {:.2} ms, max {:.2} ms",
        warm_up.value_at_quantile(0.99) as f64 / 1000.0,
        warm_up.max() as f64 / 1000.0
    );
    Latency::from_histogram(&hist)
}

/// Events at the start of a latency stream that are handled but not
/// counted (two seconds at 1,000 events/s), for the host and the peer
/// alike. The host has just started, and its first events met cold
/// instance slots and a broker whose produce path had only seen backlog
/// batches: after backlog runs, the first second held most of the events
/// over 10 ms (94 of 130 in one run, `BENCH_DETAIL=1`). The generator's own
/// warm-up (producer id, metadata) happens before the stream starts.
const LATENCY_WARM_UP: usize = 2_000;

/// The same latency and backlog runs over plaintext and over SASL_SSL
/// (SCRAM-SHA-512, the secure broker `make kafka-up-secure` starts on the
/// same machine, same jars and settings), and their ratio. The generator
/// uses the same listener as the host.
fn tls_comparison(n: usize, quick: bool) {
    let run = Duration::from_secs(if quick { 5 } else { 20 });
    let mut rows = Vec::new();
    for secure in [false, true] {
        k::use_secure(secure);
        let name = if secure {
            "SASL_SSL (SCRAM-SHA-512)"
        } else {
            "plaintext"
        };
        println!("== {name}, broker {}", k::brokers());
        let l = latency(1_000, run);
        println!("{}", l.line("persona-bus"));
        let topic = backlog(n);
        let r = host_process(&topic, n, Policy::Fresh);
        drop_topic_family(&topic);
        println!("{}\n{}\n", HostRun::header(), r.line());
        rows.push((name, l, r));
    }
    k::use_secure(false);
    let (_, plain_l, plain_r) = &rows[0];
    let (_, tls_l, tls_r) = &rows[1];
    println!(
        "SASL_SSL / plaintext: throughput {:.2}, p99 at 1,000/s {:.2} ({:.2} / {:.2} ms), CPU per event {:.2}",
        tls_r.rate() / plain_r.rate(),
        tls_l.p99 / plain_l.p99,
        tls_l.p99,
        plain_l.p99,
        tls_r.cpu_us_per_event / plain_r.cpu_us_per_event,
    );
}

/// Untimed host runs over a small backlog, until the broker is warm. A
/// broker just started (as after `make kafka-reset`) serves its first
/// minute of fetches and produces from cold JIT-compiled code: without a
/// warm-up, the first timed run of a round measured 24-27k events/s where
/// the same binary made 35k a few minutes later, and one warm-up run was
/// not always enough (a first reuse run after a reset measured 49,448/s,
/// the next 70,406). So the runs repeat until one is within a tenth of the
/// one before (at most [`WARM_UP_ROUNDS`]): a warm broker stops after two.
fn warm_up_broker(n: usize) {
    let t = Instant::now();
    let mut rates = Vec::new();
    for _ in 0..WARM_UP_ROUNDS {
        let topic = backlog(n);
        let run = host_process(&topic, n, Policy::Reuse);
        drop_topic_family(&topic);
        let rate = run.rate();
        let steady = rates
            .last()
            .is_some_and(|&before: &f64| rate < before * 1.1);
        rates.push(rate);
        if steady {
            break;
        }
    }
    let rates: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "warm-up: {} runs of {n} events through a host, untimed ({:.1} s; events/s {})\n",
        rates.len(),
        t.elapsed().as_secs_f64(),
        rates.join(", ")
    );
}

/// Most warm-up runs (see [`warm_up_broker`]).
const WARM_UP_ROUNDS: usize = 4;

/// Deletes `topic` (`<prefix>.events`) and its siblings of the same prefix.
fn drop_topic_family(topic: &str) {
    if let Some((prefix, _)) = topic.split_once('.') {
        k::drop_topics(prefix);
    }
}

/// Puts `n` events on a fresh topic (6 partitions, the broker's default)
/// and returns its name.
fn backlog(n: usize) -> String {
    backlog_with(&format!("{}.events", k::prefix()), n, &[])
}

fn backlog_with(topic: &str, n: usize, env: &[(&str, String)]) -> String {
    let topic = topic.to_owned();
    let t = Instant::now();
    let mut g = spawn_generator_with(&topic, n, 0, env);
    go(&mut g);
    assert!(g.wait().unwrap().success(), "load generator failed");
    println!(
        "backlog: {n} events on {topic} in {:.1} s\n",
        t.elapsed().as_secs_f64()
    );
    topic
}

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    /// Default manifest settings: a fresh instance per event.
    Fresh,
    /// `[instances] policy = "reuse"`.
    Reuse,
}

impl Policy {
    fn label(self) -> &'static str {
        match self {
            Policy::Fresh => "2 handlers, default settings (fresh instance per event)",
            Policy::Reuse => "2 handlers, [instances] policy = \"reuse\"",
        }
    }
}

/// One run of the real host process over a backlog.
struct HostRun {
    policy: Policy,
    events: u64,
    /// Start of the process to its first handled event (group join,
    /// handler compilation from the cache).
    to_first: Duration,
    /// First handled event to the last.
    window: Duration,
    peak_rss_mb: f64,
    /// CPU time the host process used in all (start-up included), per
    /// event: what the machine pays, whatever else runs beside it.
    cpu_us_per_event: f64,
}

impl HostRun {
    fn rate(&self) -> f64 {
        self.events as f64 / self.window.as_secs_f64()
    }

    fn header() -> String {
        format!(
            "{:<58} {:>10} {:>11} {:>13} {:>13}",
            "persona-bus run, from the backlog", "events/s", "peak RSS", "join+start", "CPU/event"
        )
    }

    fn line(&self) -> String {
        format!(
            "{:<58} {:>10.0} {:>8.0} MB {:>11.1} s {:>10.1} us",
            self.policy.label(),
            self.rate(),
            self.peak_rss_mb,
            self.to_first.as_secs_f64(),
            self.cpu_us_per_event
        )
    }
}

/// Installs the two benchmark handlers: the noop guest on every event, and
/// again (as `quarter`) on `task_completed`.
fn install_bench_handlers(sb: &Sandbox, policy: Policy) {
    let instances = match policy {
        Policy::Fresh => "",
        Policy::Reuse => "\n[instances]\npolicy = \"reuse\"",
    };
    sb.install(
        "noop",
        guests::NOOP,
        &format!("[[subscriptions]]\nevent_type = \"*\"{instances}"),
    );
    sb.install(
        "quarter",
        guests::NOOP,
        &format!("[[subscriptions]]\nevent_type = \"task_completed\"{instances}"),
    );
}

/// A free loopback port for a child's HTTP server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `persona-bus run` as a child process.
struct HostProcess {
    child: Child,
    metrics: String,
}

impl HostProcess {
    fn start(sb: &Sandbox, config: &persona_bus::Config) -> Self {
        let port = free_port();
        let toml = sb.root.path().join("bench.toml");
        std::fs::write(&toml, toml::to_string(config).unwrap()).unwrap();
        let log = std::fs::File::create(sb.root.path().join("host.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_persona-bus-host"))
            .env("PERSONA_BUS_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env_remove("RUST_BACKTRACE")
            .arg("--config")
            .arg(&toml)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start persona-bus run");
        Self {
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    /// Events in a final state (completed, skipped, dead letter, failed),
    /// from `/metrics`; None until the server answers.
    fn handled(&self) -> Option<u64> {
        let text = ureq::get(&self.metrics)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("persona_bus_events_handled_total{"))
                .filter(|l| !l.contains("\"retry\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum(),
        )
    }

    /// Handlers loaded, from `/ready` (0 until it answers).
    fn handlers_loaded(&self) -> u64 {
        let url = self.metrics.replace("/metrics", "/ready");
        let Ok(mut response) = ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
        else {
            return 0;
        };
        let body: serde_json::Value = response.body_mut().read_json().unwrap_or_default();
        body["handlers_loaded"].as_u64().unwrap_or(0)
    }

    /// A field of /proc/PID/status (VmRSS, VmHWM) in MB.
    fn memory_mb(&self, field: &str) -> f64 {
        persona_bus_tests::proc_status_kib(&self.child.id().to_string(), field) as f64 / 1024.0
    }

    /// User + system CPU time of the process so far.
    fn cpu_time(&self) -> Duration {
        persona_bus_tests::proc_cpu_time(&self.child.id().to_string())
    }

    fn stop(mut self) {
        // SIGTERM: a graceful stop, as an operator would.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// The real host, consuming `topic` from the start in a group of its own.
fn host_process(topic: &str, n: usize, policy: Policy) -> HostRun {
    host_process_with(topic, n, policy, |_| {})
}

fn host_process_with(
    topic: &str,
    n: usize,
    policy: Policy,
    edit: impl FnOnce(&mut persona_bus::Config),
) -> HostRun {
    let sb = Sandbox::new();
    install_bench_handlers(&sb, policy);
    let mut c = sb.config();
    let prefix = k::prefix();
    k::consuming(&mut c, &prefix);
    c.kafka.topics.events.name = topic.to_owned();
    edit(&mut c);
    // A backlog is usually on the broker's disk long before a host starts.
    settle_disk();
    let started = Instant::now();
    let host = HostProcess::start(&sb, &c);
    let deadline = started + Duration::from_secs(900);
    let mut seen = 0;
    let mut peak_rss_mb: f64 = 0.0;
    while (seen as usize) < n && Instant::now() < deadline {
        if let Some(h) = host.handled() {
            seen = h;
        }
        peak_rss_mb = peak_rss_mb.max(host.memory_mb("VmHWM"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak_rss_mb = peak_rss_mb.max(host.memory_mb("VmHWM"));
    let cpu = host.cpu_time();
    host.stop();
    // Its executions, actions, webhooks and dlq topics (not the backlog).
    k::drop_topics(&prefix);
    assert_eq!(
        seen as usize, n,
        "not every event was handled (log: host.log)"
    );
    // The window is the host's own record: from the first handler run's
    // start to the last event's outcome.
    let (first, last) = persona_bus_tests::handled_window(&sb.data_dir());
    let window = last.duration_since(first).unwrap();
    let process_start = SystemTime::now() - started.elapsed();
    HostRun {
        policy,
        events: seen,
        to_first: first.duration_since(process_start).unwrap_or_default(),
        window,
        peak_rss_mb,
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / seen.max(1) as f64,
    }
}

/// Writes back what earlier work left dirty (a fresh build writes
/// gigabytes; on a fresh clone its write-back tripled the first p99), so
/// the timed window measures only its own load.
fn settle_disk() {
    let _ = Command::new("sync").status();
}

/// Waits until the broker (`scripts/kafka.sh`'s, plaintext) has used less
/// than a fifth of a core for two seconds running, at most
/// [`BROKER_SETTLE_MAX`], and prints its CPU each second, so a slow latency
/// run can be told from a broker still busy with an earlier run's work. (In
/// one slow run right after backlog runs the broker was at 100-125% of a
/// core through the first seconds of the window; when this was added it
/// was quiet before each window, and the slow events came at the start of
/// the stream: see [`LATENCY_WARM_UP`].)
fn settle_broker() {
    if k::secure() {
        return;
    }
    let Ok(out) = Command::new(k::KAFKA_SH).arg("pid").output() else {
        return;
    };
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if pid.is_empty() || !Path::new(&format!("/proc/{pid}")).exists() {
        return;
    }
    let started = Instant::now();
    let mut shares = Vec::new();
    let mut quiet = 0;
    let mut before = persona_bus_tests::proc_cpu_time(&pid);
    while quiet < 2 && started.elapsed() < BROKER_SETTLE_MAX {
        std::thread::sleep(Duration::from_secs(1));
        let now = persona_bus_tests::proc_cpu_time(&pid);
        let share = now.saturating_sub(before).as_secs_f64();
        before = now;
        shares.push(format!("{:.0}%", share * 100.0));
        quiet = if share < 0.2 { quiet + 1 } else { 0 };
    }
    println!(
        "broker {} after {:.0} s (its CPU each second: {})",
        if quiet >= 2 { "quiet" } else { "still busy" },
        started.elapsed().as_secs_f64(),
        shares.join(", ")
    );
}

/// Longest [`settle_broker`] waits.
const BROKER_SETTLE_MAX: Duration = Duration::from_secs(30);

/// Creates `topic` with 6 partitions and waits until the broker has it.
fn create_topic(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = k::client().create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, 6, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("create topic");
    std::thread::sleep(Duration::from_millis(500));
}

/// What the peer (tools/bench-peer/peer.js) printed when it was done.
struct PeerResult {
    handled: u64,
    first_ms: f64,
    last_ms: f64,
    latency_us: [f64; 4],
}

impl PeerResult {
    fn rate(&self) -> f64 {
        self.handled as f64 / ((self.last_ms - self.first_ms) / 1000.0)
    }

    fn latency(&self) -> Latency {
        let [p50, p90, p99, max] = self.latency_us.map(|us| us / 1000.0);
        Latency {
            events: self.handled as usize,
            p50,
            p90,
            p99,
            max,
        }
    }
}

/// The plan's stack (KafkaJS + better-sqlite3) consuming `topic` from the
/// start in a group of its own, until it has handled `n` events. `joined`
/// runs once its group has assigned it partitions.
fn peer(topic: &str, n: usize, skip: usize, joined: impl FnOnce()) -> PeerResult {
    use std::io::BufRead;
    let sb = Sandbox::new();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/bench-peer/peer.js");
    let mut child = Command::new("node")
        .arg(&script)
        .args(["--brokers", &k::brokers(), "--topic", topic])
        .args(["--group", &format!("{}.peer", k::prefix())])
        .args(["--n", &n.to_string()])
        .args(["--skip", &skip.to_string()])
        .arg("--db")
        .arg(sb.root.path().join("peer.db"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the peer (node tools/bench-peer/peer.js; `make bench-peer` installs it)");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("read from the peer");
    assert_eq!(line.trim(), "joined", "the peer did not join its group");
    joined();
    line.clear();
    out.read_line(&mut line).expect("read from the peer");
    assert!(child.wait().unwrap().success(), "the peer failed");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the peer printed {line:?}: {e}"));
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let l = &v["latency_us"];
    PeerResult {
        handled: v["handled"].as_u64().unwrap_or(0),
        first_ms: f(&v["first_ms"]),
        last_ms: f(&v["last_ms"]),
        latency_us: [f(&l["p50"]), f(&l["p90"]), f(&l["p99"]), f(&l["max"])],
    }
}

/// `make bench-peer`: persona-bus at defaults and the plan's stack, on the
/// same backlog in the same run, then their latency at 1,000 events/s.
fn peer_comparison(n: usize, quick: bool) {
    UNCOMPRESSED.store(true, std::sync::atomic::Ordering::Relaxed);
    println!("records uncompressed (KafkaJS reads no LZ4 without a plugin)\n");
    let topic = backlog(n);
    let host = host_process(&topic, n, Policy::Fresh);
    let plan = peer(&topic, n, 0, || {});
    drop_topic_family(&topic);
    assert_eq!(plan.handled as usize, n, "the peer handled every event");
    println!(
        "{:<62} {:>10} {:>11}",
        "from the same backlog (2 handlers)", "events/s", "peak RSS"
    );
    println!(
        "{:<62} {:>10.0} {:>8.0} MB",
        "persona-bus run, default settings",
        host.rate(),
        host.peak_rss_mb
    );
    println!(
        "{:<62} {:>10.0} {:>11}",
        "plan's stack: KafkaJS 2.2.4 + better-sqlite3 12, batch commits",
        plan.rate(),
        "-"
    );
    println!(
        "  throughput ratio persona-bus / plan: {:.2}x\n",
        host.rate() / plan.rate()
    );
    let run = Duration::from_secs(if quick { 5 } else { 20 });
    let ours = latency(1_000, run);
    let rate = 1_000u32;
    let count = (rate as f64 * run.as_secs_f64()) as usize;
    let topic = format!("{}.events", k::prefix());
    // The topic exists before the peer subscribes (KafkaJS gives up on a
    // topic the broker is still creating); the generator starts once the
    // peer has joined.
    create_topic(&topic);
    let mut generator = None;
    let mut theirs = peer(&topic, LATENCY_WARM_UP + count, LATENCY_WARM_UP, || {
        let mut g = spawn_generator(&topic, LATENCY_WARM_UP + count, rate);
        go(&mut g);
        generator = Some(g);
    })
    .latency();
    // It handled the warm-up too; its latencies are not counted.
    theirs.events -= LATENCY_WARM_UP;
    if let Some(mut g) = generator {
        let _ = g.wait();
    }
    println!("{}", ours.line("persona-bus"));
    println!("{}", theirs.line("plan's stack"));
    println!(
        "  p99 ratio persona-bus / plan: {:.2} (p50 {:.2})",
        ours.p99 / theirs.p99,
        ours.p50 / theirs.p50
    );
}

/// The host on its embedded default (SQLite, Kafka off) with the
/// first-party handlers, idle after start-up: first with an empty
/// compiled-component cache (a first start: the JavaScript handler is
/// compiled), then restarted on the same data folder (cache warm).
fn idle_rss() {
    let sb = Sandbox::new();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/handlers");
    if !shipped.join("audit.wasm").exists() {
        eprintln!("idle RSS: build/handlers is empty (run `make handlers`); skipped");
        return;
    }
    let mut c = sb.config();
    c.handlers_dir = shipped;
    c.runtime.cache_dir = Some(sb.root.path().join("compile-cache"));
    for start in ["first start (compiles)", "restart (cache warm)"] {
        let host = HostProcess::start(&sb, &c);
        let t = Instant::now();
        while host.handlers_loaded() < 4 && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(3));
        let rss = host.memory_mb("VmRSS");
        let hwm = host.memory_mb("VmHWM");
        host.stop();
        println!(
            "idle RSS, embedded default with the first-party handlers (audit, router, counter, tally-js), {start}: {rss:.0} MB (peak {hwm:.0} MB)"
        );
    }
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
            Self::Uuid => persona_bus_tests::uuid_v4(),
        }
    }
}

/// The load generator: produces `n` events to `topic` as another device
/// would (rate 0 = as fast as it can), each stamped with its send time in
/// microseconds, over 64 projects. Waits for every acknowledgement.
fn load_generator(topic: &str, n: usize, rate: u32, ids: IdShape) {
    let compression = std::env::var("BENCH_COMPRESSION").unwrap_or_else(|_| "lz4".into());
    let p = k::producer_compressed(if rate == 0 { 20 } else { 0 }, &compression);
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
    let ten_fields = std::env::var("BENCH_PAYLOAD").is_ok_and(|v| v == "order10");
    let framing = std::env::var("BENCH_REGISTRY")
        .ok()
        .map(|url| Framing::new(&url, topic));
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
        let event_type = EVENT_TYPES[i % EVENT_TYPES.len()];
        let sent = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let payload = if ten_fields {
            persona_bus_tests::registry::order10(i, &id, project, &sent)
        } else {
            format!(r#"{{"n":{i}}}"#)
        };
        let (value, content_type) = match &framing {
            Some(f) => (f.encode(event_type, &payload), "application/avro"),
            None => (
                format!(
                    r#"{{"id":"{id}","project_id":"{project}","event_type":"{event_type}","source_type":"system","source_id":null,"target_persona_id":null,"payload":{payload},"headers":[],"schema_version":1,"chain_depth":0,"created_at":"{sent}"}}"#
                )
                .into_bytes(),
                "application/json",
            ),
        };
        let mut headers = OwnedHeaders::new_with_capacity(9);
        for (key, v) in [
            ("event-id", id.as_str()),
            ("event-type", event_type),
            ("schema-version", "1"),
            ("content-type", content_type),
            ("source", "system:"),
            ("chain-depth", "0"),
            ("origin-device", "load-generator"),
            ("project-id", project.as_str()),
            ("created-at", sent.as_str()),
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

/// The generator's Avro encoder: the schema of each event type, fetched
/// from the registry before the clock starts.
struct Framing {
    by_type: std::collections::HashMap<&'static str, (u32, persona_bus::schemas::avro::AvroSchema)>,
}

impl Framing {
    fn new(url: &str, topic: &str) -> Self {
        let r = persona_bus_tests::registry::client(url);
        let by_type = EVENT_TYPES
            .iter()
            .map(|t| {
                let reg = r
                    .version(&format!("{topic}-{t}"), "1")
                    .expect("schema registered");
                (
                    *t,
                    (
                        reg.id,
                        persona_bus::schemas::avro::AvroSchema::parse(&reg.schema).unwrap(),
                    ),
                )
            })
            .collect();
        Self { by_type }
    }

    fn encode(&self, event_type: &str, payload: &str) -> Vec<u8> {
        let (id, schema) = &self.by_type[event_type];
        persona_bus::schemas::frame_avro(*id, schema, &serde_json::from_str(payload).unwrap())
            .expect("payload fits")
    }
}

/// `--schemas`: the backlog run at defaults with schemas off (JSON
/// records) and on (Avro in the registry framing, checked on the way in),
/// the same 10-field payloads, the same registry (`make registry-up`).
fn schemas_comparison(n: usize) {
    let url = persona_bus_tests::registry::url();
    let r = persona_bus_tests::registry::client(&url);
    let prefix = k::prefix();
    let (json_topic, avro_topic) = (
        format!("{prefix}.json.events"),
        format!("{prefix}.avro.events"),
    );
    for topic in [&json_topic, &avro_topic] {
        for t in EVENT_TYPES {
            r.register(
                &format!("{topic}-{t}"),
                persona_bus_tests::registry::ORDER10_AVRO,
                "AVRO",
            )
            .expect("register (is `make registry-up` running?)");
        }
    }
    println!("schemas: a 10-field payload, Avro schema per event type in {url}\n");
    backlog_with(&json_topic, n, &[("BENCH_PAYLOAD", "order10".into())]);
    backlog_with(
        &avro_topic,
        n,
        &[
            ("BENCH_PAYLOAD", "order10".into()),
            ("BENCH_REGISTRY", url.clone()),
        ],
    );
    println!("{}", HostRun::header());
    let off = host_process_with(&json_topic, n, Policy::Fresh, |_| {});
    println!("{}   schemas off, JSON records", off.line());
    let checked = host_process_with(&json_topic, n, Policy::Fresh, |c| {
        c.schemas.enabled = true;
        c.schemas.registry_url = Some(url.clone());
        c.schemas.wire_format = persona_bus::config::WireFormat::Json;
    });
    println!("{}   schemas on, JSON records checked", checked.line());
    let on = host_process_with(&avro_topic, n, Policy::Fresh, |c| {
        c.schemas.enabled = true;
        c.schemas.registry_url = Some(url.clone());
    });
    println!("{}   schemas on, Avro records", on.line());
    println!(
        "\nAvro + validation on / off: throughput {:.2}, CPU per event {:.2}\nJSON + validation on / off: throughput {:.2}, CPU per event {:.2}",
        on.rate() / off.rate(),
        on.cpu_us_per_event / off.cpu_us_per_event,
        checked.rate() / off.rate(),
        checked.cpu_us_per_event / off.cpu_us_per_event
    );
}

/// `--tracing`: the backlog run at defaults with tracing off, then
/// exporting over OTLP to a real OpenTelemetry Collector (`make otelcol`)
/// with 1% and 100% of traces sampled; three rounds, interleaved so drift
/// of the machine hits every setting alike, compared by their medians.
/// Metrics are on in every run (they cannot be turned off, and the
/// benchmark reads `/metrics` every 100 ms). Records carry no
/// `traceparent`, so each dispatch starts a trace.
fn tracing_comparison(n: usize) {
    let topic = format!("{}.traced.events", k::prefix());
    backlog_with(&topic, n, &[]);
    let collector = persona_bus_tests::otel::Collector::start();
    println!(
        "tracing: OTLP/HTTP to a local collector at {}\n",
        collector.endpoint()
    );
    println!("{}", HostRun::header());
    let settings: [(&str, Option<f64>); 3] = [
        ("tracing off", None),
        ("tracing, 1% sampled", Some(0.01)),
        ("tracing, 100% sampled", Some(1.0)),
    ];
    let mut runs: Vec<Vec<HostRun>> = settings.iter().map(|_| Vec::new()).collect();
    for _round in 0..3 {
        for ((label, ratio), done) in settings.iter().zip(runs.iter_mut()) {
            let run = host_process_with(&topic, n, Policy::Fresh, |c| {
                if let Some(r) = ratio {
                    c.traces.endpoint = Some(collector.endpoint());
                    c.traces.sample_ratio = *r;
                }
            });
            println!("{}   {label}", run.line());
            done.push(run);
        }
    }
    let median = |runs: &[HostRun], f: &dyn Fn(&HostRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rate = |i: usize| median(&runs[i], &|r| r.rate());
    let cpu = |i: usize| median(&runs[i], &|r| r.cpu_us_per_event);
    println!(
        "\nmedians, tracing on / off: 1% sampled: throughput {:.2}, CPU per event {:.2}; 100% sampled: throughput {:.2}, CPU per event {:.2}\nspans the collector wrote: {}",
        rate(1) / rate(0),
        cpu(1) / cpu(0),
        rate(2) / rate(0),
        cpu(2) / cpu(0),
        collector.spans().len()
    );
}
