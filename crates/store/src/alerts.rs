//! Alerts and their webhook deliveries (see the host's `alerts`). A state
//! change and the deliveries announcing it are written in one transaction
//! (an outbox), so a crash can neither lose a notification nor send one
//! twice for the same change.

use super::{Op, Store, StoreError};
use persona_bus_model::alert::{Alert, Change, Phase};
use rusqlite::{Row, params};
use serde::Serialize;
use std::collections::BTreeMap;

/// One notification to one webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub alert_id: i64,
    /// What it announces: `firing` or `resolved`.
    pub status: String,
    pub url: String,
    pub body: String,
    pub attempts: u32,
    /// When the next attempt is due; `None` once delivered or given up.
    pub next_at_ms: Option<i64>,
    pub delivered_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
}

/// Resolved alerts kept for `alerts list` and the dashboard.
const KEEP_RESOLVED: i64 = 1_000;

const ALERT_COLUMNS: &str = "id, rule, subject, signal, severity, state, value, threshold, summary, \
     since_ms, fired_at_ms, resolved_at_ms";

fn alert_row(r: &Row<'_>) -> rusqlite::Result<Alert> {
    let state: String = r.get(5)?;
    Ok(Alert {
        id: r.get(0)?,
        rule: r.get(1)?,
        subject: r.get(2)?,
        signal: r.get(3)?,
        severity: r.get(4)?,
        phase: Phase::parse(&state).unwrap_or(Phase::Resolved),
        value: r.get(6)?,
        threshold: r.get(7)?,
        summary: r.get(8)?,
        since_ms: r.get(9)?,
        fired_at_ms: r.get(10)?,
        resolved_at_ms: r.get(11)?,
    })
}

const DELIVERY_COLUMNS: &str = "id, alert_id, status, url, body, attempts, next_at_ms, delivered_at_ms, last_error, created_at_ms";

fn delivery_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: r.get(0)?,
        alert_id: r.get(1)?,
        status: r.get(2)?,
        url: r.get(3)?,
        body: r.get(4)?,
        attempts: r.get(5)?,
        next_at_ms: r.get(6)?,
        delivered_at_ms: r.get(7)?,
        last_error: r.get(8)?,
        created_at_ms: r.get(9)?,
    })
}

