//! Shared helpers for the integration tests and benchmarks: compiled guest
//! paths, throwaway data and handler folders, a bus with test-friendly
//! settings, and waiting with a deadline.

pub mod cluster;
pub mod fuzz;
pub mod kafka;
pub mod oci;
pub mod otel;
pub mod registry;
pub mod service;

use persona_bus::config::Config;
use persona_bus::event::NewEvent;
use persona_bus::{Bus, Event};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Paths of the compiled guest components (built by `build.rs`).
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// A data folder and a handlers folder that vanish with the test.
pub struct Sandbox {
    pub root: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// `PERSONA_BUS_KEEP_TEST_DIRS=1` keeps the folder (and the host logs
    /// tests write into it) for a look after a failure.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("persona-bus-test")
            .disable_cleanup(std::env::var_os("PERSONA_BUS_KEEP_TEST_DIRS").is_some())
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(root.path().join("handlers")).unwrap();
        Self { root }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn handlers_dir(&self) -> PathBuf {
        self.root.path().join("handlers")
    }

    /// Installs `wasm` as handler `name` with a manifest made of `name`,
    /// version "1" and `body` (subscriptions, limits, config, ...).
    pub fn install(&self, name: &str, wasm: &str, body: &str) -> &Self {
        self.install_versioned(name, "1", wasm, body)
    }

    pub fn install_versioned(&self, name: &str, version: &str, wasm: &str, body: &str) -> &Self {
        let dir = self.handlers_dir();
        std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).expect("copy component");
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!("name = \"{name}\"\nversion = \"{version}\"\n{body}\n"),
        )
        .expect("write manifest");
        self
    }

    /// Installs (or replaces) a handler the way users are told to: copy to a
    /// hidden temporary name, then rename into place, component first.
    pub fn install_atomic(&self, name: &str, version: &str, wasm: &str, body: &str) -> &Self {
        let dir = self.handlers_dir();
        let put = |file: String, write: &dyn Fn(&std::path::Path)| {
            let tmp = dir.join(format!(".{file}.tmp"));
            write(&tmp);
            std::fs::rename(&tmp, dir.join(&file)).expect("rename into place");
        };
        put(format!("{name}.wasm"), &|p| {
            std::fs::copy(wasm, p).expect("copy component");
        });
        put(format!("{name}.toml"), &|p| {
            std::fs::write(
                p,
                format!("name = \"{name}\"\nversion = \"{version}\"\n{body}\n"),
            )
            .expect("write manifest")
        });
        self
    }

    /// Installs the `slow` test guest on `work` events: it sleeps
    /// `sleep_ms`, then counts the event (`count`, and `seen:<id>` per event).
    pub fn install_slow(&self, sleep_ms: u32) -> &Self {
        self.install(
            "slow",
            guests::SLOW,
            &format!("[[subscriptions]]\nevent_type = \"work\"\n[config]\nsleep_ms = {sleep_ms}"),
        )
    }

    /// Installs a first-party handler with the manifest it ships with.
    pub fn install_shipped(&self, name: &str, wasm: &str, manifest: &str) -> &Self {
        let dir = self.handlers_dir();
        std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).expect("copy component");
        std::fs::copy(manifest, dir.join(format!("{name}.toml"))).expect("copy manifest");
        self
    }

    /// Settings for tests: fast polling, this sandbox's folders.
    pub fn config(&self) -> Config {
        let mut c = Config {
            data_dir: self.data_dir(),
            handlers_dir: self.handlers_dir(),
            ..Config::default()
        };
        c.runtime.cache_dir = Some(guests::COMPILE_CACHE.into());
        c.poll.active_interval_ms = 10;
        c.poll.idle_interval_ms = 50;
        c
    }

    pub fn open(&self) -> Bus {
        Bus::open(self.config()).expect("open bus")
    }
}

/// The stored events of one type, newest first (up to 1,000).
pub fn events_of_type(bus: &Bus, event_type: &str) -> persona_bus::store::EventPage {
    bus.store()
        .list_events(&persona_bus::store::EventFilter {
            event_type: Some(event_type.into()),
            limit: 1_000,
            ..Default::default()
        })
        .expect("list events")
}

/// A minimal event of `event_type` from source type `system`.
pub fn event(event_type: &str) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        source_type: "system".into(),
        ..Default::default()
    }
}

/// Event `n` of `project` for the `rmw` guest (`{"n": n}`).
pub fn rmw_event(project: &str, n: u64) -> NewEvent {
    NewEvent {
        event_type: "rmw".into(),
        source_type: "system".into(),
        project_id: Some(project.into()),
        payload: Some(serde_json::json!({ "n": n })),
        ..Default::default()
    }
}

