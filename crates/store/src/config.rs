//! `[store]`: the store's own settings.

use persona_bus_model::settings::{Checked, Invalid};
use serde::{Deserialize, Serialize};

/// The SQLite store's memory: bounded by these settings, whatever the size
/// of the file or of a backlog.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Page cache of the writer connection, in KiB. Each pooled reader
    /// connection gets a quarter of it.
    pub cache_kb: u32,
    /// Reader connections kept open for queries (more are opened when
    /// needed and closed after).
    pub readers: usize,
    /// Event ids kept in memory before they are merged into the on-disk id
    /// index in sorted runs (about 80 bytes each; see `store::ids`). More
    /// makes each merge land on fewer index pages per id.
    pub id_tail: usize,
    /// Most memory, in KiB, of the filter that answers "no such event" for
    /// new ids without a probe of the id index (1.25-2.5 bytes an event in
    /// the store). Past it, the filter is dropped and lookups probe the
    /// index, which is correct but slower. 0 turns it off. Only the host
    /// keeps one: it is read from the whole index at start, which a one-shot
    /// CLI command would not earn back.
    pub id_filter_kb: usize,
    /// Free space, in MiB, that new publishes leave on the data folder's
    /// file system: below it they are refused (HTTP 507), so the outcomes
    /// of events already accepted and the WAL checkpoint still have room.
    /// 0 turns the floor off.
    pub min_free_mb: u64,
    /// How long finished rows are kept (`[store.retention]`).
    pub retention: crate::RetentionConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_kb: 8 * 1024,
            readers: 4,
            id_tail: crate::ID_TAIL,
            id_filter_kb: 16 * 1024,
            min_free_mb: 64,
            retention: crate::RetentionConfig::default(),
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Checked {
        self.retention
            .validate()
            .map_err(|reason| Invalid::new("store.retention", reason))
    }
}
