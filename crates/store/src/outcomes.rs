//! Committing what handlers did: executions, the processed ledger, effects,
//! dead letters and the event's next state, all in one transaction.

use super::events::{finish_event, insert_event, insert_remote, upsert_final};
use super::{Op, Store, StoreError, headers_to_json};
use persona_bus_model::event::{Event, now_rfc3339};
use persona_bus_model::outcome::{Next, Resolution, Run, StateOp, Verdict};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::collections::HashMap;

/// What a commit changed, for notifications and metrics.
#[derive(Debug, Default)]
pub struct Committed {
    /// Follow-up events that handlers published (now pending).
    pub published: usize,
    /// Runs whose ledger entry already existed: their effects were dropped.
    pub duplicates: usize,
}

/// A row of `persona_executions`.
#[derive(Debug, Clone, Serialize)]
pub struct Execution {
    pub id: i64,
    pub event_id: String,
    pub handler: String,
    pub handler_version: String,
    pub attempt: u32,
    pub outcome: String,
    pub duration_us: i64,
    pub error: Option<String>,
    pub started_at: String,
}

/// A row of `persona_dead_letters`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: String,
    pub handler: String,
    pub handler_version: String,
    pub attempts: u32,
    pub reason: String,
    pub last_error: String,
    pub headers: Vec<(String, String)>,
    pub created_at: String,
    pub retried_at: Option<String>,
    /// Type of the dead event (from `persona_events`).
    pub event_type: Option<String>,
}

impl Store {
    /// Commits a batch of resolutions atomically. For each run that finished
    /// (completed or dead-lettered) the ledger row is inserted first; its
    /// effects are applied only if that insert was new, so a run that happens
    /// twice (a redelivery, a crash between run and commit) takes effect once.
    pub fn commit(&self, resolutions: &[Resolution]) -> Result<Committed, StoreError> {
        self.commit_from(resolutions, false)
    }

    /// Commits outcomes of events consumed from Kafka: as [`Store::commit`],
    /// and each event's row is written first if this device has none (an
    /// event from another device), so `events list/show` see it.
    pub fn commit_consumed(&self, resolutions: &[Resolution]) -> Result<Committed, StoreError> {
        self.commit_from(resolutions, true)
    }

