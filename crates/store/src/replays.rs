//! Replays of one handler over past events (`persona_replays`), and the
//! commit of their runs into a ledger generation of their own.
//!
//! A replay's ledger rows and execution rows are recorded under the name
//! `<handler>#replay-<id>`: a fresh generation, so each event runs once per
//! replay whatever the handler's own ledger says, and `events show` tells
//! a replayed run from a live one. Its state writes and published events
//! are the handler's own, applied as a live run's are (once: only when its
//! ledger row is new). An event's status is never touched.

use super::{Op, Store, StoreError};
use crate::events::{EVENT_COLUMNS, insert_event};
use persona_bus_model::event::{Event, now_rfc3339};
use persona_bus_model::outcome::{Run, Verdict};
use rusqlite::params;
use serde::Serialize;

/// One replay, as `replay` and the dashboard show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Replay {
    pub id: i64,
    pub handler: String,
    pub source: String,
    pub from: String,
    pub to: Option<String>,
    pub project: Option<String>,
    /// `running`, `finished` or `failed`.
    pub status: String,
    /// Events to look at, when known in advance.
    pub total: Option<u64>,
    /// Events looked at so far (run, or not for this handler).
    pub done: u64,
    pub completed: u64,
    pub failed: u64,
    pub error: Option<String>,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl Replay {
    /// The ledger name of its runs.
    pub fn ledger_name(&self) -> String {
        format!("{}#replay-{}", self.handler, self.id)
    }
}

/// What a replay covers (SQLite source): `created_at` in [from, to).
#[derive(Debug, Clone, Default)]
pub struct ReplayRange {
    /// RFC 3339 with milliseconds, as events store it.
    pub from: String,
    pub to: Option<String>,
    pub project: Option<String>,
}

impl Store {
    pub fn start_replay(
        &self,
        handler: &str,
        source: &str,
        (from, to, project): (&str, Option<&str>, Option<&str>),
        total: Option<u64>,
    ) -> Result<Replay, StoreError> {
        let now = now_rfc3339();
        let id: i64 = self
            .writer()
            .query_row(
                "INSERT INTO persona_replays (handler, source, from_spec, to_spec, project, status, total, started_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?7) RETURNING id",
                params![handler, source, from, to, project, total.map(|t| t as i64), now],
                |r| r.get(0),
            )
            .op("start replay")?;
        self.replay(id)
    }

    /// Records progress; `status` and `error` end it when not `running`.
    pub fn replay_progress(
        &self,
        id: i64,
        (done, completed, failed): (u64, u64, u64),
        status: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let finished = (status != "running").then_some(now.as_str());
        self.writer()
            .execute(
                "UPDATE persona_replays SET done = ?2, completed = ?3, failed = ?4, status = ?5, error = ?6, \
                 updated_at = ?7, finished_at = coalesce(?8, finished_at) WHERE id = ?1",
                params![id, done as i64, completed as i64, failed as i64, status, error, now, finished],
            )
            .op("replay progress")?;
        Ok(())
    }

    pub fn replay(&self, id: i64) -> Result<Replay, StoreError> {
        self.replays_where("WHERE id = ?1", params![id])?
            .pop()
            .ok_or(StoreError::ReplayNotFound(id))
    }

    /// The newest replays first.
    pub fn replays(&self, limit: usize) -> Result<Vec<Replay>, StoreError> {
        self.replays_where("ORDER BY id DESC LIMIT ?1", params![limit as i64])
    }

