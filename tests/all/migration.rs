//! Schema migrations on a data file an older release wrote
//! (`tests/fixtures/bus-v2.db`, see its README): every row survives, the
//! old names still answer, and the bus carries on from where it was.

use persona_bus::store::Store;
use persona_bus_tests::{Sandbox, event, guests, wait_final};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bus-v2.db")
}

/// Rows of `sql` as strings (NULL as "NULL"), for comparing whole tables.
fn rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Real(v) => v.to_string(),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                })
            })
            .collect()
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

const EVENTS: &str = "SELECT id, project_id, event_type, source_type, source_id, target_persona_id, payload, \
     status, error_message, processed_at, created_at, headers, schema_version, chain_depth, retry_count, \
     next_attempt_at, claimed_at, claims, kafka_state FROM persona_events";
const LEDGER: &str = "SELECT event_id, handler, outcome, processed_at FROM persona_processed ORDER BY event_id, handler";
const EXECUTIONS: &str = "SELECT id, event_id, handler, handler_version, attempt, outcome, duration_us, error, \
     started_at FROM persona_executions ORDER BY id";
const OTHERS: [&str; 4] = [
    // Schema 4 adds `event_seq`; the columns the file had stay as they were.
    "SELECT id, event_id, handler, handler_version, attempts, reason, last_error, headers, created_at, retried_at \
     FROM persona_dead_letters ORDER BY id",
    "SELECT * FROM persona_handler_state ORDER BY handler, key",
    "SELECT * FROM persona_event_subscriptions ORDER BY id",
    // The columns of version 2 (later versions add some).
    "SELECT name, version, status, error, manifest_path, digest, updated_at FROM persona_handlers ORDER BY name",
];

#[test]
fn a_version_2_file_migrates_forward_with_every_row_and_the_old_names() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.data_dir()).unwrap();
    let db = sb.data_dir().join("bus.db");
    std::fs::copy(fixture(), &db).unwrap();
    let before = Connection::open(fixture()).unwrap();
    let version: i64 = before
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2, "the fixture is a version 2 file");
    let events = rows(&before, &format!("{EVENTS} ORDER BY rowid"));
    let ledger = rows(&before, LEDGER);
    let executions = rows(&before, EXECUTIONS);
    let others: Vec<_> = OTHERS.iter().map(|q| rows(&before, q)).collect();
    assert_eq!((events.len(), ledger.len(), executions.len()), (25, 27, 29));

    let store = Store::open(&sb.data_dir()).expect("open and migrate a version 2 file");
    let after = Connection::open(&db).unwrap();
    let version: i64 = after
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert!(version >= 3, "migrated to the integer-keyed layout");
    // The original bus's columns and ours, by their old names, in arrival
    // order; the ledger and executions through their views.
    assert_eq!(rows(&after, &format!("{EVENTS} ORDER BY seq")), events);
    assert_eq!(rows(&after, LEDGER), ledger);
    assert_eq!(rows(&after, EXECUTIONS), executions);
    for (q, expected) in OTHERS.iter().zip(&others) {
        assert_eq!(&rows(&after, q), expected, "{q}");
    }
    // The integer keys follow arrival order.
    let seqs: Vec<i64> = after
        .prepare("SELECT seq FROM persona_events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(seqs, (1..=25).collect::<Vec<i64>>());
    // Every id is in the id index (schema 4), and each dead letter points
    // at its event's row.
    let indexed: i64 = after
        .query_row(
            "SELECT count(*) FROM persona_event_ids i JOIN persona_events e ON e.seq = i.seq AND e.id = i.id",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexed, 25);
    let unlinked: i64 = after
        .query_row(
            "SELECT count(*) FROM persona_dead_letters d LEFT JOIN persona_events e ON e.seq = d.event_seq \
             WHERE e.id IS NOT d.event_id",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unlinked, 0, "dead letters refer to their event's seq");
    // Schema 6 drops the event-type index the fixture has: no query used it,
    // and each publish paid a page for it. Listing by type still works.
    let type_index: i64 = after
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'idx_persona_events_type'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(type_index, 0, "the unused event-type index is gone");
    let jobs = store
        .list_events(&persona_bus::store::EventFilter {
            event_type: Some("job".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert!(jobs.total > 0 && jobs.events.iter().all(|e| e.event_type == "job"));
    assert_eq!(
        jobs.total as usize,
        events.iter().filter(|r| r[2] == "job").count()
    );
    for row in &events {
        assert_eq!(store.event(&row[0]).unwrap().id, row[0], "found by id");
    }

    // The store's own reads see the migrated ledger: no handler runs again
    // on an event it finished before the upgrade.
    let ids: Vec<String> = events.iter().map(|r| r[0].clone()).collect();
    let done = store.processed_for(ids.iter().map(String::as_str)).unwrap();
    assert_eq!(done.values().map(Vec::len).sum::<usize>(), 27);
    assert_eq!(store.ledger_count("noop").unwrap(), 22);
    let job = events.iter().find(|r| r[2] == "job").unwrap()[0].clone();
    let runs: Vec<_> = store
        .executions(&job)
        .unwrap()
        .into_iter()
        .filter(|r| r.handler == "flaky")
        .map(|r| (r.attempt, r.outcome))
        .collect();
    assert_eq!(runs, [(1, "retry".to_owned()), (2, "completed".to_owned())]);
    assert_eq!(store.state_counter("counter", "count").unwrap(), 3);
    drop(store);

    // A second open finds nothing to do.
    Store::open(&sb.data_dir()).expect("reopen");

    // The bus carries on: the dead letter retries (its ledger entry is
    // cleared through the new keys), a new event runs, and the counter
    // continues from its migrated state.
    sb.install_shipped("counter", guests::COUNTER, guests::COUNTER_MANIFEST);
    sb.install(
        "noop",
        guests::NOOP,
        "[[subscriptions]]\nevent_type = \"*\"",
    );
    sb.install(
        "doomed",
        guests::FLAKY,
        "[[subscriptions]]\nevent_type = \"doomed\"\n[retry]\nmax_attempts = 2\nbackoff_ms = 20\n[config]\nsucceed_on = 1",
    );
    let bus = sb.open();
    bus.start().unwrap();
    let letter = bus.store().dead_letters(10).unwrap().remove(0);
    let retried = bus.store().retry_dead_letter(letter.id).unwrap().unwrap();
    let e = bus
        .publish(persona_bus::NewEvent {
            target_persona_id: Some("counter".into()),
            ..event("persona_action")
        })
        .unwrap();
    wait_final(&bus, &e.id, Duration::from_secs(10));
    let again = wait_final(&bus, &retried, Duration::from_secs(10));
    assert_eq!(again.status, persona_bus::EventStatus::Completed);
    assert_eq!(bus.store().state_counter("counter", "count").unwrap(), 4);
    // noop had finished the dead event before: it did not run again.
    assert_eq!(bus.store().ledger_count("noop").unwrap(), 22);
    bus.shutdown();
}
