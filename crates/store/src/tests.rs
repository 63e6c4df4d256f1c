use super::*;
use persona_bus_model::event::{EventLimits, EventStatus, NewEvent, now_millis};
use persona_bus_model::outcome::{Effects, Next, Resolution, Run, RunOutcome, StateOp, Verdict};
use std::sync::Arc;

fn event(project: &str) -> persona_bus_model::event::Event {
    NewEvent {
        event_type: "custom".into(),
        source_type: "system".into(),
        project_id: Some(project.into()),
        ..Default::default()
    }
    .validate(
        EventLimits {
            max_payload_bytes: 1024,
        },
        0,
    )
    .unwrap()
}

fn done_run(handler: &str, effects: Effects) -> Run {
    Run {
        handler: Arc::from(handler),
        version: Arc::from("1"),
        attempt: 1,
        started_at: String::new(),
        duration: Duration::from_micros(5),
        outcome: RunOutcome::Completed,
        verdict: Verdict::Done,
        effects,
        note: None,
        call_events: 1,
    }
}

#[test]
fn reopening_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.insert(&event("p")).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store
            .list_events(&EventFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .total,
        1
    );
}

#[test]
fn claim_is_atomic_ordered_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let events: Vec<_> = (0..5).map(|i| event(&format!("p{i}"))).collect();
    store.insert_batch(&events).unwrap();
    let now = now_millis();
    let first = store.claim(3, now, ClaimScope::Local, &[]).unwrap();
    assert_eq!(
        first.iter().map(|(e, _)| e.id.clone()).collect::<Vec<_>>(),
        events[..3].iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
    assert!(first.iter().all(|(_, claims)| *claims == 1));
    let second = store.claim(10, now, ClaimScope::Local, &[]).unwrap();
    assert_eq!(second.len(), 2, "claimed rows are not claimed again");
    assert!(
        store
            .claim(10, now, ClaimScope::Local, &[])
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.reap(i64::MAX).unwrap(), 5);
    let again = store.claim(10, now, ClaimScope::Local, &[]).unwrap();
    assert_eq!(again.len(), 5);
    assert!(
        again.iter().all(|(_, claims)| *claims == 2),
        "a reaped row reports its second claim"
    );
}

#[test]
fn effects_apply_once_per_event_and_handler() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ev = event("p");
    store.insert(&ev).unwrap();
    let follow = event("p");
    let effects = Effects {
        state: vec![
            StateOp::Add("n".into(), 2),
            StateOp::Set("k".into(), b"v".to_vec()),
        ],
        published: vec![follow],
        ..Default::default()
    };
    let res = Resolution {
        event: ev.clone(),
        runs: vec![done_run("h", effects)],
        next: Next::Final {
            status: EventStatus::Completed,
            error: None,
        },
    };
    let first = store.commit(std::slice::from_ref(&res)).unwrap();
    assert_eq!((first.published, first.duplicates), (1, 0));
    // The same run committed again (a redelivery) changes nothing.
    let second = store.commit(&[res]).unwrap();
    assert_eq!((second.published, second.duplicates), (0, 1));
    assert_eq!(store.state_counter("h", "n").unwrap(), 2);
    assert_eq!(
        store.state_get("h", "k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        store.state_get("other", "k").unwrap(),
        None,
        "state is per handler"
    );
    assert_eq!(store.ledger_count("h").unwrap(), 1);
    assert_eq!(
        store.executions(&ev.id).unwrap().len(),
        2,
        "both runs are recorded"
    );
    assert_eq!(store.event(&ev.id).unwrap().status, EventStatus::Completed);
}

#[test]
fn retry_schedules_the_event_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ev = event("p");
    store.insert(&ev).unwrap();
    let (claimed, _) = store
        .claim(1, now_millis(), ClaimScope::Local, &[])
        .unwrap()
        .remove(0);
    let at = now_millis() + 60_000;
    let res = Resolution {
        event: claimed,
        runs: vec![],
        next: Next::Retry {
            at_ms: at,
            error: "later".into(),
        },
    };
    store.commit(&[res]).unwrap();
    assert!(
        store
            .claim(1, now_millis(), ClaimScope::Local, &[])
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    assert_eq!(store.next_retry_at(now_millis()).unwrap(), Some(at));
    let row = store.event(&ev.id).unwrap();
    assert_eq!((row.status, row.retry_count), (EventStatus::Pending, 1));
    assert_eq!(
        store.claim(1, at, ClaimScope::Local, &[]).unwrap().len(),
        1,
        "due at its time"
    );
}

