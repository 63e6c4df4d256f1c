//! Handlers for a fleet of devices (issue 37): components pulled from the
//! real OCI registry (`make oci-up`) and followed by tag, and `[trust]`:
//! only components signed by a trusted key run, from the handlers folder
//! and from the registry alike; the events of a refused handler wait for
//! a version that can run. With the strict `rmw` guest, which reads,
//! writes and reads again across events.

use crate::cli;
use crate::oci::sign;
use persona_bus::Bus;
use persona_bus::event::{EventStatus, NewEvent};
use persona_bus::store::Store;
use persona_bus_tests::oci::proxy::{Mode, OciProxy};
use persona_bus_tests::oci::{keypair, registry, repository, variant};
use persona_bus_tests::{Sandbox, guests, state_number, wait_for};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const STRICT: &str = "[[subscriptions]]\nevent_type = \"rmw\"\n[config]\nstrict = \"true\"\n";

/// Event `n` of `project` for the rmw guest.
fn rmw(project: &str, n: u64) -> NewEvent {
    persona_bus_tests::rmw_event(project, n)
}

/// A manifest for `name` whose component is `reference` in a registry.
fn oci_manifest(name: &str, reference: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1\"\n[oci]\nreference = \"{reference}\"\npoll_secs = 1\n{STRICT}"
    )
}

