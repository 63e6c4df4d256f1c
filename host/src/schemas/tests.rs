//! The folder-of-schemas default (no registry) and the checks themselves.

use super::*;
use crate::event::{EventLimits, NewEvent};
use serde_json::json;

fn config(dir: &std::path::Path, strict: bool) -> Config {
    let mut c = Config::default();
    c.schemas.enabled = true;
    c.schemas.dir = dir.to_owned();
    c.schemas.strict = strict;
    c
}

fn event(event_type: &str, version: Option<u32>, payload: Value) -> Event {
    NewEvent {
        event_type: event_type.into(),
        source_type: "test".into(),
        payload: Some(payload),
        schema_version: version,
        ..Default::default()
    }
    .validate(
        EventLimits {
            max_payload_bytes: 1 << 20,
        },
        0,
    )
    .unwrap()
}

fn write(dir: &std::path::Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const ORDER_V1: &str = r#"{"type":"object","required":["id","qty"],
  "properties":{"id":{"type":"string"},"qty":{"type":"integer","minimum":1}}}"#;

#[test]
fn a_json_schema_file_selects_by_type_and_version_and_names_the_failing_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "order.placed/1.json", ORDER_V1);
    // Version 2 is Avro: a file of either kind serves.
    write(
        dir.path(),
        "order.placed/2.avsc",
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"qty","type":"long"},{"name":"note","type":"string"}]}"#,
    );
    let s = Schemas::new(&config(dir.path(), false));
    s.check(&event("order.placed", None, json!({"id": "a", "qty": 2})))
        .unwrap();
    let err = s
        .check(&event(
            "order.placed",
            Some(1),
            json!({"id": "a", "qty": 0}),
        ))
        .unwrap_err();
    match &err {
        SchemaError::Invalid {
            path,
            rule,
            version,
            event_type,
            ..
        } => {
            assert_eq!(
                (event_type.as_str(), *version, path.as_str()),
                ("order.placed", 1, "/qty")
            );
            assert!(rule.contains("minimum"), "{rule}");
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("order.placed") && text.contains("version 1") && text.contains("/qty"),
        "{text}"
    );
    // Version 2 wants `note`.
    let err = s
        .check(&event(
            "order.placed",
            Some(2),
            json!({"id": "a", "qty": 2}),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("/note"), "{err}");
    s.check(&event(
        "order.placed",
        Some(2),
        json!({"id": "a", "qty": 2, "note": "n"}),
    ))
    .unwrap();
    assert_eq!(s.refused.load(Ordering::Relaxed), 2);
}

#[test]
fn unknown_types_pass_unless_strict_and_off_checks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "order.placed/1.json", ORDER_V1);
    let lenient = Schemas::new(&config(dir.path(), false));
    lenient
        .check(&event("other.type", None, json!({"x": 1})))
        .unwrap();
    let strict = Schemas::new(&config(dir.path(), true));
    let err = strict
        .check(&event("other.type", None, json!({"x": 1})))
        .unwrap_err();
    assert!(matches!(err, SchemaError::Unknown { .. }), "{err}");
    assert!(err.to_string().contains("strict"), "{err}");
    let mut off = config(dir.path(), true);
    off.schemas.enabled = false;
    Schemas::new(&off)
        .check(&event("order.placed", None, json!({"qty": "no"})))
        .unwrap();
}

#[test]
fn a_broken_schema_file_is_a_clear_error_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "t/1.json", r#"{"type": 12}"#);
    let err = Schemas::new(&config(dir.path(), false))
        .check(&event("t", None, json!({})))
        .unwrap_err();
    assert!(matches!(err, SchemaError::BadSchema { .. }), "{err}");
    assert!(err.to_string().contains("1.json"), "{err}");
}

#[test]
fn schema_types_are_told_apart() {
    use std::path::Path;
    assert_eq!(schema_type_of(Path::new("a.avsc"), "{}"), "AVRO");
    assert_eq!(
        schema_type_of(
            Path::new("a.json"),
            r#"{"type":"record","name":"X","fields":[]}"#
        ),
        "AVRO"
    );
    assert_eq!(schema_type_of(Path::new("a.json"), ORDER_V1), "JSON");
}

/// Found by `make fuzz`: apache-avro 0.21 panicked on a record name that
/// fails its own check; a schema from a registry is outside input.
#[test]
fn a_schema_with_an_invalid_record_name_is_refused_not_a_panic() {
    let e = super::avro::AvroSchema::parse(
        r#"{"type":"record","name":"o}rder","fields":[{"name":"id","type":"string"}]}"#,
    )
    .err()
    .expect("refused");
    assert!(e.contains("not a valid Avro schema"), "{e}");
}
