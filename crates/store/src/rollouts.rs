//! Candidate versions of handlers: canaries rolled back, and what shadows
//! did beside their live versions (`persona_rollbacks`,
//! `persona_shadow_tallies`, `persona_shadow_diffs`).

use super::{Op, Store, StoreError};
use persona_bus_model::event::now_rfc3339;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

/// Counts of one shadow version beside one live version.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ShadowTally {
    pub handler: String,
    pub shadow_version: String,
    pub live_version: String,
    /// Events where both versions ended the same way, wrote the same state
    /// and published the same events.
    pub agreed: u64,
    pub differed: u64,
    /// Events the shadow never ran: its queue was full (it is slower than
    /// the live version) or the host stopped first.
    pub dropped: u64,
    pub first_at: String,
    pub last_at: String,
}

/// One event where a shadow differed from its live version.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShadowDiff {
    pub handler: String,
    pub shadow_version: String,
    pub live_version: String,
    pub event_id: String,
    pub attempt: u32,
    /// What differed: `outcome`, `state`, `published`, comma-separated.
    pub differs: String,
    /// What each version did, as JSON (outcome, state writes, published).
    pub live: serde_json::Value,
    pub shadow: serde_json::Value,
    pub at: String,
}

impl Store {
    /// Why the canary `handler` with component `digest` was rolled back,
    /// if it was.
    pub fn rolled_back(&self, handler: &str, digest: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT reason FROM persona_rollbacks WHERE handler = ?1 AND digest = ?2",
            )
            .op("prepare rollback")?
            .query_row(params![handler, digest], |r| r.get(0))
            .optional()
            .op("rollback")
        })
    }

    /// Records that a canary was rolled back: it stays off, across
    /// restarts, until its component changes.
    pub fn record_rollback(
        &self,
        handler: &str,
        version: &str,
        digest: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "INSERT INTO persona_rollbacks (handler, digest, version, reason, at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT DO UPDATE SET reason = excluded.reason, at = excluded.at",
                params![handler, digest, version, reason, now_rfc3339()],
            )
            .op("record rollback")?;
        Ok(())
    }

    /// Adds what shadows did since the last call: counts per (handler,
    /// shadow version, live version), and the events where they differed.
    pub fn record_shadow(
        &self,
        tallies: &[ShadowTally],
        diffs: &[ShadowDiff],
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let mut conn = self.writer();
        let tx = conn.transaction().op("begin shadow")?;
        {
            let mut tally = tx
                .prepare_cached(
                    "INSERT INTO persona_shadow_tallies (handler, shadow_version, live_version, agreed, differed, dropped, first_at, last_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
                     ON CONFLICT DO UPDATE SET agreed = agreed + excluded.agreed, differed = differed + excluded.differed, \
                     dropped = dropped + excluded.dropped, last_at = excluded.last_at",
                )
                .op("prepare shadow tally")?;
            for t in tallies {
                tally
                    .execute(params![
                        t.handler,
                        t.shadow_version,
                        t.live_version,
                        t.agreed as i64,
                        t.differed as i64,
                        t.dropped as i64,
                        now
                    ])
                    .op("shadow tally")?;
            }
            let mut diff = tx
                .prepare_cached(
                    "INSERT INTO persona_shadow_diffs (handler, shadow_version, live_version, event_id, attempt, differs, live, shadow, at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .op("prepare shadow diff")?;
            for d in diffs {
                diff.execute(params![
                    d.handler,
                    d.shadow_version,
                    d.live_version,
                    d.event_id,
                    d.attempt,
                    d.differs,
                    d.live.to_string(),
                    d.shadow.to_string(),
                    d.at
                ])
                .op("shadow diff")?;
            }
        }
        tx.commit().op("commit shadow")?;
        Ok(())
    }

    /// The tallies of `handler`'s shadows, newest first.
    pub fn shadow_tallies(&self, handler: &str) -> Result<Vec<ShadowTally>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT handler, shadow_version, live_version, agreed, differed, dropped, first_at, last_at \
                 FROM persona_shadow_tallies WHERE handler = ?1 ORDER BY last_at DESC",
            )
            .op("prepare shadow tallies")?
            .query_map(params![handler], |r| {
                Ok(ShadowTally {
                    handler: r.get(0)?,
                    shadow_version: r.get(1)?,
                    live_version: r.get(2)?,
                    agreed: r.get::<_, i64>(3)? as u64,
                    differed: r.get::<_, i64>(4)? as u64,
                    dropped: r.get::<_, i64>(5)? as u64,
                    first_at: r.get(6)?,
                    last_at: r.get(7)?,
                })
            })
            .op("shadow tallies")?
            .collect::<rusqlite::Result<_>>()
            .op("read shadow tallies")
        })
    }

    /// Events where `handler`'s shadow `shadow_version` differed, oldest
    /// first, at most `limit`.
    pub fn shadow_diffs(
        &self,
        handler: &str,
        shadow_version: &str,
        limit: usize,
    ) -> Result<Vec<ShadowDiff>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT handler, shadow_version, live_version, event_id, attempt, differs, live, shadow, at \
                 FROM persona_shadow_diffs WHERE handler = ?1 AND shadow_version = ?2 ORDER BY id LIMIT ?3",
            )
            .op("prepare shadow diffs")?
            .query_map(params![handler, shadow_version, limit as i64], |r| {
                let json = |i: usize| -> rusqlite::Result<serde_json::Value> {
                    let text: String = r.get(i)?;
                    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
                };
                Ok(ShadowDiff {
                    handler: r.get(0)?,
                    shadow_version: r.get(1)?,
                    live_version: r.get(2)?,
                    event_id: r.get(3)?,
                    attempt: r.get(4)?,
                    differs: r.get(5)?,
                    live: json(6)?,
                    shadow: json(7)?,
                    at: r.get(8)?,
                })
            })
            .op("shadow diffs")?
            .collect::<rusqlite::Result<_>>()
            .op("read shadow diffs")
        })
    }
}
