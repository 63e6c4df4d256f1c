use super::*;
use crate::event::{EventLimits, EventStatus, NewEvent, now_millis};
use crate::outcome::{Effects, Next, Resolution, Run, RunOutcome, StateOp, Verdict};
use std::sync::Arc;

fn event(project: &str) -> crate::event::Event {
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
    let ids = |events: Vec<crate::event::Event>| -> Vec<String> {
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
