//! The Kafka outbox: events stored here first, produced when the broker
//! acknowledges them. SQLite is the record; Kafka gets a copy, late if need be.

use super::events::EVENT_COLUMNS;
use super::{Op, Store, StoreError};
use persona_bus_model::event::Event;
use rusqlite::params;
use std::collections::HashSet;

impl Store {
    /// Up to `limit` events still to be produced, oldest first. An event
    /// being handled here right now waits for its outcome, so that it goes
    /// out marked as handled (see `kafka::wire::HANDLED_BY`); and so does
    /// every later event of its project, because Kafka must get a project's
    /// events in publish order (key = project_id).
    pub fn outbox_pending(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT status = 'processing', {EVENT_COLUMNS} FROM persona_events \
                     WHERE kafka_state = 'pending' ORDER BY seq LIMIT ?1"
                ))
                .op("prepare outbox")?;
            let rows = stmt
                .query_map([limit as i64], |row| {
                    Ok((row.get::<_, bool>(0)?, super::events::event_at(row, 1)?))
                })
                .op("outbox")?;
            let mut held: HashSet<String> = HashSet::new();
            let mut out = Vec::new();
            for row in rows {
                let (processing, event) = row.op("read outbox")?;
                if processing || held.contains(&event.project_id) {
                    held.insert(event.project_id);
                } else {
                    out.push(event);
                }
            }
            Ok(out)
        })
    }

    /// How many events wait for Kafka.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT count(*) FROM persona_events WHERE kafka_state = 'pending'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .op("outbox length")
            .map(|n| n as u64)
        })
    }

    /// Events waiting for Kafka, and how long the oldest has waited.
    pub fn outbox_depth(&self) -> Result<(u64, std::time::Duration), StoreError> {
        let (n, oldest) = self.read(|conn| {
            conn.query_row(
                "SELECT count(*), min(created_at) FROM persona_events WHERE kafka_state = 'pending'",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .op("outbox depth")
        })?;
        let age = oldest
            .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        Ok((n as u64, age))
    }

    /// Marks events as acknowledged by Kafka.
    pub fn outbox_sent(&self, event_ids: &[String]) -> Result<(), StoreError> {
        self.write_tx("outbox sent", |tx, ids| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE persona_events SET kafka_state = 'sent' WHERE seq = ?1 AND kafka_state = 'pending'",
                )
                .op("prepare outbox sent")?;
            for id in event_ids {
                if let Some(seq) = ids.seq(tx, id)? {
                    stmt.execute(params![seq]).op("outbox sent")?;
                }
            }
            Ok(())
        })
    }
}
