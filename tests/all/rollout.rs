//! Changing a handler without fear (issue 38, parts 1 and 2): a shadow
//! version beside the live one, promote and discard, and canaries by
//! share with automatic rollback. With the real compiled `rmw` guest (it
//! reads, writes and reads again across events) and the hostile ones.

use crate::consume::spawn_host;
use crate::run_in;
use persona_bus::Bus;
use persona_bus::event::{EventLimits, NewEvent};
use persona_bus::store::Store;
use persona_bus_tests::{Sandbox, guests, state_number, state_text, wait_for};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const LIVE: &str = "[[subscriptions]]\nevent_type = \"rmw\"\n[config]\nstrict = \"true\"\n";

/// Writes `<stem>.wasm` (a copy of `wasm`) and `<stem>.toml` (`manifest`)
/// into the handlers folder, the manifest last and by rename.
fn put(sb: &Sandbox, stem: &str, wasm: &str, manifest: &str) {
    let dir = sb.handlers_dir();
    std::fs::copy(wasm, dir.join(format!("{stem}.wasm"))).unwrap();
    let tmp = dir.join(format!(".{stem}.toml.tmp"));
    std::fs::write(&tmp, manifest).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{stem}.toml"))).unwrap();
}

fn shadow_manifest(name: &str, version: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"{version}\"\n[rollout]\nshadow = true\n\
         [[subscriptions]]\nevent_type = \"rmw\"\n{extra}\n"
    )
}

/// Event `n` of `project` for the rmw guest.
fn rmw(project: &str, n: u64) -> NewEvent {
    persona_bus_tests::rmw_event(project, n)
}

/// n = 1..=per in each of `projects` projects, interleaved.
fn interleaved(projects: usize, per: u64) -> Vec<NewEvent> {
    (1..=per)
        .flat_map(|n| (0..projects).map(move |p| rmw(&format!("p{p}"), n)))
        .collect()
}

/// Runs of `handler` (or of a replay's ledger name) on event `id`.
fn runs_of(store: &Store, id: &str, handler: &str) -> usize {
    store
        .executions(id)
        .unwrap()
        .into_iter()
        .filter(|x| x.handler == handler)
        .count()
}

/// A replay recorded as `ledger` ran each event of `range` once, left the
/// other handler alone on them, and ran none of `outside`.
fn assert_replayed<'a>(
    store: &Store,
    ledger: &str,
    range: &[String],
    outside: impl Iterator<Item = &'a String>,
) {
    for id in range {
        assert_eq!(runs_of(store, id, ledger), 1, "{id} in the range");
        assert_eq!(
            runs_of(store, id, "other"),
            1,
            "the other handler ran again"
        );
    }
    for id in outside {
        assert_eq!(runs_of(store, id, ledger), 0, "{id} outside the range");
    }
}

fn completed(store: &Store) -> u64 {
    persona_bus_tests::completed(store)
}

/// Runs the strict rmw guest on 4 projects x `per` events, optionally
/// with a shadow beside it; returns the state it left and the bus.
fn strict_run(shadow: Option<&str>, per: u64) -> (Sandbox, Bus, Vec<(String, Vec<u8>)>) {
    let sb = Sandbox::new();
    sb.install("rmw", guests::RMW, LIVE);
    if let Some(extra) = shadow {
        put(
            &sb,
            "rmw.shadow",
            guests::RMW,
            &shadow_manifest("rmw", "2", extra),
        );
    }
    let bus = sb.open();
    bus.start().unwrap();
    if shadow.is_some() {
        assert_eq!(bus.registry().snapshot().candidates.len(), 1);
    }
    for chunk in interleaved(4, per).chunks(100) {
        bus.publish_batch(chunk.to_vec()).unwrap();
    }
    let store = bus.store().clone();
    wait_for(Duration::from_secs(60), "every event completed", || {
        completed(&store) == 4 * per
    });
    let state = store.state_entries("rmw").unwrap();
    (sb, bus, state)
}

