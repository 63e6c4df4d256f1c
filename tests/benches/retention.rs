//! Retention soak (`make soak-retention`, 30 minutes by default, not in
//! CI): the embedded host under a steady publish rate with a short store
//! retention. Prints, once a minute, the database file, its WAL and free
//! pages, the process's RSS, the rows the store holds, and the longest gap
//! between two committed outcomes in that minute (a pruning step that held
//! the writer shows up there). The file and RSS must level off once
//! retention has caught up, and no gap may pass 100 ms.
//!
//! `cargo bench -p persona-bus-tests --bench retention -- [--minutes M]
//! [--rate EVENTS_PER_S] [--keep-minutes K]`

use persona_bus::Bus;
use persona_bus::bus::Notice;
use persona_bus::event::NewEvent;
use persona_bus_tests::{Sandbox, guests, proc_status_kib};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: f64) -> f64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let minutes = arg(&args, "--minutes", 30.0);
    let rate = arg(&args, "--rate", 400.0) as u64;
    let keep_minutes = arg(&args, "--keep-minutes", 3.0);

    // Long holds of the store's writer (commits, merges, checkpoints,
    // retention steps) are printed as they happen, to explain a gap.
    tracing_subscriber::fmt()
        .with_env_filter("persona_bus::slow=debug")
        .without_time()
        .init();
    let sb = Sandbox::new();
    // A handler that reads and writes state on every event, so ledger,
    // execution and state rows are written as in a real deployment.
    sb.install(
        "rmw",
        guests::RMW,
        "[[subscriptions]]\nevent_type = \"work\"\n[config]\nstrict = false",
    );
    let mut c = sb.config();
    let r = &mut c.store.retention;
    r.events_hours = keep_minutes / 60.0;
    r.executions_hours = keep_minutes / 60.0;
    r.dead_letters_hours = keep_minutes / 60.0;
    r.every_secs = 10;
    let bus = Arc::new(Bus::open(c).expect("open bus"));
    bus.start().unwrap();
    println!(
        "retention soak: {minutes} min at {rate} events/s, keeping {keep_minutes} min, a pass every 10 s"
    );

    // The longest gap between two committed outcomes, per minute.
    let handled = Arc::new(AtomicU64::new(0));
    let gap_us = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (handled, gap_us, stop) = (handled.clone(), gap_us.clone(), stop.clone());
        let mut notices = bus.subscribe();
        let began = Instant::now();
        std::thread::spawn(move || {
            let mut last: Option<Instant> = None;
            while !stop.load(Ordering::Acquire) {
                match notices.blocking_recv() {
                    Ok(Notice::Resolved { .. }) => {
                        let now = Instant::now();
                        if let Some(t) = last {
                            let gap = now.duration_since(t);
                            gap_us.fetch_max(gap.as_micros() as u64, Ordering::Relaxed);
                            if gap > Duration::from_millis(80) {
                                println!(
                                    "      gap of {:.1} ms at {:.2} min",
                                    gap.as_secs_f64() * 1000.0,
                                    began.elapsed().as_secs_f64() / 60.0
                                );
                            }
                        }
                        last = Some(now);
                        handled.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        })
    };
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (bus, stop, published) = (bus.clone(), stop.clone(), published.clone());
        std::thread::spawn(move || {
            let every = Duration::from_micros(1_000_000 / rate);
            let mut next = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                bus.publish(NewEvent {
                    event_type: "work".into(),
                    source_type: "soak".into(),
                    project_id: Some(format!("p{}", i % 16)),
                    payload: Some(serde_json::json!({ "n": i, "pad": "x".repeat(200) })),
                    ..Default::default()
                })
                .expect("publish");
                i += 1;
                published.store(i, Ordering::Relaxed);
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };

    println!(
        "{:>5} {:>10} {:>10} {:>9} {:>8} {:>7} {:>8} {:>7} {:>8} {:>9} {:>10}",
        "min",
        "published",
        "handled",
        "rows",
        "db MiB",
        "wal MiB",
        "free MiB",
        "RSS MiB",
        "gap ms",
        "pruned",
        "step ms"
    );
    let started = Instant::now();
    let mut rows_db_rss = Vec::new();
    let mut worst_gap_ms = 0.0f64;
    let minute = Duration::from_secs(60);
    let end = started + Duration::from_secs_f64(minutes * 60.0);
    let mut at = started;
    // The first minute's gap includes start-up (compiling the handler).
    gap_us.store(0, Ordering::Relaxed);
    while at < end {
        at += minute;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let m = bus.metrics();
        let size = bus.store().size().unwrap();
        let rows: u64 = bus
            .store()
            .status_counts()
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum();
        let rss_mib = proc_status_kib("self", "VmRSS:") as f64 / 1024.0;
        let gap_ms = gap_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        let mins = started.elapsed().as_secs_f64() / 60.0;
        if mins > 1.5 {
            worst_gap_ms = worst_gap_ms.max(gap_ms);
        }
        let pruned: u64 = m.pruned.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "{:>5.1} {:>10} {:>10} {:>9} {:>8.1} {:>7.1} {:>8.1} {:>7.1} {:>8.1} {:>9} {:>10.1}",
            mins,
            published.load(Ordering::Relaxed),
            handled.load(Ordering::Relaxed),
            rows,
            mib(size.file_bytes),
            mib(size.wal_bytes),
            mib(size.free_bytes),
            rss_mib,
            gap_ms,
            pruned,
            m.prune_step_max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        rows_db_rss.push((mins, rows, mib(size.file_bytes), rss_mib));
    }
    stop.store(true, Ordering::Release);
    publisher.join().unwrap();
    bus.shutdown();
    drop(watcher);

    // Levelled off: over the second half of the run, against its first
    // sample, how much the file and RSS still grew.
    let half: Vec<_> = rows_db_rss
        .iter()
        .filter(|(m, ..)| *m >= minutes / 2.0)
        .collect();
    if let (Some(first), Some(last)) = (half.first(), half.last()) {
        let max_db = half.iter().map(|s| s.2).fold(0.0, f64::max);
        let max_rss = half.iter().map(|s| s.3).fold(0.0, f64::max);
        println!(
            "second half ({:.0}-{:.0} min): rows {} -> {}, db {:.1} -> {:.1} MiB (max {:.1}), RSS {:.1} -> {:.1} MiB (max {:.1})",
            first.0, last.0, first.1, last.1, first.2, last.2, max_db, first.3, last.3, max_rss
        );
    }
    println!(
        "longest gap between committed outcomes after the first 1.5 min: {worst_gap_ms:.1} ms (must stay under 100 ms); longest retention step: {:.1} ms",
        bus.metrics().prune_step_max_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
}