/// Polls `check` every 10 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Events of `store` whose status is `completed`.
pub fn completed(store: &persona_bus::store::Store) -> u64 {
    store
        .status_counts()
        .unwrap()
        .iter()
        .find(|(s, _)| *s == persona_bus::EventStatus::Completed)
        .map_or(0, |(_, n)| *n)
}

/// Waits until the event exists and is in a final state, and returns it
/// (an event consumed from Kafka has no row until a consumer writes it).
pub fn wait_final(bus: &Bus, id: &str, timeout: Duration) -> Event {
    let mut last = None;
    wait_for(timeout, &format!("event {id} to finish"), || {
        let e = match bus.store().event(id) {
            Ok(e) => e,
            Err(persona_bus::store::StoreError::EventNotFound(_)) => return false,
            Err(e) => panic!("event {id}: {e}"),
        };
        let done = e.status.is_final();
        last = Some(e);
        done
    });
    last.unwrap()
}

/// A memory field of `/proc/<process>/status` (`VmRSS`, `VmHWM`, ...) in
/// KiB; `process` is a pid or `self`. 0 when it cannot be read.
pub fn proc_status_kib(process: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of process `pid` so far (`/proc/PID/stat`, in
/// clock ticks of 1/100 s, Linux's USER_HZ). Zero when it cannot be read.
pub fn proc_cpu_time(pid: &str) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime: fields 14 and 15 of the line, 11 and 12 here.
    std::time::Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A random UUIDv4 string: the event id most producers send.
/// Waits until `events` events have reached a final status, counting the
/// bus's notices (`notices`, subscribed before the events were submitted):
/// polling the store would take the CPU the handling needs. Panics after
/// `limit`.
pub fn wait_resolved(
    bus: &Bus,
    notices: &mut tokio::sync::broadcast::Receiver<persona_bus::Notice>,
    events: u64,
    limit: Duration,
) {
    let started = Instant::now();
    let mut resolved = 0;
    while resolved < events {
        match notices.blocking_recv() {
            Ok(persona_bus::Notice::Resolved { status, .. }) if status.is_final() => resolved += 1,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed some: count from the store instead.
                resolved = bus
                    .store()
                    .status_counts()
                    .unwrap()
                    .iter()
                    .filter(|(s, _)| s.is_final())
                    .map(|(_, n)| *n)
                    .sum::<u64>();
            }
            Err(e) => panic!("notices ended: {e}"),
        }
        assert!(
            started.elapsed() < limit,
            "only {resolved} of {events} events handled after {limit:?}"
        );
    }
}

pub fn uuid_v4() -> String {
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

/// How fast this machine runs just now: the time one core takes for a
/// fixed piece of work (random reads and writes over 16 MiB, the kind of
/// work the host does: hashing, pointer chasing, cache misses). Benchmarks
/// print it beside their figures because a shared VM runs in stretches of
/// minutes whose speeds differ by 20-25%: a figure read with its probe
/// says which stretch it came from. Lower is faster.
pub fn speed_probe() -> Duration {
    const WORDS: usize = 2 << 20;
    let mut table = vec![0u64; WORDS];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    // Untimed: the table's pages are faulted in first.
    for (i, w) in table.iter_mut().enumerate() {
        *w = i as u64;
    }
    let started = Instant::now();
    for _ in 0..8_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x as usize) & (WORDS - 1);
        table[i] = table[i].wrapping_mul(31).wrapping_add(x);
    }
    std::hint::black_box(&table);
    started.elapsed()
}

/// A benchmark's `name N` argument, else `default`.
pub fn arg_number(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
        })
}

/// A benchmark's `name WORD` argument, else `default`.
pub fn arg_word<'a>(args: &'a [String], name: &str, default: &'a str) -> &'a str {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, String::as_str)
}

/// A handler's state value as text (None when unset).
pub fn state_text(store: &persona_bus::store::Store, handler: &str, key: &str) -> Option<String> {
    store
        .state_get(handler, key)
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

/// A handler's state value as a number (0 when unset).
pub fn state_number(store: &persona_bus::store::Store, handler: &str, key: &str) -> i64 {
    state_text(store, handler, key).map_or(0, |v| v.parse().unwrap())
}

/// How many times a benchmark repeats its throughput runs: `--rounds N`
/// among the arguments, else `default`.
///
/// One run on this kind of machine (a shared VM) can land in a slow stretch
/// and read a third low; the median of a few, printed with their range,
/// is what a reader can expect to reproduce.
pub fn rounds(args: &[String], default: usize) -> usize {
    args.iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|n| {
            n.parse()
                .ok()
                .filter(|&n: &usize| n > 0)
                .unwrap_or_else(|| panic!("--rounds takes a positive count, not {n:?}"))
        })
        .unwrap_or(default)
}

