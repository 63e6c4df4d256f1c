//! Dead letters: list, show, retry and purge (`persona-bus dlq`).

use super::{Op, Store, StoreError, headers_from_json};
use persona_bus_model::event::now_rfc3339;
use rusqlite::{OptionalExtension, Row, params};

pub use super::outcomes::DeadLetter;

/// Which dead letters a command applies to. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub handler: Option<String>,
    pub event_type: Option<String>,
    /// Only those created at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only those created before this RFC 3339 time.
    pub until: Option<String>,
    /// Only those whose last error or reason contains this text (any case).
    pub error_contains: Option<String>,
    /// Include letters already retried.
    pub include_retried: bool,
    pub limit: usize,
}

const COLUMNS: &str = "d.id, d.event_id, d.handler, d.handler_version, d.attempts, d.reason, d.last_error, \
     d.headers, d.created_at, d.retried_at, e.event_type";

/// Times compare as text: every stored time is RFC 3339 UTC with
/// milliseconds (`now_rfc3339`), and the filter's are written the same way
/// ([`DeadLetterFilter::time`]).
const FILTER: &str = "(?1 IS NULL OR d.handler = ?1) AND (?2 IS NULL OR e.event_type = ?2) \
     AND (?3 IS NULL OR d.created_at >= ?3) AND (?4 OR d.retried_at IS NULL) \
     AND (?5 IS NULL OR d.created_at < ?5) \
     AND (?6 IS NULL OR instr(lower(d.last_error), lower(?6)) > 0 OR instr(lower(d.reason), lower(?6)) > 0)";

impl DeadLetterFilter {
    /// `text` (RFC 3339, UTC, with or without fractions) as the store
    /// writes times, so that it compares with them as text; `None` when it
    /// is not such a time.
    pub fn time(text: &str) -> Option<String> {
        humantime::parse_rfc3339_weak(text.trim())
            .ok()
            .map(|t| humantime::format_rfc3339_millis(t).to_string())
    }

    /// The filter's parameters ?1 to ?6, in `FILTER`'s order.
    fn params(&self) -> [&dyn rusqlite::ToSql; 6] {
        [
            &self.handler,
            &self.event_type,
            &self.since,
            &self.include_retried,
            &self.until,
            &self.error_contains,
        ]
    }
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get(0)?,
        event_id: r.get(1)?,
        handler: r.get(2)?,
        handler_version: r.get(3)?,
        attempts: r.get(4)?,
        reason: r.get(5)?,
        last_error: r.get(6)?,
        headers: headers_from_json(&r.get::<_, String>(7)?),
        created_at: r.get(8)?,
        retried_at: r.get(9)?,
        event_type: r.get(10)?,
    })
}

impl Store {
    /// Dead letters matching `filter`, newest first.
    pub fn dead_letters_where(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM persona_dead_letters d LEFT JOIN persona_events e ON e.seq = d.event_seq \
                 WHERE {FILTER} ORDER BY d.id DESC LIMIT ?7"
            ))
            .op("prepare dead letters")?
            .query_map(
                rusqlite::params_from_iter(
                    filter
                        .params()
                        .into_iter()
                        .chain([&(filter.limit.max(1) as i64) as &dyn rusqlite::ToSql]),
                ),
                from_row,
            )
            .op("dead letters")?
            .collect::<rusqlite::Result<_>>()
            .op("read dead letters")
        })
    }

    /// Dead letters, newest first, retried ones included.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead_letters_where(&DeadLetterFilter {
            limit,
            include_retried: true,
            ..Default::default()
        })
    }

    pub fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM persona_dead_letters d LEFT JOIN persona_events e ON e.seq = d.event_seq WHERE d.id = ?1"
            ))
            .op("prepare dead letter")?
            .query_row([id], from_row)
            .optional()
            .op("dead letter")
        })
    }

    /// Brings a dead letter back: its handler's ledger entry is cleared and
    /// the event returns to `pending` with fresh attempts, so that handler
    /// (and only it: the others' ledger entries stay) runs it again. Returns
    /// the event id, or `None` when the letter does not exist or was already
    /// retried.
    pub fn retry_dead_letter(&self, id: i64) -> Result<Option<String>, StoreError> {
        let now = now_rfc3339();
        let conn = self.writer();
        let tx = super::WriteTx::begin(&conn).op("begin dlq retry")?;
        let found: Option<(String, String, Option<i64>)> = tx
            .query_row(
                "SELECT event_id, handler, event_seq FROM persona_dead_letters WHERE id = ?1 AND retried_at IS NULL",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .op("find dead letter")?;
        let Some((event_id, handler, event_seq)) = found else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE persona_dead_letters SET retried_at = ?2 WHERE id = ?1",
            params![id, now],
        )
        .op("mark retried")?;
        tx.execute(
            "DELETE FROM persona_ledger WHERE outcome = 'dead_letter' \
             AND event_seq = ?1 \
             AND handler_no = (SELECT no FROM persona_handler_names WHERE name = ?2)",
            params![event_seq, handler],
        )
        .op("clear ledger")?;
        // Only a finished event is reopened; one still pending or running
        // picks the handler up on its next attempt anyway. The retry is this
        // device's to run, whichever source brought the event: a row that
        // already went through Kafka becomes local (the poller takes it even
        // while the Kafka consumer is in charge).
        tx.execute(
            "UPDATE persona_events SET status = 'pending', retry_count = 0, next_attempt_at = 0, \
             error_message = NULL, processed_at = NULL, \
             kafka_state = CASE WHEN kafka_state = 'pending' THEN 'pending' ELSE NULL END \
             WHERE seq = ?1 AND status NOT IN ('pending', 'processing')",
            [event_seq],
        )
        .op("reopen event")?;
        tx.commit().op("commit dlq retry")?;
        Ok(Some(event_id))
    }

    /// The dead letters of one event, newest first.
    pub fn dead_letters_of(&self, event_id: &str) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM persona_dead_letters d LEFT JOIN persona_events e ON e.seq = d.event_seq \
                 WHERE d.event_id = ?1 ORDER BY d.id DESC"
            ))
            .op("prepare dead letters of event")?
            .query_map([event_id], from_row)
            .op("dead letters of event")?
            .collect::<rusqlite::Result<_>>()
            .op("read dead letters of event")
        })
    }

    /// Deletes one dead letter; false if there is none with that id.
    pub fn purge_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        self.writer()
            .execute("DELETE FROM persona_dead_letters WHERE id = ?1", [id])
            .op("purge dead letter")
            .map(|n| n > 0)
    }

    /// Deletes the dead letters matching `filter`; returns how many.
    pub fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<usize, StoreError> {
        self.writer()
            .execute(
                &format!(
                    "DELETE FROM persona_dead_letters WHERE id IN (SELECT d.id FROM persona_dead_letters d \
                     LEFT JOIN persona_events e ON e.seq = d.event_seq WHERE {FILTER})"
                ),
                filter.params().as_slice(),
            )
            .op("purge dead letters")
    }

    /// How many dead letters match `filter` (its limit aside): what a
    /// redrive or a purge with it would touch.
    pub fn count_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT count(*) FROM persona_dead_letters d LEFT JOIN persona_events e ON e.seq = d.event_seq \
                 WHERE {FILTER}"
            ))
            .op("prepare dead letter count")?
            .query_row(filter.params().as_slice(), |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .op("count dead letters")
        })
    }
}
