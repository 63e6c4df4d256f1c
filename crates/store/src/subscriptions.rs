//! `persona_event_subscriptions`: rows from manifests and from the API.

use super::{Op, Store, StoreError};
use persona_bus_model::event::now_rfc3339;
use persona_bus_model::manifest::ManifestSubscription;
use persona_bus_model::matching::{SourceFilter, Subscription};
use rusqlite::{Row, params};

const COLUMNS: &str = "id, persona_id, event_type, source_filter, project_id, enabled, managed_by, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Subscription> {
    Ok(Subscription {
        id: r.get(0)?,
        persona_id: r.get(1)?,
        event_type: r.get(2)?,
        source_filter: r.get(3)?,
        project_id: r.get(4)?,
        enabled: r.get(5)?,
        managed_by: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

/// A new subscription, as the API creates it.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub persona_id: String,
    pub event_type: String,
    pub source_filter: Option<String>,
    pub project_id: Option<String>,
    pub enabled: bool,
}

impl Store {
    /// Every subscription row.
    pub fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM persona_event_subscriptions ORDER BY created_at, id"
            ))
            .op("prepare subscriptions")?
            .query_map([], from_row)
            .op("subscriptions")?
            .collect::<rusqlite::Result<_>>()
            .op("read subscriptions")
        })
    }

    /// Replaces the manifest-managed rows of `handler` with `subs` (enabled).
    /// Rows created over the API for the same persona are left alone.
    pub fn sync_manifest_subscriptions(
        &self,
        handler: &str,
        subs: &[ManifestSubscription],
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let conn = self.writer();
        let tx = super::WriteTx::begin(&conn).op("begin sync subs")?;
        tx.execute(
            "DELETE FROM persona_event_subscriptions WHERE persona_id = ?1 AND managed_by = 'manifest'",
            [handler],
        )
        .op("clear manifest subs")?;
        for (i, s) in subs.iter().enumerate() {
            tx.execute(
                "INSERT INTO persona_event_subscriptions \
                 (id, persona_id, event_type, source_filter, project_id, enabled, managed_by, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, 'manifest', ?6, ?6)",
                params![format!("{handler}#{i}"), handler, s.event_type, s.source_filter, s.project_id, now],
            )
            .op("insert manifest sub")?;
        }
        tx.commit().op("commit sync subs")
    }

    /// Disables (never deletes) every subscription of `persona_id`.
    pub fn disable_subscriptions(&self, persona_id: &str) -> Result<usize, StoreError> {
        self.writer()
            .execute(
                "UPDATE persona_event_subscriptions SET enabled = 0, updated_at = ?2 WHERE persona_id = ?1 AND enabled = 1",
                params![persona_id, now_rfc3339()],
            )
            .op("disable subs")
    }

    /// Creates a subscription; its source filter is checked first.
    pub fn create_subscription(&self, new: &NewSubscription) -> Result<Subscription, StoreError> {
        if new.persona_id.trim().is_empty() || new.event_type.trim().is_empty() {
            return Err(StoreError::InvalidSubscription(
                "persona_id and event_type are required".into(),
            ));
        }
        SourceFilter::parse(new.source_filter.as_deref())
            .map_err(|e| StoreError::InvalidSubscription(e.to_string()))?;
        let now = now_rfc3339();
        let id = format!("sub_{}", ulid::Ulid::new());
        self.writer()
            .execute(
                "INSERT INTO persona_event_subscriptions \
                 (id, persona_id, event_type, source_filter, project_id, enabled, managed_by, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'api', ?7, ?7)",
                params![id, new.persona_id, new.event_type, new.source_filter, new.project_id, new.enabled, now],
            )
            .op("create sub")?;
        Ok(Subscription {
            id,
            persona_id: new.persona_id.clone(),
            event_type: new.event_type.clone(),
            source_filter: new.source_filter.clone(),
            project_id: new.project_id.clone(),
            enabled: new.enabled,
            managed_by: "api".into(),
            created_at: now.clone(),
            updated_at: now,
        })
    }

    /// Replaces a subscription's fields (PUT). Rows a manifest manages are
    /// rewritten on each reload, so they are refused here.
    pub fn update_subscription(
        &self,
        id: &str,
        new: &NewSubscription,
    ) -> Result<Subscription, StoreError> {
        if new.persona_id.trim().is_empty() || new.event_type.trim().is_empty() {
            return Err(StoreError::InvalidSubscription(
                "persona_id and event_type are required".into(),
            ));
        }
        SourceFilter::parse(new.source_filter.as_deref())
            .map_err(|e| StoreError::InvalidSubscription(e.to_string()))?;
        let current = self
            .subscriptions()?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| StoreError::SubscriptionNotFound(id.to_owned()))?;
        if current.managed_by != "api" {
            return Err(StoreError::InvalidSubscription(format!(
                "subscription {id} comes from a handler manifest; change the manifest instead"
            )));
        }
        let now = now_rfc3339();
        self.writer()
            .execute(
                "UPDATE persona_event_subscriptions SET persona_id = ?2, event_type = ?3, source_filter = ?4, \
                 project_id = ?5, enabled = ?6, updated_at = ?7 WHERE id = ?1",
                params![id, new.persona_id, new.event_type, new.source_filter, new.project_id, new.enabled, now],
            )
            .op("update sub")?;
        Ok(Subscription {
            persona_id: new.persona_id.clone(),
            event_type: new.event_type.clone(),
            source_filter: new.source_filter.clone(),
            project_id: new.project_id.clone(),
            enabled: new.enabled,
            updated_at: now,
            ..current
        })
    }

    pub fn delete_subscription(&self, id: &str) -> Result<(), StoreError> {
        match self
            .writer()
            .execute(
                "DELETE FROM persona_event_subscriptions WHERE id = ?1",
                [id],
            )
            .op("delete sub")?
        {
            0 => Err(StoreError::SubscriptionNotFound(id.to_owned())),
            _ => Ok(()),
        }
    }
}