#[test]
fn a_shadow_differs_on_exactly_its_subset_and_commits_nothing() {
    const PER: u64 = 50;
    let (_plain_sb, plain_bus, plain) = strict_run(None, PER);
    plain_bus.shutdown();
    // The shadow writes `last` off by 1000 whenever 7 divides n.
    let (sb, bus, shadowed) =
        strict_run(Some("[config]\nstrict = \"true\"\nskew_every = \"7\""), PER);
    let store = bus.store().clone();
    wait_for(
        Duration::from_secs(30),
        "the shadow ran every event",
        || {
            store
                .shadow_tallies("rmw")
                .unwrap()
                .iter()
                .map(|t| t.agreed + t.differed)
                .sum::<u64>()
                == 4 * PER
        },
    );
    let ids_with = |pred: &dyn Fn(u64) -> bool| -> BTreeSet<String> {
        persona_bus_tests::events_of_type(&bus, "rmw")
            .events
            .iter()
            .filter(|e| {
                let n = serde_json::from_str::<serde_json::Value>(&e.payload).unwrap()["n"]
                    .as_u64()
                    .unwrap();
                pred(n)
            })
            .map(|e| e.id.clone())
            .collect()
    };
    let expected = ids_with(&|n| n % 7 == 0);
    assert_eq!(expected.len(), 4 * 7);

    // The live version's state is what it is without a shadow: nothing of
    // the shadow's writes reached the store.
    assert_eq!(shadowed, plain, "the shadow changed the live state");
    assert_eq!(state_number(&store, "rmw", "stale"), 0);
    for p in 0..4 {
        assert_eq!(
            state_text(&store, "rmw", &format!("last:p{p}")).as_deref(),
            Some("50")
        );
    }
    // Every run recorded is the live version's, once per event.
    for id in ids_with(&|_| true) {
        let runs = store.executions(&id).unwrap();
        assert_eq!(runs.len(), 1, "{id}: {runs:?}");
        assert_eq!(runs[0].handler_version, "1");
    }
    bus.shutdown();

    let dir = sb.data_dir();
    let (ok, out, err) = run_in(
        &dir,
        &["handlers", "diff", "rmw", "--json", "--examples", "1000"],
        &[],
    );
    assert!(ok, "{out}{err}");
    let diff: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = &diff["tallies"][0];
    assert_eq!(t["agreed"], 4 * PER - 28, "{diff:#}");
    assert_eq!(t["differed"], 28);
    assert_eq!(t["dropped"], 0);
    assert_eq!(
        (t["shadow_version"].as_str(), t["live_version"].as_str()),
        (Some("2"), Some("1"))
    );
    let reported: BTreeSet<String> = diff["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["differs"], "state", "{d:#}");
            d["event_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(reported, expected);
    // The text form names the counts and shows how an event differed.
    let (ok, out, _) = run_in(&dir, &["handlers", "diff", "rmw", "--examples", "1"], &[]);
    assert!(ok);
    assert!(
        out.contains("172 agreed") && out.contains("28 differed"),
        "{out}"
    );
    assert!(out.contains("\"last:p") && out.contains("100"), "{out}");
}

#[test]
fn hostile_shadows_never_hold_up_their_live_versions() {
    const EVENTS: u64 = 120;
    let sb = Sandbox::new();
    let limits = "[limits]\ntimeout_ms = 300\nmemory_mb = 16\n";
    // Four live handlers on the same events, each with a hostile shadow.
    let shadows = [
        ("ha", guests::LOOP, String::new()),
        (
            "hb",
            guests::HOSTILE,
            "[config]\nmode = \"sleep\"\nsleep_ms = \"2000\"".to_owned(),
        ),
        ("hc", guests::MEMBOMB, String::new()),
        (
            "hd",
            guests::HOSTILE,
            "[config]\nmode = \"logflood\"".to_owned(),
        ),
    ];
    for (name, wasm, extra) in &shadows {
        sb.install(
            name,
            guests::RMW,
            "[[subscriptions]]\nevent_type = \"rmw\"\n[config]\nstrict = \"true\"\n",
        );
        put(
            &sb,
            &format!("{name}.shadow"),
            wasm,
            &format!("{}{limits}{extra}", shadow_manifest(name, "2", "")),
        );
    }
    let bus = sb.open();
    bus.start().unwrap();
    assert_eq!(bus.registry().snapshot().candidates.len(), 4);
    let started = Instant::now();
    let events: Vec<NewEvent> = (1..=EVENTS).map(|n| rmw("p0", n)).collect();
    bus.publish_batch(events).unwrap();
    let store = bus.store().clone();
    wait_for(Duration::from_secs(60), "every live run completed", || {
        completed(&store) == EVENTS
    });
    let took = started.elapsed();
    // Serially, the shadows alone would take at least 120 x 300 ms each.
    assert!(
        took < Duration::from_secs(20),
        "the live versions took {took:?}"
    );
    for (name, ..) in &shadows {
        assert_eq!(state_number(&store, name, "stale"), 0, "{name}");
        assert_eq!(state_number(&store, name, "total"), EVENTS as i64, "{name}");
    }
    // The shadows did run, failed, and were counted, not committed.
    wait_for(Duration::from_secs(30), "the shadows' tallies", || {
        shadows.iter().all(|(name, ..)| {
            store
                .shadow_tallies(name)
                .unwrap()
                .iter()
                .any(|t| t.differed + t.dropped > 0)
        })
    });
    for (name, ..) in &shadows {
        let t = &store.shadow_tallies(name).unwrap()[0];
        assert_eq!(t.agreed, 0, "{name}: {t:?}");
        let diffs = store.shadow_diffs(name, "2", 1).unwrap();
        if let Some(d) = diffs.first() {
            assert_eq!(d.differs, "outcome,state", "{name}: {d:?}");
            assert_eq!(d.live["outcome"], "completed");
        }
    }
    bus.shutdown();
}

#[test]
fn promote_under_load_loses_nothing_and_records_each_version() {
    const PER: u64 = 150;
    let sb = Sandbox::new();
    sb.install("rmw", guests::RMW, LIVE);
    put(
        &sb,
        "rmw.next",
        guests::RMW,
        &shadow_manifest("rmw", "2", "[config]\nstrict = \"true\""),
    );
    let bus = std::sync::Arc::new(sb.open());
    bus.start().unwrap();
    let publisher = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            for n in 1..=PER {
                let batch: Vec<NewEvent> = (0..4).map(|p| rmw(&format!("p{p}"), n)).collect();
                bus.publish_batch(batch).unwrap();
                std::thread::sleep(Duration::from_millis(8));
            }
        })
    };
    let store = bus.store().clone();
    wait_for(Duration::from_secs(30), "a third of the events", || {
        completed(&store) >= 4 * PER / 3
    });
    let handlers = sb.handlers_dir();
    let env = [("PERSONA_BUS_HANDLERS_DIR", handlers.to_str().unwrap())];
    let (ok, out, err) = run_in(&sb.data_dir(), &["handlers", "promote", "rmw"], &env);
    assert!(ok, "{out}{err}");
    assert!(out.contains("promoted rmw 2 (was 1)"), "{out}");
    publisher.join().unwrap();
    wait_for(Duration::from_secs(60), "every event completed", || {
        completed(&store) == 4 * PER
    });
    wait_for(Duration::from_secs(10), "the shadow gone", || {
        bus.registry().snapshot().candidates.is_empty()
    });
    // Once each, in order: the strict guest saw no gap and no repeat.
    assert_eq!(state_number(&store, "rmw", "stale"), 0);
    assert_eq!(state_number(&store, "rmw", "total"), (4 * PER) as i64);
    let mut versions = std::collections::BTreeMap::<String, u64>::new();
    for e in persona_bus_tests::events_of_type(&bus, "rmw").events {
        let runs = store.executions(&e.id).unwrap();
        assert_eq!(runs.len(), 1, "{}: {runs:?}", e.id);
        assert_eq!(runs[0].outcome, "completed");
        *versions.entry(runs[0].handler_version.clone()).or_default() += 1;
    }
    assert!(versions["1"] > 0 && versions["2"] > 0, "{versions:?}");
    // The folder holds the live handler only, on the promoted component.
    let mut files: Vec<String> = std::fs::read_dir(&handlers)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["rmw-2.wasm", "rmw.toml"]);
    let live = std::fs::read_to_string(handlers.join("rmw.toml")).unwrap();
    assert!(
        live.contains("version = \"2\"") && !live.contains("[rollout]"),
        "{live}"
    );
    bus.shutdown();
}