    fn commit_from(
        &self,
        resolutions: &[Resolution],
        from_kafka: bool,
    ) -> Result<Committed, StoreError> {
        let now = now_rfc3339();
        let now_ms = persona_bus_model::event::now_millis();
        let mut done = Committed::default();
        let conn = self.writer();
        let held = std::time::Instant::now();
        let handlers = self.handler_numbers(
            &conn,
            resolutions
                .iter()
                .flat_map(|r| r.runs.iter().map(|run| &*run.handler)),
        )?;
        let tx = super::WriteTx::begin(&conn).op("begin commit")?;
        let mut ids = self.ids.begin(&tx)?;
        // Two passes. First each event's next state, visiting events in id
        // order: a miss in the id tail probes the id index, and walking it
        // left to right keeps each descent on pages the last one touched.
        // It also gives each row's seq, which the ledger and executions
        // refer to. Then the runs, in the order they finished, so execution
        // rows keep the order handlers ran in.
        if from_kafka {
            // A consumed event that goes back to pending (a retry, or a
            // wait for a held handler) gets its row here first, in the
            // order the events came: the poller takes pending rows by seq,
            // so a project's waiting events run again in their order.
            for res in resolutions {
                if matches!(res.next, Next::Retry { .. } | Next::Wait { .. }) {
                    insert_remote(&tx, &mut ids, &res.event)?;
                }
            }
        }
        let mut by_id: Vec<usize> = (0..resolutions.len()).collect();
        by_id.sort_unstable_by(|&a, &b| resolutions[a].event.id.cmp(&resolutions[b].event.id));
        let mut seqs: Vec<Option<i64>> = vec![None; resolutions.len()];
        for i in by_id {
            let res = &resolutions[i];
            // A consumed event's row may not exist here yet (another
            // device's event): a final state creates it, a retry needs the
            // row first.
            seqs[i] = match &res.next {
                Next::Final { status, error } if from_kafka => Some(upsert_final(
                    &tx,
                    &mut ids,
                    &res.event,
                    status.as_str(),
                    error.as_deref(),
                    &now,
                )?),
                Next::Final { status, error } => {
                    let seq = ids.seq(&tx, &res.event.id)?;
                    if let Some(seq) = seq {
                        finish_event(&tx, seq, status.as_str(), error.as_deref(), &now)?;
                    }
                    seq
                }
                Next::Retry { at_ms, error }
                | Next::Wait {
                    at_ms,
                    reason: error,
                } => {
                    let seq = if from_kafka {
                        Some(insert_remote(&tx, &mut ids, &res.event)?.seq)
                    } else {
                        ids.seq(&tx, &res.event.id)?
                    };
                    // A retry counts an attempt; a wait for a held handler
                    // does not, and marks the row claimable whatever its
                    // Kafka state (see `ClaimScope`).
                    let (sql, what) = match &res.next {
                        Next::Retry { .. } => (
                            "UPDATE persona_events SET status = 'pending', error_message = ?2, next_attempt_at = ?3, \
                             retry_count = retry_count + 1, claimed_at = NULL WHERE seq = ?1",
                            "schedule retry",
                        ),
                        _ => (
                            "UPDATE persona_events SET status = 'pending', error_message = ?2, next_attempt_at = ?3, \
                             waiting = 1, claimed_at = NULL WHERE seq = ?1",
                            "wait for a held handler",
                        ),
                    };
                    if let Some(seq) = seq {
                        tx.prepare_cached(sql)
                            .op(what)?
                            .execute(params![seq, error, at_ms])
                            .op(what)?;
                    }
                    seq
                }
            };
        }
        // The two statements every run uses, prepared once per batch (the
        // statement cache hashes the SQL text at each lookup).
        let mut execution = tx
            .prepare_cached(INSERT_EXECUTION)
            .op("prepare execution")?;
        let mut ledger = tx
            .prepare_cached(
                "INSERT INTO persona_ledger (event_seq, handler_no, outcome, processed_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .op("prepare ledger")?;
        for (res, seq) in resolutions.iter().zip(seqs) {
            let Some(seq) = seq else {
                // Claimed rows are never deleted; a row gone anyway (edited
                // by hand) has nothing left to record against.
                tracing::warn!(event = %res.event.id, "event row vanished before its outcome was committed; outcome dropped");
                continue;
            };
            for run in &res.runs {
                let handler_no = handlers[&*run.handler];
                insert_execution(&mut execution, seq, handler_no, run, &now)?;
                let ledger_outcome = match run.verdict {
                    Verdict::Done => "completed",
                    Verdict::DeadLetter { .. } => "dead_letter",
                    Verdict::RetryAt(_) => continue,
                };
                let fresh = ledger
                    .execute(params![seq, handler_no, ledger_outcome, now_ms])
                    .op("insert ledger")?
                    == 1;
                if !fresh {
                    done.duplicates += 1;
                    continue;
                }
                match run.verdict {
                    Verdict::Done => {
                        apply_state(&tx, &run.handler, &run.effects.state, &now)?;
                        for e in &run.effects.published {
                            insert_event(&tx, &mut ids, e, self.outbox_enabled())?;
                        }
                        done.published += run.effects.published.len();
                    }
                    Verdict::DeadLetter { reason } => {
                        insert_dead_letter(&tx, &res.event, seq, run, reason, &now)?
                    }
                    Verdict::RetryAt(_) => unreachable!("skipped above"),
                }
            }
        }
        drop((execution, ledger));
        tx.commit().op("commit outcomes")?;
        super::note_hold("commit of outcomes", held.elapsed());
        ids.committed();
        drop(handlers);
        self.merge_ids(&conn);
        Ok(done)
    }

    /// Ledger entries (handler, outcome) of events claimed more than once:
    /// the handlers that must not run on them again.
    pub fn processed_for<'a>(
        &self,
        event_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, Vec<(String, String)>>, StoreError> {
        let mut ids: Vec<&str> = event_ids.into_iter().collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        // In id order, so consecutive probes of the id index share pages.
        ids.sort_unstable();
        self.read(|conn| {
            // One read transaction for every lookup. Without it each probe
            // was a transaction of its own: a shared-memory lock, a look at
            // the WAL header and, whenever the committer had written since,
            // a page cache thrown away and read again. That was a third of
            // the Kafka consumer thread (one probe per consumed event).
            // Ended (rolled back: nothing was written) when the closure returns.
            let _snapshot = conn.unchecked_transaction().op("begin ledger lookup")?;
            // An id the lookup misses (written a moment ago by another
            // process) only means its handlers are not skipped here: the
            // ledger still refuses their effects at commit.
            self.ids.catch_up(conn)?;
            let mut by_seq: persona_bus_model::fast_map::FastMap<i64, &str> =
                persona_bus_model::fast_map::FastMap::with_capacity_and_hasher(
                    ids.len(),
                    Default::default(),
                );
            for id in &ids {
                if let Some(seq) = self.ids.seq_for_read(conn, id, false)? {
                    by_seq.insert(seq, id);
                }
            }
            let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
            if by_seq.is_empty() {
                return Ok(out);
            }
            let seqs: Vec<i64> = by_seq.keys().copied().collect();
            let seqs = serde_json::to_string(&seqs).unwrap_or_else(|_| "[]".into());
            let mut stmt = conn
                .prepare_cached(
                    "SELECT l.event_seq, h.name, l.outcome FROM json_each(?1) j \
                     JOIN persona_ledger l ON l.event_seq = j.value \
                     JOIN persona_handler_names h ON h.no = l.handler_no",
                )
                .op("prepare ledger lookup")?;
            let rows = stmt
                .query_map([seqs], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?)))
                .op("ledger lookup")?;
            for row in rows {
                let (seq, handler, outcome): (i64, String, String) = row.op("read ledger")?;
                out.entry(by_seq[&seq].to_owned())
                    .or_default()
                    .push((handler, outcome));
            }
            Ok(out)
        })
    }

    /// Handler runs of one event, oldest first.
    pub fn executions(&self, event_id: &str) -> Result<Vec<Execution>, StoreError> {
        self.read(|conn| {
            let Some(seq) = self.seq_of(conn, event_id)? else {
                return Ok(Vec::new());
            };
            conn.prepare_cached(
                "SELECT r.id, e.id, h.name, r.handler_version, r.attempt, r.outcome, r.duration_us, r.error, r.started_at \
                 FROM persona_events e JOIN persona_runs r ON r.event_seq = e.seq \
                 JOIN persona_handler_names h ON h.no = r.handler_no WHERE e.seq = ?1 ORDER BY r.id",
            )
            .op("prepare executions")?
            .query_map([seq], |r| {
                Ok(Execution {
                    id: r.get(0)?,
                    event_id: r.get(1)?,
                    handler: r.get(2)?,
                    handler_version: r.get(3)?,
                    attempt: r.get(4)?,
                    outcome: r.get(5)?,
                    duration_us: r.get(6)?,
                    error: r.get(7)?,
                    started_at: r.get(8)?,
                })
            })
            .op("executions")?
            .collect::<rusqlite::Result<_>>()
            .op("read executions")
        })
    }

    /// Ledger rows (finished events) of one handler.
    pub fn ledger_count(&self, handler: &str) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT count(*) FROM persona_ledger \
                 WHERE handler_no = (SELECT no FROM persona_handler_names WHERE name = ?1)",
                [handler],
                |r| r.get::<_, i64>(0),
            )
            .op("count ledger")
            .map(|n| n as u64)
        })
    }
}

