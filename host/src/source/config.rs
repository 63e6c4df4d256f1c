//! `[poll]`: how the SQLite poller looks for pending events.

use persona_bus_model::settings::{Checked, Invalid};
use serde::{Deserialize, Serialize};

/// How the SQLite poller looks for pending events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Interval while events keep arriving. Events published in this process
    /// wake the poller at once; this bounds the delay for events written by
    /// another process (the CLI, a second tool on the same database).
    pub active_interval_ms: u64,
    /// Interval once the bus has been quiet for `idle_after_empty_polls`.
    pub idle_interval_ms: u64,
    pub idle_after_empty_polls: u32,
    /// Most events claimed in one transaction.
    pub batch_size: usize,
    /// After a batch smaller than `batch_size`, wait this long before the
    /// next claim so that events arriving meanwhile share one commit. Only
    /// while busy: an idle poller reacts to a publish at once. Trades up to
    /// this much latency for far fewer (page-heavy) transactions under load.
    pub linger_us: u64,
    /// A row left in `processing` this long is returned to `pending` by the
    /// reaper (rows of a crashed host are returned at once on restart).
    pub stuck_after_ms: u64,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            active_interval_ms: 20,
            idle_interval_ms: 500,
            idle_after_empty_polls: 100,
            batch_size: 256,
            linger_us: 1_000,
            stuck_after_ms: 300_000,
        }
    }
}

impl PollConfig {
    pub fn validate(&self) -> Checked {
        if self.active_interval_ms == 0 || self.idle_interval_ms < self.active_interval_ms {
            return Err(Invalid::new(
                "poll",
                "need 0 < active_interval_ms <= idle_interval_ms",
            ));
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(Invalid::new(
                "poll.batch_size",
                "must be between 1 and 10000",
            ));
        }
        Ok(())
    }
}
