//! Handler state behaves as if each project's events ran one after another
//! (`wit/bus.wit`, interface `state`): a read-modify-write guest (`rmw`)
//! reads, writes and reads again across events, for both sources and both
//! instance policies, through failures, a `kill -9`, a panicking call and a
//! full disk.

use crate::consume::completed;
use crate::host_binary;
use persona_bus::event::{EventLimits, NewEvent};
use persona_bus::store::Store;
use persona_bus::{Bus, Event, EventStatus};
use persona_bus_tests::kafka as k;
use persona_bus_tests::{Sandbox, guests, wait_for};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const PROJECTS: usize = 4;

/// The guest's chain hash (see `tests/guests/rmw`).
fn fnv(prev: &str, n: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prev.bytes().chain(*b":").chain(n.to_string().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The chain of `ns` applied in order.
fn chain_of(ns: impl IntoIterator<Item = u64>) -> String {
    ns.into_iter().fold(String::new(), |prev, n| fnv(&prev, n))
}

fn install(sb: &Sandbox, policy: &str, strict: bool, extra: &str) {
    sb.install(
        "rmw",
        guests::RMW,
        &format!(
            "[[subscriptions]]\nevent_type = \"rmw\"\n[instances]\npolicy = \"{policy}\"\n\
             [config]\nstrict = \"{strict}\"\n{extra}"
        ),
    );
}

/// Event `n` of `project`, with an optional failure mode.
fn rmw(project: &str, n: u64, fail: Option<&str>) -> NewEvent {
    let payload = match fail {
        Some(f) => serde_json::json!({ "n": n, "fail": f }),
        None => serde_json::json!({ "n": n }),
    };
    NewEvent {
        event_type: "rmw".into(),
        source_type: "system".into(),
        project_id: Some(project.into()),
        payload: Some(payload),
        ..Default::default()
    }
}

/// `per_project` events per project, interleaved: n = 1, 2, ... in each.
fn interleaved(per_project: u64) -> Vec<NewEvent> {
    (1..=per_project)
        .flat_map(|n| (0..PROJECTS).map(move |p| rmw(&format!("p{p}"), n, None)))
        .collect()
}

fn text(store: &Store, key: &str) -> Option<String> {
    store
        .state_get("rmw", key)
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

fn number(store: &Store, key: &str) -> i64 {
    text(store, key).map_or(0, |v| v.parse().unwrap())
}

/// The strict run's end state: every call read the value the one before
/// it wrote, and each project's state is the serial application of its
/// events 1..=per_project.
fn assert_serial(store: &Store, per_project: u64) {
    assert_eq!(number(store, "stale"), 0, "calls read a stale value");
    assert_eq!(number(store, "poison_seen"), 0);
    for p in 0..PROJECTS {
        assert_eq!(number(store, &format!("count:p{p}")), per_project as i64);
        assert_eq!(number(store, &format!("last:p{p}")), per_project as i64);
        assert_eq!(
            text(store, &format!("chain:p{p}")).as_deref(),
            Some(chain_of(1..=per_project).as_str()),
            "project p{p}"
        );
    }
    assert_eq!(
        number(store, "total"),
        (per_project * PROJECTS as u64) as i64
    );
}

fn embedded_run(policy: &str) {
    const PER_PROJECT: u64 = 600;
    let sb = Sandbox::new();
    install(&sb, policy, true, "");
    let bus = sb.open();
    bus.start().unwrap();
    // A backlog in batches, so lanes run far ahead of the commits.
    for chunk in interleaved(PER_PROJECT).chunks(200) {
        bus.publish_batch(chunk.to_vec()).unwrap();
    }
    let store = bus.store().clone();
    wait_for(Duration::from_secs(120), "every event completed", || {
        completed(&store) == PER_PROJECT * PROJECTS as u64
    });
    bus.shutdown();
    assert_serial(&store, PER_PROJECT);
}

#[test]
fn read_modify_write_is_serial_per_project_fresh_instances() {
    embedded_run("fresh");
}

#[test]
fn read_modify_write_is_serial_per_project_reused_instances() {
    embedded_run("reuse");
}

/// Events as another device would send them to the events topic, in order
/// per project (one partition each).
fn send_all(topic: &str, events: &[NewEvent]) -> Vec<Event> {
    let limits = EventLimits {
        max_payload_bytes: 4096,
    };
    let events: Vec<Event> = events
        .iter()
        .map(|e| e.clone().validate(limits, 0).unwrap())
        .collect();
    let p = k::producer(1);
    for e in &events {
        k::send(&p, topic, e, "device-elsewhere");
    }
    k::flush(&p);
    events
}

#[test]
#[ignore = "needs services: make test"]
fn read_modify_write_is_serial_per_partition_from_kafka() {
    const PER_PROJECT: u64 = 500;
    for policy in ["fresh", "reuse"] {
        let sb = Sandbox::new();
        install(&sb, policy, true, "");
        let prefix = k::prefix();
        let mut config = sb.config();
        k::consuming(&mut config, &prefix);
        let bus = Bus::open(config.clone()).unwrap();
        bus.start().unwrap();
        send_all(&config.kafka.topics.events.name, &interleaved(PER_PROJECT));
        let store = bus.store().clone();
        wait_for(
            Duration::from_secs(120),
            "every record consumed and handled",
            || completed(&store) == PER_PROJECT * PROJECTS as u64,
        );
        bus.shutdown();
        assert_serial(&store, PER_PROJECT);
        k::drop_topics(&prefix);
    }
}

/// Each project's completed `n`s in the order they were committed (the
/// execution rows' ids), from the store.
fn committed_order(store: &Store, events: &[Event]) -> HashMap<String, Vec<u64>> {
    let mut runs: Vec<(i64, String, u64)> = Vec::new();
    for e in events {
        let n: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        for x in store.executions(&e.id).unwrap() {
            if x.outcome == "completed" {
                runs.push((x.id, e.project_id.clone(), n["n"].as_u64().unwrap()));
            }
        }
    }
    runs.sort();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, project, n) in runs {
        order.entry(project).or_default().push(n);
    }
    order
}

#[test]
fn failed_calls_leave_no_trace_and_a_retry_starts_from_the_state_before_it() {
    let sb = Sandbox::new();
    install(
        &sb,
        "reuse",
        false,
        "[retry]\nmax_attempts = 3\nbackoff_ms = 50\n[limits]\ntimeout_ms = 300",
    );
    let bus = sb.open();
    bus.start().unwrap();
    // Per project: 60 events; a retry, a timeout and a reject among them,
    // each followed by more events of the project.
    let news: Vec<NewEvent> = (1..=60u64)
        .flat_map(|n| {
            (0..PROJECTS).map(move |p| {
                let fail = match (n, p) {
                    (10, _) => Some("retry"),
                    (20, 0 | 1) => Some("timeout"),
                    (30, _) => Some("reject"),
                    _ => None,
                };
                rmw(&format!("p{p}"), n, fail)
            })
        })
        .collect();
    let events = bus.publish_batch(news).unwrap();
    let store = bus.store().clone();
    wait_for(Duration::from_secs(60), "every event final", || {
        events
            .iter()
            .all(|e| store.event(&e.id).unwrap().status.is_final())
    });
    bus.shutdown();

    assert_eq!(
        number(&store, "poison_seen"),
        0,
        "a failed call's write was read"
    );
    let dead = events
        .iter()
        .filter(|e| store.event(&e.id).unwrap().status == EventStatus::DeadLetter)
        .count();
    assert_eq!(dead, PROJECTS, "the rejects, and nothing else");
    // The retried and timed-out events ran again and completed.
    for e in &events {
        let runs = store.executions(&e.id).unwrap();
        if e.payload.contains("retry") || e.payload.contains("timeout") {
            let outcomes: Vec<&str> = runs.iter().map(|r| r.outcome.as_str()).collect();
            assert_eq!(outcomes.last(), Some(&"completed"), "{outcomes:?}");
            assert!(outcomes.len() >= 2, "{outcomes:?}");
        }
    }
    let order = committed_order(&store, &events);
    for p in 0..PROJECTS {
        let project = format!("p{p}");
        let ns = &order[&project];
        assert_eq!(ns.len(), 59, "every event but the reject completed once");
        assert_eq!(number(&store, &format!("count:{project}")), 59);
        assert_eq!(
            text(&store, &format!("chain:{project}")).as_deref(),
            Some(chain_of(ns.iter().copied()).as_str()),
            "{project}: the state is the serial application of the completed events"
        );
    }
    assert_eq!(number(&store, "total"), 59 * PROJECTS as i64);
}

#[test]
fn a_panic_in_a_host_call_is_a_failed_run_and_the_lane_goes_on() {
    let sb = Sandbox::new();
    sb.install(
        "noop",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"job\"\n[retry]\nmax_attempts = 2\nbackoff_ms = 20",
    );
    let bus = sb.open();
    bus.set_native_handler(Some(Arc::new(|_, e: &Event| {
        if e.payload.contains("panic") {
            panic!("host import blew up on {}", e.id);
        }
        Ok(())
    })));
    bus.start().unwrap();
    let bad = bus
        .publish(NewEvent {
            payload: Some(serde_json::json!({ "panic": true })),
            project_id: Some("p".into()),
            ..persona_bus_tests::event("job")
        })
        .unwrap();
    let good = bus
        .publish(NewEvent {
            project_id: Some("p".into()),
            ..persona_bus_tests::event("job")
        })
        .unwrap();
    let done = persona_bus_tests::wait_final(&bus, &good.id, Duration::from_secs(10));
    assert_eq!(done.status, EventStatus::Completed, "the lane went on");
    let dead = persona_bus_tests::wait_final(&bus, &bad.id, Duration::from_secs(10));
    assert_eq!(
        dead.status,
        EventStatus::DeadLetter,
        "the retry policy applied"
    );
    let runs = bus.store().executions(&bad.id).unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in &runs {
        assert_eq!(r.outcome, "trap");
        let error = r.error.as_deref().unwrap();
        assert!(
            error.contains("the host panicked during the call: host import blew up"),
            "{error}"
        );
    }
    bus.shutdown();
}

#[test]
fn killed_host_commits_only_states_that_a_serial_run_reaches() {
    const PER_PROJECT: u64 = 500;
    let sb = Sandbox::new();
    install(&sb, "fresh", true, "");
    let config = sb.root.path().join("bus.toml");
    std::fs::write(&config, "[poll]\nbatch_size = 64\n").unwrap();
    let store = Store::open(&sb.data_dir()).unwrap();
    let limits = EventLimits {
        max_payload_bytes: 4096,
    };
    let events: Vec<Event> = interleaved(PER_PROJECT)
        .into_iter()
        .map(|e| e.validate(limits, 0).unwrap())
        .collect();
    store.insert_batch(&events).unwrap();
    let total = PER_PROJECT * PROJECTS as u64;

    let start = || crate::crash::start_host(&sb, &config);
    let mut host = start();
    wait_for(Duration::from_secs(60), "some events handled", || {
        number(&store, "total") >= 300
    });
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(completed(&store) < total, "the kill came too late");
    // What is committed is a state a serial run reaches: each project's
    // chain is that of its first `count` events.
    for p in 0..PROJECTS {
        let count = number(&store, &format!("count:p{p}")) as u64;
        assert_eq!(
            text(&store, &format!("chain:p{p}")).unwrap_or_default(),
            if count == 0 {
                String::new()
            } else {
                chain_of(1..=count)
            },
            "p{p} after the kill"
        );
    }

    let host = start();
    wait_for(
        Duration::from_secs(120),
        "every event after the restart",
        || completed(&store) == total,
    );
    host.terminate();
    assert_serial(&store, PER_PROJECT);
    for e in &events {
        let done = store
            .executions(&e.id)
            .unwrap()
            .iter()
            .filter(|x| x.outcome == "completed")
            .count();
        assert_eq!(done, 1, "event {} completed {done} times", e.id);
    }
}

/// A small file system of its own (tmpfs, so root only), unmounted when
/// dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(mib: u64) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("persona-bus-disk-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Self(dir))
    }

    /// Fills all but `leave_mib` with a file; returns its path.
    fn fill(&self, leave_mib: u64) -> std::path::PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 1 << 20];
        use std::io::Write;
        loop {
            let free = free_mib(&self.0);
            if free <= leave_mib {
                break;
            }
            let n = ((free - leave_mib) << 20).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n]).is_err() {
                break;
            }
        }
        f.sync_all().ok();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_mib(dir: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1M"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn small_disk_or_skip(mib: u64) -> Option<SmallDisk> {
    let disk = SmallDisk::mount(mib);
    if disk.is_none() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
    }
    disk
}

