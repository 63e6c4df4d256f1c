//! On-disk cache of compiled components.
//!
//! Compiling is the slow part of loading a handler (tens of milliseconds for
//! a small Rust guest, seconds for a JavaScript one), so the native code is
//! kept in `<data_dir>/cache`, keyed by the component's SHA-256 and the
//! engine's compatibility hash: a restart, or a reload of an unchanged file,
//! deserializes instead of compiling, and a wasmtime upgrade or a change of
//! engine settings misses the cache instead of loading stale code.

use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Hex SHA-256 of a component's bytes.
pub fn digest(wasm: &[u8]) -> String {
    Sha256::digest(wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn load_or_compile(
    engine: &Engine,
    dir: Option<&Path>,
    wasm: &[u8],
    digest: &str,
) -> wasmtime::Result<Component> {
    let Some(dir) = dir else {
        return Component::new(engine, wasm);
    };
    let path = entry(engine, dir, digest);
    if path.exists() {
        // SAFETY: files in the cache folder are written only by `store`
        // below, from `Component::serialize` of this engine's build, and the
        // file name carries the engine's compatibility hash. Wasmtime also
        // checks the header and refuses an artifact from another version.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled-component cache entry")
            }
        }
    }
    let started = std::time::Instant::now();
    tracing::info!(
        bytes = wasm.len(),
        "compiling a component not in the cache yet (once; large guests take a while)"
    );
    let component = Component::new(engine, wasm)?;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "compiled and cached"
    );
    if let Err(e) = store(&component, &path) {
        // A cache that cannot be written costs time, not correctness.
        tracing::warn!(path = %path.display(), error = %e, "cannot write compiled-component cache");
    }
    Ok(component)
}

fn entry(engine: &Engine, dir: &Path, digest: &str) -> PathBuf {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    dir.join(format!("{digest}-{:016x}.cwasm", h.finish()))
}

fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename, so a concurrent reader never sees half a file.
    // Unique per writer: two threads (or processes) may compile the same
    // component at once; each renames a whole file into place.
    let tmp = path.with_extension(format!("tmp{}-{:x}", std::process::id(), fastrand::u64(..)));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
