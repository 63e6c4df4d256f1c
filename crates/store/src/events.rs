//! Event rows: insert, claim, reap, list.

use super::ids::TxIds;
use super::{Op, Store, StoreError, headers_from_json, headers_to_json};
use persona_bus_model::event::{Event, EventStatus};
use rusqlite::{Connection, Row, params};

/// The columns [`event_from_row`] reads, in order.
pub(crate) const EVENT_COLUMNS: &str = "id, project_id, event_type, source_type, source_id, target_persona_id, \
     payload, status, error_message, processed_at, created_at, headers, schema_version, chain_depth, retry_count";

/// Rows the poller cares about. The status index is partial (only these
/// rows), and SQLite uses a partial index only when the query repeats its
/// condition word for word, so every query on live rows starts with this.
const LIVE: &str = "status IN ('pending', 'processing')";

/// The claim: marks up to `?2` due events `processing` (at `?1`) and
/// returns them; with `skipping`, not those of the projects in `?3` (JSON).
///
/// `CAST(?2 AS INTEGER)`, not `?2`: the bundled SQLite's planner reads a
/// bound LIMIT's value and compiles the statement again whenever it
/// changes, and the poller asks for a different number almost every time
/// (a quarter of its thread went to `sqlite3Reprepare`). The plan is the
/// same either way (the status index, in seq order).
pub(super) fn claim_sql(scope: ClaimScope, skipping: bool) -> String {
    format!(
        "UPDATE persona_events SET status = 'processing', claimed_at = ?1, claims = claims + 1 \
         WHERE seq IN (SELECT seq FROM persona_events \
                         WHERE {LIVE} AND status = 'pending' AND next_attempt_at <= ?1 AND {} {} \
                         ORDER BY seq LIMIT CAST(?2 AS INTEGER)) \
         RETURNING seq, claims, {EVENT_COLUMNS}",
        scope.condition(),
        if skipping {
            "AND project_id NOT IN (SELECT value FROM json_each(?3))"
        } else {
            ""
        }
    )
}

/// Inserts a row; the caller has checked that its id is new. Its seq is
/// the rowid (`INTEGER PRIMARY KEY`).
const INSERT_EVENT: &str = "INSERT INTO persona_events (id, project_id, event_type, source_type, source_id, \
     target_persona_id, payload, created_at, headers, schema_version, chain_depth, kafka_state, \
     status, error_message, processed_at, claimed_at, claims) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

/// The state a new row starts in: `pending`; `processing`, claimed as it
/// is written (an in-process publish handed to the poller in memory); or
/// (an event consumed from Kafka and handled in the same commit) final.
struct Initial<'a> {
    status: &'a str,
    error: Option<&'a str>,
    processed_at: Option<&'a str>,
    claimed_at: Option<i64>,
    claims: i64,
}

const PENDING: Initial<'static> = Initial {
    status: "pending",
    error: None,
    processed_at: None,
    claimed_at: None,
    claims: 0,
};

/// A row claimed as it is written, at `now_ms`: what the poller's claim
/// would have made of it.
fn claimed_at(now_ms: i64) -> Initial<'static> {
    Initial {
        status: "processing",
        error: None,
        processed_at: None,
        claimed_at: Some(now_ms),
        claims: 1,
    }
}

/// A batch gathered for [`Store::insert_gathered`], and whether to claim
/// it as it is written, at this time. (Only while SQLite is the source:
/// the poller's claim scope is then [`ClaimScope::Local`].)
pub struct Gathered {
    pub events: Vec<Event>,
    pub claim_at: Option<i64>,
}

/// Whether a row the poller would claim now (SQLite the source) is
/// waiting. A new event may skip the poller only when none is: it could
/// overtake an earlier event of its project (one written by the CLI, left
/// behind a full lane, or a retry now due). One probe of the status index,
/// which holds only live rows. Asked once per publish transaction, so its
/// text is built once.
fn due_pending(conn: &Connection, now_ms: i64) -> Result<bool, StoreError> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT EXISTS (SELECT 1 FROM persona_events \
             WHERE {LIVE} AND status = 'pending' AND next_attempt_at <= ?1 AND {})",
            ClaimScope::Local.condition()
        )
    });
    conn.prepare_cached(&SQL)
        .op("prepare due pending")?
        .query_row([now_ms], |r| r.get(0))
        .op("due pending")
}

pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    event_at(row, 0)
}

/// Reads an event from the columns starting at `at` (RETURNING rows carry
/// extra leading columns).
pub(crate) fn event_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Event> {
    let col = |i: usize| i + at;
    let status: String = row.get(col(7))?;
    let headers: String = row.get(col(11))?;
    Ok(Event {
        id: row.get(col(0))?,
        project_id: row.get(col(1))?,
        event_type: row.get(col(2))?,
        source_type: row.get(col(3))?,
        source_id: row.get(col(4))?,
        target_persona_id: row.get(col(5))?,
        payload: row
            .get::<_, Option<String>>(col(6))?
            .unwrap_or_else(|| "null".into()),
        // A status written by another tool is shown as failed rather than lost.
        status: EventStatus::parse(&status).unwrap_or(EventStatus::Failed),
        error_message: row.get(col(8))?,
        processed_at: row.get(col(9))?,
        created_at: row.get(col(10))?,
        headers: headers_from_json(&headers),
        schema_version: row.get(col(12))?,
        chain_depth: row.get(col(13))?,
        retry_count: row.get(col(14))?,
    })
}

/// Inserts a validated event as `pending` (inside the caller's transaction);
/// with `outbox`, also as waiting to be produced to Kafka. An id that is
/// stored already is refused.
pub(crate) fn insert_event(
    conn: &Connection,
    ids: &mut TxIds<'_>,
    e: &Event,
    outbox: bool,
) -> Result<(), StoreError> {
    insert_event_as(conn, ids, e, outbox, &PENDING)
}

/// [`insert_event`] in the state `initial`.
fn insert_event_as(
    conn: &Connection,
    ids: &mut TxIds<'_>,
    e: &Event,
    outbox: bool,
    initial: &Initial<'_>,
) -> Result<(), StoreError> {
    if ids.seq(conn, &e.id)?.is_some() {
        return Err(StoreError::DuplicateEvent(e.id.clone()));
    }
    insert_row(conn, ids, e, outbox.then_some("pending"), initial).map(|_| ())
}

/// An event's row after [`insert_if_new`]: its seq, and whether this call
/// wrote it.
pub(crate) struct Stored {
    pub seq: i64,
    pub new: bool,
}

/// Stores an event unless a row for it exists, with `kafka_state`.
pub(crate) fn insert_if_new(
    conn: &Connection,
    ids: &mut TxIds<'_>,
    e: &Event,
    kafka_state: Option<&str>,
) -> Result<Stored, StoreError> {
    if let Some(seq) = ids.seq(conn, &e.id)? {
        return Ok(Stored { seq, new: false });
    }
    let seq = insert_row(conn, ids, e, kafka_state, &PENDING)?;
    Ok(Stored { seq, new: true })
}

/// Stores an event that came from Kafka, unless a row for it exists: it is
/// `remote` (Kafka has it already, and another device may own it).
pub(crate) fn insert_remote(
    conn: &Connection,
    ids: &mut TxIds<'_>,
    e: &Event,
) -> Result<Stored, StoreError> {
    insert_if_new(conn, ids, e, Some("remote"))
}

/// Writes the final state of an event consumed from Kafka: the row is
/// created (`remote`) if this device has none, else its status is set.
/// Returns the row's seq.
pub(crate) fn upsert_final(
    conn: &Connection,
    ids: &mut TxIds<'_>,
    e: &Event,
    status: &str,
    error: Option<&str>,
    now: &str,
) -> Result<i64, StoreError> {
    if let Some(seq) = ids.seq(conn, &e.id)? {
        finish_event(conn, seq, status, error, now)?;
        return Ok(seq);
    }
    let fin = Initial {
        status,
        error,
        processed_at: Some(now),
        claimed_at: None,
        claims: 0,
    };
    insert_row(conn, ids, e, Some("remote"), &fin)
}