/// "median 41,230 events/s (3 rounds: 38,120-44,870, spread 18%)": the
/// median of `rates`, their range, and how far apart the ends are.
pub fn rate_summary(rates: &[f64]) -> String {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let Some((&low, &high)) = sorted.first().zip(sorted.last()) else {
        return "no runs".to_owned();
    };
    let median = median(&sorted);
    if sorted.len() == 1 {
        return format!("{} events/s (1 round)", thousands(median));
    }
    format!(
        "median {} events/s ({} rounds: {}-{}, spread {:.0}%)",
        thousands(median),
        sorted.len(),
        thousands(low),
        thousands(high),
        (high - low) / low * 100.0
    )
}

/// The middle of `sorted` (ascending), or the mean of the two middle
/// values; 0 for none.
pub fn median(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => 0.0,
        n if n.is_multiple_of(2) => (sorted[mid - 1] + sorted[mid]) / 2.0,
        _ => sorted[mid],
    }
}

/// 41230.4 -> "41,230".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The line that opens round `round` (from 0) of `rounds`, with the speed
/// probe it starts at: each round's figures compare with others taken at a
/// similar probe.
pub fn round_line(round: usize, rounds: usize) -> String {
    format!("round {} of {rounds}; {}", round + 1, speed_line())
}

/// [`speed_probe`] as benchmarks print it: the best of three, in ms.
pub fn speed_line() -> String {
    let best = (0..3).map(|_| speed_probe()).min().unwrap_or_default();
    format!(
        "machine speed probe: {:.0} ms (fixed work on one core; lower is faster; compare figures taken at similar probes)",
        best.as_secs_f64() * 1e3
    )
}

/// When a host whose data folder is `data_dir` started its first handler
/// run and wrote its last outcome, from its own record (polling it from
/// outside could only place them to within a poll).
pub fn handled_window(
    data_dir: &std::path::Path,
) -> (std::time::SystemTime, std::time::SystemTime) {
    let db = rusqlite::Connection::open(data_dir.join("bus.db")).expect("open the host's store");
    let time = |sql: &str| -> std::time::SystemTime {
        let text: String = db.query_row(sql, [], |r| r.get(0)).expect(sql);
        humantime::parse_rfc3339(&text).expect("an RFC 3339 time")
    };
    (
        time("SELECT min(started_at) FROM persona_runs"),
        time("SELECT max(processed_at) FROM persona_events"),
    )
}

/// `events` events of `event_type` over `projects` projects (`p0`, `p1`,
/// ...), payload `payload(i)`, with random UUID ids as real producers send.
pub fn uuid_backlog(
    events: u64,
    projects: u64,
    event_type: &str,
    payload: impl Fn(u64) -> serde_json::Value,
) -> Vec<Event> {
    let limits = persona_bus::event::EventLimits {
        max_payload_bytes: 4096,
    };
    (0..events)
        .map(|i| {
            let mut e = NewEvent {
                event_type: event_type.into(),
                source_type: "system".into(),
                project_id: Some(format!("p{}", i % projects)),
                payload: Some(payload(i)),
                ..Default::default()
            }
            .validate(limits, 0)
            .unwrap();
            e.id = uuid_v4();
            e
        })
        .collect()
}

/// Stores `backlog` in `bus` before it starts, starts it, waits until every
/// event is resolved, and checks that every one completed: events/s from
/// the start.
pub fn drain_backlog(bus: &Bus, backlog: Vec<Event>) -> f64 {
    let events = backlog.len() as u64;
    for chunk in backlog.chunks(5_000) {
        bus.store().insert_batch(chunk).unwrap();
    }
    drop(backlog);
    let mut notices = bus.subscribe();
    let started = Instant::now();
    bus.start().unwrap();
    wait_resolved(bus, &mut notices, events, Duration::from_secs(900));
    let rate = events as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        completed(bus.store()),
        events,
        "some events did not complete"
    );
    rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_gives_the_median_and_the_range() {
        assert_eq!(
            rate_summary(&[44_870.2, 38_120.0, 41_230.4]),
            "median 41,230 events/s (3 rounds: 38,120-44,870, spread 18%)"
        );
        assert_eq!(
            rate_summary(&[1_000.0, 3_000.0]),
            "median 2,000 events/s (2 rounds: 1,000-3,000, spread 200%)"
        );
        assert_eq!(rate_summary(&[999.6]), "1,000 events/s (1 round)");
        assert_eq!(median(&[1.0, 2.0, 4.0, 8.0]), 3.0);
        assert_eq!(median(&[4.44, 4.83, 13.22]), 4.83);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn rounds_come_from_the_arguments() {
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(rounds(&args("bench --throughput"), 3), 3);
        assert_eq!(rounds(&args("bench --rounds 5 --bench"), 3), 5);
        assert!(std::panic::catch_unwind(|| rounds(&args("bench --rounds 0"), 3)).is_err());
    }
}
