//! Following OCI tags: a manifest whose `[oci] reference` is a tag is
//! checked every `poll_secs` (a held one sooner), and a new digest is
//! loaded by an ordinary reload, with its guarantees: the new version is
//! compiled off the dispatch path and swapped in whole, events running on
//! the old one finish on it, and executions record which version ran.

use super::Registry;
use crate::supervisor::Supervisor;
use std::sync::Arc;
use std::time::Duration;

/// How often the follower looks whether a reference is due.
const TICK: Duration = Duration::from_millis(200);

/// Starts the thread that reloads when a followed reference is due; it
/// ends when `stop()` says so.
pub fn start_follower(registry: Arc<Registry>, tasks: &Supervisor) -> Result<(), String> {
    let stop = tasks.token().clone();
    tasks
        .spawn("handler-follower", move || {
            while !stop.is_stopped() {
                std::thread::sleep(TICK);
                if !registry.sources().due() {
                    continue;
                }
                match registry.reload() {
                    Ok(r) if !r.loaded.is_empty() => {
                        tracing::info!(loaded = ?r.loaded, "followed references reloaded")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "handler reload failed"),
                }
            }
        })
        .map_err(|e| e.to_string())
}