/// Stores an event a replay read from Kafka that this device never stored
/// (`remote`, and `skipped`: the other handlers do not run it). Its seq.
pub(crate) fn insert_replayed(
    conn: &Connection,
    ids: &mut TxIds<'_>,
    e: &Event,
    now: &str,
) -> Result<i64, StoreError> {
    let fin = Initial {
        status: "skipped",
        error: Some("stored by a replay of one handler"),
        processed_at: Some(now),
        claimed_at: None,
        claims: 0,
    };
    insert_row(conn, ids, e, Some("remote"), &fin)
}

/// Sets an event's final state (its row is `seq`).
pub(crate) fn finish_event(
    conn: &Connection,
    seq: i64,
    status: &str,
    error: Option<&str>,
    now: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE persona_events SET status = ?2, error_message = ?3, processed_at = ?4, claimed_at = NULL \
         WHERE seq = ?1",
    )
    .op("prepare finish event")?
    .execute(params![seq, status, error, now])
    .op("finish event")?;
    Ok(())
}

/// Inserts a row (its id checked new by the caller) and tells `ids`.
fn insert_row(
    conn: &Connection,
    ids: &mut TxIds<'_>,
    e: &Event,
    kafka_state: Option<&str>,
    initial: &Initial<'_>,
) -> Result<i64, StoreError> {
    let seq = conn
        .prepare_cached(INSERT_EVENT)
        .op("prepare insert event")?
        .execute(params![
            e.id,
            e.project_id,
            e.event_type,
            e.source_type,
            e.source_id,
            e.target_persona_id,
            e.payload,
            e.created_at,
            headers_to_json(&e.headers),
            e.schema_version,
            e.chain_depth,
            kafka_state,
            initial.status,
            initial.error,
            initial.processed_at,
            initial.claimed_at,
            initial.claims,
        ])
        .op("insert event")
        // Cheaper than RETURNING, which buffers its rows in a temporary
        // table (16% of the committer's time).
        .map(|_| conn.last_insert_rowid())?;
    ids.added(&e.id, seq);
    Ok(seq)
}

/// Which pending rows the SQLite poller may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimScope {
    /// What this device must handle itself: SQLite is the source (Kafka
    /// off, or the breaker open). That is every event not yet on Kafka
    /// (never queued, or still in the outbox) and retries and waits
    /// scheduled here.
    /// Events already on Kafka (`sent`, `remote`) are left to whichever
    /// device owns their partition, after recovery: taking them here could
    /// run them on two devices.
    Local,
    /// Kafka is the source and healthy: only what Kafka will not bring
    /// (events never queued for it, and retries and events waiting for a
    /// held handler, which are scheduled here).
    Leftovers,
}

impl ClaimScope {
    fn condition(self) -> &'static str {
        match self {
            ClaimScope::Local => {
                "(kafka_state IS NULL OR kafka_state <> 'remote' OR retry_count > 0 OR waiting = 1)"
            }
            ClaimScope::Leftovers => "(kafka_state IS NULL OR retry_count > 0 OR waiting = 1)",
        }
    }
}

/// Filters for [`Store::list_events`].
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub project_id: Option<String>,
    pub status: Option<EventStatus>,
    pub limit: usize,
}

/// A page of events, newest first, with the counts the original API returned.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventPage {
    pub events: Vec<Event>,
    #[serde(rename = "pendingCount")]
    pub pending_count: u64,
    pub total: u64,
}

impl Store {
    /// Stores one validated event as `pending`.
    pub fn insert(&self, event: &Event) -> Result<(), StoreError> {
        self.insert_batch(std::slice::from_ref(event))
    }