/// Writes a manifest by rename (so the watcher never reads half of it).
fn put_manifest(sb: &Sandbox, name: &str, text: &str) {
    let tmp = sb.handlers_dir().join(format!(".{name}.toml.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, sb.handlers_dir().join(format!("{name}.toml"))).unwrap();
}

/// A bus on `sb` that trusts `keys`, with pulled components cached in
/// `sb`'s data folder.
fn open(sb: &Sandbox, keys: &[PathBuf]) -> Bus {
    let mut config = sb.config();
    config.trust.keys = keys.to_vec();
    Bus::open(config).expect("open bus")
}

/// Pushes `bytes` to `reference` with our command; its digest.
fn push(sb: &Sandbox, bytes: &[u8], reference: &str) -> String {
    let file = sb
        .root
        .path()
        .join(format!("push-{}.wasm", ulid::Ulid::new()));
    std::fs::write(&file, bytes).unwrap();
    crate::oci::push(sb, file.to_str().unwrap(), reference)
}

/// Executions of `handler` per event id.
fn runs_per_event(store: &Store, ids: &[String], handler: &str) -> Vec<usize> {
    ids.iter()
        .map(|id| {
            store
                .executions(id)
                .unwrap()
                .iter()
                .filter(|x| x.handler == handler)
                .count()
        })
        .collect()
}

fn record(store: &Store, name: &str) -> persona_bus::store::HandlerRecord {
    store
        .handler_records()
        .unwrap()
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no record of {name}"))
}

/// Every event of `ids` ran once on each of `handlers`, completed, with no
/// attempt counted for its wait, and each handler saw them in order.
fn assert_handled_once(bus: &Bus, ids: &[String], handlers: &[&str], per_project: i64) {
    let store = bus.store();
    wait_for(Duration::from_secs(60), "every event completed", || {
        ids.iter()
            .all(|id| store.event(id).unwrap().status == EventStatus::Completed)
    });
    for h in handlers {
        assert!(
            runs_per_event(store, ids, h).iter().all(|&n| n == 1),
            "{h} ran an event other than once"
        );
        assert_eq!(state_number(store, h, "stale"), 0, "{h} read stale state");
        assert_eq!(
            state_number(store, h, "count:p0"),
            per_project,
            "{h}'s count"
        );
    }
    for id in ids {
        assert_eq!(store.event(id).unwrap().retry_count, 0, "a wait counted");
    }
    assert_eq!(store.dead_letters(100).unwrap().len(), 0);
}

#[test]
fn folder_components_run_only_when_a_trusted_key_signed_them() {
    let sb = Sandbox::new();
    let dir = sb.root.path();
    let (team, team_pub) = keypair(dir, "team");
    let (stranger, _) = keypair(dir, "stranger");
    let h = sb.handlers_dir();
    let wasm = |name: &str| h.join(format!("{name}.wasm"));
    let rmw_bytes = std::fs::read(guests::RMW).unwrap();
    // trusted: signed by the team. unsigned. stranger: signed by another
    // key. other: carries the signature of another component. modified:
    // changed after it was signed.
    for name in ["trusted", "unsigned", "stranger", "other", "modified"] {
        std::fs::write(wasm(name), &rmw_bytes).unwrap();
    }
    sign(&sb, wasm("trusted").to_str().unwrap(), &team);
    sign(&sb, wasm("stranger").to_str().unwrap(), &stranger);
    std::fs::write(wasm("other"), variant(guests::RMW, 1)).unwrap();
    std::fs::copy(h.join("trusted.wasm.sig"), h.join("other.wasm.sig")).unwrap();
    sign(&sb, wasm("modified").to_str().unwrap(), &team);
    std::fs::write(wasm("modified"), variant(guests::RMW, 2)).unwrap();
    for name in ["trusted", "unsigned", "stranger", "other", "modified"] {
        put_manifest(
            &sb,
            name,
            &format!("name = \"{name}\"\nversion = \"1\"\n{STRICT}"),
        );
    }

    let bus = open(&sb, std::slice::from_ref(&team_pub));
    bus.start().unwrap();
    let snap = bus.registry().snapshot();
    assert_eq!(
        snap.handlers.keys().map(|k| &**k).collect::<Vec<_>>(),
        ["trusted"]
    );
    let reasons: BTreeMap<&str, &str> = snap.held.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert!(reasons["unsigned"].contains("unsigned: no"), "{reasons:?}");
    for name in ["stranger", "other", "modified"] {
        assert!(
            reasons[name].contains("refused by [trust]: not signed by a trusted key"),
            "{name}: {reasons:?}"
        );
    }
    let store = bus.store().clone();
    for name in ["unsigned", "stranger", "other", "modified"] {
        let r = record(&store, name);
        assert_eq!(r.status, "refused", "{name}");
        assert!(r.error.unwrap().contains("refused by [trust]"), "{name}");
    }
    let trusted = record(&store, "trusted");
    assert!(
        trusted.signer.as_deref().unwrap().starts_with("team:"),
        "{trusted:?}"
    );
    assert_eq!(trusted.source.as_deref(), Some("file"));
    assert!(trusted.loaded_at.is_some());

    // Which build runs, from where, signed by whom, and why the others
    // do not: on the command line too.
    for args in [&["status"][..], &["handlers", "list"]] {
        let (ok, out, err) = cli(&sb, args);
        assert!(ok, "{args:?}: {err}");
        assert!(out.contains("source file, digest "), "{args:?}: {out}");
        assert!(out.contains("signer team:"), "{args:?}: {out}");
        assert!(out.contains("refused"), "{args:?}: {out}");
    }
    let ids: Vec<String> = (1..=20)
        .map(|n| bus.publish(rmw("p0", n)).unwrap().id)
        .collect();
    // The trusted handler runs them; the events wait for the others.
    wait_for(
        Duration::from_secs(30),
        "the trusted handler ran all",
        || {
            runs_per_event(&store, &ids, "trusted")
                .iter()
                .all(|&n| n == 1)
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    for id in &ids {
        let e = store.event(id).unwrap();
        assert_eq!(e.status, EventStatus::Pending, "{id}");
        assert!(
            e.error_message
                .as_deref()
                .unwrap_or("")
                .contains("waiting for"),
            "{e:?}"
        );
    }
    for name in ["unsigned", "stranger", "other", "modified"] {
        assert!(runs_per_event(&store, &ids, name).iter().all(|&n| n == 0));
    }

    // A trusted signature for each: they load, and their waiting events
    // run once each, in order.
    for name in ["unsigned", "stranger", "other", "modified"] {
        sign(&sb, wasm(name).to_str().unwrap(), &team);
    }
    assert_handled_once(
        &bus,
        &ids,
        &["trusted", "unsigned", "stranger", "other", "modified"],
        20,
    );
    assert!(bus.registry().snapshot().held.is_empty());
    bus.shutdown();
}

/// Copies the cosign signature of `from` (a manifest digest) in
/// `repository` to the tag where the signature of `to` belongs: a
/// signature that names another component.
fn copy_signature(repository: &str, from: &str, to: &str) {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    use persona_bus_oci::cosign::signature_tag;
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let auth = RegistryAuth::Anonymous;
    let src: oci_client::Reference = format!("{repository}:{}", signature_tag(from))
        .parse()
        .unwrap();
    let dst: oci_client::Reference = format!("{repository}:{}", signature_tag(to))
        .parse()
        .unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (manifest, _) = client.pull_image_manifest(&src, &auth).await.unwrap();
        let mut layers = Vec::new();
        for l in &manifest.layers {
            let mut data = Vec::new();
            client.pull_blob(&src, l, &mut data).await.unwrap();
            layers.push(ImageLayer::new(
                data,
                l.media_type.clone(),
                l.annotations.clone(),
            ));
        }
        let mut config = Vec::new();
        client
            .pull_blob(&src, &manifest.config, &mut config)
            .await
            .unwrap();
        let config = Config::new(config, manifest.config.media_type.clone(), None);
        client
            .push(&dst, &layers, config, &auth, Some(manifest))
            .await
            .unwrap();
    });
}

#[test]
#[ignore = "needs services: make test"]
fn registry_components_run_only_when_a_trusted_key_signed_them() {
    let sb = Sandbox::new();
    let dir = sb.root.path();
    let (team, team_pub) = keypair(dir, "team");
    let (stranger, _) = keypair(dir, "stranger");
    let refs: BTreeMap<&str, String> = ["trusted", "unsigned", "stranger", "other", "moved"]
        .into_iter()
        .map(|n| (n, format!("{}:1", repository(n))))
        .collect();
    let repo = |name: &str| refs[name].trim_end_matches(":1").to_owned();
    for (i, r) in refs.values().enumerate() {
        push(&sb, &variant(guests::RMW, i as u64), r);
    }
    sign(&sb, &refs["trusted"], &team);
    sign(&sb, &refs["stranger"], &stranger);
    sign(&sb, &refs["moved"], &team);
    // `other` carries the signature of another component of its
    // repository.
    let elsewhere = push(
        &sb,
        &variant(guests::RMW, 99),
        &format!("{}:2", repo("other")),
    );
    sign(&sb, &format!("{}:2", repo("other")), &team);
    let other_digest = persona_bus_oci::OciClient::from_env(&registry())
        .unwrap()
        .resolve(&refs["other"])
        .unwrap();
    copy_signature(&repo("other"), &elsewhere, &other_digest);
    for (name, r) in &refs {
        put_manifest(&sb, name, &oci_manifest(name, r));
    }

    let bus = open(&sb, std::slice::from_ref(&team_pub));
    bus.start().unwrap();
    let snap = bus.registry().snapshot();
    assert_eq!(
        snap.handlers.keys().map(|k| &**k).collect::<Vec<_>>(),
        ["moved", "trusted"]
    );
    let reasons: BTreeMap<&str, &str> = snap.held.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert!(
        reasons["unsigned"].contains("unsigned: no signature at"),
        "{reasons:?}"
    );
    assert!(
        reasons["stranger"].contains("not signed by a trusted key"),
        "{reasons:?}"
    );
    assert!(
        reasons["other"].contains("the signature is for another component"),
        "{reasons:?}"
    );
    let store = bus.store().clone();
    let trusted = record(&store, "trusted");
    assert!(
        trusted.signer.as_deref().unwrap().starts_with("team:"),
        "{trusted:?}"
    );
    assert!(
        trusted
            .source
            .as_deref()
            .unwrap()
            .starts_with(&format!("{}@sha256:", refs["trusted"])),
        "{trusted:?}"
    );
    let moved_version = bus.registry().snapshot().handlers["moved"].version.clone();

    // `moved` gets a new build after it was signed: that digest is
    // refused, and the signed one keeps serving.
    push(&sb, &variant(guests::RMW, 50), &refs["moved"]);
    wait_for(Duration::from_secs(30), "the new digest refused", || {
        record(&store, "moved")
            .error
            .is_some_and(|e| e.contains("reload refused") && e.contains("unsigned"))
    });
    assert_eq!(
        bus.registry().snapshot().handlers["moved"].version,
        moved_version
    );

    let ids: Vec<String> = (1..=20)
        .map(|n| bus.publish(rmw("p0", n)).unwrap().id)
        .collect();
    wait_for(Duration::from_secs(30), "the trusted ones ran all", || {
        runs_per_event(&store, &ids, "trusted")
            .iter()
            .all(|&n| n == 1)
            && runs_per_event(&store, &ids, "moved")
                .iter()
                .all(|&n| n == 1)
    });
    for x in ids.iter().flat_map(|id| store.executions(id).unwrap()) {
        if x.handler == "moved" {
            assert_eq!(x.handler_version, *moved_version);
        }
    }
    assert_eq!(store.event(&ids[0]).unwrap().status, EventStatus::Pending);

    // Trusted signatures arrive: the held ones load within a check, and
    // their events run once each.
    for name in ["unsigned", "stranger", "other"] {
        sign(&sb, &refs[name], &team);
    }
    assert_handled_once(
        &bus,
        &ids,
        &["trusted", "unsigned", "stranger", "other", "moved"],
        20,
    );
    bus.shutdown();
}

/// The version serving `name` now.
fn serving(bus: &Bus, name: &str) -> Option<String> {
    bus.registry()
        .snapshot()
        .handlers
        .get(name)
        .map(|h| h.version.to_string())
}

#[test]
#[ignore = "needs services: make test"]
fn a_followed_tag_moves_through_two_new_digests_under_load() {
    let sb = Sandbox::new();
    let reference = format!("{}:live", repository("router"));
    push(&sb, &variant(guests::RMW, 0), &reference);
    put_manifest(&sb, "rmw", &oci_manifest("rmw", &reference));
    let bus = Arc::new(open(&sb, &[]));
    bus.start().unwrap();
    let first = serving(&bus, "rmw").expect("loaded from the registry");
    // Four projects, n = 1, 2, ... each, published until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bus, stop) = (bus.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 100 {
                n += 1;
                let batch = (0..4).map(|p| rmw(&format!("p{p}"), n)).collect();
                ids.extend(bus.publish_batch(batch).unwrap().into_iter().map(|e| e.id));
                std::thread::sleep(Duration::from_millis(5));
            }
            (ids, n)
        })
    };
    let mut versions = vec![first];
    for build in [1, 2] {
        std::thread::sleep(Duration::from_millis(500));
        push(&sb, &variant(guests::RMW, build), &reference);
        wait_for(Duration::from_secs(30), "the new digest serving", || {
            serving(&bus, "rmw").is_some_and(|v| !versions.contains(&v))
        });
        versions.push(serving(&bus, "rmw").unwrap());
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ids, per) = publisher.join().unwrap();
    let store = bus.store().clone();
    wait_for(Duration::from_secs(120), "every event completed", || {
        persona_bus_tests::completed(&store) == ids.len() as u64
    });
    // No event lost or handled twice; each handled by the version serving
    // when it ran, and a project never goes back to an older one.
    let mut by_project: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for id in &ids {
        let runs = store.executions(id).unwrap();
        assert_eq!(runs.len(), 1, "{id}: {runs:?}");
        let at = versions
            .iter()
            .position(|v| *v == runs[0].handler_version)
            .unwrap_or_else(|| panic!("unknown version {}", runs[0].handler_version));
        let project = store.event(id).unwrap().project_id;
        by_project.entry(project).or_default().push(at);
    }
    let used: std::collections::BTreeSet<usize> = by_project.values().flatten().copied().collect();
    assert_eq!(used.len(), 3, "all three digests ran events: {versions:?}");
    for (p, seq) in &by_project {
        assert!(
            seq.windows(2).all(|w| w[0] <= w[1]),
            "{p} went back: {seq:?}"
        );
        assert_eq!(
            state_number(&store, "rmw", &format!("count:{p}")),
            per as i64
        );
    }
    assert_eq!(state_number(&store, "rmw", "stale"), 0);
    // The cache keeps the build that serves, not every one that did.
    let cached = std::fs::read_dir(sb.data_dir().join("oci"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wasm"))
        .count();
    assert_eq!(cached, 1, "components cached after three builds");
    bus.shutdown();
}

#[test]
#[ignore = "needs services: make test"]
fn a_device_restarting_while_the_registry_is_down_runs_its_cached_digest() {
    let sb = Sandbox::new();
    let (team, team_pub) = keypair(sb.root.path(), "team");
    let proxy = OciProxy::start(&registry());
    let reference = format!("{}:1", proxy.repository("router"));
    // Pushed and signed straight to the registry; the device pulls through
    // the proxy.
    let direct = proxy.direct(&reference);
    push(&sb, &variant(guests::RMW, 7), &direct);
    sign(&sb, &direct, &team);
    put_manifest(&sb, "rmw", &oci_manifest("rmw", &reference));
    let keys = [team_pub];
    let version = {
        let bus = open(&sb, &keys);
        bus.start().unwrap();
        let v = serving(&bus, "rmw").expect("loaded");
        bus.publish(rmw("p0", 1)).unwrap();
        wait_for(Duration::from_secs(30), "event 1", || {
            persona_bus_tests::completed(bus.store()) == 1
        });
        bus.shutdown();
        v
    };
    // The registry is down: the device restarts on what it cached and
    // verified, offline.
    proxy.set(Mode::Status(503));
    let bus = open(&sb, &keys);
    bus.start().unwrap();
    assert_eq!(serving(&bus, "rmw"), Some(version));
    let store = bus.store().clone();
    let r = record(&store, "rmw");
    assert!(r.signer.unwrap().starts_with("team:"));
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("the registry cannot answer"),
        "{:?}",
        r.error
    );
    let ids: Vec<String> = (2..=10)
        .map(|n| bus.publish(rmw("p0", n)).unwrap().id)
        .collect();
    wait_for(Duration::from_secs(30), "events after the restart", || {
        persona_bus_tests::completed(&store) == 10
    });
    assert!(runs_per_event(&store, &ids, "rmw").iter().all(|&n| n == 1));
    assert_eq!(state_number(&store, "rmw", "stale"), 0);
    // Back up: the error clears.
    proxy.set(Mode::Forward);
    wait_for(Duration::from_secs(30), "the error cleared", || {
        record(&store, "rmw").error.is_none()
    });
    bus.shutdown();
}

