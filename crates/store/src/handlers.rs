//! `persona_handlers`: what the running host loaded, for other processes.

use super::{Op, Store, StoreError};
use persona_bus_model::event::now_rfc3339;
use rusqlite::params;
use serde::Serialize;

/// A handler as the host last saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HandlerRecord {
    pub name: String,
    pub version: Option<String>,
    /// `loaded`, `failed` (the error says why) or `removed`.
    pub status: String,
    pub error: Option<String>,
    pub manifest_path: String,
    /// SHA-256 of the component that is serving.
    pub digest: Option<String>,
    /// The WIT contract it speaks: `0.1.0`, `0.2.0` or `0.2.0+batch`.
    pub contract: Option<String>,
    /// Where the component came from: `file`, or the OCI reference with
    /// the digest it resolved to (`host/repo:tag@sha256:...`).
    pub source: Option<String>,
    /// The `[trust]` key that signed it (`name:fingerprint`), if trust is
    /// configured.
    pub signer: Option<String>,
    /// When the serving version was loaded (RFC 3339); kept while it serves.
    pub loaded_at: Option<String>,
    pub updated_at: String,
}

impl HandlerRecord {
    /// Which build runs, from where, signed by whom, since when: one line
    /// for `status` and `handlers list`.
    pub fn provenance(&self) -> String {
        let mut out = format!("source {}", self.source.as_deref().unwrap_or("file"));
        if let Some(d) = &self.digest {
            out += &format!(", digest {}", &d[..d.len().min(16)]);
        }
        out += &format!(", signer {}", self.signer.as_deref().unwrap_or("-"));
        if let Some(t) = &self.loaded_at {
            out += &format!(", loaded {t}");
        }
        out
    }
}

impl Store {
    pub fn record_handler(&self, r: &HandlerRecord) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "INSERT INTO persona_handlers (name, version, status, error, manifest_path, digest, contract, \
                 source, signer, loaded_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version, status = excluded.status, \
                 error = excluded.error, manifest_path = excluded.manifest_path, digest = excluded.digest, \
                 contract = excluded.contract, source = excluded.source, signer = excluded.signer, \
                 loaded_at = excluded.loaded_at, updated_at = excluded.updated_at",
                params![
                    r.name,
                    r.version,
                    r.status,
                    r.error,
                    r.manifest_path,
                    r.digest,
                    r.contract,
                    r.source,
                    r.signer,
                    r.loaded_at,
                    now_rfc3339()
                ],
            )
            .op("record handler")?;
        Ok(())
    }

    /// Sets one handler's status and error, leaving the rest of its row.
    pub fn set_handler_status(
        &self,
        name: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.writer()
            .execute(
                "UPDATE persona_handlers SET status = ?2, error = ?3, updated_at = ?4 WHERE name = ?1",
                params![name, status, error, now_rfc3339()],
            )
            .op("set handler status")?;
        Ok(())
    }

    /// Marks every handler not in `present` as removed.
    pub fn mark_removed_except(&self, present: &[String]) -> Result<Vec<String>, StoreError> {
        let all = self.handler_records()?;
        let mut removed = Vec::new();
        for r in all
            .into_iter()
            .filter(|r| r.status != "removed" && !present.contains(&r.name))
        {
            self.record_handler(&HandlerRecord {
                status: "removed".into(),
                error: None,
                ..r.clone()
            })?;
            removed.push(r.name);
        }
        Ok(removed)
    }

    pub fn handler_records(&self) -> Result<Vec<HandlerRecord>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT name, version, status, error, manifest_path, digest, contract, source, signer, loaded_at, \
                 updated_at FROM persona_handlers ORDER BY name",
            )
            .op("prepare handlers")?
            .query_map([], |r| {
                Ok(HandlerRecord {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    status: r.get(2)?,
                    error: r.get(3)?,
                    manifest_path: r.get(4)?,
                    digest: r.get(5)?,
                    contract: r.get(6)?,
                    source: r.get(7)?,
                    signer: r.get(8)?,
                    loaded_at: r.get(9)?,
                    updated_at: r.get(10)?,
                })
            })
            .op("handlers")?
            .collect::<rusqlite::Result<_>>()
            .op("read handlers")
        })
    }

    /// Makes the events waiting for a held handler due now (a handler
    /// loaded: it may be one they wait for); returns how many.
    pub fn wake_waiting(&self) -> Result<usize, StoreError> {
        self.writer()
            .execute(
                "UPDATE persona_events SET next_attempt_at = 0 \
                 WHERE status = 'pending' AND waiting = 1 AND next_attempt_at > 0",
                [],
            )
            .op("wake waiting events")
    }
}
