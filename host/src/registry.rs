//! The handler registry: loads `name.wasm` + `name.toml` pairs from the
//! handlers folder and serves an immutable [`Snapshot`] of them.
//!
//! A broken manifest or component is refused with its file and reason and
//! recorded as `failed`; the others load. Loading builds a whole new snapshot
//! and swaps it in at once, so dispatch always sees one consistent set, and
//! events already running keep the `Arc`s of the version they started with.

use crate::config::HostLimits;
use crate::manifest::{Manifest, ManifestError};
use crate::matching::Matcher;
use crate::runtime::{HandlerRef, Prepared, Runtime, RuntimeError};
use crate::store::{HandlerRecord, Store, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A handler that is loaded and serving.
pub struct LoadedHandler {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub manifest: Manifest,
    pub config: Arc<BTreeMap<String, String>>,
    pub prepared: Prepared,
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
}

/// The handlers serving now, and the subscriptions that route to them.
#[derive(Default)]
pub struct Snapshot {
    pub handlers: BTreeMap<Arc<str>, Arc<LoadedHandler>>,
    pub matcher: Matcher,
    pub failures: Vec<LoadFailure>,
}

/// Loads one handler from its manifest: parse, check limits, compile, link.
pub fn load_handler(
    runtime: &Runtime,
    manifest_path: &Path,
    limits: &HostLimits,
) -> Result<LoadedHandler, LoadError> {
    let manifest = Manifest::load(manifest_path, limits)?;
    let prepared = runtime.prepare(&manifest.component)?;
    Ok(LoadedHandler {
        name: Arc::from(manifest.name.as_str()),
        version: Arc::from(manifest.version.as_str()),
        config: Arc::new(manifest.config.clone()),
        manifest,
        prepared,
    })
}

/// The manifests (`*.toml`) in a folder, sorted, so loading is deterministic.
pub fn manifests_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
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
}

impl Registry {
    pub fn new(dir: PathBuf, runtime: Arc<Runtime>, store: Arc<Store>, limits: HostLimits) -> Self {
        Self {
            dir,
            runtime,
            store,
            limits,
            current: RwLock::new(Arc::new(Snapshot::default())),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The handlers serving now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Scans the folder and swaps in what it finds. Handlers that are gone
    /// are marked removed and their subscriptions disabled (not deleted).
    pub fn load_all(&self) -> Result<Arc<Snapshot>, StoreError> {
        let manifests = match manifests_in(&self.dir) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the handlers folder; no handlers loaded");
                Vec::new()
            }
        };
        let mut handlers: BTreeMap<Arc<str>, Arc<LoadedHandler>> = BTreeMap::new();
        let mut failures = Vec::new();
        for path in manifests {
            let loaded = load_handler(&self.runtime, &path, &self.limits).and_then(|h| {
                match handlers.get(&h.name) {
                    Some(other) => Err(LoadError::Duplicate {
                        file: path.clone(),
                        name: h.name.to_string(),
                        other: other.manifest.path.clone(),
                    }),
                    None => Ok(h),
                }
            });
            match loaded {
                Ok(h) => {
                    self.store
                        .sync_manifest_subscriptions(&h.name, &h.manifest.subscriptions)?;
                    self.store.record_handler(&HandlerRecord {
                        name: h.name.to_string(),
                        version: Some(h.version.to_string()),
                        status: "loaded".into(),
                        error: None,
                        manifest_path: path.display().to_string(),
                        digest: Some(h.prepared.digest.clone()),
                        updated_at: String::new(),
                    })?;
                    tracing::info!(handler = %h.name, version = %h.version, subscriptions = h.manifest.subscriptions.len(), "loaded handler");
                    handlers.insert(h.name.clone(), Arc::new(h));
                }
                Err(e) => {
                    tracing::error!(manifest = %path.display(), error = %e, "refused handler");
                    let name = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    // Keep the record of a loaded handler of the same name.
                    if !handlers.contains_key(name.as_str()) {
                        self.store.record_handler(&HandlerRecord {
                            name,
                            version: None,
                            status: "failed".into(),
                            error: Some(e.to_string()),
                            manifest_path: path.display().to_string(),
                            digest: None,
                            updated_at: String::new(),
                        })?;
                    }
                    failures.push(LoadFailure {
                        manifest: path,
                        error: e.to_string(),
                    });
                }
            }
        }
        // Failed handlers are still present (their record says why); only
        // handlers whose manifest is gone count as removed.
        let mut present: Vec<String> = handlers.keys().map(|k| k.to_string()).collect();
        present.extend(failures.iter().filter_map(|f| {
            f.manifest
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        }));
        for gone in self.store.mark_removed_except(&present)? {
            self.store.disable_subscriptions(&gone)?;
            tracing::info!(handler = %gone, "handler removed; its subscriptions are disabled");
        }
        let snapshot = Arc::new(Snapshot {
            matcher: Matcher::new(&self.store.subscriptions()?),
            handlers,
            failures,
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = snapshot.clone();
        Ok(snapshot)
    }

    /// Rebuilds the matcher after subscriptions changed in the table (API).
    pub fn refresh_subscriptions(&self) -> Result<(), StoreError> {
        let subs = self.store.subscriptions()?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(Snapshot {
            handlers: current.handlers.clone(),
            matcher: Matcher::new(&subs),
            failures: current.failures.clone(),
        });
        Ok(())
    }
}
