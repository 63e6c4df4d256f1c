//! `persona-bus handlers test`: runs one handler once on one event, with
//! nothing committed, and prints what it did: its log lines, state reads
//! and writes, the events it would publish, the HTTP requests it made (and
//! those refused), its outcome and duration. Exits non-zero when the
//! handler does not complete, so it fits a team's CI.
//!
//! State reads see the host's committed state when the data folder has a
//! store (read only), else an empty one.

use anyhow::{Context, bail};
use persona_bus::config::Config;
use persona_bus::event::NewEvent;
use persona_bus::outcome::{RunOutcome, StateOp};
use persona_bus::registry::load_handler;
use persona_bus::runtime::{CallEnv, Origin, Runtime};
use persona_bus::store::Store;
use persona_bus::sync::Locked;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `target`: a manifest file, a handler's folder (what `persona-bus new`
/// made and `handlers build` built), or a handler's name in the handlers
/// folder.
pub fn run(config: &Config, target: &Path, event: &Path, attempt: u32) -> anyhow::Result<()> {
    let manifest = if target.is_dir() {
        crate::commands::new::manifest_in(target)?
    } else if target.extension().is_some_and(|x| x == "toml") || target.is_file() {
        target.to_owned()
    } else {
        config
            .handlers_dir
            .join(format!("{}.toml", target.display()))
    };
    let text = std::fs::read_to_string(event)
        .with_context(|| format!("cannot read the event {}", event.display()))?;
    let event = NewEvent::from_json(&text)
        .with_context(|| format!("{} is not an event", event.display()))?
        .validate(config.limits.event_limits(), 0)
        .with_context(|| "the event is not valid".to_string())?;
    let runtime = Runtime::new(
        &config.runtime,
        &config.limits,
        Some(config.compile_cache_dir()),
    )?;
    let h = load_handler(&runtime, &manifest, &config.limits)
        .with_context(|| format!("cannot load {}", manifest.display()))?;
    let (store, _scratch) = reading_store(&config.data_dir)?;
    let transcript = Arc::new(Mutex::new(Vec::new()));
    let env = Arc::new(CallEnv {
        host: Arc::new(persona_bus::CallHost {
            store,
            schemas: Arc::new(persona_bus::schemas::Schemas::new(config)),
        }),
        limits: config.limits.clone(),
        overlay: Default::default(),
        transcript: Some(transcript.clone()),
    });
    println!(
        "{} {} on {} {} (attempt {attempt})",
        h.name, h.version, event.event_type, event.id
    );
    if !h
        .manifest
        .subscriptions
        .iter()
        .any(|s| persona_bus::matching::event_type_matches(&s.event_type, &event.event_type))
    {
        println!(
            "note: no subscription of this handler matches {:?}; running it anyway",
            event.event_type
        );
    }
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let inv = tokio.block_on(runtime.invoke(
        h.handle_ref(),
        &event,
        &event.project_id,
        &Origin::Sqlite,
        attempt,
        &env,
    ));
    for line in transcript.locked().iter() {
        println!("  {line}");
    }
    for op in &inv.effects.state {
        match op {
            StateOp::Set(k, v) => println!("  state set {k:?} = {:?}", String::from_utf8_lossy(v)),
            StateOp::Delete(k) => println!("  state delete {k:?}"),
            StateOp::Add(k, d) => println!("  state increment {k:?} by {d}"),
        }
    }
    for e in &inv.effects.published {
        println!(
            "  publish {} to {} (project {}): {}",
            e.event_type,
            e.target_persona_id.as_deref().unwrap_or("every subscriber"),
            e.project_id,
            e.payload
        );
    }
    if let Some(note) = &inv.note {
        println!("  note: {note}");
    }
    let ms = inv.duration.as_secs_f64() * 1e3;
    match &inv.outcome {
        RunOutcome::Completed => {
            println!("outcome: completed in {ms:.2} ms (nothing was committed)");
            Ok(())
        }
        other => {
            println!(
                "outcome: {} in {ms:.2} ms: {}",
                other.label(),
                other.error().unwrap_or_default()
            );
            bail!("the handler did not complete ({})", other.label())
        }
    }
}

/// The host's store when the data folder has one, else a scratch one that
/// is removed with the returned guard.
fn reading_store(data_dir: &Path) -> anyhow::Result<(Arc<Store>, Option<Scratch>)> {
    if data_dir.join("bus.db").is_file() {
        let store = Store::open(data_dir)
            .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
        return Ok((Arc::new(store), None));
    }
    let dir = std::env::temp_dir().join(format!("persona-bus-test-{}", ulid::Ulid::new()));
    let store = Store::open(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok((Arc::new(store), Some(Scratch(dir))))
}

/// A folder removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
