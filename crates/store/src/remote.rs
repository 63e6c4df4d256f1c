//! What Kafka brings from other devices: archived events, their outcomes
//! (from execution records), routed webhooks, undecodable records, and the
//! ledger entries a replay clears.

use super::events::{insert_if_new, insert_remote};
use super::{Op, Store, StoreError};
use persona_bus_model::event::{Event, now_rfc3339};
use rusqlite::params;

/// An event's outcome as another device reported it (an execution record).
#[derive(Debug, Clone)]
pub struct RemoteOutcome {
    pub event_id: String,
    pub status: String,
    pub error: Option<String>,
    pub processed_at: Option<String>,
}

impl Store {
    /// Archives events seen on Kafka (the audit logger): rows this device
    /// already has are left alone. Returns how many were new.
    pub fn archive(&self, events: &[Event]) -> Result<usize, StoreError> {
        // Most of the audit logger's batches archive nothing (this device's
        // own records, skipped): no write transaction for them, which
        // would hold the writer the committer needs.
        if events.is_empty() {
            return Ok(0);
        }
        self.write_tx("archive", |tx, ids| {
            let mut n = 0;
            for e in events {
                n += insert_remote(tx, ids, e)?.new as usize;
            }
            Ok(n)
        })
    }

    /// Applies outcomes reported by other devices to rows that went through
    /// Kafka and still wait here (events from elsewhere, and this device's
    /// own events handled by the device that owns their partition; the
    /// report can arrive before the relay has marked the row sent). Rows
    /// this device handled keep their own status.
    pub fn apply_remote_outcomes(&self, outcomes: &[RemoteOutcome]) -> Result<usize, StoreError> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        self.write_tx("remote outcomes", |tx, ids| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE persona_events SET status = ?2, error_message = ?3, processed_at = ?4 \
                     WHERE seq = ?1 AND kafka_state IS NOT NULL AND status IN ('pending', 'processing')",
                )
                .op("prepare remote outcome")?;
            let mut n = 0;
            for o in outcomes {
                let Some(seq) = ids.seq(tx, &o.event_id)? else {
                    continue;
                };
                n += stmt
                    .execute(params![seq, o.status, o.error, o.processed_at])
                    .op("remote outcome")?;
            }
            Ok(n)
        })
    }

    /// Stores events unless their id exists (a webhook routed twice after a
    /// redelivery is stored once), queued for Kafka when the outbox is on.
    /// Returns how many were new.
    pub fn insert_new(&self, events: &[Event]) -> Result<usize, StoreError> {
        let outbox = self.outbox_enabled().then_some("pending");
        self.write_tx("insert new", |tx, ids| {
            let mut n = 0;
            for e in events {
                n += insert_if_new(tx, ids, e, outbox)?.new as usize;
            }
            Ok(n)
        })
    }

    /// Records a Kafka record that could not be decoded as a dead letter
    /// (`handler` = `(decode)`), so it is listed beside the others; the raw
    /// record itself goes to the dlq topic.
    pub fn record_undecodable(
        &self,
        where_: &str,
        error: &str,
        headers: &[(String, String)],
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.write_tx("undecodable", |tx, _| {
            tx.prepare_cached(
                "INSERT INTO persona_dead_letters (event_id, handler, handler_version, attempts, reason, last_error, headers, created_at) \
                 VALUES (?1, '(decode)', '-', 0, 'malformed', ?2, ?3, ?4)",
            )
            .op("prepare undecodable")?
            .execute(params![where_, error, super::headers_to_json(headers), now])
            .op("insert undecodable")?;
            Ok(())
        })
    }

    /// Deletes the ledger entries of `handlers` (all handlers when empty) for
    /// these events, so a replay runs them again. Returns how many went.
    pub fn clear_ledger(
        &self,
        handlers: &[String],
        event_ids: &[String],
    ) -> Result<usize, StoreError> {
        let names = serde_json::to_string(handlers).unwrap_or_else(|_| "[]".into());
        self.write_tx("clear ledger", |tx, ids| {
            let mut seqs = Vec::with_capacity(event_ids.len());
            for id in event_ids {
                seqs.extend(ids.seq(tx, id)?);
            }
            let seqs = serde_json::to_string(&seqs).unwrap_or_else(|_| "[]".into());
            tx.prepare_cached(
                "DELETE FROM persona_ledger \
                 WHERE event_seq IN (SELECT value FROM json_each(?1)) \
                 AND (json_array_length(?2) = 0 OR handler_no IN \
                      (SELECT h.no FROM json_each(?2) j JOIN persona_handler_names h ON h.name = j.value))",
            )
            .op("prepare clear ledger")?
            .execute(params![seqs, names])
            .op("clear ledger")
        })
    }

    /// Whether the store takes writes now (for `/ready`): takes the write
    /// lock and lets it go.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.write_tx("check writable", |_, _| Ok(()))
    }

    /// Dead letters not yet retried (for `/metrics`).
    pub fn dead_letter_count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT count(*) FROM persona_dead_letters WHERE retried_at IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .op("count dead letters")
            .map(|n| n as u64)
        })
    }
}