/// The relay must never put a later event of a project on Kafka before an
/// earlier one that is still being handled (issue: `outbox_pending` used to
/// skip `processing` rows and return the later ones).
#[test]
fn outbox_holds_a_project_behind_its_event_in_processing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.enable_outbox();
    let first = event("p");
    let second = event("p");
    let other = event("q");
    store
        .insert_batch(&[first.clone(), second.clone(), other.clone()])
        .unwrap();
    // The first event of p is being handled; the second is still pending.
    let (claimed, _) = store
        .claim(1, now_millis(), ClaimScope::Local, &[])
        .unwrap()
        .remove(0);
    assert_eq!(claimed.id, first.id);
    let ids = |events: Vec<persona_bus_model::event::Event>| -> Vec<String> {
        events.into_iter().map(|e| e.id).collect()
    };
    assert_eq!(
        ids(store.outbox_pending(100).unwrap()),
        vec![other.id.clone()],
        "p waits behind its event in processing; q goes"
    );
    let done = Resolution {
        event: claimed,
        runs: vec![],
        next: Next::Final {
            status: EventStatus::Completed,
            error: None,
        },
    };
    store.commit(&[done]).unwrap();
    assert_eq!(
        ids(store.outbox_pending(100).unwrap()),
        vec![first.id, second.id, other.id],
        "in publish order once it is handled"
    );
}

#[test]
fn claim_skips_projects_whose_lanes_are_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (p, q) = (event("p"), event("q"));
    store.insert_batch(&[p.clone(), q.clone()]).unwrap();
    let claimed = store
        .claim(10, now_millis(), ClaimScope::Local, &["p".to_owned()])
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].0.id, q.id);
    let claimed = store
        .claim(10, now_millis(), ClaimScope::Local, &[])
        .unwrap();
    assert_eq!(claimed[0].0.id, p.id, "p is claimed once its lane has room");
}

#[test]
fn the_reaper_leaves_events_in_flight_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b) = (event("p"), event("q"));
    store.insert_batch(&[a.clone(), b.clone()]).unwrap();
    store
        .claim(10, now_millis(), ClaimScope::Local, &[])
        .unwrap();
    assert_eq!(
        store
            .reap_except(i64::MAX, std::slice::from_ref(&a.id))
            .unwrap(),
        1
    );
    assert_eq!(store.event(&a.id).unwrap().status, EventStatus::Processing);
    assert_eq!(store.event(&b.id).unwrap().status, EventStatus::Pending);
}

/// An event with a random-looking id (as producers send), so the id index
/// is written out of order.
fn scattered(i: u64) -> persona_bus_model::event::Event {
    let mut e = event("p");
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0xD6E8_FEB8_6659_FD93;
    e.id = format!("{h:016x}-{i:08}");
    e
}

fn final_resolution(e: &persona_bus_model::event::Event) -> Resolution {
    Resolution {
        event: e.clone(),
        runs: vec![done_run("h", Effects::default())],
        next: Next::Final {
            status: EventStatus::Completed,
            error: None,
        },
    }
}