const INSERT_EXECUTION: &str = "INSERT INTO persona_runs (event_seq, handler_no, handler_version, attempt, outcome, duration_us, error, started_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// [`insert_execution`] with its own (cached) statement.
pub(crate) fn insert_execution_row(
    conn: &Connection,
    event_seq: i64,
    handler_no: i64,
    run: &Run,
    now: &str,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(INSERT_EXECUTION)
        .op("prepare execution")?;
    insert_execution(&mut stmt, event_seq, handler_no, run, now)
}

fn insert_execution(
    stmt: &mut rusqlite::Statement<'_>,
    event_seq: i64,
    handler_no: i64,
    run: &Run,
    now: &str,
) -> Result<(), StoreError> {
    // A run that completed but ran into a limit (publish refused, an
    // outbound request refused) keeps the note in `error`, so it is visible
    // without failing the event; a failed run keeps both.
    let error = match (run.outcome.error(), &run.note) {
        (Some(e), Some(note)) => Some(format!("{e} ({note})")),
        (e, note) => e.or_else(|| note.clone()),
    };
    stmt.execute(params![
        event_seq,
        handler_no,
        &*run.version,
        run.attempt,
        run.outcome.label(),
        run.duration.as_micros() as i64,
        error,
        if run.started_at.is_empty() {
            now
        } else {
            &run.started_at
        },
    ])
    .op("insert execution")?;
    Ok(())
}

fn insert_dead_letter(
    conn: &Connection,
    event: &Event,
    event_seq: i64,
    run: &Run,
    reason: &str,
    now: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO persona_dead_letters (event_id, handler, handler_version, attempts, reason, last_error, headers, created_at, event_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .op("prepare dead letter")?
    .execute(params![
        event.id,
        &*run.handler,
        &*run.version,
        run.attempt,
        reason,
        run.outcome.error().unwrap_or_default(),
        headers_to_json(&event.headers),
        now,
        event_seq,
    ])
    .op("insert dead letter")?;
    Ok(())
}

pub(crate) fn apply_state(
    conn: &Connection,
    handler: &str,
    ops: &[StateOp],
    now: &str,
) -> Result<(), StoreError> {
    for op in ops {
        match op {
            StateOp::Set(key, value) => put(conn, handler, key, value, now)?,
            StateOp::Delete(key) => {
                conn.prepare_cached(
                    "DELETE FROM persona_handler_state WHERE handler = ?1 AND key = ?2",
                )
                .op("prepare state delete")?
                .execute(params![handler, key])
                .op("state delete")?;
            }
            StateOp::Add(key, delta) => {
                let current: Option<Vec<u8>> = conn
                    .prepare_cached(
                        "SELECT value FROM persona_handler_state WHERE handler = ?1 AND key = ?2",
                    )
                    .op("prepare state read")?
                    .query_row(params![handler, key], |r| r.get(0))
                    .optional()
                    .op("state read")?;
                // The guest saw a number when it called increment; a value
                // overwritten since by a non-number restarts from 0.
                let base = current
                    .as_deref()
                    .and_then(persona_bus_model::outcome::parse_counter)
                    .unwrap_or(0);
                put(
                    conn,
                    handler,
                    key,
                    base.saturating_add(*delta).to_string().as_bytes(),
                    now,
                )?;
            }
        }
    }
    Ok(())
}

fn put(
    conn: &Connection,
    handler: &str,
    key: &str,
    value: &[u8],
    now: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO persona_handler_state (handler, key, value, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (handler, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .op("prepare state put")?
    .execute(params![handler, key, value, now])
    .op("state put")?;
    Ok(())
}