#[test]
fn discard_drops_the_candidate_and_the_live_version_keeps_serving() {
    let sb = Sandbox::new();
    sb.install("rmw", guests::RMW, LIVE);
    put(
        &sb,
        "rmw.next",
        guests::RMW,
        &shadow_manifest("rmw", "2", ""),
    );
    let handlers = sb.handlers_dir();
    let env = [("PERSONA_BUS_HANDLERS_DIR", handlers.to_str().unwrap())];
    let (ok, out, err) = run_in(&sb.data_dir(), &["handlers", "discard", "rmw"], &env);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("discarded shadow 2 rmw; 1 keeps serving"),
        "{out}"
    );
    assert!(!handlers.join("rmw.next.toml").exists() && !handlers.join("rmw.next.wasm").exists());
    assert!(handlers.join("rmw.wasm").exists());
    // Nothing left to promote: a clear error.
    let (ok, _, err) = run_in(&sb.data_dir(), &["handlers", "promote", "rmw"], &env);
    assert!(!ok);
    assert!(err.contains("no shadow or canary of `rmw`"), "{err}");
}

#[test]
fn a_candidate_without_a_live_version_is_refused_with_the_reason() {
    let sb = Sandbox::new();
    put(
        &sb,
        "lonely.shadow",
        guests::RMW,
        &shadow_manifest("lonely", "2", ""),
    );
    let bus = sb.open();
    let snapshot = bus.registry().snapshot();
    assert!(snapshot.candidates.is_empty());
    let why = &snapshot.failures[0].error;
    assert!(why.contains("needs a live handler `lonely`"), "{why}");
}