#[test]
#[ignore = "needs services: make test"]
fn registry_errors_are_clear_and_the_running_version_keeps_running() {
    let sb = Sandbox::new();
    let proxy = OciProxy::start(&registry());
    let reference = format!("{}:1", proxy.repository("router"));
    push(&sb, &variant(guests::RMW, 3), &proxy.direct(&reference));
    put_manifest(&sb, "rmw", &oci_manifest("rmw", &reference));
    // A tag that was never pushed: held, its events wait.
    let missing = format!("{}:nope", proxy.repository("missing"));
    put_manifest(&sb, "missing", &oci_manifest("missing", &missing));
    let bus = open(&sb, &[]);
    bus.start().unwrap();
    let version = serving(&bus, "rmw").expect("loaded");
    let store = bus.store().clone();
    let held = record(&store, "missing");
    assert_eq!(held.status, "waiting");
    assert!(
        held.error.as_deref().unwrap().contains(&missing),
        "{:?}",
        held.error
    );
    let mut n = 0;
    for (status, says) in [(401, "401"), (404, "404"), (500, "500")] {
        proxy.set(Mode::Status(status));
        wait_for(
            Duration::from_secs(30),
            &format!("the {status} shown"),
            || {
                record(&store, "rmw")
                    .error
                    .is_some_and(|e| e.contains("the registry cannot answer") && e.contains(says))
            },
        );
        // The version that ran keeps running.
        assert_eq!(serving(&bus, "rmw"), Some(version.clone()));
        n += 1;
        let id = bus.publish(rmw("p0", n)).unwrap().id;
        wait_for(Duration::from_secs(30), "the event handled", || {
            runs_per_event(&store, std::slice::from_ref(&id), "rmw") == [1]
        });
        proxy.set(Mode::Forward);
        wait_for(Duration::from_secs(30), "the error cleared", || {
            record(&store, "rmw").error.is_none()
        });
    }
    assert_eq!(state_number(&store, "rmw", "stale"), 0);
    // The missing tag arrives: its handler loads and its events run.
    push(&sb, &variant(guests::RMW, 4), &proxy.direct(&missing));
    wait_for(
        Duration::from_secs(30),
        "the missing handler loaded",
        || serving(&bus, "missing").is_some(),
    );
    wait_for(Duration::from_secs(30), "its events handled", || {
        state_number(&store, "missing", "count:p0") == n as i64
    });
    bus.shutdown();
}

