//! The import graph has no cycle, so the layers drawn in the README stay
//! true. Cargo enforces the direction between crates; this test enforces it
//! between the modules inside each crate, read from their `use` lines and
//! `crate::`/`super::` paths (comments and `mod tests` left out):
//!
//! - between files (every module, submodules included): no cycle at all;
//! - between a crate's top-level modules: no cycle, except through a
//!   subsystem's `config` submodule. Each subsystem owns its settings next
//!   to its code (`kafka::config`, `api::config`...); the host's `config`
//!   combines them, so those leaves are imported from above and below.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["kafka", "config"]`) of each file of one crate root.
type Modules = BTreeMap<Vec<String>, PathBuf>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files of the crate whose root is `root` (`lib.rs` or `main.rs`).
/// `skip` names top-level modules that belong to another root in the same
/// folder (the binary's `commands` beside the library).
fn modules(root: &Path, skip: &[&str]) -> Modules {
    let dir = root.parent().unwrap();
    let mut out = Modules::new();
    out.insert(vec![], root.to_path_buf());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path == root {
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let other_root = ["lib", "main"].contains(&parts[0].as_str()) && parts.len() == 1;
            if other_root || skip.contains(&parts[0].as_str()) {
                continue;
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The code of a file without its comments and its unit tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code names from `crate`, `super` or `self`, braces of
/// `use` lines expanded, as absolute module paths (possibly ending in an
/// item's name).
fn paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    // `use` statements, with their brace groups.
    for stmt in code.split(';') {
        let Some(at) = stmt.find("use ") else {
            continue;
        };
        let body: String = stmt[at + 4..]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if body.starts_with("crate::") || body.starts_with("super::") || body.starts_with("self::")
        {
            expand(&body, &mut Vec::new(), &mut found);
        }
    }
    // Paths written inline (`crate::kafka::probe(...)`).
    for anchor in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            rest = &rest[at + anchor.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let path: Vec<String> = tail[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            found.push(path);
        }
    }
    found
        .into_iter()
        .filter_map(|p| absolute(&p, here))
        .collect()
}

/// Expands `a::{b, c::{d}}` into `a::b`, `a::c::d`.
fn expand(body: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        match part.find("::{") {
            Some(at) if part.ends_with('}') => {
                let n = prefix.len();
                prefix.extend(part[..at].split("::").map(str::to_owned));
                expand(&part[at + 3..part.len() - 1], prefix, out);
                prefix.truncate(n);
            }
            _ => {
                let name = part.split("as").next().unwrap_or(part);
                let mut p = prefix.clone();
                p.extend(
                    name.split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                );
                out.push(p);
            }
        }
    }
}

fn absolute(path: &[String], here: &[String]) -> Option<Vec<String>> {
    match path.first()?.as_str() {
        "crate" => Some(path[1..].to_vec()),
        "self" => Some([here, &path[1..]].concat()),
        "super" => {
            let mut base = here.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            Some([base.as_slice(), rest].concat())
        }
        _ => None,
    }
}

/// Edges between the files of one crate root. A path through the root's
/// re-exports (`crate::Bus`) counts as the path it re-exports.
fn file_edges(mods: &Modules) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut reexports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for path in paths(&code(&mods[&vec![]]), &[]) {
        if let Some(name) = path.last() {
            reexports.insert(name.clone(), path.clone());
        }
    }
    let mut edges: BTreeMap<_, BTreeSet<_>> = BTreeMap::new();
    for (module, file) in mods {
        if module.is_empty() {
            continue;
        }
        let entry = edges.entry(module.clone()).or_default();
        // A `mod.rs` importing its own submodules is the parent owning its
        // children: the edges that matter go from a file to another subtree.
        for mut path in paths(&code(file), module) {
            if path.len() == 1
                && let Some(full) = reexports.get(&path[0])
            {
                path = full.clone();
            }
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| mods.contains_key(p));
            if let Some(t) = target
                && &t != module
                && !t.is_empty()
            {
                entry.insert(t);
            }
        }
    }
    edges
}