#[test]
fn a_canary_takes_its_share_of_projects_by_a_stable_hash() {
    const PROJECTS: usize = 1000;
    let sb = Sandbox::new();
    sb.install(
        "rmw",
        guests::RMW,
        "[[subscriptions]]\nevent_type = \"rmw\"\n",
    );
    put(
        &sb,
        "rmw.canary",
        guests::RMW,
        "name = \"rmw\"\nversion = \"2\"\n[rollout]\ncanary = 10\n[[subscriptions]]\nevent_type = \"rmw\"\n",
    );
    let server = crate::http::Server::start(sb, |_| {});
    let bus = server.bus();
    // Two events per project: a project never flips between versions.
    for round in 1..=2 {
        let events: Vec<NewEvent> = (0..PROJECTS)
            .map(|p| rmw(&format!("proj-{p}"), round))
            .collect();
        bus.publish_batch(events).unwrap();
    }
    let store = bus.store().clone();
    wait_for(Duration::from_secs(60), "every event completed", || {
        completed(&store) == 2 * PROJECTS as u64
    });
    let mut on_canary = BTreeSet::new();
    let mut versions_of = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
    for id in store
        .list_events(&persona_bus::store::EventFilter {
            event_type: Some("rmw".into()),
            limit: 5_000,
            ..Default::default()
        })
        .unwrap()
        .events
    {
        let runs = store.executions(&id.id).unwrap();
        assert_eq!(runs.len(), 1);
        versions_of
            .entry(id.project_id.clone())
            .or_default()
            .insert(runs[0].handler_version.clone());
        if runs[0].handler_version == "2" {
            on_canary.insert(id.project_id.clone());
        }
    }
    assert!(
        versions_of.values().all(|v| v.len() == 1),
        "a project flipped"
    );
    let share = on_canary.len() as f64 * 100.0 / PROJECTS as f64;
    assert!(
        (share - 10.0).abs() <= 2.0,
        "{share} % of projects on the canary"
    );
    let expected: BTreeSet<String> = (0..PROJECTS)
        .map(|p| format!("proj-{p}"))
        .filter(|p| persona_bus::rollout::project_bucket(p) < 1000)
        .collect();
    assert_eq!(on_canary, expected);
    // /metrics shows the two versions side by side.
    let (_, text) = server.get("/metrics");
    for v in ["1", "2"] {
        assert!(
            text.contains(&format!(
                "persona_bus_handler_version_runs_total{{handler=\"rmw\",version=\"{v}\",outcome=\"completed\"}}"
            )),
            "{text}"
        );
    }
}