#[test]
#[ignore = "needs services: make test"]
fn registry_credentials_appear_in_no_log_status_metric_or_page() {
    let sb = Sandbox::new();
    let proxy = OciProxy::start(&registry());
    let password = "oci-Pa55word-that-must-not-leak";
    proxy.require_basic("device", password);
    let reference = format!("{}:1", proxy.repository("router"));
    push(&sb, &variant(guests::RMW, 5), &proxy.direct(&reference));
    put_manifest(&sb, "rmw", &oci_manifest("rmw", &reference));
    let config = sb.root.path().join("host.toml");
    std::fs::write(&config, "").unwrap();
    let env: Vec<(String, String)> = [
        ("PERSONA_BUS_OCI_USERNAME", "device"),
        ("PERSONA_BUS_OCI_PASSWORD", password),
        ("RUST_LOG", "debug"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let port = persona_bus_tests::kafka::free_port();
    let mut env = env;
    env.push(("PERSONA_BUS_HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
    let host = crate::consume::spawn_host(&sb, &sb.data_dir(), &config, &env);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let get = |path: &str| -> String {
        agent
            .get(&format!("http://127.0.0.1:{port}{path}"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    };
    // Loaded through the proxy, so with the credentials.
    wait_for(Duration::from_secs(60), "the handler pulled", || {
        get("/api/personas/handlers").contains("\"source\"")
    });
    assert!(proxy.seen.lock().unwrap().1 > 0, "credentials were sent");
    let mut seen: Vec<(String, String)> = [
        "/",
        "/metrics",
        "/api/personas/handlers",
        "/api/personas/events",
    ]
    .iter()
    .map(|p| (p.to_string(), get(p)))
    .collect();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["handlers", "list"],
        &["handlers", "list", "--json"],
    ] {
        let (_, out, err) = crate::cli_with_env(&sb, args, &pairs);
        seen.push((format!("persona-bus {}", args.join(" ")), out + &err));
    }
    drop(host);
    let log = std::fs::read_to_string(sb.data_dir().with_extension("log")).unwrap();
    assert!(
        log.contains(&reference),
        "the log names the reference (so it was captured)"
    );
    seen.push(("the host's log".into(), log));
    assert!(seen[2].1.contains(&reference), "the API shows the source");
    for (place, text) in &seen {
        assert!(!text.contains(password), "the password appears in {place}");
    }
}

#[test]
#[ignore = "needs services: make test"]
fn events_consumed_from_kafka_wait_for_a_held_handler_too() {
    use persona_bus::event::EventLimits;
    let sb = Sandbox::new();
    let (team, team_pub) = keypair(sb.root.path(), "team");
    let wasm = sb.handlers_dir().join("rmw.wasm");
    std::fs::copy(guests::RMW, &wasm).unwrap(); // unsigned, for now
    put_manifest(
        &sb,
        "rmw",
        &format!("name = \"rmw\"\nversion = \"1\"\n{STRICT}"),
    );
    let prefix = persona_bus_tests::kafka::prefix();
    let mut config = sb.config();
    persona_bus_tests::kafka::consuming(&mut config, &prefix);
    config.trust.keys = vec![team_pub];
    // Another device's events, straight onto the topic: this device has
    // no row of them until it consumes them.
    let events: Vec<persona_bus::Event> = (1..=30)
        .map(|n| {
            rmw("p0", n)
                .validate(
                    EventLimits {
                        max_payload_bytes: 4096,
                    },
                    0,
                )
                .unwrap()
        })
        .collect();
    crate::consume::backlog_from_elsewhere(&config, &events);
    let bus = Bus::open(config).unwrap();
    bus.start().unwrap();
    let store = bus.store().clone();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    wait_for(
        Duration::from_secs(60),
        "every event consumed and waiting",
        || {
            ids.iter().all(|id| {
                store.event(id).is_ok_and(|e| {
                    e.status == EventStatus::Pending
                        && e.error_message.as_deref().is_some_and(|m| {
                            m.contains("waiting for rmw:") && m.contains("refused by [trust]")
                        })
                })
            })
        },
    );
    assert!(runs_per_event(&store, &ids, "rmw").iter().all(|&n| n == 0));
    // Signed: the device runs them from its own table, once each, in order.
    sign(&sb, wasm.to_str().unwrap(), &team);
    assert_handled_once(&bus, &ids, &["rmw"], 30);
    bus.shutdown();
}
