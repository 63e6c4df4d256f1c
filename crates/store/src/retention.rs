//! Retention: what the store forgets, in small steps, and the space it
//! gives back.
//!
//! Three horizons (`[store.retention]`):
//! - finished events (every status but pending and processing), with
//!   everything that refers to them: their id entry, their ledger entries
//!   and their execution rows. An event with a dead letter still kept
//!   stays, so a dead letter can always be retried;
//! - execution rows on their own (they may be kept shorter than events);
//! - dead letters.
//!
//! Invariants, each relied on elsewhere:
//! - Only events whose id is merged into `persona_event_ids` (`seq <=
//!   merged_through`) are deleted: the in-memory id tail is rebuilt from
//!   the rows after that seq (see `ids`), and must find them all.
//! - The row with the highest seq (run id, dead letter id) is never
//!   deleted: SQLite gives a new row the highest key plus one, so keys keep
//!   growing and the id tail stays a range of seq.
//! - An event's ledger and id entries go with its row and no sooner; the
//!   host keeps the row at least as long as Kafka can deliver the event
//!   again ([`Horizons`] takes the longer of the two), so a redelivery is
//!   always recognised.
//! - Each step is one short write transaction of at most `step_rows` rows,
//!   so the committer never waits long for the writer.

use super::{Op, Store, StoreError, WriteTx};
use persona_bus_model::sync::Locked;
use rusqlite::{Connection, named_params, params};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant, SystemTime};

/// How long the store keeps what is finished (`[store.retention]`). Hours
/// may be fractions; 0 keeps forever.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Finished events (and their ledger, id and execution entries), from
    /// when they finished. Kept at least as long as the Kafka topics they
    /// are consumed from keep them, whatever this says.
    pub events_hours: f64,
    /// Execution rows (one per handler run), from when the run started.
    pub executions_hours: f64,
    /// Dead letters, from when they were written.
    pub dead_letters_hours: f64,
    /// How often a pruning pass runs.
    pub every_secs: u64,
    /// Rows deleted per step (one write transaction each).
    pub step_rows: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            events_hours: 7.0 * 24.0,
            executions_hours: 7.0 * 24.0,
            dead_letters_hours: 30.0 * 24.0,
            every_secs: 60,
            step_rows: 250,
        }
    }
}

impl RetentionConfig {
    pub fn validate(&self) -> Result<(), String> {
        let hours = [
            ("events_hours", self.events_hours),
            ("executions_hours", self.executions_hours),
            ("dead_letters_hours", self.dead_letters_hours),
        ];
        for (name, h) in hours {
            if !h.is_finite() || h < 0.0 {
                return Err(format!(
                    "store.retention.{name} must be 0 (keep forever) or more, not {h}"
                ));
            }
        }
        if self.every_secs == 0 || self.step_rows == 0 {
            return Err("store.retention.every_secs and step_rows must be above 0".into());
        }
        Ok(())
    }

    /// The horizons as of `now`; `redelivery_hours` is how long Kafka may
    /// deliver a consumed event again (0: this host consumes nothing).
    pub fn horizons(&self, now: SystemTime, redelivery_hours: f64) -> Horizons {
        let before = |hours: f64| {
            (hours > 0.0).then(|| {
                let at = now
                    .checked_sub(Duration::from_secs_f64(hours * 3600.0))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                humantime::format_rfc3339_millis(at).to_string()
            })
        };
        let events = if self.events_hours > 0.0 {
            self.events_hours.max(redelivery_hours)
        } else {
            0.0
        };
        Horizons {
            events: before(events),
            executions: before(self.executions_hours),
            dead_letters: before(self.dead_letters_hours),
        }
    }
}

/// What is older than these times (RFC 3339, as the host writes them)
/// may go; `None` keeps that kind forever.
#[derive(Debug, Clone, Default)]
pub struct Horizons {
    pub events: Option<String>,
    pub executions: Option<String>,
    pub dead_letters: Option<String>,
}

/// Rows one step deleted (or a count would delete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub events: u64,
    pub executions: u64,
    pub dead_letters: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.events + self.executions + self.dead_letters
    }

    pub fn add(&mut self, o: Pruned) {
        self.events += o.events;
        self.executions += o.executions;
        self.dead_letters += o.dead_letters;
    }
}

/// The database file and what is free inside it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StoreSize {
    /// `bus.db` itself.
    pub file_bytes: u64,
    /// Its write-ahead log.
    pub wal_bytes: u64,
    /// Free pages inside the file: reused by new rows, and given back to the
    /// file system by the incremental vacuum.
    pub free_bytes: u64,
    /// Whether the file gives free pages back (files created before
    /// retention existed do after `persona-bus store compact`).
    pub gives_back: bool,
}