/// A cycle in `edges`, if there is one, as the nodes along it.
fn cycle<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    // 0 unseen, 1 on the current path, 2 done.
    fn visit<N: Ord + Clone>(
        n: &N,
        edges: &BTreeMap<N, BTreeSet<N>>,
        mark: &mut BTreeMap<N, u8>,
        path: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        mark.insert(n.clone(), 1);
        path.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match mark.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|p| p == m).unwrap();
                    let mut c = path[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, mark, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        mark.insert(n.clone(), 2);
        None
    }
    let mut mark = BTreeMap::new();
    for n in edges.keys() {
        if mark.get(n).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, edges, &mut mark, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn show(c: &[Vec<String>]) -> String {
    c.iter()
        .map(|m| format!("crate::{}", m.join("::")))
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn check(root: &Path, skip: &[&str]) {
    let mods = modules(root, skip);
    assert!(mods.len() > 1, "{} has no modules", root.display());
    let files = file_edges(&mods);
    if let Some(c) = cycle(&files) {
        panic!(
            "{}: modules import each other: {}",
            root.display(),
            show(&c)
        );
    }
    let mut top: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, targets) in &files {
        let entry = top.entry(from[..1].to_vec()).or_default();
        for t in targets {
            let into_config = t.len() == 2 && t[1] == "config";
            if t[0] != from[0] && !into_config {
                entry.insert(t[..1].to_vec());
            }
        }
    }
    if let Some(c) = cycle(&top) {
        panic!(
            "{}: top-level modules import each other: {}",
            root.display(),
            show(&c)
        );
    }
}

/// The host library's top-level modules, bottom to top, as its module map
/// (`host/src/lib.rs`) draws them: a module imports only from its own row
/// or the rows below (a subsystem's `config` leaf excepted).
const HOST_LAYERS: &[&[&str]] = &[
    &[
        "supervisor",
        "wakeup",
        "breaker",
        "metrics",
        "traces",
        "signature",
        "http_client",
    ],
    &["config"],
    &["schemas"],
    &["kafka"],
    &["registry"],
    &["candidates"],
    &["dispatch", "pipeline", "call_host", "replay"],
    &["switch", "context"],
    &["source", "outbox", "retention", "alerts"],
    &["bus"],
    &["api"],
];

#[test]
fn the_host_modules_import_only_from_their_layer_or_below() {
    let root = workspace().join("host/src/lib.rs");
    let mods = modules(&root, &["commands"]);
    let row = |m: &str| HOST_LAYERS.iter().position(|r| r.contains(&m));
    let mut problems = Vec::new();
    for (from, targets) in file_edges(&mods) {
        let Some(from_row) = row(&from[0]) else {
            problems.push(format!("{} is not in HOST_LAYERS", from[0]));
            continue;
        };
        for t in targets {
            let into_config = t.len() == 2 && t[1] == "config";
            if into_config || t[0] == from[0] {
                continue;
            }
            if row(&t[0]).is_some_and(|r| r > from_row) {
                problems.push(format!(
                    "crate::{} imports crate::{}, a layer above it",
                    from.join("::"),
                    t.join("::")
                ));
            }
        }
    }
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let ws = workspace();
    for krate in [
        "crates/model",
        "crates/store",
        "crates/runtime",
        "crates/oci",
    ] {
        check(&ws.join(krate).join("src/lib.rs"), &[]);
    }
    check(&ws.join("host/src/lib.rs"), &["commands"]);
    check(&ws.join("host/src/main.rs"), &[]);
}

#[test]
fn the_check_finds_a_cycle_when_there_is_one() {
    let mut edges: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
    edges.entry(1).or_default().insert(2);
    edges.entry(2).or_default().insert(3);
    assert_eq!(cycle(&edges), None);
    edges.entry(3).or_default().insert(1);
    assert_eq!(cycle(&edges), Some(vec![1, 2, 3, 1]));
    let here = vec!["kafka".to_owned(), "config".to_owned()];
    let found = paths(
        "use super::{group::{self, Owned}, wire::Wire};\nlet x = crate::store::Store::open(); // crate::api",
        &here,
    );
    let found: BTreeSet<String> = found.iter().map(|p| p.join("::")).collect();
    for want in [
        "kafka::group::self",
        "kafka::group::Owned",
        "kafka::wire::Wire",
        "store::Store::open",
    ] {
        assert!(found.contains(want), "{want} not in {found:?}");
    }
}
