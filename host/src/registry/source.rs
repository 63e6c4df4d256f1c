//! Where a handler's component comes from, and whether it may run.
//!
//! - A file beside its manifest, or one pulled from an OCI registry
//!   (`[oci]` in the manifest) into the host's cache, kept by digest.
//! - With `[trust]` keys, a component runs only if one of them signed it:
//!   `name.wasm.sig` for a file (`cosign sign-blob`), the cosign signature
//!   manifest beside it for a pulled one. The signatures of a pulled
//!   component are kept with it, so a device that restarts while the
//!   registry is down verifies its cached digest again, offline.
//!
//! A component that is refused (trust) or cannot be had (registry down,
//! nothing cached) is *held*: its events wait for it, see
//! `dispatch::Subscribers`.

use super::config::{OciConfig, TrustConfig};
use persona_bus_model::manifest::OciSource;
use persona_bus_oci::{OciClient, Signed, TrustedKeys};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the serving version of a handler came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `file`, or the OCI reference with the digest it resolved to.
    pub source: String,
    /// The OCI manifest digest of a pulled component.
    pub digest: Option<String>,
    /// The `[trust]` key that signed it; None without `[trust]`.
    pub signer: Option<String>,
    /// When this version was loaded (RFC 3339).
    pub loaded_at: String,
}

/// A pulled component, ready to load like a file.
pub struct Fetched {
    /// The cached component file.
    pub path: PathBuf,
    /// The manifest digest the reference resolved to (`sha256:<hex>`).
    pub digest: String,
    /// The component's own digest (hex): what the file must hash to.
    pub layer_hex: String,
    pub signer: Option<String>,
}

/// What is kept beside a cached component (`sha256-<hex>.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    /// `sha256:<hex>` of the component bytes.
    layer: String,
    /// The cosign signatures read for it, if any were.
    #[serde(default)]
    signatures: Vec<Signed>,
}

/// The last digest a followed reference resolved to.
struct Followed {
    digest: String,
    checked: Instant,
    /// The registry's last error, if the last check failed (logged once).
    failing: Option<String>,
}

pub struct Sources {
    trust: Option<TrustedKeys>,
    dir: PathBuf,
    poll: Duration,
    clients: Mutex<HashMap<String, Arc<OciClient>>>,
    followed: Mutex<HashMap<String, Followed>>,
    /// Manifest digests verified (signer) in this process.
    verified: Mutex<HashMap<String, String>>,
    /// When the next followed reference is due a check.
    next_due: Mutex<Option<Instant>>,
}

/// How soon a reference that could not be had is tried again, at most.
const RETRY_HELD: Duration = Duration::from_secs(5);

impl Sources {
    /// Files run unsigned; no registry is asked.
    pub fn unchecked(dir: PathBuf) -> Self {
        Self {
            trust: None,
            dir,
            poll: Duration::from_secs(60),
            clients: Default::default(),
            followed: Default::default(),
            verified: Default::default(),
            next_due: Default::default(),
        }
    }

