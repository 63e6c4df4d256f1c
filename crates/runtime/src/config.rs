//! `[runtime]`: the WebAssembly runtime's threads, instances and cache.

use persona_bus_model::settings::{Checked, Invalid};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The WebAssembly runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run handlers; 0 = one per core.
    pub workers: usize,
    /// Instance slots of the pooling allocator: how many handler instances
    /// may exist at once.
    pub pool_slots: u32,
    /// Granularity of handler timeouts, and how often a running guest
    /// yields its thread to other calls.
    pub epoch_tick_ms: u64,
    /// Handler calls in progress at once (each holds an instance slot, so
    /// at most `pool_slots`). One handler takes at most half of them unless
    /// its manifest sets `instances.concurrency`.
    pub max_calls: u32,
    /// Events accepted by dispatch and not yet committed, from all sources:
    /// bounds memory, and how far a source runs ahead of what is durable.
    pub max_in_flight: usize,
    /// Events queued in one project's lane. A project whose lane is full is
    /// not claimed from SQLite until it drains, so one slow project cannot
    /// fill `max_in_flight` and hold up the others.
    pub lane_depth: usize,
    /// Where compiled components are cached; default `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            pool_slots: 128,
            epoch_tick_ms: 5,
            max_calls: 64,
            max_in_flight: 10_000,
            lane_depth: 512,
            cache_dir: None,
        }
    }
}

impl RuntimeConfig {
    pub fn validate(&self) -> Checked {
        if self.pool_slots == 0 || self.epoch_tick_ms == 0 {
            return Err(Invalid::new(
                "runtime",
                "pool_slots and epoch_tick_ms must be above 0",
            ));
        }
        if self.max_calls == 0 || self.max_calls > self.pool_slots {
            return Err(Invalid::new(
                "runtime.max_calls",
                "must be between 1 and runtime.pool_slots",
            ));
        }
        if self.max_in_flight == 0 || self.lane_depth == 0 {
            return Err(Invalid::new(
                "runtime",
                "max_in_flight and lane_depth must be above 0",
            ));
        }
        Ok(())
    }
}
