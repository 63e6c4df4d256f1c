//! `persona-bus handlers test`: runs one handler on one event, or on
//! several (a JSON array, or one event per line) one after another, with
//! nothing committed, and prints what it did: its log lines, state reads
//! and writes, the events it would publish, the HTTP requests it made (and
//! those refused), each outcome and the duration. Several events go in
//! batch calls of up to `[batch] max_events` when the manifest has one;
//! each event reads what the ones before it wrote, as in a host. Exits
//! non-zero when an event does not complete, so it fits a team's CI.
//!
//! State reads see the host's committed state when the data folder has a
//! store (read only), else an empty one.

use anyhow::{Context, bail};
use persona_bus::Event;
use persona_bus::config::Config;
use persona_bus::event::NewEvent;
use persona_bus::outcome::{RunOutcome, StateOp};
use persona_bus::registry::load_handler;
use persona_bus::runtime::{CallEnv, Invocation, Origin, Runtime};
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
    let events: Vec<Event> = parse_events(&text)
        .with_context(|| {
            format!(
                "{} is not an event, a JSON array of events or one event per line",
                event.display()
            )
        })?
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            e.validate(config.limits.event_limits(), 0)
                .with_context(|| format!("event {} is not valid", i + 1))
        })
        .collect::<anyhow::Result<_>>()?;
    let runtime = Runtime::new(
        &config.runtime,
        &config.limits,
        Some(config.compile_cache_dir()),
    )?;
    let sources = persona_bus::registry::Sources::of(config).map_err(anyhow::Error::msg)?;
    let h = load_handler(&runtime, &manifest, &config.limits, &sources)
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
    for event in &events {
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
    }
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let batch = h.manifest.batch.map_or(1, |b| b.max_events as usize).max(1);
    let mut failed = Vec::new();
    let mut n = 0;
    for chunk in events.chunks(batch) {
        let unit = chunk[0].project_id.clone();
        let results: Vec<(Invocation, &Event)> = if chunk.len() > 1 {
            println!(
                "{} {} (persona:bus@{}): one handle-batch call on {} events (attempt {attempt})",
                h.name,
                h.version,
                h.prepared.contract,
                chunk.len()
            );
            let inv = tokio.block_on(
                runtime.invoke_batch(
                    h.handle_ref(),
                    chunk
                        .iter()
                        .map(|e| (Arc::new(e.clone()), Origin::Sqlite, attempt))
                        .collect(),
                    &unit,
                    &env,
                ),
            );
            print_transcript(&transcript);
            let ms = inv.duration.as_secs_f64() * 1e3;
            match inv.per_event {
                Err(failure) => {
                    println!(
                        "outcome of the call: {} in {ms:.2} ms: {} (in a host, its events would run again one by one)",
                        failure.label(),
                        failure.error().unwrap_or_default()
                    );
                    bail!("the batch call failed ({})", failure.label());
                }
                Ok(taken) => {
                    println!("the call took {ms:.2} ms");
                    if taken.len() < chunk.len() {
                        println!(
                            "note: the handler returned {} results for {} events; in a host the rest run again one by one",
                            taken.len(),
                            chunk.len()
                        );
                    }
                    taken
                        .into_iter()
                        .zip(chunk)
                        .map(|(t, e)| {
                            let inv = Invocation {
                                outcome: t.outcome,
                                effects: t.effects,
                                started_at: inv.started_at.clone(),
                                duration: std::time::Duration::ZERO,
                                note: t.note,
                            };
                            (inv, e)
                        })
                        .collect()
                }
            }
        } else {
            let event = &chunk[0];
            println!(
                "{} {} (persona:bus@{}) on {} {} (attempt {attempt})",
                h.name, h.version, h.prepared.contract, event.event_type, event.id
            );
            let inv = tokio.block_on(runtime.invoke(
                h.handle_ref(),
                event,
                &unit,
                &Origin::Sqlite,
                attempt,
                &env,
            ));
            print_transcript(&transcript);
            vec![(inv, event)]
        };
        for (mut inv, event) in results {
            n += 1;
            if events.len() > 1 {
                println!("event {n}: {} {}", event.event_type, event.id);
            }
            print_effects(&inv);
            // The next events read this one's writes, as in a host.
            let view = std::mem::take(&mut inv.effects.view);
            if !view.is_empty() {
                env.overlay.apply(&h.name, &unit, view);
            }
            let ms = inv.duration.as_secs_f64() * 1e3;
            let took = if inv.duration.is_zero() {
                String::new()
            } else {
                format!(" in {ms:.2} ms")
            };
            match &inv.outcome {
                RunOutcome::Completed => {
                    println!("outcome: completed{took} (nothing was committed)")
                }
                other => {
                    println!(
                        "outcome: {}{took}: {}",
                        other.label(),
                        other.error().unwrap_or_default()
                    );
                    failed.push(format!("event {n}: {}", other.label()));
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!("the handler did not complete ({})", failed.join(", "));
    }
    Ok(())
}

/// One event (a JSON object), a JSON array of them, or one per line.
fn parse_events(text: &str) -> anyhow::Result<Vec<NewEvent>> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(trimmed).context("not a JSON array")?;
        return list
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                NewEvent::from_json(&v.to_string()).with_context(|| format!("event {}", i + 1))
            })
            .collect();
    }
    match NewEvent::from_json(trimmed) {
        Ok(one) => Ok(vec![one]),
        Err(whole) => {
            let lines: Vec<&str> = trimmed.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() < 2 {
                return Err(whole.into());
            }
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| NewEvent::from_json(l).with_context(|| format!("line {}", i + 1)))
                .collect()
        }
    }
}

fn print_transcript(transcript: &Arc<Mutex<Vec<String>>>) {
    for line in transcript.locked().drain(..) {
        println!("  {line}");
    }
}

/// What one event's call would have committed.
fn print_effects(inv: &Invocation) {
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
