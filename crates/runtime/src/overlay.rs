//! State written by completed calls whose outcomes are not committed yet.
//!
//! A lane hands an outcome to the committer and starts its unit's next
//! event at once; the committer writes to SQLite a little later. Without
//! this overlay the next call would read the state as committed, one or
//! more events behind (a lost update for any `get` then `set`). With it, a
//! call of a handler reads, per key: its own writes, else the pending
//! value its ordering unit left here, else SQLite. The unit is the
//! project, the project and a key, or the event alone, as the handler's
//! `[ordering]` says (`manifest::OrderBy`).
//!
//! Invariants (`wit/bus.wit`, interface `state`, says what handlers get):
//! - Only completed calls are applied, after they end and before their
//!   outcome is sent to the committer. Nothing of a call that failed,
//!   timed out, was retried or abandoned is ever here.
//! - A unit's calls run one after another and their outcomes are committed
//!   in the order they were sent, so a key's entry is the value a serial
//!   run would read, and SQLite holds it once the entry's last writer is
//!   committed, when the entry is dropped ([`StateOverlay::release`]).
//! - Units see each other's writes only once committed: the entry is per
//!   (handler, unit, key).
//! - A commit that fails is retried until it lands; outcomes that may have
//!   read an entry are never committed before the write they read (the
//!   committer commits in order and stops at the first it cannot commit).

use persona_bus_model::fast_map::FastMap;
use persona_bus_model::sync::Locked;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Pending values per handler, unit and key.
type Units = FastMap<String, FastMap<String, Pending>>;

#[derive(Default)]
pub struct StateOverlay {
    map: Mutex<FastMap<Arc<str>, Units>>,
    /// Entries in `map`; lets a read skip the lock when nothing is pending.
    entries: AtomicUsize,
}

struct Pending {
    /// `None`: deleted.
    value: Option<Vec<u8>>,
    /// Outcomes that wrote this key and are not committed yet.
    writers: u32,
}

/// The keys one completed call wrote, to release once its outcome is
/// committed.
pub struct Written {
    handler: Arc<str>,
    unit: String,
    keys: Vec<String>,
}

impl StateOverlay {
    /// The pending value of `key`: `None` when nothing is pending (read
    /// SQLite), `Some(None)` when a pending call deleted it.
    pub fn get(&self, handler: &str, unit: &str, key: &str) -> Option<Option<Vec<u8>>> {
        if self.entries.load(Ordering::Acquire) == 0 {
            return None;
        }
        let map = self.map.locked();
        map.get(handler)?
            .get(unit)?
            .get(key)
            .map(|p| p.value.clone())
    }

    /// Records what a completed call left in `view` (its last value per key
    /// it wrote). Returns what to [`release`](Self::release) once the
    /// call's outcome is committed.
    pub fn apply(
        &self,
        handler: &Arc<str>,
        unit: &str,
        view: Vec<(String, Option<Vec<u8>>)>,
    ) -> Written {
        let mut keys = Vec::with_capacity(view.len());
        let mut map = self.map.locked();
        let units = map.entry(handler.clone()).or_default();
        let pending = match units.get_mut(unit) {
            Some(p) => p,
            None => units.entry(unit.to_owned()).or_default(),
        };
        let mut added = 0;
        for (key, value) in view {
            keys.push(key.clone());
            match pending.get_mut(&key) {
                Some(p) => {
                    p.value = value;
                    p.writers += 1;
                }
                None => {
                    pending.insert(key, Pending { value, writers: 1 });
                    added += 1;
                }
            }
        }
        self.entries.fetch_add(added, Ordering::AcqRel);
        Written {
            handler: handler.clone(),
            unit: unit.to_owned(),
            keys,
        }
    }

    /// The outcomes that wrote `written` are committed: SQLite has their
    /// values, so entries no pending call wrote since are dropped.
    pub fn release(&self, written: Vec<Written>) {
        if written.is_empty() {
            return;
        }
        let mut map = self.map.locked();
        let mut dropped = 0;
        for w in written {
            let Some(units) = map.get_mut(&w.handler) else {
                continue;
            };
            let Some(pending) = units.get_mut(&w.unit) else {
                continue;
            };
            for key in &w.keys {
                if let Some(p) = pending.get_mut(key) {
                    p.writers -= 1;
                    if p.writers == 0 {
                        pending.remove(key);
                        dropped += 1;
                    }
                }
            }
            if pending.is_empty() {
                units.remove(&w.unit);
                if units.is_empty() {
                    map.remove(&w.handler);
                }
            }
        }
        self.entries.fetch_sub(dropped, Ordering::AcqRel);
    }

    /// Keys pending now, over all handlers and units.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn a_key_stays_until_its_last_writer_is_committed() {
        let o = StateOverlay::default();
        let h: Arc<str> = "h".into();
        let first = o.apply(&h, "p1", vec![("k".into(), v("1"))]);
        let second = o.apply(&h, "p1", vec![("k".into(), None), ("j".into(), v("x"))]);
        assert_eq!(o.get("h", "p1", "k"), Some(None));
        assert_eq!(o.get("h", "p1", "j"), Some(v("x")));
        // Another unit and another handler read SQLite.
        assert_eq!(o.get("h", "p2", "k"), None);
        assert_eq!(o.get("g", "p1", "k"), None);
        o.release(vec![first]);
        assert_eq!(o.get("h", "p1", "k"), Some(None), "the delete is pending");
        o.release(vec![second]);
        assert_eq!(o.get("h", "p1", "k"), None);
        assert!(o.is_empty());
        assert!(
            o.map.lock().unwrap().is_empty(),
            "no empty maps left behind"
        );
    }
}
