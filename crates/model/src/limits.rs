//! `[limits]`: what the host allows events and handlers. A manifest picks
//! its own limits up to these ceilings (see `manifest`).

use crate::settings::{Checked, Invalid};
use serde::{Deserialize, Serialize};

/// Limits the host imposes on events and handlers. Handler manifests choose
/// their own limits up to the ceilings here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostLimits {
    /// Largest accepted payload (JSON text), from any publisher.
    pub max_payload_bytes: usize,
    /// Most `publish` hops in a chain of events; the loop guard.
    pub max_chain_depth: u32,
    /// Defaults for handlers whose manifest is silent.
    pub default_timeout_ms: u64,
    pub default_memory_mb: u64,
    pub default_max_publishes: u32,
    pub default_max_log_lines: u32,
    /// Ceilings: a manifest asking for more is refused.
    pub max_timeout_ms: u64,
    pub max_memory_mb: u64,
    pub max_publishes: u32,
    /// Largest key and value in a handler's key-value state.
    pub max_state_key_bytes: usize,
    pub max_state_value_bytes: usize,
}

impl HostLimits {
    /// The limits every publisher's events are checked against.
    pub fn event_limits(&self) -> crate::event::EventLimits {
        crate::event::EventLimits {
            max_payload_bytes: self.max_payload_bytes,
        }
    }
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1 << 20,
            max_chain_depth: 3,
            default_timeout_ms: 5_000,
            default_memory_mb: 64,
            default_max_publishes: 16,
            default_max_log_lines: 1_000,
            max_timeout_ms: 60_000,
            max_memory_mb: 1_024,
            max_publishes: 1_000,
            max_state_key_bytes: 512,
            max_state_value_bytes: 64 << 10,
        }
    }
}

impl HostLimits {
    pub fn validate(&self) -> Checked {
        if self.max_payload_bytes == 0 {
            return Err(Invalid::new("limits.max_payload_bytes", "must be above 0"));
        }
        if self.default_timeout_ms > self.max_timeout_ms
            || self.default_memory_mb > self.max_memory_mb
        {
            return Err(Invalid::new("limits", "a default is above its ceiling"));
        }
        Ok(())
    }
}