#[test]
fn an_erring_canary_is_rolled_back_and_says_so_everywhere() {
    let sb = Sandbox::new();
    sb.install(
        "rmw",
        guests::RMW,
        "[[subscriptions]]\nevent_type = \"rmw\"\n[retry]\nmax_attempts = 1\n",
    );
    put(
        &sb,
        "rmw.canary",
        guests::FLAKY,
        "name = \"rmw\"\nversion = \"2-bad\"\n[rollout]\ncanary = 50\nmin_events = 10\nrollback_above = 5\n\
         [[subscriptions]]\nevent_type = \"rmw\"\n[retry]\nmax_attempts = 1\n[config]\nmode = \"reject\"\n",
    );
    let config = sb.root.path().join("bus.toml");
    std::fs::write(
        &config,
        format!(
            "[poll]\nactive_interval_ms = 10\nidle_interval_ms = 50\n[runtime]\ncache_dir = \"{}\"\n[alerts]\ninterval_ms = 200\n",
            guests::COMPILE_CACHE
        ),
    )
    .unwrap();
    let port = persona_bus_tests::kafka::free_port();
    let http = [(
        "PERSONA_BUS_HTTP_ADDR".to_owned(),
        format!("127.0.0.1:{port}"),
    )];
    let host = spawn_host(&sb, &sb.data_dir(), &config, &http);
    let store = Store::open(&sb.data_dir()).unwrap();
    wait_for(Duration::from_secs(30), "the canary loaded", || {
        store
            .handler_records()
            .unwrap()
            .iter()
            .any(|r| r.name == "rmw@canary" && r.status == "canary")
    });
    let limits = EventLimits {
        max_payload_bytes: 4096,
    };
    let publish = |from: usize, to: usize| {
        let events: Vec<_> = (from..to)
            .map(|p| rmw(&format!("proj-{p}"), 1).validate(limits, 0).unwrap())
            .collect();
        store.insert_batch(&events).unwrap();
    };
    publish(0, 200);
    wait_for(Duration::from_secs(30), "the rollback recorded", || {
        store
            .handler_records()
            .unwrap()
            .iter()
            .any(|r| r.name == "rmw@canary" && r.status == "rolled_back")
    });
    wait_for(Duration::from_secs(30), "the first events final", || {
        store.unfinished().unwrap() == 0
    });
    // After the rollback, the canary's projects run on the live version.
    let before = store.dead_letter_count().unwrap();
    assert!(
        before >= 10,
        "the canary rejected {before} events before its rollback"
    );
    publish(200, 400);
    wait_for(Duration::from_secs(30), "the later events final", || {
        store.unfinished().unwrap() == 0
    });
    assert_eq!(
        store.dead_letter_count().unwrap(),
        before,
        "the canary ran after its rollback"
    );
    // The alert fires, the log says so, and it holds across a restart.
    wait_for(Duration::from_secs(30), "the canary alert", || {
        store
            .alerts_active()
            .unwrap()
            .iter()
            .any(|a| a.rule == "canary-rolled-back" && a.subject == "rmw")
    });
    let log = std::fs::read_to_string(sb.data_dir().with_extension("log")).unwrap();
    assert!(log.contains("canary rolled back"), "{log}");
    let metrics = ureq::get(format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("persona_bus_canary_rollbacks_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "persona_bus_handler_candidate{handler=\"rmw\",version=\"2-bad\",role=\"canary\"} 0"
        ),
        "{metrics}"
    );
    host.terminate();
    let host = spawn_host(&sb, &sb.data_dir(), &config, &http);
    publish(400, 500);
    wait_for(
        Duration::from_secs(30),
        "events after the restart final",
        || completed(&store) == 500 - before,
    );
    assert_eq!(store.dead_letter_count().unwrap(), before);
    host.terminate();
}

#[test]
fn a_replay_of_one_handler_runs_exactly_its_range_once_beside_live_traffic() {
    let sb = Sandbox::new();
    for name in ["rmw", "other"] {
        sb.install(
            name,
            guests::RMW,
            "[[subscriptions]]\nevent_type = \"rmw\"\n",
        );
    }
    let bus = std::sync::Arc::new(sb.open());
    bus.start().unwrap();
    let store = bus.store().clone();
    let phase = |from: u64, to: u64, project: &str| -> Vec<String> {
        let events: Vec<NewEvent> = (from..to).map(|n| rmw(project, n)).collect();
        let ids: Vec<String> = bus
            .publish_batch(events)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        let done = completed(&store) + ids.len() as u64;
        wait_for(Duration::from_secs(30), "the phase completed", || {
            completed(&store) >= done
        });
        ids
    };
    let before = phase(1, 101, "p0");
    std::thread::sleep(Duration::from_millis(20));
    let from = persona_bus::event::now_rfc3339();
    let range = phase(101, 201, "p0");
    std::thread::sleep(Duration::from_millis(20));
    let to = persona_bus::event::now_rfc3339();
    // Live traffic goes on while the replay runs.
    let live = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            for n in 1..=100 {
                ids.extend(
                    bus.publish_batch(vec![rmw("p1", n)])
                        .unwrap()
                        .into_iter()
                        .map(|e| e.id),
                );
                std::thread::sleep(Duration::from_millis(3));
            }
            ids
        })
    };
    let handlers = sb.handlers_dir();
    let env = [("PERSONA_BUS_HANDLERS_DIR", handlers.to_str().unwrap())];
    let (ok, out, err) = run_in(
        &sb.data_dir(),
        &[
            "replay",
            "--handler",
            "rmw",
            "--from",
            &from,
            "--to",
            &to,
            "--json",
        ],
        &env,
    );
    assert!(ok, "{out}{err}");
    let replay: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(replay["status"], "finished", "{replay:#}");
    assert_eq!(replay["completed"], 100, "{replay:#}");
    assert_eq!(replay["failed"], 0);
    let ledger = format!("rmw#replay-{}", replay["id"]);
    let live_ids = live.join().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the live traffic completed",
        || completed(&store) == 300,
    );
    assert_replayed(&store, &ledger, &range, before.iter().chain(&live_ids));
    for id in &range {
        assert_eq!(runs_of(&store, id, "rmw"), 1);
    }
    // The replayed runs took effect once, on the handler's own state: the
    // other handler's did not move.
    assert_eq!(state_number(&store, "rmw", "total"), 400);
    assert_eq!(state_number(&store, "other", "total"), 300);
    assert_eq!(
        store.replay(replay["id"].as_i64().unwrap()).unwrap().done,
        100
    );
    // A second replay of the same range is a new generation: once more.
    let (ok, out, err) = run_in(
        &sb.data_dir(),
        &["replay", "--handler", "rmw", "--from", &from, "--to", &to],
        &env,
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("100 completed, 0 failed"), "{out}");
    assert_eq!(state_number(&store, "rmw", "total"), 500);
    // A time that is not one is a clear error.
    let (ok, _, err) = run_in(
        &sb.data_dir(),
        &["replay", "--handler", "rmw", "--from", "yesterday"],
        &env,
    );
    assert!(!ok);
    assert!(err.contains("is not an RFC 3339 time"), "{err}");
}

