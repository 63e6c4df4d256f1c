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
        let component = Component::new(engine, wasm);
        release_compiler_memory();
        return component;
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
    let component = match store(&component, &path) {
        // Serve the cached file rather than the freshly compiled copy: its
        // code is mapped from the file (pages paged in as used, shared with
        // the page cache) instead of held in anonymous memory, so a first
        // start takes the same memory as every later one.
        // SAFETY: as above; the file was just written from this component.
        Ok(()) => match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(mapped) => mapped,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot map the compiled-component cache entry just written; keeping the compiled copy");
                component
            }
        },
        Err(e) => {
            // A cache that cannot be written costs time, not correctness.
            tracing::warn!(path = %path.display(), error = %e, "cannot write compiled-component cache");
            component
        }
    };
    release_compiler_memory();
    Ok(component)
}

/// Hands the memory the compiler freed back to the system. Compiling a
/// large guest (a JavaScript one: seconds, hundreds of MB of compiler
/// state) leaves glibc's heaps that much larger, and glibc keeps freed
/// memory for reuse: measured here, a host idle at 36 MB stayed at 370-440
/// MB after compiling the first-party JavaScript handler.
fn release_compiler_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // takes the allocator's own locks and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
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