    fn replays_where(
        &self,
        tail: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<Replay>, StoreError> {
        let sql = format!(
            "SELECT id, handler, source, from_spec, to_spec, project, status, total, done, completed, failed, \
             error, started_at, updated_at, finished_at FROM persona_replays {tail}"
        );
        self.read(|conn| {
            conn.prepare(&sql)
                .op("prepare replays")?
                .query_map(args, |r| {
                    Ok(Replay {
                        id: r.get(0)?,
                        handler: r.get(1)?,
                        source: r.get(2)?,
                        from: r.get(3)?,
                        to: r.get(4)?,
                        project: r.get(5)?,
                        status: r.get(6)?,
                        total: r.get::<_, Option<i64>>(7)?.map(|t| t as u64),
                        done: r.get::<_, i64>(8)? as u64,
                        completed: r.get::<_, i64>(9)? as u64,
                        failed: r.get::<_, i64>(10)? as u64,
                        error: r.get(11)?,
                        started_at: r.get(12)?,
                        updated_at: r.get(13)?,
                        finished_at: r.get(14)?,
                    })
                })
                .op("replays")?
                .collect::<rusqlite::Result<_>>()
                .op("read replays")
        })
    }

    /// Events in `range`, after row `after` (a seq), oldest first: the
    /// next page of a replay from SQLite, with each row's seq.
    pub fn replay_page(
        &self,
        range: &ReplayRange,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        let sql = format!(
            "SELECT seq, {EVENT_COLUMNS} FROM persona_events WHERE seq > ?1 AND created_at >= ?2 \
             AND (?3 IS NULL OR created_at < ?3) AND (?4 IS NULL OR project_id = ?4) ORDER BY seq LIMIT ?5"
        );
        self.read(|conn| {
            conn.prepare_cached(&sql)
                .op("prepare replay page")?
                .query_map(
                    params![after, range.from, range.to, range.project, limit as i64],
                    |r| {
                        let seq: i64 = r.get(0)?;
                        // The event's columns follow the seq.
                        let e = crate::events::event_at(r, 1)?;
                        Ok((seq, e))
                    },
                )
                .op("replay page")?
                .collect::<rusqlite::Result<_>>()
                .op("read replay page")
        })
    }

    /// How many events `range` holds now.
    pub fn replay_count(&self, range: &ReplayRange) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT count(*) FROM persona_events WHERE created_at >= ?1 \
                 AND (?2 IS NULL OR created_at < ?2) AND (?3 IS NULL OR project_id = ?3)",
            )
            .op("prepare replay count")?
            .query_row(params![range.from, range.to, range.project], |r| {
                r.get::<_, i64>(0)
            })
            .op("replay count")
            .map(|n| n as u64)
        })
    }

    /// Commits the finished runs of a replay (`ledger`: its generation's
    /// name) in one transaction; see the module docs. An event with no row
    /// here (read from Kafka, never stored on this device) is stored first,
    /// as `skipped` for the other handlers. Returns the runs that took
    /// effect (not already in this generation's ledger).
    pub fn commit_replayed(&self, ledger: &str, runs: &[(Event, Run)]) -> Result<u64, StoreError> {
        let now = now_rfc3339();
        let now_ms = persona_bus_model::event::now_millis();
        let outbox = self.outbox_enabled();
        self.write_tx("commit replayed runs", |conn, ids| {
            let no = *self
                .handler_numbers(conn, [ledger])?
                .get(ledger)
                .expect("numbered");
            let mut fresh_runs = 0;
            for (event, run) in runs {
                let seq = match ids.seq(conn, &event.id)? {
                    Some(seq) => seq,
                    None => crate::events::insert_replayed(conn, ids, event, &now)?,
                };
                super::outcomes::insert_execution_row(conn, seq, no, run, &now)?;
                let outcome = match run.verdict {
                    Verdict::Done => "completed",
                    Verdict::DeadLetter { .. } => "dead_letter",
                    Verdict::RetryAt(_) => continue,
                };
                let fresh = conn
                    .prepare_cached(
                        "INSERT INTO persona_ledger (event_seq, handler_no, outcome, processed_at) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                    )
                    .op("prepare replay ledger")?
                    .execute(params![seq, no, outcome, now_ms])
                    .op("replay ledger")?
                    == 1;
                if !fresh {
                    continue;
                }
                fresh_runs += 1;
                if run.verdict == Verdict::Done {
                    super::outcomes::apply_state(conn, &run.handler, &run.effects.state, &now)?;
                    for e in &run.effects.published {
                        insert_event(conn, ids, e, outbox)?;
                    }
                }
            }
            Ok(fresh_runs)
        })
    }
}
