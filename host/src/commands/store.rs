//! `persona-bus store compact`: rewrite the store file so it gives freed space back.

use crate::commands::open_store;
use anyhow::Context;
use clap::Subcommand;
use persona_bus::config::Config;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Rewrite the file without its free pages, with incremental vacuum on
    Compact,
}

/// `store compact`: VACUUM with incremental auto-vacuum on. Refused while a
/// host runs on the folder (it holds the writer for the whole rewrite).
pub(super) fn compact(config: &Config) -> anyhow::Result<()> {
    // Held for the whole rewrite, so no host starts on the folder meanwhile.
    let _lock = persona_bus::bus::take_lock(config)
        .context("stop the host first: compacting holds the store for the whole rewrite")?;
    let store = open_store(config)?;
    let before = store.size()?;
    let after = store.compact()?;
    println!(
        "compacted {}: {} -> {} bytes; freed pages are given back from now on",
        store.path().display(),
        before.file_bytes + before.wal_bytes,
        after.file_bytes + after.wal_bytes
    );
    Ok(())
}