/// How many event rows have this id (one, unless stored twice).
fn rows_with_id(store: &Store, id: &str) -> i64 {
    store
        .read(|c| {
            c.query_row(
                "SELECT count(*) FROM persona_events WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .op("count")
        })
        .unwrap()
}

#[test]
fn event_ids_merge_into_their_index_and_stay_unique_across_stores() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = StoreConfig {
        id_tail: 16,
        ..Default::default()
    };
    let host = Store::open_tuned(dir.path(), Sync::Normal, Role::Host, tuning.clone()).unwrap();
    let events: Vec<_> = (0..200).map(scattered).collect();
    for batch in events.chunks(5) {
        host.insert_batch(batch).unwrap();
    }
    // Merged in runs: the tail stays near its bound, the rest is indexed.
    assert!(host.id_tail_len() <= 3 * 16, "tail {}", host.id_tail_len());
    let indexed: i64 = host
        .read(|c| {
            c.query_row("SELECT count(*) FROM persona_event_ids", [], |r| r.get(0))
                .op("count")
        })
        .unwrap();
    assert!(indexed >= 200 - 3 * 16, "indexed {indexed}");
    for e in &events {
        assert_eq!(host.event(&e.id).unwrap().id, e.id);
    }
    // An id stored long ago (merged) or a moment ago (tail) is refused.
    for e in [&events[0], &events[199]] {
        assert!(matches!(
            host.insert(e),
            Err(StoreError::DuplicateEvent(id)) if id == e.id
        ));
    }

    // Another process on the same file (a CLI publishing) sees the same ids,
    // and the host sees what it adds.
    let cli = Store::open(dir.path()).unwrap();
    assert_eq!(cli.event(&events[7].id).unwrap().id, events[7].id);
    assert!(matches!(
        cli.insert(&events[150]),
        Err(StoreError::DuplicateEvent(_))
    ));
    let from_cli = scattered(1_000);
    cli.insert(&from_cli).unwrap();
    assert_eq!(host.event(&from_cli.id).unwrap().id, from_cli.id);
    assert!(matches!(
        host.insert(&from_cli),
        Err(StoreError::DuplicateEvent(_))
    ));

    // A consumed event already stored (merged) is updated, not stored twice;
    // its redelivery takes effect once.
    let first = host
        .commit_consumed(&[final_resolution(&events[3])])
        .unwrap();
    let again = host
        .commit_consumed(&[final_resolution(&events[3])])
        .unwrap();
    assert_eq!((first.duplicates, again.duplicates), (0, 1));
    assert_eq!(rows_with_id(&host, &events[3].id), 1);
    assert_eq!(
        host.event(&events[3].id).unwrap().status,
        EventStatus::Completed
    );

    // Ids another process wrote and merged into the index since the host
    // last looked: the host's id filter learns them from the rows, so it
    // still finds them (a consumed copy is not stored twice, a redelivery
    // skips its handlers).
    let merging_cli =
        Store::open_tuned(dir.path(), Sync::Normal, Role::Tool, tuning.clone()).unwrap();
    let from_other: Vec<_> = (2_000..2_040).map(scattered).collect();
    for batch in from_other.chunks(5) {
        merging_cli.insert_batch(batch).unwrap();
    }
    assert!(
        merging_cli.id_tail_len() < from_other.len(),
        "the CLI merged"
    );
    merging_cli
        .commit_consumed(&[final_resolution(&from_other[1])])
        .unwrap();
    let redelivered = host.processed_for([from_other[1].id.as_str()]).unwrap();
    assert_eq!(redelivered.len(), 1, "{redelivered:?}");
    host.commit_consumed(&[final_resolution(&from_other[0])])
        .unwrap();
    assert_eq!(rows_with_id(&host, &from_other[0].id), 1);
    drop((host, cli, merging_cli));

    // A restart rebuilds the tail from the rows after the last merge.
    let host = Store::open_tuned(dir.path(), Sync::Normal, Role::Host, tuning).unwrap();
    let done = host.processed_for([events[3].id.as_str()]).unwrap();
    assert_eq!(
        done[&events[3].id],
        [("h".to_owned(), "completed".to_owned())]
    );
    assert!(matches!(
        host.insert(&from_cli),
        Err(StoreError::DuplicateEvent(_))
    ));
    assert!(matches!(
        host.insert(&events[198]),
        Err(StoreError::DuplicateEvent(_))
    ));
    host.insert(&scattered(1_001)).unwrap();
}

#[test]
fn stores_opened_at_once_on_a_new_file_all_open() {
    // A host starting beside a CLI: both create and migrate the same file.
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let opened: Vec<_> = (0..4)
            .map(|_| {
                let path = dir.path().to_owned();
                std::thread::spawn(move || Store::open(&path).map(|_| ()))
            })
            .collect();
        for t in opened {
            t.join().unwrap().expect("open beside another opener");
        }
    }
}

/// The bundled SQLite compiles a statement again whenever a bound LIMIT
/// changes (its planner reads the value). The poller's claim asks for a
/// different number of rows almost every time, so that was a quarter of
/// the poller's time; the claim keeps one compiled plan.
#[test]
fn the_claim_is_not_recompiled_when_its_limit_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let events: Vec<_> = (0..50).map(|i| event(&format!("p{i}"))).collect();
    store.insert_batch(&events).unwrap();
    let conn = store.writer();
    let mut stmt = conn
        .prepare(&super::events::claim_sql(ClaimScope::Local, false))
        .unwrap();
    let mut claimed = 0;
    for limit in 1..=5i64 {
        claimed += stmt
            .query_map(rusqlite::params![now_millis(), limit], |_| Ok(()))
            .unwrap()
            .count();
    }
    assert_eq!(claimed, 15, "each claim took its limit");
    assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
}

