//! HTTP load benchmark (`make bench-http`, part of `make bench`):
//! `POST /api/personas/events` from a separate load-generating process
//! (this binary re-executed as `http --load URL SECONDS CONNECTIONS`, with
//! keep-alive connections, one thread each), while the host keeps handling
//! the published events with a WASM handler. Prints requests/s, latency
//! percentiles, and how many of the published events were handled.

use hdrhistogram::Histogram;
use persona_bus::Bus;
use persona_bus_tests::{Sandbox, guests};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--load") {
        return load(
            &args[i + 1],
            args[i + 2].parse().unwrap(),
            args[i + 3].parse().unwrap(),
        );
    }
    let quick = args.iter().any(|a| a == "--quick");
    let seconds = if quick { 3 } else { 10 };
    println!(
        "persona-bus HTTP benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let wrk = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok();
    for connections in [16, 64] {
        run(seconds, connections, Generator::Ureq);
        if wrk {
            run(seconds, connections, Generator::Wrk);
        }
    }
    if !wrk {
        println!(
            "(wrk not found: `make bench-http` installs Debian's wrk, a leaner load generator)"
        );
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Generator {
    /// This binary, one blocking keep-alive client per connection.
    Ureq,
    /// Debian's `wrk` (event loop, one thread): costs the shared cores less.
    Wrk,
}

fn run(seconds: u64, connections: usize, generator: Generator) {
    let sb = Sandbox::new();
    sb.install(
        "noop",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"*\"\n[instances]\npolicy = \"reuse\"",
    );
    let bus = Arc::new(Bus::open(sb.config()).expect("open bus"));
    bus.start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(persona_bus::api::bind("127.0.0.1:0")).unwrap();
    let url = format!(
        "http://{}/api/personas/events",
        listener.local_addr().unwrap()
    );
    rt.spawn(persona_bus::api::serve(
        bus.clone(),
        listener,
        std::future::pending(),
    ));
    let report = match generator {
        Generator::Ureq => {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--load",
                    &url,
                    &seconds.to_string(),
                    &connections.to_string(),
                ])
                .output()
                .expect("run the load generator");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Generator::Wrk => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/http/post-event.lua");
            let out = std::process::Command::new("wrk")
                .args([
                    "-t1",
                    &format!("-c{connections}"),
                    &format!("-d{seconds}s"),
                    "--latency",
                    "-s",
                    script,
                    &url,
                ])
                .output()
                .expect("run wrk");
            summarize_wrk(&String::from_utf8_lossy(&out.stdout))
        }
    };
    let report = format!(
        "{} {}",
        if generator == Generator::Wrk {
            "wrk: "
        } else {
            "ureq:"
        },
        report.trim()
    );
    let published = bus
        .metrics()
        .published
        .load(std::sync::atomic::Ordering::Relaxed);
    let handled_during = bus.metrics().resolved_total();
    // Then let the handler catch up, to show nothing was dropped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while bus.metrics().resolved_total() < published && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{connections:>3} connections: {} | published {published}, handled during the run {handled_during}, all handled after {:.1?}",
        report.trim(),
        Instant::now().saturating_duration_since(deadline - Duration::from_secs(60))
    );
    bus.shutdown();
}

/// The load generator: `connections` threads, each with its own keep-alive
/// connection, posting events back to back for `seconds`.
fn load(url: &str, seconds: u64, connections: usize) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|t| {
            let url = url.to_owned();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .max_idle_connections_per_host(1)
                    .build()
                    .into();
                let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
                let mut errors = 0u64;
                let mut i = 0u64;
                while Instant::now() < until {
                    let body = format!(
                        r#"{{"event_type":"task_created","source_type":"load","project_id":"p{}","payload":{{"n":{i}}}}}"#,
                        t % 16
                    );
                    let started = Instant::now();
                    match agent.post(&url).header("content-type", "application/json").send(&body) {
                        Ok(mut r) if r.status() == 201 => {
                            let _ = r.body_mut().read_to_vec();
                        }
                        _ => errors += 1,
                    }
                    hist.record(started.elapsed().as_micros().max(1) as u64).unwrap();
                    i += 1;
                }
                (hist, errors)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let mut errors = 0;
    for t in threads {
        let (h, e) = t.join().unwrap();
        all.add(h).unwrap();
        errors += e;
    }
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} requests, {errors} errors",
        all.len() as f64 / seconds as f64,
        ms(0.5),
        ms(0.99),
        all.max() as f64 / 1000.0,
        all.len()
    );
}

/// The figures of wrk's report on one line.
fn summarize_wrk(out: &str) -> String {
    let find = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("?")
            .to_owned()
    };
    let non2xx = out
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map_or("0".into(), |l| {
            l.split_whitespace().last().unwrap_or("?").to_owned()
        });
    format!(
        "{} requests/s, p50 {}, p99 {}, non-2xx {non2xx}",
        find("Requests/sec:"),
        find("50%"),
        find("99%")
    )
}
