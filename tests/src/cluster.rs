//! The leader-failover scenario on the three-broker cluster
//! (`make kafka-up-cluster`, 127.0.0.1:9192-9194), shared by the test
//! (`tests/all/cluster.rs`) and the benchmark (`--leader-kill`): under a
//! steady publisher the broker leading most of the events topic's
//! partitions is killed (-9) and restarted.

use crate::kafka as k;
use crate::{Sandbox, wait_for};
use persona_bus::SourceStatus;
use persona_bus::{Bus, Event, NewEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CLUSTER: &str = "127.0.0.1:9192,127.0.0.1:9193,127.0.0.1:9194";

pub fn kafka_sh(args: &[&str]) -> String {
    let out = Command::new(k::KAFKA_SH)
        .args(args)
        .output()
        .expect("run kafka.sh");
    assert!(
        out.status.success(),
        "kafka.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Node `n`'s client port (scripts/kafka.sh: 9192-9194).
fn node_port(n: i32) -> u16 {
    9191 + n as u16
}

/// Restarts a killed node when dropped, so a failing test leaves the
/// cluster whole for the next run.
struct Killed(u32);

impl Drop for Killed {
    fn drop(&mut self) {
        // No assertion here: a panic while the scenario's own panic unwinds
        // would abort the whole test binary. A node that did not come back
        // fails the next run's `leaders` wait, naming it.
        let _ = Command::new(k::KAFKA_SH)
            .args(["cluster-start", &self.0.to_string()])
            .output();
    }
}

/// Partition -> leader (node id) of `topic`, once every partition has one.
pub fn leaders(topic: &str) -> HashMap<i32, i32> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", CLUSTER)
        .create()
        .unwrap();
    let mut found = HashMap::new();
    wait_for(
        Duration::from_secs(60),
        "leaders for every partition",
        || {
            let Ok(m) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
                return false;
            };
            let Some(t) = m.topics().iter().find(|t| t.name() == topic) else {
                return false;
            };
            found = t
                .partitions()
                .iter()
                .map(|p| (p.id(), p.leader()))
                .collect();
            !found.is_empty() && found.values().all(|l| *l > 0)
        },
    );
    found
}

/// What the scenario saw.
pub struct LeaderKill {
    /// Its data folder (the host is stopped).
    pub sandbox: Sandbox,
    pub victim: i32,
    /// Partitions of the events topic the victim led, of `partitions`.
    pub led: usize,
    pub partitions: usize,
    pub restarted_after: Duration,
    pub published: Vec<Event>,
    /// The widest gap between consecutive outcomes (the store's times).
    pub longest_pause: Duration,
    pub source: SourceStatus,
    pub leaders_after: HashMap<i32, i32>,
}

impl LeaderKill {
    pub fn line(&self) -> String {
        format!(
            "leader kill: node {} led {} of {} partitions of the events topic; killed at 5 s, restarted at {:.1} s; \
             {} events; longest pause in handling {:.2} s; breaker transitions {} ({:?}); leaders after: {:?}",
            self.victim,
            self.led,
            self.partitions,
            self.restarted_after.as_secs_f64(),
            self.published.len(),
            self.longest_pause.as_secs_f64(),
            self.source.transitions,
            self.source.history,
            self.leaders_after,
        )
    }
}

/// Runs it: a host consuming from the cluster (replication factor 3), 100
/// events/s for 20 s, the leader killed at 5 s and restarted at 12 s; waits
/// until every event is handled.
pub fn leader_kill() -> LeaderKill {
    let sb = Sandbox::new();
    sb.install_slow(0);
    let prefix = k::prefix();
    let mut config = sb.config();
    k::consuming(&mut config, &prefix);
    config.kafka.brokers = CLUSTER.into();
    config.kafka.replication_factor = 3;
    let events_topic = config.kafka.topics.events.name.clone();
    let bus = Arc::new(Bus::open(config).unwrap());
    bus.start().unwrap();

    let before = leaders(&events_topic);
    let mut led: HashMap<i32, usize> = HashMap::new();
    for node in before.values() {
        *led.entry(*node).or_default() += 1;
    }
    let (&victim, &partitions) = led.iter().max_by_key(|(_, n)| **n).unwrap();
    let pid = kafka_sh(&["cluster-pid", &victim.to_string()]);

    // A steady publisher: 100 events/s for 20 s, across 6 projects.
    const RATE: u64 = 100;
    const SECONDS: u64 = 20;
    let publisher = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut published: Vec<Event> = Vec::new();
            for i in 0..RATE * SECONDS {
                let due = started + Duration::from_micros(i * 1_000_000 / RATE);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                published.push(
                    bus.publish(NewEvent {
                        event_type: "work".into(),
                        source_type: "system".into(),
                        project_id: Some(format!("p{}", i % 6)),
                        ..Default::default()
                    })
                    .unwrap(),
                );
            }
            published
        })
    };

    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    k::kill9(&pid, node_port(victim));
    let killed = Killed(victim as u32);
    std::thread::sleep(Duration::from_secs(7));
    drop(killed); // restarts it (a few seconds)
    let restarted_after = started.elapsed();
    let published = publisher.join().unwrap();
    wait_for(
        Duration::from_secs(120),
        "every event handled after the restart",
        || bus.store().state_counter("slow", "count").unwrap() >= published.len() as i64,
    );
    let source = bus.source().status();
    bus.shutdown();

    // The longest pause in handling: the widest gap between consecutive
    // outcomes, from the times the store recorded (not from this thread).
    let mut done: Vec<std::time::SystemTime> = published
        .iter()
        .map(|e| {
            let at = bus
                .store()
                .event(&e.id)
                .unwrap()
                .processed_at
                .expect("final");
            humantime::parse_rfc3339(&at).unwrap()
        })
        .collect();
    done.sort();
    let longest = done
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .max()
        .unwrap_or_default();
    let leaders_after = leaders(&events_topic);
    LeaderKill {
        sandbox: sb,
        victim,
        led: partitions,
        partitions: before.len(),
        restarted_after,
        published,
        longest_pause: longest,
        source,
        leaders_after,
    }
}