/// The id filter is read from the index at a host's first lookup, sized
/// for it, and left out when it would pass `store.id_filter_kb`. With
/// `PERSONA_BUS_FILTER_IDS=2000000` this prints the load time that README
/// quotes (`cargo test -p persona-bus --release --lib id_filter_is_loaded
/// -- --nocapture`).
#[test]
fn the_id_filter_is_loaded_from_the_index_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let n: usize = std::env::var("PERSONA_BUS_FILTER_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let ids: Vec<String> = (0..n as u64).map(|i| scattered(i).id).collect();
    {
        let s = Store::open(dir.path()).unwrap();
        s.write_tx("fill the index", |tx, _| {
            let mut st = tx
                .prepare("INSERT INTO persona_event_ids (id, seq) VALUES (?1, ?2)")
                .op("prepare")?;
            for (seq, id) in ids.iter().enumerate() {
                st.execute(rusqlite::params![id, seq as i64 + 1])
                    .op("insert")?;
            }
            tx.execute(
                "UPDATE persona_id_merge SET merged_through = ?1",
                [n as i64],
            )
            .op("merged through")?;
            Ok(())
        })
        .unwrap();
    }
    let host =
        Store::open_tuned(dir.path(), Sync::Normal, Role::Host, StoreConfig::default()).unwrap();
    assert_eq!(
        host.ids.filter_bytes(),
        0,
        "not loaded before the first lookup"
    );
    let t = std::time::Instant::now();
    assert!(
        host.processed_for([ids[n / 2].as_str()])
            .unwrap()
            .is_empty()
    );
    let bytes = host.ids.filter_bytes();
    eprintln!(
        "{n} ids: first lookup {:?}, filter {} KiB",
        t.elapsed(),
        bytes / 1024
    );
    // 10 bits an id and a quarter more, rounded to whole words.
    assert!(
        bytes >= n * 10 / 8 && bytes <= n * 2 + 8192,
        "{bytes} bytes for {n} ids"
    );
    drop(host);

    let tight = StoreConfig {
        id_filter_kb: 16,
        ..Default::default()
    };
    let host = Store::open_tuned(dir.path(), Sync::Normal, Role::Host, tight).unwrap();
    host.processed_for(["not-there"]).unwrap();
    assert_eq!(host.ids.filter_bytes(), 0, "past its bound: no filter");
    let tool = Store::open(dir.path()).unwrap();
    tool.processed_for(["not-there"]).unwrap();
    assert_eq!(tool.ids.filter_bytes(), 0, "command-line tools keep none");
}

/// The writer's transactions begin and commit through cached statements
/// (`WriteTx`): one that fails part-way, or is dropped uncommitted, must
/// leave nothing behind, and the connection must be usable afterwards.
#[test]
fn a_write_transaction_that_fails_or_is_dropped_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = event("p");
    // The same id twice in one transaction: the second row is refused.
    let failed = store.insert_gathered(|| Gathered {
        events: vec![event("p"), first.clone(), first.clone()],
        claim_at: None,
    });
    assert!(failed.is_err(), "a duplicate id fails the transaction");
    assert!(store.writer().is_autocommit(), "rolled back, not left open");
    assert_eq!(
        store.status_counts().unwrap(),
        vec![],
        "nothing of it stayed"
    );

    {
        let conn = store.writer();
        let tx = WriteTx::begin(&conn).unwrap();
        tx.execute(
            "INSERT INTO persona_handler_names (name) VALUES ('dropped')",
            [],
        )
        .unwrap();
    }
    let names: i64 = store
        .writer()
        .query_row("SELECT count(*) FROM persona_handler_names", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(names, 0, "a transaction dropped uncommitted is rolled back");

    store.insert(&first).unwrap();
    assert_eq!(
        store.status_counts().unwrap(),
        vec![(EventStatus::Pending, 1)],
        "the writer commits again afterwards"
    );
}

/// The writer skips catching up with the file while no other connection
/// has committed (`PRAGMA data_version`): a row another process commits
/// between two of the host's writes must still be seen by the next one.
#[test]
fn the_writer_sees_ids_another_process_committed_between_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let host =
        Store::open_tuned(dir.path(), Sync::Normal, Role::Host, StoreConfig::default()).unwrap();
    for _ in 0..3 {
        host.insert(&event("p")).unwrap();
    }
    let cli = Store::open(dir.path()).unwrap();
    let from_cli = event("p");
    cli.insert(&from_cli).unwrap();
    // No read in between: the writer's own transaction must catch up.
    assert!(matches!(
        host.insert(&from_cli),
        Err(StoreError::DuplicateEvent(id)) if id == from_cli.id
    ));
    host.insert(&event("p")).unwrap();
    assert_eq!(
        host.status_counts().unwrap(),
        vec![(EventStatus::Pending, 5)]
    );
}