    /// Stores validated events as `pending`, all in one transaction.
    pub fn insert_batch(&self, events: &[Event]) -> Result<(), StoreError> {
        self.write_tx("insert events", |tx, ids| {
            self.insert_all(tx, ids, events, &PENDING)
        })
    }

    /// Stores the events `gather` returns, called once the transaction has
    /// begun, with the writer held (group commit). When `gather` asks for
    /// it and no row the poller would claim is waiting, they are stored
    /// already claimed (`processing`): the caller hands them to the poller
    /// in memory, and the poller's claim (a write of each row and its
    /// status index entry, often a transaction of its own) is saved.
    /// Returns the events and whether they were claimed.
    pub fn insert_gathered(
        &self,
        gather: impl FnOnce() -> Gathered,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        self.write_tx("insert events", |tx, ids| {
            let Gathered { events, claim_at } = gather();
            let claim_at = match claim_at {
                Some(now_ms) if !due_pending(tx, now_ms)? => Some(now_ms),
                _ => None,
            };
            let initial = claim_at.map_or(PENDING, claimed_at);
            self.insert_all(tx, ids, &events, &initial)?;
            Ok((events, claim_at.is_some()))
        })
    }

    /// Inserts `events` in the state `initial` (each id must be new).
    fn insert_all(
        &self,
        tx: &Connection,
        ids: &mut TxIds<'_>,
        events: &[Event],
        initial: &Initial<'_>,
    ) -> Result<(), StoreError> {
        for e in events {
            insert_event_as(tx, ids, e, self.outbox_enabled(), initial)?;
        }
        Ok(())
    }