#[test]
#[ignore = "needs services: make test"]
fn a_replay_from_kafka_starts_at_the_offset_of_a_time_and_runs_each_record_once() {
    use persona_bus_tests::kafka as k;
    let sb = Sandbox::new();
    for name in ["rmw", "other"] {
        sb.install(
            name,
            guests::RMW,
            "[[subscriptions]]\nevent_type = \"rmw\"\n",
        );
    }
    let prefix = k::prefix();
    let mut config = sb.config();
    k::consuming(&mut config, &prefix);
    let topic = config.kafka.topics.events.name.clone();
    let bus = std::sync::Arc::new(Bus::open(config).unwrap());
    bus.start().unwrap();
    let store = bus.store().clone();
    let limits = EventLimits {
        max_payload_bytes: 4096,
    };
    let producer = k::producer(1);
    let send = |from: u64, to: u64, project: &str| -> Vec<String> {
        let events: Vec<_> = (from..to)
            .map(|n| rmw(project, n).validate(limits, 0).unwrap())
            .collect();
        for e in &events {
            k::send(&producer, &topic, e, "device-elsewhere");
        }
        k::flush(&producer);
        events.into_iter().map(|e| e.id).collect()
    };
    let before = send(1, 101, "p0");
    wait_for(Duration::from_secs(60), "the first records handled", || {
        completed(&store) == 100
    });
    std::thread::sleep(Duration::from_millis(50));
    let from = persona_bus::event::now_rfc3339();
    std::thread::sleep(Duration::from_millis(50));
    let range = send(101, 201, "p0");
    wait_for(
        Duration::from_secs(60),
        "the second records handled",
        || completed(&store) == 200,
    );
    std::thread::sleep(Duration::from_millis(50));
    let to = persona_bus::event::now_rfc3339();
    // Live records keep coming while the replay reads.
    let live: Vec<String> = send(1, 51, "p1");
    let brokers = k::brokers();
    let (ok, out, err) = run_in(
        &sb.data_dir(),
        &[
            "replay",
            "--handler",
            "rmw",
            "--source",
            "kafka",
            "--topic",
            &topic,
            "--from",
            &from,
            "--to",
            &to,
            "--json",
        ],
        &[
            (
                "PERSONA_BUS_HANDLERS_DIR",
                sb.handlers_dir().to_str().unwrap(),
            ),
            ("KAFKA_BROKERS", &brokers),
        ],
    );
    assert!(ok, "{out}{err}");
    let replay: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(replay["status"], "finished", "{replay:#}");
    assert_eq!(replay["source"], "kafka");
    assert_eq!(replay["completed"], 100, "{replay:#}");
    assert_eq!(replay["total"], 100, "records between the two times");
    let ledger = format!("rmw#replay-{}", replay["id"]);
    wait_for(Duration::from_secs(60), "the live records handled", || {
        completed(&store) == 250
    });
    assert_replayed(&store, &ledger, &range, before.iter().chain(&live));
    assert_eq!(state_number(&store, "rmw", "total"), 350);
    assert_eq!(state_number(&store, "other", "total"), 250);
    bus.shutdown();
    k::drop_topics(&prefix);
}

