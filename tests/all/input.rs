//! Malformed input is refused with a clear message and nothing half-stored;
//! broken handlers are refused at load while the others serve.

use crate::{cli_with_input, host_binary};
use persona_bus::event::EventError;
use persona_bus::{BusError, NewEvent};
use persona_bus_tests::{Sandbox, event, guests};
use std::process::Command;

fn total(sb: &Sandbox) -> u64 {
    let store = persona_bus::store::Store::open(&sb.data_dir()).unwrap();
    store
        .list_events(&persona_bus::store::EventFilter {
            limit: 1,
            ..Default::default()
        })
        .unwrap()
        .total
}

#[test]
fn payload_that_is_not_json_is_refused_by_the_cli() {
    let sb = Sandbox::new();
    let args = [
        "publish",
        "--event-type",
        "custom",
        "--source-type",
        "system",
        "--payload",
        "{not json",
    ];
    let (ok, _, err) = cli_with_input(&sb, &args, None);
    assert!(!ok);
    assert!(err.contains("payload is not valid JSON"), "{err}");
    assert_eq!(total(&sb), 0);
}

#[test]
fn unknown_event_fields_are_refused() {
    let sb = Sandbox::new();
    let from_stdin = ["publish", "--from-json", "-"];
    let (ok, _, err) = cli_with_input(
        &sb,
        &from_stdin,
        Some(r#"{"event_type":"custom","source_type":"system","priority":9}"#),
    );
    assert!(!ok);
    assert!(err.contains("unknown field `priority`"), "{err}");
    assert_eq!(total(&sb), 0);

    let (ok, out, err) = cli_with_input(
        &sb,
        &from_stdin,
        Some(r#"{"event_type":"custom","source_type":"system","payload":{"ok":true}}"#),
    );
    assert!(ok, "{err}");
    let id = out.lines().last().unwrap().to_owned();
    assert_eq!(id.len(), 26, "the last line is the new event id: {id:?}");
    assert_eq!(total(&sb), 1);
}

#[test]
fn oversized_payload_is_refused_with_the_configured_limit() {
    let sb = Sandbox::new();
    let conf = sb.root.path().join("bus.toml");
    std::fs::write(&conf, "[limits]\nmax_payload_bytes = 100\n").unwrap();
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(200));
    let out = Command::new(host_binary())
        .args([
            "--data-dir",
            sb.data_dir().to_str().unwrap(),
            "--config",
            conf.to_str().unwrap(),
        ])
        .args([
            "publish",
            "--event-type",
            "custom",
            "--source-type",
            "system",
            "--payload",
            &big,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the limit is 100 bytes"), "{err}");
    assert_eq!(total(&sb), 0);

    let mut config = sb.config();
    config.limits.max_payload_bytes = 100;
    let bus = persona_bus::Bus::open(config).unwrap();
    let err = bus
        .publish(NewEvent {
            payload: Some(serde_json::json!({"blob": "x".repeat(200)})),
            ..event("custom")
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::Event(EventError::PayloadTooLarge { limit: 100, .. })
        ),
        "{err}"
    );
}

#[test]
fn a_batch_with_one_bad_event_stores_none() {
    let sb = Sandbox::new();
    let bus = sb.open();
    let err = bus
        .publish_batch(vec![
            event("good"),
            NewEvent {
                source_type: String::new(),
                ..event("bad")
            },
        ])
        .unwrap_err();
    assert!(
        err.to_string().contains("`source_type` is required"),
        "{err}"
    );
    drop(bus);
    assert_eq!(total(&sb), 0);
}

#[test]
fn broken_handlers_are_refused_with_file_and_reason_while_others_load() {
    let sb = Sandbox::new();
    let dir = sb.handlers_dir();
    sb.install(
        "audit",
        guests::AUDIT,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    // An unknown key in a manifest.
    sb.install(
        "typo",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"*\"\n[limits]\ntimeout = 5",
    );
    // A component that does not compile.
    sb.install(
        "garbage",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    std::fs::write(dir.join("garbage.wasm"), b"\0asm not really").unwrap();
    // A valid component of the wrong world.
    sb.install(
        "stranger",
        guests::WRONG_WORLD,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    // A manifest whose component is missing.
    std::fs::write(
        dir.join("ghost.toml"),
        "name = \"ghost\"\nversion = \"1\"\n[[subscriptions]]\nevent_type = \"*\"\n",
    )
    .unwrap();

    let bus = sb.open();
    let snap = bus.registry().snapshot();
    assert_eq!(
        snap.handlers
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        ["audit"]
    );
    let failure = |stem: &str| {
        snap.failures
            .iter()
            .find(|f| f.manifest.file_stem().unwrap() == stem)
            .unwrap_or_else(|| panic!("no failure for {stem}"))
            .error
            .clone()
    };
    let typo = failure("typo");
    assert!(
        typo.contains("typo.toml")
            && typo.contains("line 6")
            && typo.contains("unknown field `timeout`"),
        "{typo}"
    );
    let garbage = failure("garbage");
    assert!(
        garbage.contains("garbage.wasm") && garbage.contains("not a valid component"),
        "{garbage}"
    );
    let stranger = failure("stranger");
    assert!(
        stranger.contains("stranger.wasm")
            && stranger.contains("does not implement the persona:bus `handler` world"),
        "{stranger}"
    );
    let ghost = failure("ghost");
    assert!(
        ghost.contains("ghost.wasm") && ghost.contains("cannot read component"),
        "{ghost}"
    );

    // The good handler serves.
    let e = bus.publish(event("custom")).unwrap();
    bus.drain().unwrap();
    assert_eq!(
        bus.store().event(&e.id).unwrap().status,
        persona_bus::EventStatus::Completed
    );
    // And the refusals are visible to other processes.
    let records = bus.store().handler_records().unwrap();
    let failed: Vec<_> = records
        .iter()
        .filter(|r| r.status == "failed")
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(failed, ["garbage", "ghost", "stranger", "typo"]);
}