    /// Atomically moves up to `limit` due `pending` events to `processing`
    /// and returns them in publish order, each with how many times it has
    /// been claimed (1 = first delivery).
    /// Events of the projects in `skip` are left pending (their lanes are
    /// full).
    pub fn claim(
        &self,
        limit: usize,
        now_ms: i64,
        scope: ClaimScope,
        skip: &[String],
    ) -> Result<Vec<(Event, u32)>, StoreError> {
        let conn = self.writer();
        let sql = claim_sql(scope, !skip.is_empty());
        let mut stmt = conn.prepare_cached(&sql).op("prepare claim")?;
        let read = |row: &Row<'_>| {
            // RETURNING puts seq and claims first; the event follows.
            let seq: i64 = row.get(0)?;
            let claims: u32 = row.get(1)?;
            let event = event_at(row, 2)?;
            Ok((seq, claims, event))
        };
        let rows = if skip.is_empty() {
            stmt.query_map(params![now_ms, limit as i64], read)
        } else {
            let skip = serde_json::to_string(skip).unwrap_or_else(|_| "[]".into());
            stmt.query_map(params![now_ms, limit as i64, skip], read)
        };
        let mut rows: Vec<(i64, u32, Event)> = rows
            .op("claim")?
            .collect::<rusqlite::Result<_>>()
            .op("read claimed")?;
        // RETURNING gives no order guarantee; publish order is seq order.
        rows.sort_unstable_by_key(|(seq, ..)| *seq);
        Ok(rows.into_iter().map(|(_, claims, e)| (e, claims)).collect())
    }

    /// Earliest `next_attempt_at` of a pending event scheduled in the future,
    /// so the poller can sleep until a retry is due.
    pub fn next_retry_at(&self, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let conn = self.writer();
        conn.prepare_cached(&format!(
            "SELECT min(next_attempt_at) FROM persona_events \
             WHERE {LIVE} AND status = 'pending' AND next_attempt_at > ?1"
        ))
        .op("prepare next retry")?
        .query_row([now_ms], |r| r.get(0))
        .op("next retry")
    }

    /// Events not yet finished (pending or processing); cheap (index only).
    pub fn unfinished(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!("SELECT count(*) FROM persona_events WHERE {LIVE}"))
                .op("prepare unfinished")?
                .query_row([], |r| r.get::<_, i64>(0))
                .op("unfinished")
                .map(|n| n as u64)
        })
    }

    /// Returns to `pending` every event claimed before `claimed_before_ms`
    /// (all of them with `i64::MAX`: a restarted host owns nothing yet).
    pub fn reap(&self, claimed_before_ms: i64) -> Result<usize, StoreError> {
        self.reap_except(claimed_before_ms, &[])
    }

    /// [`Store::reap`], leaving alone the events in `busy` (still being
    /// handled by this host).
    pub fn reap_except(
        &self,
        claimed_before_ms: i64,
        busy: &[String],
    ) -> Result<usize, StoreError> {
        let conn = self.writer();
        let busy = serde_json::to_string(busy).unwrap_or_else(|_| "[]".into());
        conn.execute(
            &format!(
                "UPDATE persona_events SET status = 'pending', claimed_at = NULL \
                 WHERE {LIVE} AND status = 'processing' AND (claimed_at IS NULL OR claimed_at < ?1) \
                 AND id NOT IN (SELECT value FROM json_each(?2))"
            ),
            params![claimed_before_ms, busy],
        )
        .op("reap")
    }

    /// Returns claimed events to `pending` (their outcome could not be
    /// committed), so they are retried now rather than after the reaper's
    /// timeout.
    pub fn release(&self, ids: &[&str]) -> Result<usize, StoreError> {
        let conn = self.writer();
        let mut stmt = conn
            .prepare_cached(&format!(
                "UPDATE persona_events SET status = 'pending', claimed_at = NULL \
                 WHERE {LIVE} AND status = 'processing' AND id = ?1"
            ))
            .op("prepare release")?;
        let mut n = 0;
        for id in ids {
            n += stmt.execute([id]).op("release")?;
        }
        Ok(n)
    }

    pub fn event(&self, id: &str) -> Result<Event, StoreError> {
        self.read(|conn| {
            let Some(seq) = self.seq_of(conn, id)? else {
                return Err(StoreError::EventNotFound(id.to_owned()));
            };
            conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM persona_events WHERE seq = ?1"
            ))
            .op("prepare get event")?
            .query_row([seq], event_from_row)
            .map_err(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => StoreError::EventNotFound(id.to_owned()),
                source => StoreError::Sqlite {
                    op: "get event",
                    source,
                },
            })
        })
    }

    /// Newest events first (in arrival order, which for events from other
    /// devices can differ from `created_at`), with the pending count and
    /// total of the filter.
    pub fn list_events(&self, filter: &EventFilter) -> Result<EventPage, StoreError> {
        self.read(|conn| {
            let ty = filter.event_type.as_deref();
            let st = filter.status.map(|s| s.as_str());
            let pr = filter.project_id.as_deref();
            let cond = "(?1 IS NULL OR event_type = ?1) AND (?2 IS NULL OR status = ?2) AND (?4 IS NULL OR project_id = ?4)";
            let events = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM persona_events WHERE {cond} ORDER BY seq DESC LIMIT ?3"
                ))
                .op("prepare list events")?
                .query_map(params![ty, st, filter.limit.max(1) as i64, pr], event_from_row)
                .op("list events")?
                .collect::<rusqlite::Result<Vec<_>>>()
                .op("read events")?;
            let (total, pending_count): (i64, i64) = conn
                .prepare_cached(&format!(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM persona_events WHERE {cond}"
                ))
                .op("prepare count events")?
                .query_row(params![ty, st, filter.limit.max(1) as i64, pr], |r| Ok((r.get(0)?, r.get(1)?)))
                .op("count events")?;
            Ok(EventPage { events, pending_count: pending_count as u64, total: total as u64 })
        })
    }

    /// How many events are in each status.
    pub fn status_counts(&self) -> Result<Vec<(EventStatus, u64)>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT status, count(*) FROM persona_events GROUP BY status")
                .op("prepare status counts")?
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .op("status counts")?
                .filter_map(|r| {
                    r.ok()
                        .and_then(|(s, n)| EventStatus::parse(&s).map(|s| (s, n)))
                        .map(Ok)
                })
                .collect()
        })
    }
}
