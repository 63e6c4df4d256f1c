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

pub mod config;
mod follow;
mod source;
mod watcher;

pub use follow::start_follower;
pub use source::{Origin, Sources};
pub use watcher::{RELOAD_REQUEST_FILE, start_watcher};

use crate::manifest::{Manifest, ManifestError};
use crate::matching::Matcher;
use crate::runtime::{HandlerRef, Prepared, Runtime, RuntimeError, digest};
use crate::store::{HandlerRecord, Store, StoreError};
use persona_bus_model::limits::HostLimits;
use persona_bus_model::rollout::Rollout;
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
    /// A canary that was rolled back: it serves no project (kept across
    /// restarts by the store until its component changes).
    pub rolled_back: std::sync::atomic::AtomicBool,
    /// Where its component came from, who signed it, when it loaded.
    pub origin: Origin,
}

impl LoadedHandler {
    /// `shadow` or `canary` for a candidate version, else `live`.
    pub fn rollout_role(&self) -> &'static str {
        self.manifest.rollout.as_ref().map_or("live", Rollout::role)
    }

    /// Its row in `persona_handlers`: the name, or `name@shadow` /
    /// `name@canary` for a candidate (handler names never hold `@`).
    pub fn record_name(&self) -> String {
        match &self.manifest.rollout {
            None => self.name.to_string(),
            Some(r) => format!("{}@{}", self.name, r.role()),
        }
    }

    /// Its `status` in `persona_handlers`.
    pub fn status(&self) -> &'static str {
        match &self.manifest.rollout {
            None => "loaded",
            Some(_) if self.rolled_back.load(std::sync::atomic::Ordering::Relaxed) => "rolled_back",
            Some(r) => r.role(),
        }
    }

    /// The record of this version's `attempt` that ended as `inv` says.
    pub fn run(
        &self,
        attempt: u32,
        inv: crate::runtime::Invocation,
        verdict: crate::outcome::Verdict,
    ) -> crate::outcome::Run {
        crate::outcome::Run {
            handler: self.name.clone(),
            version: self.version.clone(),
            attempt,
            started_at: inv.started_at,
            duration: inv.duration,
            outcome: inv.outcome,
            verdict,
            effects: inv.effects,
            note: inv.note,
            call_events: 1,
        }
    }

    pub fn handle_ref(&self) -> HandlerRef<'_> {
        HandlerRef {
            name: &self.name,
            manifest: &self.manifest,
            config: &self.config,
            prepared: &self.prepared,
            record_io: false,
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
    /// Its component is refused by `[trust]` or cannot be had yet: the
    /// handler is *held* and its events wait for it.
    #[error("{}: {reason}", manifest.path.display())]
    Held {
        manifest: Box<Manifest>,
        reason: String,
        /// Refused by `[trust]` (else: not fetched yet).
        refused: bool,
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
    /// Shadow and canary versions (`[rollout]`), by the live handler's name.
    pub candidates: BTreeMap<Arc<str>, Arc<LoadedHandler>>,
    /// Refusals of the last reload.
    pub failures: Vec<LoadFailure>,
    /// Handlers held (refused by `[trust]`, or their component not pulled
    /// yet) with no version serving, by name, with why: their events
    /// wait instead of skipping them.
    pub held: BTreeMap<Arc<str>, Arc<str>>,
}

impl Snapshot {
    /// The shadow of `handler`, if one is loaded.
    pub fn shadow_of(&self, handler: &str) -> Option<&Arc<LoadedHandler>> {
        self.candidates
            .get(handler)
            .filter(|c| matches!(c.manifest.rollout, Some(Rollout::Shadow { .. })))
    }

    /// The version of `live` that runs `project`'s events: its canary when
    /// one is loaded, not rolled back, and takes the project.
    pub fn version_for<'a>(
        &'a self,
        live: &'a Arc<LoadedHandler>,
        project: &str,
    ) -> &'a Arc<LoadedHandler> {
        match self.candidates.get(&live.name) {
            Some(c) => match &c.manifest.rollout {
                Some(Rollout::Canary(canary))
                    if canary.takes(project)
                        && !c.rolled_back.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    c
                }
                _ => live,
            },
            None => live,
        }
    }

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
    /// Of the manifest text and, under `[trust]`, the signature file: a
    /// change to either is a new version.
    manifest_digest: String,
    wasm_digest: String,
    /// `file` or the resolved OCI reference.
    source: String,
    /// The signer of a pulled component (checked when fetched); a file's
    /// is checked by [`build`], once per new version.
    signer: Option<String>,
    /// The manifest digest of a pulled component.
    oci_digest: Option<String>,
}

