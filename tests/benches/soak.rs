//! Soak (`make soak`, minutes, not in CI): a host consuming from a private
//! broker while events are published at a steady rate; the broker is
//! killed with `kill -9` and restarted several times. Prints how many
//! events were published, handled, handled twice (must be 0) and lost
//! (must be 0), the breaker's transitions, and how long SQLite took to
//! take over after each kill (the plan: within 5 s).
//!
//! `cargo bench -p persona-bus-tests --bench soak -- [KILLS] [RATE]`

use persona_bus::BreakerState as State;
use persona_bus::event::NewEvent;
use persona_bus::{Bus, EventStatus};
use persona_bus_tests::kafka::{self as k, PrivateBroker};
use persona_bus_tests::{Sandbox, guests};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let kills: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(4);
    let rate: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let broker = PrivateBroker::start();
    let sb = Sandbox::new();
    sb.install(
        "slow",
        guests::SLOW,
        "[[subscriptions]]\nevent_type = \"work\"\n[config]\nsleep_ms = 0",
    );
    let mut c = sb.config();
    k::consuming(&mut c, &k::prefix());
    c.kafka.brokers = broker.brokers();
    c.kafka.breaker.open_secs = 5;
    let bus = Arc::new(Bus::open(c).expect("open bus"));
    bus.start().unwrap();
    println!(
        "soak: {kills} broker kills, publishing {rate} events/s, broker {}",
        broker.brokers()
    );
    let started = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bus, stop) = (bus.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            let every = Duration::from_micros(1_000_000 / rate);
            let mut next = Instant::now();
            while !stop.load(Ordering::Acquire) {
                let e = bus
                    .publish(NewEvent {
                        event_type: "work".into(),
                        source_type: "soak".into(),
                        project_id: Some(format!("p{}", ids.len() % 8)),
                        ..Default::default()
                    })
                    .expect("publish");
                ids.push(e.id);
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            ids
        })
    };
    let mut takeovers = Vec::new();
    for round in 1..=kills {
        std::thread::sleep(Duration::from_secs(8));
        // From the kill -9 (which returns once the broker no longer
        // answers): how long until the breaker hands the events to SQLite.
        let was_closed = bus.source().state() == State::Closed;
        let killed = Instant::now();
        broker.kill9();
        while bus.source().state() != State::Open && killed.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let takeover = killed.elapsed();
        if was_closed {
            takeovers.push(takeover);
        }
        println!(
            "[{:>6.1?}] round {round}: broker killed; SQLite in charge after {takeover:.2?}{}",
            started.elapsed(),
            if was_closed {
                ""
            } else {
                " (the breaker was still open from the last round)"
            }
        );
        std::thread::sleep(Duration::from_secs(6));
        broker.up();
        println!(
            "[{:>6.1?}] round {round}: broker restarted (breaker {})",
            started.elapsed(),
            bus.source().state().as_str()
        );
    }
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Release);
    let ids = publisher.join().unwrap();
    let store = bus.store().clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    while store.ledger_count("slow").unwrap() < ids.len() as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut handled = 0;
    let mut twice = 0;
    let mut lost = 0;
    for id in &ids {
        match store.state_counter("slow", &format!("seen:{id}")).unwrap() {
            0 => lost += 1,
            1 => handled += 1,
            _ => {
                handled += 1;
                twice += 1
            }
        }
        let e = store.event(id).unwrap();
        if e.status != EventStatus::Completed {
            lost += usize::from(store.state_counter("slow", &format!("seen:{id}")).unwrap() > 0);
        }
    }
    let status = bus.source().status();
    bus.shutdown();
    println!(
        "published {}, handled {handled}, duplicated {twice}, lost {lost}; breaker transitions {} (to open {}, half-open {}, closed {}); {:.0?}",
        ids.len(),
        status.transitions,
        bus.source().transition_counts()[1],
        bus.source().transition_counts()[2],
        bus.source().transition_counts()[0],
        started.elapsed()
    );
    if let Some(worst) = takeovers.iter().max() {
        println!(
            "SQLite takeover after a broker kill: worst {worst:.2?} over {} kills with the breaker closed (limit 5 s)",
            takeovers.len()
        );
    }
    assert_eq!((twice, lost), (0, 0), "the soak found duplicates or losses");
}
