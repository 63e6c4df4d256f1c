//! `persona-bus handlers diff|promote|discard`: a candidate version
//! (`[rollout]` in its manifest) beside the live one.
//!
//! Promote and discard change files in the handlers folder, each step a
//! rename or a new file, so the watcher's reload sees either the old or
//! the new version of each manifest, never half of one: the same
//! guarantees as any hot reload (events in flight finish on the version
//! they started with; the next ones run on the new one).

use anyhow::{Context, bail};
use persona_bus::config::Config;
use persona_bus::manifest::Manifest;
use persona_bus::registry::manifests_in;
use std::path::{Path, PathBuf};

/// The live manifest and the candidate of `name` in the handlers folder.
struct Pair {
    live: Manifest,
    candidate: Manifest,
}

/// The folder of `name`: where the running host recorded its manifest
/// (same --data-dir), else the configured handlers folder.
fn folder_of(config: &Config, name: &str) -> PathBuf {
    crate::commands::open_store(config)
        .ok()
        .and_then(|s| s.handler_records().ok())
        .and_then(|records| {
            records
                .into_iter()
                .find(|r| r.name == name && r.status == "loaded")
                .and_then(|r| Path::new(&r.manifest_path).parent().map(Path::to_owned))
        })
        .unwrap_or_else(|| config.handlers_dir.clone())
}

fn find(config: &Config, name: &str) -> anyhow::Result<Pair> {
    let dir = &folder_of(config, name);
    let mut live = None;
    let mut candidate = None;
    for path in manifests_in(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let Ok(m) = Manifest::load(&path, &config.limits) else {
            continue;
        };
        if m.name != name {
            continue;
        }
        match m.rollout {
            None => live = Some(m),
            Some(_) => candidate = Some(m),
        }
    }
    let Some(candidate) = candidate else {
        bail!(
            "no shadow or canary of `{name}` in {}: a manifest with `name = \"{name}\"` and a [rollout] table",
            dir.display()
        );
    };
    let Some(live) = live else {
        bail!(
            "no live `{name}` in {} to compare or replace",
            dir.display()
        );
    };
    Ok(Pair { live, candidate })
}

pub(crate) fn diff(config: &Config, name: &str, examples: usize, json: bool) -> anyhow::Result<()> {
    let store = crate::commands::open_store(config)?;
    let tallies = store.shadow_tallies(name)?;
    if tallies.is_empty() {
        bail!(
            "no shadow of `{name}` has run yet on {}: load one (a manifest with [rollout] shadow = true) and let events through",
            config.data_dir.display()
        );
    }
    let newest = &tallies[0].shadow_version;
    let diffs = store.shadow_diffs(name, newest, examples)?;
    if json {
        let value =
            serde_json::json!({ "handler": name, "tallies": tallies, "differences": diffs });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    for t in &tallies {
        let ran = t.agreed + t.differed;
        let share = if ran == 0 {
            0.0
        } else {
            t.agreed as f64 * 100.0 / ran as f64
        };
        println!(
            "{name}: shadow {} beside live {}: {} events, {} agreed ({share:.1} %), {} differed, {} dropped ({} to {})",
            t.shadow_version,
            t.live_version,
            ran,
            t.agreed,
            t.differed,
            t.dropped,
            t.first_at,
            t.last_at
        );
    }
    if diffs.is_empty() {
        println!("no differences stored for shadow {newest}");
        return Ok(());
    }
    println!("\ndifferences of shadow {newest} (first {}):", diffs.len());
    for d in &diffs {
        println!("  {} (attempt {}): {}", d.event_id, d.attempt, d.differs);
        println!("    live   {}", d.live);
        println!("    shadow {}", d.shadow);
    }
    Ok(())
}

pub(crate) fn promote(config: &Config, name: &str) -> anyhow::Result<()> {
    let Pair { live, candidate } = find(config, name)?;
    let dir = live.path.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(&candidate.path)
        .with_context(|| format!("cannot read {}", candidate.path.display()))?;
    // The component moves to a name of its own first, so the live
    // manifest never names a file that a later step removes.
    let wasm_name = format!("{name}-{}.wasm", file_safe(&candidate.version));
    let wasm = dir.join(&wasm_name);
    if wasm != live.component {
        copy_atomically(&candidate.component, &wasm)?;
    }
    let promoted = live_text(&text, &wasm_name);
    write_atomically(&live.path, &promoted)?;
    remove(&candidate.path)?;
    if candidate.component != wasm {
        remove(&candidate.component)?;
    }
    // The old live component, unless another manifest still uses it.
    if live.component != wasm && !used_by_any(config, dir, &live.component)? {
        remove(&live.component)?;
    }
    println!(
        "promoted {name} {} (was {}): {} now runs {}; the host reloads it (every event from now on runs on it)",
        candidate.version,
        live.version,
        live.path.display(),
        wasm.display()
    );
    Ok(())
}

pub(crate) fn discard(config: &Config, name: &str) -> anyhow::Result<()> {
    let Pair { live, candidate } = find(config, name)?;
    remove(&candidate.path)?;
    let dir = live.path.parent().unwrap_or(Path::new("."));
    if candidate.component != live.component && !used_by_any(config, dir, &candidate.component)? {
        remove(&candidate.component)?;
    }
    println!(
        "discarded {} {} {name}; {} keeps serving",
        candidate.rollout.as_ref().map_or("", |r| r.role()),
        candidate.version,
        live.version
    );
    Ok(())
}

/// The candidate's manifest as a live one: without its `[rollout]` table,
/// naming `wasm` as its component. Line by line, so comments stay: the
/// table runs from its header to the next table header.
fn live_text(text: &str, wasm: &str) -> String {
    let mut out = vec![format!("component = {wasm:?}")];
    let mut in_rollout = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_rollout = t.starts_with("[rollout]");
        }
        let top_level_component = !in_rollout && t.starts_with("component") && {
            let rest = t["component".len()..].trim_start();
            rest.starts_with('=')
        };
        if !in_rollout && !top_level_component {
            out.push(line.to_owned());
        }
    }
    out.join("\n") + "\n"
}

fn file_safe(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn used_by_any(config: &Config, dir: &Path, wasm: &Path) -> anyhow::Result<bool> {
    for path in manifests_in(dir)? {
        if let Ok(m) = Manifest::load(&path, &config.limits)
            && m.component == wasm
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn hidden_temp(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = hidden_temp(path);
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename onto {}", path.display()))
}

fn copy_atomically(from: &Path, to: &Path) -> anyhow::Result<()> {
    let tmp = hidden_temp(to);
    std::fs::copy(from, &tmp)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("cannot rename onto {}", to.display()))
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promoted_manifest_loses_its_rollout_and_names_its_component() {
        let text = "# router, next\nname = \"router\"\ncomponent = \"router.next.wasm\"\nversion = \"2\"\n\n[rollout]\nshadow = true\nshadow_outbound_hosts = [\n  \"http://x\",\n]\n\n[limits]\ntimeout_ms = 100 # component = 1\n";
        let out = live_text(text, "router-2.wasm");
        assert_eq!(
            out,
            "component = \"router-2.wasm\"\n# router, next\nname = \"router\"\nversion = \"2\"\n\n[limits]\ntimeout_ms = 100 # component = 1\n"
        );
    }
}