fn read_source(
    manifest_path: &Path,
    limits: &HostLimits,
    sources: &Sources,
) -> Result<Source, LoadError> {
    let text = std::fs::read_to_string(manifest_path).map_err(|source| ManifestError::Read {
        file: manifest_path.to_owned(),
        source,
    })?;
    let mut manifest = Manifest::parse(manifest_path, &text, limits)?;
    let (source, signer) = match manifest.oci.clone() {
        Some(oci) => {
            let fetched = sources.fetch(&oci).map_err(|reason| LoadError::Held {
                refused: reason.starts_with("refused"),
                manifest: Box::new(manifest.clone()),
                reason,
            })?;
            manifest.component = fetched.path;
            // Executions record the version: a followed tag's digests are
            // told apart by it.
            let short = fetched.digest.get(7..19).unwrap_or(&fetched.digest);
            manifest.version = format!("{}+{short}", manifest.version);
            let source = match oci.pinned() {
                true => oci.reference.clone(),
                false => format!("{}@{}", oci.reference, fetched.digest),
            };
            let wasm_digest =
                crate::runtime::digest_file(&manifest.component).map_err(|source| {
                    RuntimeError::Read {
                        file: manifest.component.clone(),
                        source,
                    }
                })?;
            if wasm_digest != fetched.layer_hex {
                let _ = std::fs::remove_file(&manifest.component);
                return Err(LoadError::Held {
                    manifest: Box::new(manifest),
                    reason: format!(
                        "the cached component of {} changed on disk: pulled again at the next check",
                        oci.reference
                    ),
                    refused: false,
                });
            }
            return Ok(Source {
                // A new digest is a new version even with the same bytes.
                manifest_digest: digest(format!("{text}\n{}", fetched.digest).as_bytes()),
                wasm_digest,
                manifest,
                source,
                signer: fetched.signer,
                oci_digest: Some(fetched.digest),
            });
        }
        None => ("file".to_owned(), None),
    };
    // Digested in pieces; the bytes are read whole only to compile (see
    // `cache::digest_file`).
    let wasm_digest =
        crate::runtime::digest_file(&manifest.component).map_err(|source| RuntimeError::Read {
            file: manifest.component.clone(),
            source,
        })?;
    let manifest_digest = match sources.signature_text(&manifest.component) {
        Some(sig) => digest(format!("{text}\n{sig}").as_bytes()),
        None => digest(text.as_bytes()),
    };
    Ok(Source {
        manifest_digest,
        wasm_digest,
        manifest,
        source,
        signer,
        oci_digest: None,
    })
}

fn build(
    runtime: &Runtime,
    sources: &Sources,
    mut src: Source,
) -> Result<LoadedHandler, LoadError> {
    if let Some(persona_bus_model::rollout::Rollout::Shadow { outbound }) = &src.manifest.rollout {
        // A shadow's requests would reach the world twice: only the hosts
        // its rollout names, whatever its allowed_outbound_hosts say.
        src.manifest.allowed_outbound_hosts = outbound.clone();
    }
    if src.manifest.oci.is_none() && sources.trusted_only() {
        src.signer = Some(verify_file(sources, &src)?);
    }
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
        rolled_back: Default::default(),
        origin: Origin {
            source: src.source,
            digest: src.oci_digest,
            signer: src.signer,
            loaded_at: crate::event::now_rfc3339(),
        },
    })
}