/// Where a pruning pass is. Events are walked by seq, so rows that must
/// stay (pending, or with a dead letter) are stepped over once a pass
/// instead of scanned again by every step.
#[derive(Debug, Default)]
pub struct Pass {
    events_after: i64,
    events_done: bool,
}

impl Pass {
    /// Whether the walk over events reached the horizon.
    pub fn done(&self) -> bool {
        self.events_done
    }
}

impl Store {
    /// One step of a pruning pass, in one write transaction: the oldest
    /// `rows` dead letters and execution rows that are past their horizon,
    /// and the prunable events among the pass's next `rows` events (with
    /// their entries). The pass is over when a step deletes nothing and
    /// [`Pass::done`].
    ///
    /// Also returns how long it held the writer.
    pub fn prune_step(
        &self,
        h: &Horizons,
        rows: usize,
        pass: &mut Pass,
    ) -> Result<(Pruned, Duration), StoreError> {
        let conn = self.writer();
        let held = Instant::now();
        let tx = WriteTx::begin(&conn).op("begin prune")?;
        let mut done = Pruned::default();
        if let Some(before) = &h.dead_letters {
            done.dead_letters =
                prune_oldest(&tx, "persona_dead_letters", "created_at", before, rows)?;
        }
        let left = rows.saturating_sub(done.total() as usize);
        if let (Some(before), true) = (&h.executions, left > 0) {
            done.executions = prune_oldest(&tx, "persona_runs", "started_at", before, left)?;
        }
        match &h.events {
            Some(before) if !pass.events_done => done.add(prune_events(&tx, before, rows, pass)?),
            _ => pass.events_done = true,
        }
        tx.commit().op("commit prune")?;
        super::note_hold("retention step", held.elapsed());
        Ok((done, held.elapsed()))
    }

    /// What a pruning pass would delete now (a count, for `status`).
    pub fn prunable(&self, h: &Horizons) -> Result<Pruned, StoreError> {
        self.read(|conn| {
            let count = |sql: &str, before: &Option<String>| -> Result<u64, StoreError> {
                match before {
                    None => Ok(0),
                    Some(b) => conn
                        .query_row(sql, [b], |r| r.get::<_, i64>(0))
                        .map(|n| n as u64)
                        .op("count prunable"),
                }
            };
            Ok(Pruned {
                dead_letters: count(
                    "SELECT count(*) FROM persona_dead_letters WHERE created_at < ?1",
                    &h.dead_letters,
                )?,
                executions: count(
                    "SELECT count(*) FROM persona_runs WHERE started_at < ?1",
                    &h.executions,
                )?,
                events: match &h.events {
                    Some(before) => count_events(conn, before)?,
                    None => 0,
                },
            })
        })
    }

    /// Gives back up to `pages` free pages to the file system (incremental
    /// vacuum, one short step). Returns how many pages it freed and how
    /// long it held the writer.
    pub fn vacuum_step(&self, pages: u32) -> Result<(u64, Duration), StoreError> {
        let conn = self.writer();
        let held = Instant::now();
        let before = free_pages(&conn)?;
        conn.execute_batch(&format!("PRAGMA incremental_vacuum({pages})"))
            .op("incremental vacuum")?;
        let freed = before.saturating_sub(free_pages(&conn)?);
        super::note_hold("incremental vacuum", held.elapsed());
        Ok((freed, held.elapsed()))
    }

    /// The file's size and free space.
    pub fn size(&self) -> Result<StoreSize, StoreError> {
        let len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        self.read(|conn| {
            let page: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .op("page size")?;
            let mode: i64 = conn
                .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
                .op("auto vacuum")?;
            Ok(StoreSize {
                file_bytes: len(&self.path),
                wal_bytes: len(std::path::Path::new(&wal)),
                free_bytes: free_pages(conn)? * page as u64,
                gives_back: mode == 2,
            })
        })
    }

    /// Rewrites the whole file so that it gives free pages back from now on
    /// (files created before retention existed) and holds no free pages.
    /// Holds the writer throughout: for a stopped host.
    pub fn compact(&self) -> Result<StoreSize, StoreError> {
        {
            // SQLite changes auto_vacuum only in a VACUUM outside WAL mode,
            // which needs the only connection: the pooled readers go first.
            self.readers.locked().clear();
            let conn = self.writer();
            conn.execute_batch(
                "PRAGMA journal_mode = DELETE;
                 PRAGMA auto_vacuum = INCREMENTAL;
                 VACUUM;
                 PRAGMA journal_mode = WAL;",
            )
            .op("vacuum")?;
        }
        self.size()
    }
}

