//! The handler registry: loads `name.wasm` + `name.toml` pairs from the
//! handlers folder and serves an immutable [`Snapshot`] of them.
//!
//! [`Registry::reload`] rescans the folder: a handler whose manifest and
//! component bytes are unchanged keeps its compiled form; a new or changed one
//! is compiled and checked against the `handler` world off the dispatch path,
//! then the whole new snapshot is swapped in at once. Events already running
//! hold the `Arc`s of the version they started with and finish on it. A
//! handler that fails to (re)load is refused with its file and reason: its
//! previous version, if any, keeps serving. A handler whose manifest is gone
//! is removed and its subscriptions disabled, not deleted.

mod watcher;

pub use watcher::{RELOAD_REQUEST_FILE, start_watcher};

use crate::manifest::{Manifest, ManifestError};
use crate::matching::Matcher;
use crate::runtime::{HandlerRef, Prepared, Runtime, RuntimeError, digest};
use crate::store::{HandlerRecord, Store, StoreError};
use persona_bus_model::limits::HostLimits;
use persona_bus_model::sync::{Locked, ReadWrite};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// A handler that is loaded and serving.
pub struct LoadedHandler {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub manifest: Manifest,
    pub config: Arc<BTreeMap<String, String>>,
    pub prepared: Prepared,
    /// SHA-256 of the manifest text; with the component's digest it tells
    /// whether a rescan found anything new.
    manifest_digest: String,
}

impl LoadedHandler {
    pub fn handle_ref(&self) -> HandlerRef<'_> {
        HandlerRef {
            name: &self.name,
            manifest: &self.manifest,
            config: &self.config,
            prepared: &self.prepared,
        }
    }
}

/// Why one handler did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Component(#[from] RuntimeError),
    #[error(
        "{file}: the manifest asks for [batch], but the component speaks persona:bus@{speaks} \
         without `handle-batch`: build it against the `batch-handler` world of persona:bus@0.2.0, \
         or remove [batch]"
    )]
    NoBatchExport { file: PathBuf, speaks: &'static str },
    #[error("{file}: handler name `{name}` is already taken by {other}")]
    Duplicate {
        file: PathBuf,
        name: String,
        other: PathBuf,
    },
}

/// A handler that failed to load.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub manifest: PathBuf,
    pub error: String,
    /// The version that keeps serving instead, if there was one.
    pub still_serving: Option<String>,
}

/// The handlers serving now, and the subscriptions that route to them.
#[derive(Default)]
pub struct Snapshot {
    pub handlers: BTreeMap<Arc<str>, Arc<LoadedHandler>>,
    pub matcher: Matcher,
    /// Refusals of the last reload.
    pub failures: Vec<LoadFailure>,
}

impl Snapshot {
    /// Whether every handler orders its events by project (the default)
    /// and takes one event per call: then an event's handlers all run in
    /// its project's lane.
    pub fn all_by_project(&self) -> bool {
        self.handlers.values().all(|h| {
            h.manifest.ordering == crate::manifest::OrderBy::Project && h.manifest.batch.is_none()
        })
    }
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// (name, version) of handlers loaded for the first time or replaced.
    pub loaded: Vec<(String, String)>,
    pub unchanged: usize,
    pub failed: Vec<LoadFailure>,
    pub removed: Vec<String>,
}

/// A manifest and its component bytes, read once.
struct Source {
    manifest: Manifest,
    manifest_digest: String,
    wasm_digest: String,
}

fn read_source(manifest_path: &Path, limits: &HostLimits) -> Result<Source, LoadError> {
    let text = std::fs::read_to_string(manifest_path).map_err(|source| ManifestError::Read {
        file: manifest_path.to_owned(),
        source,
    })?;
    let manifest = Manifest::parse(manifest_path, &text, limits)?;
    // Digested in pieces; the bytes are read whole only to compile (see
    // `cache::digest_file`).
    let wasm_digest =
        crate::runtime::digest_file(&manifest.component).map_err(|source| RuntimeError::Read {
            file: manifest.component.clone(),
            source,
        })?;
    Ok(Source {
        manifest_digest: digest(text.as_bytes()),
        wasm_digest,
        manifest,
    })
}

fn build(runtime: &Runtime, src: Source) -> Result<LoadedHandler, LoadError> {
    let prepared = runtime.prepare(&src.manifest.component, &src.wasm_digest)?;
    if src.manifest.batch.is_some() && !prepared.contract.batches() {
        return Err(LoadError::NoBatchExport {
            file: src.manifest.path.clone(),
            speaks: prepared.contract.version(),
        });
    }
    Ok(LoadedHandler {
        name: Arc::from(src.manifest.name.as_str()),
        version: Arc::from(src.manifest.version.as_str()),
        config: Arc::new(src.manifest.config.clone()),
        manifest: src.manifest,
        prepared,
        manifest_digest: src.manifest_digest,
    })
}

/// Loads one handler from its manifest: parse, check limits, compile, link.
pub fn load_handler(
    runtime: &Runtime,
    manifest_path: &Path,
    limits: &HostLimits,
) -> Result<LoadedHandler, LoadError> {
    build(runtime, read_source(manifest_path, limits)?)
}

/// The manifests (`*.toml`) in a folder, sorted, so loading is deterministic.
/// Hidden files (`.name.toml.tmp` while being copied in) are skipped.
pub fn manifests_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && p.is_file()
        })
        .collect();
    out.sort();
    Ok(out)
}

pub struct Registry {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    store: Arc<Store>,
    limits: HostLimits,
    current: RwLock<Arc<Snapshot>>,
    /// One reload at a time (the watcher and `handlers reload` may race).
    reloading: Mutex<()>,
    /// Reloads so far (for `/metrics`).
    reloads: std::sync::atomic::AtomicU64,
}