/// The signer of a file component under `[trust]`: the bytes checked are
/// the bytes digested (a file replaced in between is refused until the
/// next reload reads it whole).
fn verify_file(sources: &Sources, src: &Source) -> Result<String, LoadError> {
    let file = &src.manifest.component;
    let wasm = std::fs::read(file).map_err(|source| RuntimeError::Read {
        file: file.clone(),
        source,
    })?;
    let held = |reason: String| LoadError::Held {
        manifest: Box::new(src.manifest.clone()),
        reason,
        refused: true,
    };
    if digest(&wasm) != src.wasm_digest {
        return Err(held(format!(
            "refused by [trust]: {} changed while it was read",
            file.display()
        )));
    }
    match sources.verify_file(file, &wasm) {
        Ok(signer) => Ok(signer.unwrap_or_default()),
        Err(reason) => Err(held(reason)),
    }
}

/// Loads one handler from its manifest: parse, check limits, compile, link.
pub fn load_handler(
    runtime: &Runtime,
    manifest_path: &Path,
    limits: &HostLimits,
    sources: &Sources,
) -> Result<LoadedHandler, LoadError> {
    build(
        runtime,
        sources,
        read_source(manifest_path, limits, sources)?,
    )
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
    sources: Arc<Sources>,
    current: RwLock<Arc<Snapshot>>,
    /// One reload at a time (the watcher and `handlers reload` may race).
    reloading: Mutex<()>,
    /// Reloads so far (for `/metrics`).
    reloads: std::sync::atomic::AtomicU64,
    /// The current snapshot has candidates.
    candidates_loaded: std::sync::atomic::AtomicBool,
    /// Rung when events waiting for a held handler are made due, so the
    /// SQLite poller takes them now (with Kafka in charge it looks at its
    /// table only now and then).
    poller: std::sync::OnceLock<Arc<crate::wakeup::Wakeup>>,
}

impl Registry {
    pub fn new(
        dir: PathBuf,
        runtime: Arc<Runtime>,
        store: Arc<Store>,
        limits: HostLimits,
        sources: Arc<Sources>,
    ) -> Self {
        Self {
            dir,
            runtime,
            store,
            limits,
            sources,
            current: RwLock::new(Arc::new(Snapshot::default())),
            reloading: Mutex::new(()),
            reloads: Default::default(),
            candidates_loaded: Default::default(),
            poller: Default::default(),
        }
    }

    /// Rings `poller` when waiting events fall due (see [`Registry::reload`]).
    pub fn wake_poller_with(&self, poller: Arc<crate::wakeup::Wakeup>) {
        let _ = self.poller.set(poller);
    }

