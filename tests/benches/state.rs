//! The cost of serial state per project: one project, a 100,000-event
//! backlog through the read-modify-write guest (`tests/guests/rmw`, strict:
//! each call reads the value the one before it wrote), from SQLite and from
//! Kafka, through the real host process.
//!
//! ```text
//! cargo bench -p persona-bus-tests --bench state -- [--events N] [--rounds N]
//!     [--host PATH]... [--source sqlite|kafka|both]
//! ```
//!
//! With several `--host` binaries (a build from before a change, copied
//! aside, and the current one) each round runs every binary in turn, so a
//! slow stretch of the machine falls on all of them; the summary gives each
//! one's median and range, and how many calls read a stale value (the
//! guest's `stale` counter: 0 when state is serial per project).

use persona_bus::event::{EventLimits, NewEvent};
use persona_bus::store::Store;
use persona_bus_tests::kafka as k;
use persona_bus_tests::{Sandbox, guests};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: u64 = value("--events").map_or(100_000, |v| v.parse().unwrap());
    let rounds = persona_bus_tests::rounds(&args, 3);
    let mut hosts: Vec<PathBuf> = args
        .windows(2)
        .filter(|w| w[0] == "--host")
        .map(|w| PathBuf::from(&w[1]))
        .collect();
    if hosts.is_empty() {
        hosts.push(env!("CARGO_BIN_EXE_persona-bus-host").into());
    }
    let source = value("--source").unwrap_or_else(|| "both".into());
    let mut sources = Vec::new();
    if source == "sqlite" || source == "both" {
        sources.push(Source::Sqlite);
    }
    if source == "kafka" || source == "both" {
        let probe = persona_bus::config::KafkaConfig {
            brokers: k::brokers(),
            ..Default::default()
        };
        if let Err(e) = persona_bus::kafka::probe(&probe, Duration::from_secs(5)) {
            eprintln!("the Kafka run needs the broker: run `make kafka-up` first ({e})");
            std::process::exit(1);
        }
        sources.push(Source::Kafka);
    }
    println!(
        "state benchmark: one project, {n} events through the read-modify-write guest (strict), {} round(s)",
        rounds
    );
    let events = backlog_events(n);
    let topic = sources.contains(&Source::Kafka).then(|| {
        let topic = format!("{}.events", k::prefix());
        let p = k::producer(5);
        let t = Instant::now();
        for e in &events {
            k::send(&p, &topic, e, "device-elsewhere");
        }
        k::flush(&p);
        println!(
            "backlog: {n} records on {topic} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        topic
    });
    let mut results: Vec<(Source, usize, Vec<f64>, u64)> = Vec::new();
    for round in 0..rounds {
        println!("{}", persona_bus_tests::round_line(round, rounds));
        for &source in &sources {
            for (i, host) in hosts.iter().enumerate() {
                let run = run(host, source, &events, topic.as_deref());
                println!(
                    "  {:<6} {:<60} {:>8.0} events/s  stale reads {}",
                    source.name(),
                    host.display().to_string(),
                    run.rate,
                    run.stale
                );
                match results.iter_mut().find(|r| r.0 == source && r.1 == i) {
                    Some(r) => {
                        r.2.push(run.rate);
                        r.3 += run.stale;
                    }
                    None => results.push((source, i, vec![run.rate], run.stale)),
                }
            }
        }
    }
    println!("\nsummary (events/s: median, range of the rounds)");
    for (source, i, rates, stale) in results {
        println!(
            "  {:<6} {:<60} {}  stale reads {stale}",
            source.name(),
            hosts[i].display().to_string(),
            persona_bus_tests::rate_summary(&rates)
        );
    }
    if let Some(topic) = topic
        && let Some((prefix, _)) = topic.split_once('.')
    {
        k::drop_topics(prefix);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Sqlite,
    Kafka,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Sqlite => "sqlite",
            Source::Kafka => "kafka",
        }
    }
}