    /// From `[trust]` and `[oci]`; pulled components are kept in
    /// `oci.cache_dir`, else `<data_dir>/oci`.
    pub fn new(trust: &TrustConfig, oci: &OciConfig, data_dir: &Path) -> Result<Self, String> {
        let keys = TrustedKeys::load(&trust.keys).map_err(|e| e.to_string())?;
        Ok(Self {
            trust: (!keys.is_empty()).then_some(keys),
            poll: Duration::from_secs(oci.poll_secs),
            ..Self::unchecked(
                oci.cache_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("oci")),
            )
        })
    }

    /// As the host configures them: what a replay, `handlers validate`
    /// and `handlers test` use too, so they run only what the host would.
    pub fn of(config: &crate::config::Config) -> Result<Self, String> {
        Self::new(&config.trust, &config.oci, &config.data_dir)
    }

    /// The registry's last error for `reference`, while it cannot answer
    /// (the last digest that ran here keeps running meanwhile).
    pub fn failing(&self, reference: &str) -> Option<String> {
        self.followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(reference)
            .and_then(|f| f.failing.clone())
    }

    /// Whether `[trust]` is configured.
    pub fn trusted_only(&self) -> bool {
        self.trust.is_some()
    }

    /// Whether a followed reference is due a check.
    pub fn due(&self) -> bool {
        self.next_due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at <= Instant::now())
    }

    /// Forgets when references are due; each [`Sources::fetch`] of the
    /// reload that follows sets it again.
    pub fn reset_due(&self) {
        *self.next_due.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn due_at(&self, at: Instant) {
        let mut next = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
        *next = Some(next.map_or(at, |n| n.min(at)));
    }

    /// The signer of a file component (`wasm` are its bytes), or why it
    /// is refused; None without `[trust]`.
    pub fn verify_file(&self, component: &Path, wasm: &[u8]) -> Result<Option<String>, String> {
        let Some(keys) = &self.trust else {
            return Ok(None);
        };
        let sig_file = persona_bus_oci::cosign::signature_file(component);
        let signature = std::fs::read_to_string(&sig_file).map_err(|_| {
            format!(
                "refused by [trust]: unsigned: no {} (sign it with `persona-bus handlers sign` or `cosign sign-blob`)",
                sig_file.display()
            )
        })?;
        keys.verify_blob(wasm, &signature)
            .map(Some)
            .map_err(|e| format!("refused by [trust]: {e}"))
    }

    /// The signature file's text, if `[trust]` is on and it exists: part
    /// of what tells a reload that a file component changed.
    pub fn signature_text(&self, component: &Path) -> Option<String> {
        self.trust.as_ref()?;
        std::fs::read_to_string(persona_bus_oci::cosign::signature_file(component)).ok()
    }

    fn client(&self, reference: &str) -> Result<Arc<OciClient>, String> {
        let registry = persona_bus_oci::client::registry_of(reference).to_owned();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&registry) {
            return Ok(c.clone());
        }
        let c = Arc::new(OciClient::from_env(&registry).map_err(|e| e.to_string())?);
        clients.insert(registry, c.clone());
        Ok(c)
    }

    fn kept_file(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}.json", cached_stem(digest)))
    }

    fn wasm_file(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}.wasm", cached_stem(digest)))
    }

    /// How often `src`'s tag is checked: its manifest's `poll_secs`, else
    /// the host's.
    fn poll_of(&self, src: &OciSource) -> Duration {
        src.poll_secs.map_or(self.poll, Duration::from_secs)
    }

    /// The digest a reference resolved to when it last ran here, kept on
    /// disk for a restart while the registry is down.
    fn last_good_file(&self, reference: &str) -> PathBuf {
        let name: String = reference
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.dir.join("refs").join(format!(
            "{name}-{}",
            &persona_bus_oci::client::sha256_digest(reference.as_bytes())[7..19]
        ))
    }

    /// The manifest digest `src` names now: its pinned digest; the last
    /// resolved one while its poll interval has not passed; else the
    /// registry's answer, or, when the registry cannot answer, the last
    /// digest that ran here.
    fn resolve(&self, src: &OciSource) -> Result<String, String> {
        let reference = &src.reference;
        if let Some((_, d)) = reference.split_once('@') {
            return Ok(d.to_owned());
        }
        let poll = self.poll_of(src);
        let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = followed.get(reference)
            && f.checked.elapsed() < poll
        {
            self.due_at(f.checked + poll);
            return Ok(f.digest.clone());
        }
        let asked = off_runtime(|| {
            self.client(reference)?
                .resolve(reference)
                .map_err(|e| e.to_string())
        });
        let now = Instant::now();
        match asked {
            Ok(digest) => {
                if let Some(f) = followed.get(reference)
                    && f.failing.is_some()
                {
                    tracing::info!(reference = %reference, "the registry answers again");
                }
                self.due_at(now + poll);
                followed.insert(
                    reference.clone(),
                    Followed {
                        digest: digest.clone(),
                        checked: now,
                        failing: None,
                    },
                );
                Ok(digest)
            }
            Err(error) => {
                let last = followed
                    .get(reference)
                    .map(|f| f.digest.clone())
                    .or_else(|| {
                        std::fs::read_to_string(self.last_good_file(reference))
                            .ok()
                            .map(|d| d.trim().to_owned())
                    });
                let Some(digest) = last else {
                    // `fetch` asks again soon.
                    return Err(format!("cannot fetch {reference}: {error}"));
                };
                self.due_at(now + poll.min(RETRY_HELD));
                let first = followed.get(reference).is_none_or(|f| f.failing.is_none());
                if first {
                    tracing::warn!(reference = %reference, digest = %digest, error = %error, "the registry cannot answer: the last digest that ran here keeps running");
                }
                followed.insert(
                    reference.clone(),
                    Followed {
                        digest: digest.clone(),
                        checked: now,
                        failing: Some(error),
                    },
                );
                Ok(digest)
            }
        }
    }

    /// Pulls (or finds in the cache) and verifies the component `src`
    /// names; the reason it is held if it cannot be had or is refused
    /// (then it is tried again within [`RETRY_HELD`], a pinned digest too:
    /// its signature may arrive later).
    pub fn fetch(&self, src: &OciSource) -> Result<Fetched, String> {
        let fetched = self.pull_verified(src);
        if fetched.is_err() {
            self.due_at(Instant::now() + self.poll_of(src).min(RETRY_HELD));
        }
        fetched
    }

    /// Drops cached components (and their signatures) of digests not in
    /// `keep`: those serving, and the last good digest of each followed
    /// reference, so a device that follows a busy tag keeps two builds of
    /// a handler at most, not every one it ever ran.
    pub fn prune(&self, keep: &[String]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut keep: Vec<String> = keep.iter().map(|d| cached_stem(d)).collect();
        // What the followed tags name now, loaded or not yet.
        keep.extend(
            self.followed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(|f| cached_stem(&f.digest)),
        );
        if let Ok(refs) = std::fs::read_dir(self.dir.join("refs")) {
            keep.extend(
                refs.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .map(|d| cached_stem(d.trim())),
            );
        }
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name
                .strip_suffix(".wasm")
                .or_else(|| name.strip_suffix(".json"))
            else {
                continue;
            };
            if stem.starts_with("sha256-") && !keep.iter().any(|k| k == stem) {
                let _ = std::fs::remove_file(e.path());
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&stem.replacen('-', ":", 1));
            }
        }
    }

    fn pull_verified(&self, src: &OciSource) -> Result<Fetched, String> {
        let digest = self.resolve(src)?;
        let repository = src
            .reference
            .split_once('@')
            .map_or(src.reference.as_str(), |(r, _)| r);
        let repository = match repository.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repository,
        };
        let pinned = format!("{repository}@{digest}");
        let wasm_file = self.wasm_file(&digest);
        let kept_file = self.kept_file(&digest);
        let mut kept: Option<Kept> = std::fs::read(&kept_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|_| wasm_file.exists());
        if kept.is_none() {
            let pulled = off_runtime(|| {
                self.client(&pinned)?
                    .pull(&pinned)
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("cannot fetch {}: {e}", src.reference))?;
            if pulled.digest != digest {
                return Err(format!(
                    "{pinned}: the registry served manifest {} instead",
                    pulled.digest
                ));
            }
            let k = Kept {
                layer: persona_bus_oci::client::sha256_digest(&pulled.wasm),
                signatures: Vec::new(),
            };
            write_atomically(&wasm_file, &pulled.wasm)?;
            write_atomically(&kept_file, &serde_json::to_vec(&k).unwrap_or_default())?;
            kept = Some(k);
        }
        let mut kept = kept.expect("set above");
        let signer = match &self.trust {
            None => None,
            Some(keys) => Some(self.verify_pulled(keys, &pinned, &digest, &mut kept, &kept_file)?),
        };
        if !src.pinned() {
            // Only a digest that passed is one to fall back on.
            let _ = write_atomically(&self.last_good_file(&src.reference), digest.as_bytes());
        }
        Ok(Fetched {
            path: wasm_file,
            layer_hex: kept.layer.trim_start_matches("sha256:").to_owned(),
            digest,
            signer,
        })
    }

    /// The signer of a pulled component: from this process's memory, from
    /// the registry's signatures (kept on disk when they verify), or, when
    /// the registry cannot answer, from those kept.
    fn verify_pulled(
        &self,
        keys: &TrustedKeys,
        pinned: &str,
        digest: &str,
        kept: &mut Kept,
        kept_file: &Path,
    ) -> Result<String, String> {
        if let Some(signer) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            return Ok(signer.clone());
        }
        let refused = |e: persona_bus_oci::SignatureError| format!("refused by [trust]: {e}");
        let signer = match off_runtime(|| {
            self.client(pinned)
                .map_err(persona_bus_oci::SignatureError::Registry)?
                .signatures(pinned, digest)
        }) {
            Ok(signed) => {
                let signer = keys.verify_signed(&signed, digest).map_err(refused)?;
                kept.signatures = signed;
                write_atomically(kept_file, &serde_json::to_vec(&*kept).unwrap_or_default())?;
                signer
            }
            Err(persona_bus_oci::SignatureError::Registry(e)) if !kept.signatures.is_empty() => {
                tracing::warn!(reference = %pinned, error = %e, "cannot read signatures from the registry: verifying the ones kept");
                keys.verify_signed(&kept.signatures, digest)
                    .map_err(refused)?
            }
            Err(persona_bus_oci::SignatureError::Registry(e)) => {
                return Err(format!("cannot read the signatures of {pinned}: {e}"));
            }
            Err(e) => return Err(refused(e)),
        };
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_owned(), signer.clone());
        Ok(signer)
    }
}

/// The name a digest's cached files share: `sha256-<hex>` (no `:` in
/// file names).
fn cached_stem(digest: &str) -> String {
    digest.replace(':', "-")
}

/// Runs a registry call on a thread of its own: the client blocks on its
/// own runtime, which must not run inside another's (a reload may be asked
/// for from async code).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