/// `POST /api/personas/events` of `event`: (status, Retry-After).
fn post(addr: &str, event: &NewEvent) -> (u16, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let body = serde_json::json!({
        "event_type": event.event_type,
        "source_type": event.source_type,
        "project_id": event.project_id,
        "payload": event.payload,
    });
    let r = agent
        .post(&format!("http://{addr}/api/personas/events"))
        .send_json(&body)
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), retry)
}

fn get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(&format!("http://{addr}{path}")).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_json().unwrap())
}

/// A host process on the sandbox with `toml` as its config; its address.
fn serve(sb: &Sandbox, toml: &str) -> (crate::Host, String) {
    let config = sb.root.path().join("bus.toml");
    let port = k::free_port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(&config, toml).unwrap();
    let host = crate::Host(
        Command::new(host_binary())
            .args(["--data-dir", sb.data_dir().to_str().unwrap()])
            .args(["--config", config.to_str().unwrap()])
            .args(["run", "--handlers", sb.handlers_dir().to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .env("PERSONA_BUS_HTTP_ADDR", &addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(30), "the API", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    (host, addr)
}

/// A sandbox whose data folder lives on `disk`.
fn sandbox_on(disk: &SmallDisk) -> Sandbox {
    let sb = Sandbox::new();
    std::fs::create_dir_all(disk.0.join("data")).unwrap();
    std::os::unix::fs::symlink(disk.0.join("data"), sb.data_dir()).unwrap_or_else(|_| {
        std::fs::remove_dir_all(sb.data_dir()).unwrap();
        std::os::unix::fs::symlink(disk.0.join("data"), sb.data_dir()).unwrap();
    });
    sb
}

#[test]
fn below_the_free_space_floor_publishes_get_507_and_an_alert_fires() {
    let Some(disk) = small_disk_or_skip(64) else {
        return;
    };
    let sb = sandbox_on(&disk);
    install(&sb, "fresh", false, "");
    let (_host, addr) = serve(
        &sb,
        "[store]\nmin_free_mb = 16\n[alerts]\ninterval_ms = 200\n",
    );
    assert_eq!(post(&addr, &rmw("p0", 1, None)).0, 201);
    let filler = disk.fill(8);
    wait_for(Duration::from_secs(5), "publishes refused", || {
        post(&addr, &rmw("p0", 2, None)).0 == 507
    });
    let (status, retry) = post(&addr, &rmw("p0", 2, None));
    assert_eq!((status, retry.as_deref()), (507, Some("5")));
    let (code, ready) = get_json(&addr, "/ready");
    assert_eq!(code, 503, "{ready}");
    let why = ready["sqlite_error"].as_str().unwrap();
    assert!(why.contains("store.min_free_mb = 16"), "{ready}");
    wait_for(Duration::from_secs(10), "the store-refusing alert", || {
        let (_, alerts) = get_json(&addr, "/api/personas/alerts");
        alerts.to_string().contains("store-refusing") && alerts.to_string().contains("firing")
    });
    std::fs::remove_file(filler).unwrap();
    wait_for(Duration::from_secs(5), "publishes taken again", || {
        post(&addr, &rmw("p0", 2, None)).0 == 201
    });
    let (code, ready) = get_json(&addr, "/ready");
    assert_eq!(code, 200, "{ready}");
}

#[test]
fn a_full_disk_keeps_outcomes_until_space_returns() {
    let Some(disk) = small_disk_or_skip(48) else {
        return;
    };
    let sb = sandbox_on(&disk);
    // No floor: SQLite itself runs out, for publishes and commits alike. A
    // slow handler that writes bulk keeps accepted events waiting, so
    // their commits meet the full disk too.
    install(
        &sb,
        "fresh",
        false,
        "sleep_ms = \"20\"\npad_bytes = \"4000\"",
    );
    let (_host, addr) = serve(&sb, "[store]\nmin_free_mb = 0\n");
    let filler = disk.fill(6);
    let payload = "x".repeat(3000);
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut refusals = std::collections::BTreeSet::new();
    for i in 0..20_000u64 {
        let mut e = rmw(&format!("p{}", i % PROJECTS as u64), i + 1, None);
        e.payload = Some(serde_json::json!({ "n": i + 1, "pad": payload }));
        match post(&addr, &e).0 {
            201 => accepted += 1,
            507 => refused += 1,
            other => panic!("publish answered {other}"),
        }
        if refused > 0 {
            let (code, ready) = get_json(&addr, "/ready");
            if code == 503 {
                for r in ready["store_refusals"].as_array().unwrap() {
                    refusals.insert(r["what"].as_str().unwrap().to_owned());
                }
            }
        }
        if refused >= 100 && refusals.contains("commit outcomes") {
            break;
        }
    }
    assert!(
        refused >= 100,
        "the disk never filled ({accepted} accepted)"
    );
    assert!(
        refusals.contains("commit outcomes"),
        "/ready never said the store refused the outcomes' commit: {refusals:?}"
    );
    let store = Store::open(&sb.data_dir()).unwrap();
    assert!(
        completed(&store) < accepted,
        "every outcome was committed before space ran out: nothing was kept"
    );
    std::fs::remove_file(filler).unwrap();
    wait_for(
        Duration::from_secs(30),
        "every accepted event completed once space returned",
        || completed(&store) == accepted,
    );
    // Each accepted event ran to completion once: the counters agree, and
    // no execution row says otherwise.
    assert_eq!(number(&store, "total") as u64, accepted);
    let runs: i64 = (0..PROJECTS)
        .map(|p| number(&store, &format!("count:p{p}")))
        .sum();
    assert_eq!(runs as u64, accepted);
    let check: String = rusqlite::Connection::open(sb.data_dir().join("bus.db"))
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