/// n = 1..=count in project `p0`, as the guest's strict mode expects, with
/// random UUIDs as ids (what real producers send).
fn backlog_events(count: u64) -> Vec<persona_bus::Event> {
    (1..=count)
        .map(|n| {
            let mut e = NewEvent {
                event_type: "rmw".into(),
                source_type: "system".into(),
                project_id: Some("p0".into()),
                payload: Some(serde_json::json!({ "n": n })),
                ..Default::default()
            }
            .validate(
                EventLimits {
                    max_payload_bytes: 4096,
                },
                0,
            )
            .unwrap();
            e.id = persona_bus_tests::uuid_v4();
            e
        })
        .collect()
}

struct Run {
    rate: f64,
    stale: u64,
}

/// One host process over the backlog: events/s from its first handler run
/// to its last outcome, as its own data file records them.
fn run(host: &PathBuf, source: Source, events: &[persona_bus::Event], topic: Option<&str>) -> Run {
    let sb = Sandbox::new();
    sb.install(
        "rmw",
        guests::RMW,
        "[[subscriptions]]\nevent_type = \"rmw\"\n[config]\nstrict = \"true\"",
    );
    // Only settings every build of the host knows, so that a binary from
    // before a change reads them too.
    let prefix = k::prefix();
    let mut toml = format!(
        "[runtime]\ncache_dir = {:?}\n[poll]\nactive_interval_ms = 10\nidle_interval_ms = 50\n",
        guests::COMPILE_CACHE
    );
    let mut env: Vec<(&str, String)> = Vec::new();
    match source {
        Source::Sqlite => {
            // Stored as another process would, before the host starts.
            Store::open(&sb.data_dir())
                .unwrap()
                .insert_batch(events)
                .unwrap();
        }
        Source::Kafka => {
            env = vec![
                ("KAFKA_ENABLED", "true".into()),
                ("KAFKA_DUAL_WRITE", "false".into()),
                ("KAFKA_BROKERS", k::brokers()),
                ("KAFKA_CLIENT_ID", format!("device-{prefix}")),
                ("KAFKA_CONSUMER_GROUP", format!("{prefix}.processor")),
                ("KAFKA_AUTO_OFFSET_RESET", "earliest".into()),
            ];
            toml += &format!(
                "[kafka]\naudit_group = \"{prefix}.audit\"\nwebhook_group = \"{prefix}.webhooks\"\n\
                 [kafka.topics.events]\nname = \"{}\"\nretention_hours = 1\n",
                topic.unwrap()
            );
            for t in ["webhooks", "actions", "executions", "dlq"] {
                toml +=
                    &format!("[kafka.topics.{t}]\nname = \"{prefix}.{t}\"\nretention_hours = 1\n");
            }
        }
    }
    let config = sb.root.path().join("bench.toml");
    std::fs::write(&config, toml).unwrap();
    let _ = Command::new("sync").status();
    let mut child = Host(
        Command::new(host)
            .envs(env)
            .env("PERSONA_BUS_HTTP_ADDR", "127.0.0.1:0")
            .env_remove("RUST_BACKTRACE")
            .arg("--data-dir")
            .arg(sb.data_dir())
            .arg("--config")
            .arg(&config)
            .arg("run")
            .arg("--handlers")
            .arg(sb.handlers_dir())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(sb.root.path().join("host.log")).unwrap())
            .spawn()
            .expect("start the host"),
    );
    let store = Store::open(&sb.data_dir()).unwrap();
    let want = events.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = store
            .state_get("rmw", "total")
            .unwrap()
            .map_or(0, |v| String::from_utf8(v).unwrap().parse::<u64>().unwrap());
        if done >= want {
            break;
        }
        if Instant::now() >= deadline || child.0.try_wait().unwrap().is_some() {
            let log = std::fs::read_to_string(sb.root.path().join("host.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "the host handled {done} of {want} events; its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").arg(child.0.id().to_string()).status();
    let _ = child.0.wait();
    let (first, last) = persona_bus_tests::handled_window(&sb.data_dir());
    let window = last.duration_since(first).unwrap();
    let stale = store
        .state_get("rmw", "stale")
        .unwrap()
        .map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
    if let Source::Kafka = source {
        k::drop_topics(&prefix);
    }
    Run {
        rate: want as f64 / window.as_secs_f64(),
        stale,
    }
}

/// Killed when dropped, so a failed run leaves no host behind.
struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