    /// Whether any shadow or canary is loaded (the dispatcher skips all
    /// rollout work otherwise).
    pub fn has_candidates(&self) -> bool {
        self.candidates_loaded
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reloads of the handlers folder so far (the first load included).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where components come from and whether they may run.
    pub fn sources(&self) -> &Sources {
        &self.sources
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
        self.sources.reset_due();
        let manifests = manifests_in(&self.dir).unwrap_or_else(|e| {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the handlers folder");
            Vec::new()
        });
        let mut report = ReloadReport::default();
        let mut handlers: BTreeMap<Arc<str>, Arc<LoadedHandler>> = BTreeMap::new();
        let mut candidates: BTreeMap<Arc<str>, Arc<LoadedHandler>> = BTreeMap::new();
        let mut held: BTreeMap<Arc<str>, Arc<str>> = BTreeMap::new();
        // Names still present, serving or refused: everything else is removed.
        let mut present: Vec<String> = Vec::new();
        for path in manifests {
            let previous = old
                .handlers
                .values()
                .chain(old.candidates.values())
                .find(|h| h.manifest.path == path)
                .cloned();
            let loaded = read_source(&path, &self.limits, &self.sources).and_then(|src| {
                if let Some(prev) = previous.as_ref().filter(|p| {
                    p.manifest_digest == src.manifest_digest && p.prepared.digest == src.wasm_digest
                }) {
                    return Ok((prev.clone(), false));
                }
                let h = build(&self.runtime, &self.sources, src)?;
                let taken = match h.manifest.rollout {
                    None => &handlers,
                    Some(_) => &candidates,
                };
                if let Some(other) = taken.get(&h.name) {
                    return Err(LoadError::Duplicate {
                        file: path.clone(),
                        name: h.name.to_string(),
                        other: other.manifest.path.clone(),
                    });
                }
                Ok((Arc::new(h), true))
            });
            match loaded {
                Ok((h, fresh)) => {
                    present.push(h.record_name());
                    if fresh {
                        self.loaded(&h, previous.as_deref())?;
                        report.loaded.push((h.record_name(), h.version.to_string()));
                    } else {
                        // Unchanged: keep the compiled handler as it is.
                        report.unchanged += 1;
                    }
                    match h.manifest.rollout {
                        None => handlers.insert(h.name.clone(), h),
                        Some(_) => candidates.insert(h.name.clone(), h),
                    };
                }
                Err(e) => {
                    let error = e.to_string();
                    // A failed reload leaves the previous version serving.
                    let keep = previous.filter(|p| {
                        let taken = match p.manifest.rollout {
                            None => &handlers,
                            Some(_) => &candidates,
                        };
                        !taken.contains_key(&p.name)
                    });
                    let still_serving = keep.as_ref().map(|p| p.version.to_string());
                    match (keep, e) {
                        (Some(p), _) => {
                            tracing::error!(manifest = %path.display(), error = %error, serving = %p.version, "refused new version; the previous one keeps serving");
                            self.record(&p, Some(format!("reload refused: {error}")))?;
                            present.push(p.record_name());
                            match p.manifest.rollout {
                                None => handlers.insert(p.name.clone(), p),
                                Some(_) => candidates.insert(p.name.clone(), p),
                            };
                        }
                        (
                            None,
                            LoadError::Held {
                                manifest, refused, ..
                            },
                        ) if manifest.rollout.is_none() => {
                            self.hold(&manifest, &error, refused)?;
                            present.push(manifest.name.clone());
                            held.insert(
                                Arc::from(manifest.name.as_str()),
                                Arc::from(error.as_str()),
                            );
                        }
                        (None, _) => {
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
                                    source: None,
                                    signer: None,
                                    loaded_at: None,
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
        // A candidate is a version *of* a live handler: without one it has
        // nothing to shadow and no traffic to share.
        candidates.retain(|name, c| {
            if handlers.contains_key(name) {
                return true;
            }
            let error = format!(
                "{}: a {} of `{name}` needs a live handler `{name}` (a manifest without [rollout]) in the folder",
                c.manifest.path.display(),
                c.rollout_role()
            );
            tracing::error!("{error}");
            report.failed.push(LoadFailure {
                manifest: c.manifest.path.clone(),
                error,
                still_serving: None,
            });
            false
        });
        for c in candidates.values() {
            if let Some(why) = self.store.rolled_back(&c.name, &c.prepared.digest)? {
                c.rolled_back
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.store.set_handler_status(
                    &c.record_name(),
                    "rolled_back",
                    Some(&format!("rolled back: {why}")),
                )?;
                tracing::warn!(handler = %c.name, version = %c.version, "canary stays rolled back: {why}");
            }
        }
        for gone in self.store.mark_removed_except(&present)? {
            if !gone.contains('@') {
                self.store.disable_subscriptions(&gone)?;
                tracing::info!(handler = %gone, "handler removed; its subscriptions are disabled");
            } else {
                tracing::info!(handler = %gone, "candidate version removed");
            }
            report.removed.push(gone);
        }
        // A registry that cannot answer is shown on the handlers it
        // serves, which keep running their last digest.
        for h in handlers.values().chain(candidates.values()) {
            if let Some(oci) = &h.manifest.oci
                && !report.failed.iter().any(|f| f.manifest == h.manifest.path)
            {
                let error = self.sources.failing(&oci.reference).map(|e| {
                    format!("the registry cannot answer ({e}): the last digest that ran here keeps running")
                });
                self.store
                    .set_handler_status(&h.record_name(), h.status(), error.as_deref())?;
            }
        }
        // A handler that is serving is not held (a refused new version of
        // it left the previous one serving).
        held.retain(|name, _| !handlers.contains_key(name));
        let serving: Vec<String> = handlers
            .values()
            .chain(candidates.values())
            .filter_map(|h| h.origin.digest.clone())
            .collect();
        self.sources.prune(&serving);
        let snapshot = Arc::new(Snapshot {
            matcher: Matcher::new(&self.store.subscriptions()?),
            handlers,
            candidates,
            failures: report.failed.clone(),
            held,
        });
        self.candidates_loaded.store(
            !snapshot.candidates.is_empty(),
            std::sync::atomic::Ordering::Relaxed,
        );
        *self.current.write_locked() = snapshot;
        if !report.loaded.is_empty() {
            // It may be one that events wait for. Only now that the new
            // snapshot serves: woken earlier, they could meet the old one
            // and wait again.
            let woken = self.store.wake_waiting()?;
            if woken > 0
                && let Some(poller) = self.poller.get()
            {
                poller.ring();
            }
            if woken > 0 {
                tracing::info!(
                    events = woken,
                    "handlers loaded: events waiting for held handlers are due again"
                );
            }
        }
        Ok(report)
    }

    /// Records a handler or candidate loaded for the first time or
    /// replaced, and syncs a live handler's subscriptions.
    fn loaded(
        &self,
        h: &LoadedHandler,
        previous: Option<&LoadedHandler>,
    ) -> Result<(), StoreError> {
        if h.manifest.rollout.is_none() {
            self.store
                .sync_manifest_subscriptions(&h.name, &h.manifest.subscriptions)?;
        }
        self.record(h, None)?;
        match previous {
            Some(p) => {
                tracing::info!(handler = %h.record_name(), from = %p.version, to = %h.version, source = %h.origin.source, "reloaded handler")
            }
            None if h.manifest.rollout.is_some() => {
                tracing::info!(handler = %h.name, version = %h.version, role = h.rollout_role(), "loaded a candidate version")
            }
            None => {
                tracing::info!(handler = %h.name, version = %h.version, source = %h.origin.source, signer = h.origin.signer.as_deref().unwrap_or("-"), subscriptions = h.manifest.subscriptions.len(), "loaded handler")
            }
        }
        Ok(())
    }

    /// Records a held handler (refused by `[trust]`, or its component not
    /// pulled yet) and syncs its subscriptions, so that its events match
    /// it and wait.
    fn hold(&self, manifest: &Manifest, error: &str, refused: bool) -> Result<(), StoreError> {
        tracing::error!(handler = %manifest.name, error = %error, "handler held: its events wait for a version that can run");
        self.store
            .sync_manifest_subscriptions(&manifest.name, &manifest.subscriptions)?;
        self.store.record_handler(&HandlerRecord {
            name: manifest.name.clone(),
            version: Some(manifest.version.clone()),
            status: if refused { "refused" } else { "waiting" }.into(),
            error: Some(error.to_owned()),
            manifest_path: manifest.path.display().to_string(),
            digest: None,
            contract: None,
            source: Some(
                manifest
                    .oci
                    .as_ref()
                    .map_or("file".to_owned(), |o| o.reference.clone()),
            ),
            signer: None,
            loaded_at: None,
            updated_at: String::new(),
        })
    }

    fn record(&self, h: &LoadedHandler, error: Option<String>) -> Result<(), StoreError> {
        self.store.record_handler(&HandlerRecord {
            name: h.record_name(),
            version: Some(h.version.to_string()),
            status: h.status().into(),
            error,
            manifest_path: h.manifest.path.display().to_string(),
            digest: Some(h.prepared.digest.clone()),
            contract: Some(h.prepared.contract.to_string()),
            source: Some(h.origin.source.clone()),
            signer: h.origin.signer.clone(),
            loaded_at: Some(h.origin.loaded_at.clone()),
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
            candidates: current.candidates.clone(),
            matcher: Matcher::new(&subs),
            failures: current.failures.clone(),
            held: current.held.clone(),
        });
        Ok(())
    }
}
