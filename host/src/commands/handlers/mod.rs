//! `persona-bus handlers list|validate|reload|build|test|diff|promote|discard`.

mod oci;
mod rollout;
pub mod test;

pub(super) use oci::{pull, push, sign, verify};
pub(super) use rollout::{diff, discard, promote};

use crate::commands::open_store;
use anyhow::{Context, bail};
use clap::Subcommand;
use persona_bus::config::Config;
use persona_bus::registry::{load_handler, manifests_in};
use persona_bus::runtime::Runtime;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum HandlersCommand {
    /// Handlers as the host last loaded them, with their subscriptions
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check a manifest (or every manifest in a folder) and its component
    /// without running anything
    Validate { path: PathBuf },
    /// Ask the running host (same --data-dir) to rescan its handlers folder
    Reload,
    /// Build a handler folder (`persona-bus new`) into NAME.wasm beside
    /// its manifest, and check it loads
    Build { dir: PathBuf },
    /// Run one handler once on one event, commit nothing, print what it
    /// did (logs, state, events it would publish, HTTP requests, outcome);
    /// exits non-zero unless it completes
    Test {
        /// A handler's folder (as `new` made it), a manifest (`name.toml`
        /// beside `name.wasm`), or a handler's name in the handlers folder
        handler: PathBuf,
        /// The event as JSON: {"event_type": ..., "source_type": ..., "payload": {...}};
        /// or several, as a JSON array or one per line (run in order, in
        /// batch calls when the manifest has [batch])
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
        /// The delivery attempt the handler sees
        #[arg(long, default_value_t = 1)]
        attempt: u32,
    },
    /// How a handler's shadow version did beside the live one: events that
    /// agreed, differed (and how, with examples) or were dropped
    Diff {
        name: String,
        /// Differing events to show
        #[arg(long, default_value_t = 10)]
        examples: usize,
        #[arg(long)]
        json: bool,
    },
    /// Make a handler's shadow or canary version the live one (a hot
    /// reload: no event lost or handled twice)
    Promote { name: String },
    /// Drop a handler's shadow or canary version; the live one keeps serving
    Discard { name: String },
    /// Push a component (a .wasm, a manifest's, or a built handler folder's)
    /// to an OCI registry as a Wasm OCI artifact (what `wkg oci push` makes)
    Push {
        path: PathBuf,
        /// host[:port]/repository:tag
        reference: String,
    },
    /// Pull a component from an OCI registry by tag or digest
    Pull {
        /// host[:port]/repository:tag or ...@sha256:<hex>
        reference: String,
        /// Where to write it [default: <repository name>.wasm]
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Sign a component with an ECDSA P-256 key (PKCS#8 PEM): a file gets
    /// `name.wasm.sig` beside it (as `cosign sign-blob`), a registry
    /// reference a signature in the registry (as `cosign sign`)
    Sign {
        /// A .wasm file, or a registry reference
        target: String,
        #[arg(long, value_name = "KEY.pem")]
        key: PathBuf,
    },
    /// Check a component's signature (ours or cosign's) against public
    /// keys, offline; exits non-zero with the reason unless one verifies
    Verify {
        /// A .wasm file (its .sig beside it), or a registry reference
        target: String,
        /// A public key (PEM, as cosign.pub); repeatable
        #[arg(long = "key", value_name = "KEY.pub", required = true)]
        keys: Vec<PathBuf>,
    },
}

pub(super) fn handlers_list(config: &Config, json: bool) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let records = store.handler_records()?;
    let subs = store.subscriptions()?;
    // How each runs, from its manifest as it is on disk now.
    let ordering = |r: &persona_bus::store::HandlerRecord| {
        persona_bus::manifest::Manifest::load(Path::new(&r.manifest_path), &config.limits)
            .ok()
            .map(|m| {
                let at_once = m
                    .instances
                    .concurrency
                    .map_or(String::new(), |n| format!(", {n} at once"));
                let batch = m.batch.map_or(String::new(), |b| {
                    format!(", batch {} / {} ms", b.max_events, b.max_wait.as_millis())
                });
                format!("{}{at_once}{batch}", m.ordering)
            })
    };
    if json {
        let list: Vec<_> = records
            .iter()
            .map(|r| {
                let mine: Vec<_> = subs.iter().filter(|s| s.persona_id == r.name).collect();
                serde_json::json!({ "handler": r, "ordering": ordering(r), "subscriptions": mine })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if records.is_empty() {
        println!(
            "no handlers recorded in {} yet: start the host with `persona-bus run`",
            config.data_dir.display()
        );
    }
    for r in records {
        let mine: Vec<String> = subs
            .iter()
            .filter(|s| s.persona_id == r.name)
            .map(|s| {
                let filter = s
                    .source_filter
                    .as_deref()
                    .map(|f| format!(" [{f}]"))
                    .unwrap_or_default();
                format!(
                    "{}{}{}",
                    s.event_type,
                    filter,
                    if s.enabled { "" } else { " (disabled)" }
                )
            })
            .collect();
        println!(
            "{:<20} {:<10} {:<8} {:<12} {:<36} {}",
            r.name,
            r.version.as_deref().unwrap_or("-"),
            r.status,
            r.contract.as_deref().unwrap_or("-"),
            ordering(&r).unwrap_or_else(|| "-".into()),
            mine.join(", ")
        );
        if r.status != "removed" {
            println!("    {}", r.provenance());
        }
        if let Some(err) = r.error {
            println!("    error: {err}");
        }
    }
    Ok(())
}

pub(super) fn handlers_validate(config: &Config, path: &Path) -> anyhow::Result<()> {
    let manifests = if path.is_dir() {
        manifests_in(path).with_context(|| format!("cannot read {}", path.display()))?
    } else {
        vec![path.to_owned()]
    };
    if manifests.is_empty() {
        bail!("no manifests (*.toml) in {}", path.display());
    }
    let runtime = Runtime::new(&config.runtime, &config.limits, None)?;
    let sources = persona_bus::registry::Sources::of(config).map_err(anyhow::Error::msg)?;
    let mut failed = 0;
    for m in &manifests {
        match load_handler(&runtime, m, &config.limits, &sources) {
            Ok(h) => println!(
                "ok     {} {} ({} subscriptions, timeout {:?}, memory {} MiB)",
                h.name,
                h.version,
                h.manifest.subscriptions.len(),
                h.manifest.limits.timeout,
                h.manifest.limits.memory_bytes >> 20
            ),
            Err(e) => {
                failed += 1;
                println!("error  {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} handlers are invalid", manifests.len());
    }
    Ok(())
}

pub(super) fn handlers_reload(config: &Config) -> anyhow::Result<()> {
    let control = config.data_dir.join("control");
    std::fs::create_dir_all(&control)
        .with_context(|| format!("cannot create {}", control.display()))?;
    let file = control.join(persona_bus::registry::RELOAD_REQUEST_FILE);
    std::fs::write(&file, persona_bus::event::now_rfc3339())
        .with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "asked the host on {} to rescan its handlers; see `handlers list`",
        config.data_dir.display()
    );
    Ok(())
}