impl Store {
    /// Pending and firing alerts, as a restarted host resumes them.
    pub fn alerts_active(&self) -> Result<Vec<Alert>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM persona_alerts WHERE state != 'resolved' ORDER BY id"
            ))
            .op("prepare active alerts")?
            .query_map([], alert_row)
            .op("active alerts")?
            .collect::<rusqlite::Result<_>>()
            .op("read active alerts")
        })
    }

    /// Alerts, active ones first, then the newest resolved.
    pub fn alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM persona_alerts \
                 ORDER BY state = 'resolved', coalesce(resolved_at_ms, fired_at_ms, since_ms) DESC LIMIT ?1"
            ))
            .op("prepare alerts")?
            .query_map([limit.max(1) as i64], alert_row)
            .op("alerts")?
            .collect::<rusqlite::Result<_>>()
            .op("read alerts")
        })
    }

    /// Saves what one evaluation changed; for each firing and resolve,
    /// queues a delivery per webhook URL with the body `body` makes (the
    /// alert has its row id by then). Returns the ids of new rows, by
    /// (rule, subject).
    pub fn alerts_apply(
        &self,
        changes: &[Change],
        urls: &[String],
        now_ms: i64,
        body: impl Fn(&Alert) -> String,
    ) -> Result<BTreeMap<(String, String), i64>, StoreError> {
        self.write_tx("save alerts", |tx, _| {
            let mut ids = BTreeMap::new();
            for change in changes {
                let (alert, notify) = match change {
                    Change::Dropped(a) => {
                        tx.prepare_cached("DELETE FROM persona_alerts WHERE id = ?1")
                            .op("prepare drop alert")?
                            .execute([a.id])
                            .op("drop alert")?;
                        continue;
                    }
                    Change::Saved(a) => (a, false),
                    Change::Fired(a) | Change::Resolved(a) => (a, true),
                };
                let mut saved = alert.clone();
                if alert.id == 0 {
                    saved.id = tx
                        .prepare_cached(
                            "INSERT INTO persona_alerts (rule, subject, signal, severity, state, value, threshold, summary, \
                             since_ms, fired_at_ms, resolved_at_ms, updated_at_ms) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING id",
                        )
                        .op("prepare insert alert")?
                        .query_row(
                            params![
                                alert.rule, alert.subject, alert.signal, alert.severity,
                                alert.phase.as_str(), alert.value, alert.threshold, alert.summary,
                                alert.since_ms, alert.fired_at_ms, alert.resolved_at_ms, now_ms
                            ],
                            |r| r.get(0),
                        )
                        .op("insert alert")?;
                    ids.insert((alert.rule.clone(), alert.subject.clone()), saved.id);
                } else {
                    tx.prepare_cached(
                        "UPDATE persona_alerts SET state = ?2, value = ?3, summary = ?4, fired_at_ms = ?5, \
                         resolved_at_ms = ?6, updated_at_ms = ?7 WHERE id = ?1",
                    )
                    .op("prepare update alert")?
                    .execute(params![
                        alert.id, alert.phase.as_str(), alert.value, alert.summary,
                        alert.fired_at_ms, alert.resolved_at_ms, now_ms
                    ])
                    .op("update alert")?;
                }
                if notify {
                    let text = body(&saved);
                    for url in urls {
                        tx.prepare_cached(
                            "INSERT INTO persona_alert_deliveries (alert_id, status, url, body, attempts, next_at_ms, created_at_ms) \
                             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
                        )
                        .op("prepare queue delivery")?
                        .execute(params![saved.id, saved.phase.as_str(), url, text, now_ms])
                        .op("queue delivery")?;
                    }
                }
            }
            // Bounded history: the oldest resolved alerts (and their
            // finished deliveries) go.
            tx.execute(
                "DELETE FROM persona_alerts WHERE state = 'resolved' AND id NOT IN \
                 (SELECT id FROM persona_alerts WHERE state = 'resolved' ORDER BY id DESC LIMIT ?1)",
                [KEEP_RESOLVED],
            )
            .op("prune alerts")?;
            tx.execute(
                "DELETE FROM persona_alert_deliveries WHERE next_at_ms IS NULL \
                 AND alert_id NOT IN (SELECT id FROM persona_alerts)",
                [],
            )
            .op("prune deliveries")?;
            Ok(ids)
        })
    }

    /// Deliveries due at `now_ms`, oldest first.
    pub fn alert_deliveries_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM persona_alert_deliveries \
                 WHERE next_at_ms IS NOT NULL AND next_at_ms <= ?1 ORDER BY next_at_ms, id LIMIT ?2"
            ))
            .op("prepare due deliveries")?
            .query_map(params![now_ms, limit.max(1) as i64], delivery_row)
            .op("due deliveries")?
            .collect::<rusqlite::Result<_>>()
            .op("read due deliveries")
        })
    }

    /// When the next delivery is due, if any is waiting.
    pub fn alert_delivery_next_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT min(next_at_ms) FROM persona_alert_deliveries WHERE next_at_ms IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .op("next due delivery")
        })
    }

    /// Records an attempt: delivered (`error` none), or failed and due again
    /// at `retry_at` (none: given up).
    pub fn alert_delivery_attempted(
        &self,
        id: i64,
        now_ms: i64,
        error: Option<&str>,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.write_tx("record delivery", |tx, _| {
            tx.prepare_cached(
                "UPDATE persona_alert_deliveries SET attempts = attempts + 1, last_error = ?2, \
                 next_at_ms = ?3, delivered_at_ms = CASE WHEN ?2 IS NULL THEN ?4 END WHERE id = ?1",
            )
            .op("prepare record delivery")?
            .execute(params![
                id,
                error,
                if error.is_some() { retry_at } else { None },
                now_ms
            ])
            .op("record delivery")?;
            Ok(())
        })
    }

    /// Deliveries, newest first.
    pub fn alert_deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM persona_alert_deliveries ORDER BY id DESC LIMIT ?1"
            ))
            .op("prepare deliveries")?
            .query_map([limit.max(1) as i64], delivery_row)
            .op("deliveries")?
            .collect::<rusqlite::Result<_>>()
            .op("read deliveries")
        })
    }

    /// Dead letters created at or after `since` (RFC 3339), per handler.
    /// Walks back from the newest, so it reads only the window's rows.
    pub fn dead_letters_since(&self, since: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT handler, created_at FROM persona_dead_letters ORDER BY id DESC",
                )
                .op("prepare recent dead letters")?;
            let mut rows = stmt.query([]).op("recent dead letters")?;
            let mut counts = BTreeMap::new();
            while let Some(r) = rows.next().op("read recent dead letters")? {
                let created: String = r.get(1).op("dead letter time")?;
                if created.as_str() < since {
                    break;
                }
                *counts
                    .entry(r.get(0).op("dead letter handler")?)
                    .or_default() += 1;
            }
            Ok(counts)
        })
    }
}