#[test]
fn a_shadows_requests_are_recorded_and_refused_unless_its_rollout_names_the_host() {
    const EVENTS: u64 = 10;
    let service = persona_bus_tests::service::SlowService::start(Duration::from_millis(1));
    let sb = Sandbox::new();
    let url = service.url();
    sb.install(
        "fetch",
        guests::FETCH,
        &format!(
            "allowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n[[subscriptions]]\nevent_type = \"rmw\"\n\
             [config]\nurls = \"{url}/live\""
        ),
    );
    // The same guest asking for another path; its manifest allows every
    // host, but a shadow only reaches what its [rollout] names: nothing.
    put(
        &sb,
        "fetch.shadow",
        guests::FETCH,
        &format!(
            "name = \"fetch\"\nversion = \"2\"\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n\
             [rollout]\nshadow = true\n[config]\nurls = \"{url}/shadow\""
        ),
    );
    let bus = sb.open();
    bus.start().unwrap();
    bus.publish_batch((1..=EVENTS).map(|n| rmw("p0", n)).collect())
        .unwrap();
    let store = bus.store().clone();
    wait_for(Duration::from_secs(30), "every event completed", || {
        completed(&store) == EVENTS
    });
    wait_for(
        Duration::from_secs(30),
        "the shadow ran every event",
        || {
            store
                .shadow_tallies("fetch")
                .unwrap()
                .iter()
                .map(|t| t.differed)
                .sum::<u64>()
                == EVENTS
        },
    );
    bus.shutdown();
    // Only the live version's requests reached the service.
    assert_eq!(service.requests(), EVENTS);
    let d = &store.shadow_diffs("fetch", "2", 1).unwrap()[0];
    assert!(d.differs.contains("outbound"), "{d:?}");
    assert_eq!(d.live["outbound"][0], format!("GET {url}/live"));
    assert_eq!(d.shadow["outbound"][0], format!("GET {url}/shadow"));
    // What it got back differs too: the live call stored a status, the
    // shadow's request was refused.
    assert!(d.differs.contains("state"), "{d:?}");
}