fn dead_letter_resolution(e: &persona_bus_model::event::Event) -> Resolution {
    let mut run = done_run("h", Effects::default());
    run.outcome = RunOutcome::Rejected("no".into());
    run.verdict = Verdict::DeadLetter { reason: "rejected" };
    Resolution {
        event: e.clone(),
        runs: vec![run],
        next: Next::Final {
            status: EventStatus::DeadLetter,
            error: Some("no".into()),
        },
    }
}

/// Runs pruning passes' steps until the pass is over; the total deleted.
fn prune_all(store: &Store, h: &Horizons, rows: usize) -> Pruned {
    let mut pass = Pass::default();
    let mut total = Pruned::default();
    loop {
        let (p, _) = store.prune_step(h, rows, &mut pass).unwrap();
        total.add(p);
        if p.total() == 0 && pass.done() {
            return total;
        }
    }
}

fn count(store: &Store, sql: &str) -> i64 {
    store
        .read(|c| c.query_row(sql, [], |r| r.get(0)).op("count"))
        .unwrap()
}

#[test]
fn retention_prunes_finished_events_with_their_entries_and_keeps_what_must_stay() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = StoreConfig {
        id_tail: 4,
        ..Default::default()
    };
    let store = Store::open_tuned(dir.path(), Sync::Normal, Role::Host, tuning).unwrap();
    let events: Vec<_> = (0..60).map(scattered).collect();
    for batch in events.chunks(6) {
        store.insert_batch(batch).unwrap();
    }
    let (finished, pending) = events.split_at(50);
    let dead = [&finished[3], &finished[7]];
    for e in finished {
        let res = if dead.iter().any(|d| d.id == e.id) {
            dead_letter_resolution(e)
        } else {
            final_resolution(e)
        };
        store.commit(&[res]).unwrap();
    }
    let merged: i64 = count(&store, "SELECT merged_through FROM persona_id_merge");
    let seq_of = |id: &str| {
        store
            .read(|c| {
                c.query_row("SELECT seq FROM persona_events WHERE id = ?1", [id], |r| {
                    r.get::<_, i64>(0)
                })
                .op("seq")
            })
            .unwrap()
    };
    let prunable: Vec<_> = finished
        .iter()
        .filter(|e| !dead.iter().any(|d| d.id == e.id) && seq_of(&e.id) <= merged)
        .collect();
    assert!(prunable.len() > 30, "most are merged: {}", prunable.len());

    // Nothing is old enough yet.
    let now = std::time::SystemTime::now();
    let config = RetentionConfig::default();
    assert_eq!(
        prune_all(&store, &config.horizons(now, 0.0), 7),
        Pruned::default()
    );

    // A week and a day later (steps of 7 rows: many steps per pass).
    let later = now + Duration::from_secs(8 * 24 * 3600);
    let h = config.horizons(later, 0.0);
    assert_eq!(store.prunable(&h).unwrap().events, prunable.len() as u64);
    let pruned = prune_all(&store, &h, 7);
    assert_eq!(pruned.events, prunable.len() as u64);
    // Their runs went with them, and runs age out on their own.
    assert!(pruned.executions >= prunable.len() as u64, "{pruned:?}");
    assert!(store.executions(&dead[0].id).unwrap().is_empty());
    assert_eq!(pruned.dead_letters, 0, "dead letters are kept 30 days");
    for e in &prunable {
        assert!(store.event(&e.id).is_err(), "{} pruned", e.id);
        assert!(store.executions(&e.id).unwrap().is_empty());
    }
    assert_eq!(
        count(&store, "SELECT count(*) FROM persona_event_ids") as usize,
        60 - prunable.len()
            - (count(&store, "SELECT max(seq) FROM persona_events") - merged) as usize,
        "their id entries went with them"
    );
    assert_eq!(
        store.ledger_count("h").unwrap() as usize,
        50 - prunable.len(),
        "so did their ledger entries"
    );
    for e in pending.iter().chain(dead) {
        assert!(store.event(&e.id).is_ok(), "{} kept", e.id);
    }
    assert_eq!(store.prunable(&h).unwrap(), Pruned::default());

    // A pruned id is new again; a kept one is still refused.
    store.insert(prunable[0]).unwrap();
    assert!(matches!(
        store.insert(dead[0]),
        Err(StoreError::DuplicateEvent(_))
    ));

    // Forty days on the older dead letter goes (the newest row of a table
    // always stays, so ids keep growing), and its event after it.
    let h = config.horizons(now + Duration::from_secs(40 * 24 * 3600), 0.0);
    let pruned = prune_all(&store, &h, 7);
    assert_eq!(pruned.dead_letters, 1);
    assert_eq!(store.dead_letters(10).unwrap().len(), 1);
    assert!(store.event(&dead[0].id).is_err());
    assert!(store.event(&dead[1].id).is_ok(), "its dead letter is kept");

    // Kafka may deliver events again for as long as its topics keep them:
    // rows are kept that long at least.
    let store2 = tempfile::tempdir().unwrap();
    let s2 = Store::open_tuned(
        store2.path(),
        Sync::Normal,
        Role::Host,
        StoreConfig {
            id_tail: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let evs: Vec<_> = (100..110).map(scattered).collect();
    s2.insert_batch(&evs).unwrap();
    for e in &evs {
        s2.commit(&[final_resolution(e)]).unwrap();
    }
    let redelivery_hours = 30.0 * 24.0;
    let h = config.horizons(later, redelivery_hours);
    assert_eq!(prune_all(&s2, &h, 100).events, 0);
    for e in &evs {
        assert!(matches!(s2.insert(e), Err(StoreError::DuplicateEvent(_))));
    }
}

#[test]
fn retention_gives_the_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_tuned(
        dir.path(),
        Sync::Normal,
        Role::Host,
        StoreConfig {
            id_tail: 64,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        store.size().unwrap().gives_back,
        "new files vacuum incrementally"
    );
    let events: Vec<_> = (0..3_000)
        .map(|i| {
            let mut e = scattered(i);
            e.payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(900));
            e
        })
        .collect();
    for batch in events.chunks(100) {
        store.insert_batch(batch).unwrap();
        let done: Vec<_> = batch.iter().map(final_resolution).collect();
        store.commit(&done).unwrap();
    }
    store.checkpoint_holding_writer().unwrap();
    let full = store.size().unwrap().file_bytes;
    let h = RetentionConfig::default().horizons(
        std::time::SystemTime::now() + Duration::from_secs(8 * 24 * 3600),
        0.0,
    );
    let pruned = prune_all(&store, &h, 500);
    assert!(pruned.events > 2_000, "{pruned:?}");
    assert!(store.size().unwrap().free_bytes > full / 2);
    while store.vacuum_step(512).unwrap().0 > 0 {}
    store.checkpoint_holding_writer().unwrap();
    let after = store.size().unwrap();
    assert!(
        after.file_bytes < full / 3,
        "{full} bytes before, {} after",
        after.file_bytes
    );
    assert!(after.free_bytes < 64 * 1024, "{after:?}");
}

