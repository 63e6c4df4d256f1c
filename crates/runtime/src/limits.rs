//! Memory limits per call, and the error type that host imports use to stop
//! a guest that broke a host limit.

use wasmtime::ResourceLimiter;

/// Caps a guest's linear memory at its manifest's `memory_mb` and remembers
/// whether it tried to go past it, so the resulting trap (the guest aborts
/// when an allocation fails) is reported as out-of-memory, not as a crash.
pub(crate) struct Limiter {
    max_memory: usize,
    pub(crate) hit: bool,
}

impl Limiter {
    pub(crate) fn new(max_memory: usize) -> Self {
        Self {
            max_memory,
            hit: false,
        }
    }
}

/// Most table elements a guest may grow to; tables hold function references,
/// so this is far beyond any real handler.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Raised (as a trap) by a host import when the guest breaks a host limit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LimitHit(pub(crate) String);
