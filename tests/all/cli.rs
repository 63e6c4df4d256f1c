//! The command line against a running host: another process publishes, the
//! host picks it up, and `events show` reports the handler runs.

use crate::{cli, host_binary};
use persona_bus_tests::{Sandbox, guests, wait_for};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn another_process_publishes_and_events_show_reports_the_runs() {
    let sb = Sandbox::new();
    sb.install_shipped("audit", guests::AUDIT, guests::AUDIT_MANIFEST);
    let bus = sb.open();
    bus.start().unwrap();

    let (ok, out, err) = cli(
        &sb,
        &[
            "publish",
            "--event-type",
            "task_created",
            "--source-type",
            "system",
            "--project",
            "p9",
            "--payload",
            r#"{"a":1}"#,
            "--header",
            "trace=t1",
        ],
    );
    assert!(ok, "{err}");
    let id = out.lines().last().unwrap().trim().to_owned();
    wait_for(
        Duration::from_secs(10),
        "the host to pick up the CLI's event",
        || bus.store().event(&id).unwrap().status.is_final(),
    );

    let (ok, out, err) = cli(&sb, &["events", "show", &id, "--json"]);
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["event"]["status"], "completed");
    assert_eq!(shown["event"]["project_id"], "p9");
    assert_eq!(
        shown["event"]["headers"][0],
        serde_json::json!(["trace", "t1"])
    );
    assert_eq!(shown["executions"][0]["handler"], "audit");
    assert_eq!(shown["executions"][0]["outcome"], "completed");

    let (ok, out, _) = cli(&sb, &["events", "show", &id]);
    assert!(
        ok && out.contains("status:      completed") && out.contains("audit@0.1.0"),
        "{out}"
    );

    let (ok, out, _) = cli(&sb, &["events", "list", "--json", "--limit", "5"]);
    assert!(ok);
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["pendingCount"], 0);
    assert_eq!(page["events"][0]["id"], id.as_str());

    let (ok, out, err) = cli(&sb, &["events", "list", "--status", "bogus"]);
    assert!(
        !ok && out.is_empty() && err.contains("unknown status \"bogus\""),
        "{err}"
    );

    let (ok, out, _) = cli(&sb, &["handlers", "list", "--json"]);
    assert!(ok);
    let handlers: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(handlers[0]["handler"]["name"], "audit");
    assert_eq!(handlers[0]["handler"]["status"], "loaded");
    assert_eq!(handlers[0]["subscriptions"][0]["event_type"], "*");

    let (ok, out, _) = cli(&sb, &["events", "show", "nope"]);
    assert!(!ok && out.is_empty());
}

#[test]
fn handlers_validate_checks_without_running() {
    let sb = Sandbox::new();
    sb.install(
        "audit",
        guests::AUDIT,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    let (ok, out, _) = cli(
        &sb,
        &["handlers", "validate", sb.handlers_dir().to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert!(out.contains("ok     audit 1 (1 subscriptions"), "{out}");

    sb.install(
        "wrong",
        guests::WRONG_WORLD,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    let (ok, out, err) = cli(
        &sb,
        &["handlers", "validate", sb.handlers_dir().to_str().unwrap()],
    );
    assert!(!ok);
    assert!(
        out.contains("error  ") && out.contains("wrong.wasm"),
        "{out}"
    );
    assert!(err.contains("1 of 2 handlers are invalid"), "{err}");
}

#[test]
fn one_host_per_data_directory() {
    let sb = Sandbox::new();
    let _first = sb.open();
    let second = persona_bus::Bus::open(sb.config());
    assert!(
        matches!(second, Err(persona_bus::BusError::Locked(_))),
        "a second host must be refused"
    );
    let (ok, _, err) = cli(
        &sb,
        &["run", "--handlers", sb.handlers_dir().to_str().unwrap()],
    );
    assert!(!ok && err.contains("already running"), "{err}");
}

/// The `persona-bus` binary compiles a component missing from its cache in
/// a child process (runtime/cache.rs), so the compiler's memory never stays
/// in the host. The child's artifact is what the host serves, and a
/// component that does not compile is still refused with the compiler's
/// reason while the others run.
#[test]
fn the_host_compiles_cache_misses_in_a_child_process() {
    let sb = Sandbox::new();
    sb.install(
        "audit",
        guests::AUDIT,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    sb.install(
        "broken",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    std::fs::write(
        sb.handlers_dir().join("broken.wasm"),
        b"\0asm\x01\0\0\0 torn",
    )
    .unwrap();
    let log = sb.root.path().join("host.log");
    let _host = crate::Host(
        Command::new(host_binary())
            .arg("--data-dir")
            .arg(sb.data_dir())
            .args(["run", "--no-http", "--handlers"])
            .arg(sb.handlers_dir())
            .env("RUST_LOG", "persona_bus=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(60), "the handlers to load", || {
        let text = read_log();
        text.contains("compiled (in a child process) and cached")
            && text.contains("not a valid component")
    });
    let cached: Vec<_> = std::fs::read_dir(sb.data_dir().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        cached.len() == 1 && cached[0].ends_with(".cwasm"),
        "one artifact, the audit handler's: {cached:?}"
    );

    let (ok, out, err) = cli(
        &sb,
        &[
            "publish",
            "--event-type",
            "task_created",
            "--source-type",
            "system",
        ],
    );
    assert!(ok, "{err}");
    let id = out.lines().last().unwrap().trim().to_owned();
    wait_for(Duration::from_secs(20), "the audit handler to run", || {
        let (_, out, _) = cli(&sb, &["events", "show", &id, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .is_ok_and(|v| v["executions"][0]["outcome"] == "completed")
    });
}
