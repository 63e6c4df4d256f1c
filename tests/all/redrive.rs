//! Dead-letter redrive by filter (issue 38, part 4): `dlq retry` and the
//! API take a handler, an error text, and a time window; a dry run counts
//! exactly the set the redrive then sends back, and `dlq purge` takes the
//! same filters. A redriven event keeps its history: its earlier runs and
//! dead letters stay. With the real compiled `batch` guest, dead-lettering
//! on purpose.

use crate::http::Server;
use crate::run_in;
use persona_bus::event::NewEvent;
use persona_bus_tests::{Sandbox, guests, wait_final};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

fn publish(s: &Server, what: &str, n: usize) -> Vec<String> {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent {
            event_type: "b".into(),
            source_type: "system".into(),
            project_id: Some(format!("p{i}")),
            payload: Some(json!({ "key": format!("{what}{i}"), "seq": 1, "do": what })),
            ..Default::default()
        })
        .collect();
    let ids: Vec<String> = s
        .bus()
        .publish_batch(events)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    for id in &ids {
        let e = wait_final(s.bus(), id, Duration::from_secs(30));
        assert_eq!(e.status.as_str(), "dead_letter");
    }
    ids
}

/// Ids of the dead letters retried so far.
fn retried(s: &Server) -> BTreeSet<i64> {
    let all = s.bus().store().dead_letters(1000).unwrap();
    all.iter()
        .filter(|d| d.retried_at.is_some())
        .map(|d| d.id)
        .collect()
}

#[test]
fn a_redrive_by_filter_takes_exactly_what_its_dry_run_counted() {
    let sb = Sandbox::new();
    for name in ["ha", "hb"] {
        sb.install(
            name,
            guests::BATCH,
            "[[subscriptions]]\nevent_type = \"b\"\n[retry]\nmax_attempts = 1\n",
        );
    }
    let dir = sb.data_dir();
    let s = Server::start(sb, |_| {});
    // Three events each handler rejects, then, after `between`, three it
    // rejects after writing ("wrote, then asked to reject").
    let early = publish(&s, "reject", 3);
    std::thread::sleep(Duration::from_millis(20));
    let between = persona_bus::event::now_rfc3339();
    std::thread::sleep(Duration::from_millis(20));
    let late = publish(&s, "write-reject", 3);
    assert_eq!(s.bus().store().dead_letters(1000).unwrap().len(), 12);

    let count = |args: &[&str]| {
        let (ok, out, err) = run_in(&dir, args, &[]);
        assert!(ok, "{args:?}: {out}{err}");
        out.lines()
            .find_map(|l| l.strip_suffix(" dead letters match; --dry-run: nothing was sent back"))
            .or_else(|| {
                out.lines().find_map(|l| {
                    l.strip_suffix(" dead letters match; --dry-run: nothing was deleted")
                })
            })
            .unwrap_or_else(|| panic!("no count in {out}"))
            .parse::<u64>()
            .unwrap()
    };
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        [&["dlq", "retry", "--dry-run"][..], extra].concat()
    }
    assert_eq!(
        count(&with(&["--handler", "ha", "--error-contains", "WROTE"])),
        3
    );
    assert_eq!(count(&with(&["--error-contains", "asked to reject"])), 12);
    assert_eq!(count(&with(&["--since", &between])), 6);
    assert_eq!(count(&with(&["--until", &between])), 6);
    assert_eq!(count(&with(&["--handler", "hb", "--until", &between])), 3);
    assert_eq!(
        count(&[
            "dlq",
            "purge",
            "--dry-run",
            "--handler",
            "hb",
            "--until",
            &between
        ]),
        3
    );
    let (ok, _, err) = run_in(&dir, &["dlq", "retry", "--since", "yesterday"], &[]);
    assert!(!ok && err.contains("not an RFC 3339 time"), "{err}");
    // Nothing was touched by the dry runs.
    assert!(retried(&s).is_empty());

    // The API counts the same, then redrives exactly that set.
    let selection = json!({ "handler": "ha", "error_contains": "wrote", "since": between });
    let mut dry = selection.clone();
    dry["dry_run"] = json!(true);
    let (code, v) = s.send(
        "POST",
        "/api/personas/dead-letters/redrive",
        &dry.to_string(),
        &[],
    );
    assert_eq!((code, v["matched"].as_u64()), (200, Some(3)), "{v}");
    let expected: BTreeSet<i64> = s
        .bus()
        .store()
        .dead_letters(1000)
        .unwrap()
        .iter()
        .filter(|d| d.handler == "ha" && late.contains(&d.event_id))
        .map(|d| d.id)
        .collect();
    let (code, v) = s.send(
        "POST",
        "/api/personas/dead-letters/redrive",
        &selection.to_string(),
        &[],
    );
    assert_eq!((code, v["retried"].as_u64()), (200, Some(3)), "{v}");
    assert_eq!(retried(&s), expected);
    // Each ran again on `ha` (and, asked to reject on its first attempt
    // again, was dead-lettered again), with its history kept.
    for id in &late {
        persona_bus_tests::wait_for(Duration::from_secs(30), "the redriven run", || {
            s.bus()
                .store()
                .executions(id)
                .unwrap()
                .iter()
                .filter(|x| x.handler == "ha")
                .count()
                == 2
        });
        let letters = s.bus().store().dead_letters_of(id).unwrap();
        let mine: Vec<_> = letters.iter().filter(|d| d.handler == "ha").collect();
        assert_eq!(mine.len(), 2, "{mine:?}");
        assert_eq!(mine.iter().filter(|d| d.retried_at.is_some()).count(), 1);
    }
    for id in &early {
        let runs = s.bus().store().executions(id).unwrap();
        assert_eq!(runs.len(), 2, "untouched: one run per handler");
    }
    // A bad time is a 400 with the reason; an unknown field too.
    let (code, v) = s.send(
        "POST",
        "/api/personas/dead-letters/redrive",
        r#"{"since": "soon"}"#,
        &[],
    );
    assert_eq!(code, 400, "{v}");
    let (code, _) = s.send(
        "POST",
        "/api/personas/dead-letters/redrive",
        r#"{"handlr": "ha"}"#,
        &[],
    );
    assert!(code == 400 || code == 422, "{code}");
    // Purge by the same filters: the count, then exactly that many.
    let purge = json!({ "handler": "hb", "until": between });
    let (code, v) = s.send(
        "POST",
        "/api/personas/dead-letters/purge",
        &purge.to_string(),
        &[],
    );
    assert_eq!((code, v["purged"].as_u64()), (200, Some(3)), "{v}");
    assert_eq!(
        count(&[
            "dlq",
            "purge",
            "--dry-run",
            "--handler",
            "hb",
            "--until",
            &between
        ]),
        0
    );
}