#[test]
fn retention_settings_are_checked() {
    let ok = RetentionConfig::default();
    assert!(ok.validate().is_ok());
    for bad in [
        RetentionConfig {
            events_hours: -1.0,
            ..ok.clone()
        },
        RetentionConfig {
            dead_letters_hours: f64::NAN,
            ..ok.clone()
        },
        RetentionConfig {
            step_rows: 0,
            ..ok.clone()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    // 0 keeps forever.
    let forever = RetentionConfig {
        events_hours: 0.0,
        executions_hours: 0.0,
        dead_letters_hours: 0.0,
        ..ok
    };
    let h = forever.horizons(std::time::SystemTime::now(), 100.0);
    assert!(h.events.is_none() && h.executions.is_none() && h.dead_letters.is_none());
}

#[test]
fn a_file_from_before_retention_gives_space_back_after_compact() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A table before any pragma: the file keeps auto_vacuum off, as
        // files created by earlier releases do.
        let c = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute_batch("CREATE TABLE older (a INTEGER)").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(!store.size().unwrap().gives_back);
    store.insert(&event("p")).unwrap();
    let after = store.compact().unwrap();
    assert!(after.gives_back);
    assert_eq!(after.free_bytes, 0);
    assert_eq!(
        store
            .status_counts()
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>(),
        1
    );
}
