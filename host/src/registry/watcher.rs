//! Hot reload: watches the handlers folder and reloads the registry when it
//! changes.
//!
//! File events are debounced (a reload runs once the folder has been quiet
//! for [`QUIET`]), so a copy in progress is not loaded half-way; and a
//! component that is still torn when the reload runs fails validation, which
//! leaves the previous version serving until the write completes and the next
//! event reloads it. Users should still copy to a temporary name and rename
//! into place (see the README): a rename is atomic, a copy is not.
//!
//! `persona-bus handlers reload` asks a running host for a rescan by writing
//! [`RELOAD_REQUEST_FILE`] in `<data_dir>/control`, which is watched too. (Not
//! the data folder itself: every commit writes its WAL.)

use super::Registry;
use crate::supervisor::Supervisor;
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Name of the file `handlers reload` writes in `<data_dir>/control`.
pub const RELOAD_REQUEST_FILE: &str = "reload-request";
/// How long the folders must be quiet before a reload.
const QUIET: Duration = Duration::from_millis(200);

/// Starts watching `registry.dir()` and `control_dir`; the thread ends when
/// `stop()` says so.
pub fn start_watcher(
    registry: Arc<Registry>,
    control_dir: &Path,
    tasks: &Supervisor,
) -> Result<(), String> {
    std::fs::create_dir_all(registry.dir())
        .map_err(|e| format!("create {}: {e}", registry.dir().display()))?;
    std::fs::create_dir_all(control_dir)
        .map_err(|e| format!("create {}: {e}", control_dir.display()))?;
    let (tx, rx) = channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .map_err(|e| format!("cannot watch files: {e}"))?;
    for dir in [registry.dir(), control_dir] {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    }
    let stop = tasks.token().clone();
    tasks
        .spawn("handler-watcher", move || {
            let _watcher = watcher; // dropped (unwatched) with the thread
            let mut changed_at: Option<Instant> = None;
            while !stop.is_stopped() {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(Ok(_)) => changed_at = Some(Instant::now()),
                    Ok(Err(e)) => tracing::warn!(error = %e, "file watch error"),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if changed_at.is_some_and(|t| t.elapsed() >= QUIET) {
                    changed_at = None;
                    match registry.reload() {
                        Ok(r)
                            if r.loaded.is_empty()
                                && r.failed.is_empty()
                                && r.removed.is_empty() => {}
                        Ok(r) => tracing::info!(
                            loaded = ?r.loaded,
                            refused = r.failed.len(),
                            removed = ?r.removed,
                            unchanged = r.unchanged,
                            "handlers reloaded"
                        ),
                        Err(e) => tracing::error!(error = %e, "handler reload failed"),
                    }
                }
            }
        })
        .map_err(|e| e.to_string())
}