impl Registry {
    pub fn new(dir: PathBuf, runtime: Arc<Runtime>, store: Arc<Store>, limits: HostLimits) -> Self {
        Self {
            dir,
            runtime,
            store,
            limits,
            current: RwLock::new(Arc::new(Snapshot::default())),
            reloading: Mutex::new(()),
            reloads: Default::default(),
        }
    }

    /// Reloads of the handlers folder so far (the first load included).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The handlers serving now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read_locked().clone()
    }

    /// Rescans the folder and swaps in what changed (see the module docs).
    pub fn reload(&self) -> Result<ReloadReport, StoreError> {
        let _one = self.reloading.locked();
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let old = self.snapshot();
        let manifests = manifests_in(&self.dir).unwrap_or_else(|e| {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the handlers folder");
            Vec::new()
        });
        let mut report = ReloadReport::default();
        let mut handlers: BTreeMap<Arc<str>, Arc<LoadedHandler>> = BTreeMap::new();
        // Names still present, serving or refused: everything else is removed.
        let mut present: Vec<String> = Vec::new();
        for path in manifests {
            let previous = old
                .handlers
                .values()
                .find(|h| h.manifest.path == path)
                .cloned();
            let loaded = read_source(&path, &self.limits).and_then(|src| {
                if let Some(prev) = previous.as_ref().filter(|p| {
                    p.manifest_digest == src.manifest_digest && p.prepared.digest == src.wasm_digest
                }) {
                    return Ok(Err(prev.clone()));
                }
                let h = build(&self.runtime, src)?;
                if let Some(other) = handlers.get(&h.name) {
                    return Err(LoadError::Duplicate {
                        file: path.clone(),
                        name: h.name.to_string(),
                        other: other.manifest.path.clone(),
                    });
                }
                Ok(Ok(h))
            });
            match loaded {
                // Unchanged: keep the compiled handler as it is.
                Ok(Err(same)) => {
                    report.unchanged += 1;
                    present.push(same.name.to_string());
                    handlers.insert(same.name.clone(), same);
                }
                Ok(Ok(h)) => {
                    self.store
                        .sync_manifest_subscriptions(&h.name, &h.manifest.subscriptions)?;
                    self.record(&h, None)?;
                    match &previous {
                        Some(p) => {
                            tracing::info!(handler = %h.name, from = %p.version, to = %h.version, "reloaded handler")
                        }
                        None => {
                            tracing::info!(handler = %h.name, version = %h.version, subscriptions = h.manifest.subscriptions.len(), "loaded handler")
                        }
                    }
                    report
                        .loaded
                        .push((h.name.to_string(), h.version.to_string()));
                    present.push(h.name.to_string());
                    handlers.insert(h.name.clone(), Arc::new(h));
                }
                Err(e) => {
                    let error = e.to_string();
                    // A failed reload leaves the previous version serving.
                    let keep = previous.filter(|p| !handlers.contains_key(&p.name));
                    let still_serving = keep.as_ref().map(|p| p.version.to_string());
                    match &keep {
                        Some(p) => {
                            tracing::error!(manifest = %path.display(), error = %error, serving = %p.version, "refused new version; the previous one keeps serving");
                            self.record(p, Some(format!("reload refused: {error}")))?;
                            present.push(p.name.to_string());
                            handlers.insert(p.name.clone(), p.clone());
                        }
                        None => {
                            tracing::error!(manifest = %path.display(), error = %error, "refused handler");
                            let name = path
                                .file_stem()
                                .map(|s| s.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            if !handlers.contains_key(name.as_str()) {
                                self.store.record_handler(&HandlerRecord {
                                    name: name.clone(),
                                    version: None,
                                    status: "failed".into(),
                                    error: Some(error.clone()),
                                    manifest_path: path.display().to_string(),
                                    digest: None,
                                    contract: None,
                                    updated_at: String::new(),
                                })?;
                            }
                            present.push(name);
                        }
                    }
                    report.failed.push(LoadFailure {
                        manifest: path,
                        error,
                        still_serving,
                    });
                }
            }
        }
        for gone in self.store.mark_removed_except(&present)? {
            self.store.disable_subscriptions(&gone)?;
            tracing::info!(handler = %gone, "handler removed; its subscriptions are disabled");
            report.removed.push(gone);
        }
        let snapshot = Arc::new(Snapshot {
            matcher: Matcher::new(&self.store.subscriptions()?),
            handlers,
            failures: report.failed.clone(),
        });
        *self.current.write_locked() = snapshot;
        Ok(report)
    }

    fn record(&self, h: &LoadedHandler, error: Option<String>) -> Result<(), StoreError> {
        self.store.record_handler(&HandlerRecord {
            name: h.name.to_string(),
            version: Some(h.version.to_string()),
            status: "loaded".into(),
            error,
            manifest_path: h.manifest.path.display().to_string(),
            digest: Some(h.prepared.digest.clone()),
            contract: Some(h.prepared.contract.to_string()),
            updated_at: String::new(),
        })
    }

    /// Rebuilds the matcher after subscriptions changed in the table (API).
    pub fn refresh_subscriptions(&self) -> Result<(), StoreError> {
        let _one = self.reloading.locked();
        let subs = self.store.subscriptions()?;
        let mut current = self.current.write_locked();
        *current = Arc::new(Snapshot {
            handlers: current.handlers.clone(),
            matcher: Matcher::new(&subs),
            failures: current.failures.clone(),
        });
        Ok(())
    }
}