/// Deletes, among the `rows` lowest ids of `table`, those whose `at` (an
/// RFC 3339 time the host wrote) is before `before`, but never the highest
/// id. Rows of these tables are appended in time order, so the oldest are
/// the lowest ids and the scan stays within the window.
fn prune_oldest(
    tx: &Connection,
    table: &'static str,
    at: &'static str,
    before: &str,
    rows: usize,
) -> Result<u64, StoreError> {
    tx.prepare_cached(&format!(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT ?2)
         AND {at} < ?1 AND id < (SELECT max(id) FROM {table})"
    ))
    .op("prepare prune")?
    .execute(params![before, rows as i64])
    .map(|n| n as u64)
    .op("prune")
}

fn free_pages(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .op("free pages")
}

/// Whether an event row may go once it is old enough: finished, merged
/// into the id index, not the newest row, not waiting for Kafka and without
/// a dead letter.
const FREE: &str = "e.status NOT IN ('pending', 'processing')
    AND coalesce(e.kafka_state, '') != 'pending'
    AND e.seq <= :merged AND e.seq < :max
    AND NOT EXISTS (SELECT 1 FROM persona_dead_letters d WHERE d.event_seq = e.seq)";

/// When an event finished (its arrival, if it never did): the host writes
/// `processed_at` itself, in one format, so it compares as text.
const FINISHED_AT: &str = "coalesce(e.processed_at, e.created_at)";

/// The highest seq, and the seq the id index is merged through.
fn bounds(conn: &Connection) -> Result<(i64, i64), StoreError> {
    conn.query_row(
        "SELECT (SELECT coalesce(max(seq), 0) FROM persona_events),
                (SELECT merged_through FROM persona_id_merge)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .op("read prune bounds")
}

fn count_events(conn: &Connection, before: &str) -> Result<u64, StoreError> {
    let (max, merged) = bounds(conn)?;
    conn.query_row(
        &format!("SELECT count(*) FROM persona_events e WHERE {FINISHED_AT} < :before AND {FREE}"),
        named_params! { ":before": before, ":max": max, ":merged": merged },
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .op("count prunable events")
}

/// Deletes the prunable events among the next `rows` rows of the pass,
/// with their id, ledger and execution entries.
fn prune_events(
    tx: &Connection,
    before: &str,
    rows: usize,
    pass: &mut Pass,
) -> Result<Pruned, StoreError> {
    let (max, merged) = bounds(tx)?;
    let window: Vec<(i64, String, bool, bool)> = tx
        .prepare_cached(&format!(
            "SELECT e.seq, e.id, {FINISHED_AT} < :before, {FREE} FROM persona_events e
             WHERE e.seq > :after AND e.seq <= :merged ORDER BY e.seq LIMIT :rows"
        ))
        .op("prepare find prunable events")?
        .query_map(
            named_params! {
                ":before": before,
                ":after": pass.events_after,
                ":rows": rows as i64,
                ":max": max,
                ":merged": merged,
            },
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .op("find prunable events")?
        .collect::<Result<_, _>>()
        .op("read prunable events")?;
    // The walk ends at the id tail (nothing after it may go), or where a
    // window holds nothing old: rows arrive in seq order and finish in
    // about that order, so such a window is past the horizon.
    if window.len() < rows || !window.iter().any(|(_, _, old, _)| *old) {
        pass.events_done = true;
    }
    if let Some((last, ..)) = window.last() {
        pass.events_after = *last;
    }
    let mut done = Pruned::default();
    let mut event = tx
        .prepare_cached("DELETE FROM persona_events WHERE seq = ?1")
        .op("prepare prune event")?;
    let mut id = tx
        .prepare_cached("DELETE FROM persona_event_ids WHERE id = ?1")
        .op("prepare prune id")?;
    let mut ledger = tx
        .prepare_cached("DELETE FROM persona_ledger WHERE event_seq = ?1")
        .op("prepare prune ledger")?;
    let mut runs = tx
        .prepare_cached("DELETE FROM persona_runs WHERE event_seq = ?1")
        .op("prepare prune runs")?;
    for (seq, event_id, ..) in window.iter().filter(|(_, _, old, free)| *old && *free) {
        done.events += event.execute([seq]).op("prune event")? as u64;
        id.execute([event_id]).op("prune id")?;
        ledger.execute([seq]).op("prune ledger")?;
        done.executions += runs.execute([seq]).op("prune runs")? as u64;
    }
    Ok(done)
}
