//! Handler key-value state (reads; writes are committed with outcomes).

use super::{Op, Store, StoreError};
use persona_bus_model::outcome::parse_counter;
use rusqlite::{OptionalExtension, params};

impl Store {
    /// The committed value of `key` in `handler`'s state.
    pub fn state_get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT value FROM persona_handler_state WHERE handler = ?1 AND key = ?2",
            )
            .op("prepare state get")?
            .query_row(params![handler, key], |r| r.get(0))
            .optional()
            .op("state get")
        })
    }

    /// A committed counter (`increment`) value; 0 when unset.
    pub fn state_counter(&self, handler: &str, key: &str) -> Result<i64, StoreError> {
        Ok(self
            .state_get(handler, key)?
            .as_deref()
            .and_then(parse_counter)
            .unwrap_or(0))
    }

    /// All keys of a handler's state with their values, sorted by key.
    pub fn state_entries(&self, handler: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT key, value FROM persona_handler_state WHERE handler = ?1 ORDER BY key",
            )
            .op("prepare state entries")?
            .query_map([handler], |r| Ok((r.get(0)?, r.get(1)?)))
            .op("state entries")?
            .collect::<rusqlite::Result<_>>()
            .op("read state entries")
        })
    }
}
