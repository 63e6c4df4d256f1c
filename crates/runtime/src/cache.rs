//! On-disk cache of compiled components.
//!
//! Compiling is the slow part of loading a handler (tens of milliseconds for
//! a small Rust guest, seconds for a JavaScript one), so the native code is
//! kept in `<data_dir>/cache`, keyed by the component's SHA-256 and the
//! engine's compatibility hash: a restart, or a reload of an unchanged file,
//! deserializes instead of compiling, and a wasmtime upgrade or a change of
//! engine settings misses the cache instead of loading stale code.
//!
//! A cache miss is compiled in a child process when the host runs as the
//! `persona-bus` binary ([`compile_in_child`]): compiling a JavaScript guest
//! takes hundreds of MB of compiler state, and glibc keeps most of what it
//! freed in the compiling threads' arenas, so a host that compiled in
//! process stayed at 136-160 MB idle instead of 35 MB. The child writes the
//! cache entry and exits; the host maps it as on any restart. A compiler
//! crash or out-of-memory also ends the child, not the host.

use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The executable that compiles cache misses (`persona-bus
/// compile-component`), when set.
static CHILD_COMPILER: OnceLock<PathBuf> = OnceLock::new();

/// Compile cache misses by running `exe compile-component` (the
/// `persona-bus` binary sets this to itself). Without it, as when the host
/// is embedded in another program, components are compiled in process.
pub fn compile_in_child(exe: PathBuf) {
    let _ = CHILD_COMPILER.set(exe);
}

/// The child's side: reads a component from stdin, compiles it with the
/// engine settings of [`super::codegen_config`] and writes the artifact to
/// `out` (atomically). The parent checks the result by loading it.
pub fn compile_child_main(out: &Path) -> anyhow::Result<()> {
    let mut wasm = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut wasm)?;
    let engine = Engine::new(&super::codegen_config())
        .map_err(|e| anyhow::anyhow!("cannot configure the wasm engine: {e:#}"))?;
    let bytes = engine
        .precompile_component(&wasm)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    write_atomically(&bytes, out)
}

/// Hex SHA-256 of a component's bytes.
pub fn digest(wasm: &[u8]) -> String {
    persona_bus_model::text::hex(&Sha256::digest(wasm))
}

/// [`digest`] of a file, read in small pieces. Every start and every rescan
/// of the handlers folder digests each component; reading a large one whole
/// (the JavaScript handler: 12 MB) left glibc's dynamic mmap threshold that
/// high, and allocations below it then stayed in the heap once freed: an
/// idle host held 12 MB it did not use.
pub fn digest_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(persona_bus_model::text::hex(&hasher.finalize()))
}

/// The compiled component with this digest, if the cache has a usable one.
pub(crate) fn cached(engine: &Engine, dir: Option<&Path>, digest: &str) -> Option<Component> {
    let path = entry(engine, dir?, digest);
    if !path.exists() {
        return None;
    }
    // SAFETY: files in the cache folder are written only by `store` below,
    // from `Component::serialize` of this engine's build, and the file name
    // carries the engine's compatibility hash. Wasmtime also checks the
    // header and refuses an artifact from another version.
    match unsafe { Component::deserialize_file(engine, &path) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled-component cache entry");
            None
        }
    }
}

pub(crate) fn load_or_compile(
    engine: &Engine,
    dir: Option<&Path>,
    wasm: &[u8],
    digest: &str,
) -> wasmtime::Result<Component> {
    let Some(dir) = dir else {
        let component = Component::new(engine, wasm);
        release_freed_memory();
        return component;
    };
    if let Some(component) = cached(engine, Some(dir), digest) {
        return Ok(component);
    }
    let path = entry(engine, dir, digest);
    let started = std::time::Instant::now();
    tracing::info!(
        bytes = wasm.len(),
        "compiling a component not in the cache yet (once; large guests take a while)"
    );
    if let Some(exe) = CHILD_COMPILER.get() {
        match compile_with_child(exe, wasm, &path) {
            // SAFETY: as above: the child is this same executable, and
            // wasmtime refuses an artifact from another engine build.
            Ok(()) => match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    tracing::info!(
                        ms = started.elapsed().as_millis() as u64,
                        "compiled (in a child process) and cached"
                    );
                    return Ok(component);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the child compiler's artifact does not load here; compiling in process")
                }
            },
            // Compile errors are reported by the in-process compile below,
            // which is quick for an invalid component; this also covers a
            // child that could not start.
            Err(e) => tracing::debug!(error = %e, "child compile failed; compiling in process"),
        }
    }
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
    release_freed_memory();
    Ok(component)
}

/// Hands freed heap memory back to the system. Compiling a large guest (a
/// JavaScript one: seconds, hundreds of MB of compiler state) leaves
/// glibc's heaps that much larger, and glibc keeps freed memory for reuse:
/// measured here, a host idle at 36 MB stayed at 370-440 MB after compiling
/// the first-party JavaScript handler.
fn release_freed_memory() {
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

/// Runs the child compiler on `wasm`; `Ok` once it wrote `path`.
fn compile_with_child(exe: &Path, wasm: &[u8], path: &Path) -> anyhow::Result<()> {
    let mut child = Command::new(exe)
        .arg("compile-component")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // The child inherits the host's log settings; keep its own lines
        // to errors so only the parent reports progress.
        .env("RUST_LOG", "error")
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", exe.display()))?;
    // The child reads all of stdin before it writes anything, so writing
    // here before reading its stderr cannot deadlock.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(wasm);
    drop(stdin);
    let output = child.wait_with_output()?;
    written?;
    if !output.status.success() {
        anyhow::bail!(
            "child compiler {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomically(&bytes, path)
}

fn write_atomically(bytes: &[u8], path: &Path) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_digested_in_pieces_has_the_digest_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.wasm");
        // Several read buffers' worth, and a part-filled last one.
        let bytes: Vec<u8> = (0..200_003u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(digest_file(&path).unwrap(), digest(&bytes));
        assert!(digest_file(&dir.path().join("missing.wasm")).is_err());
    }
}
