//! `persona-bus new` and `persona-bus handlers build`: a handler folder
//! from the templates in `examples/` (embedded in the binary, with the WIT
//! contract), and its build into `<name>.wasm` beside its manifest, ready to
//! drop into a host's handlers folder. Rust, JavaScript (componentize-js)
//! and Python (componentize-py).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const WIT: &str = include_str!("../../../wit/bus.wit");
const RUST_LIB: &str = include_str!("../../../examples/handler-template-rust/src/lib.rs");
const RUST_MANIFEST: &str = include_str!("../../../examples/handler-template-rust/handler.toml");
const JS_SOURCE: &str = include_str!("../../../examples/handler-template-js/handler.js");
const JS_MANIFEST: &str = include_str!("../../../examples/handler-template-js/handler.toml");
const PY_SOURCE: &str = include_str!("../../../examples/handler-template-python/app.py");
const PY_MANIFEST: &str = include_str!("../../../examples/handler-template-python/handler.toml");
/// The componentize-js the repository builds with (tools/js).
const COMPONENTIZE_JS: &str = "0.23.0";
/// The componentize-py it builds with (`make py-handlers`).
const COMPONENTIZE_PY: &str = "0.25.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

/// Creates `dir` (default `./<name>`) with a handler named `name`.
pub fn new(name: &str, lang: Lang, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        bail!("handler name {name:?}: use a-z, 0-9, - and _");
    }
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_owned);
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let write = |rel: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("wit/bus.wit", WIT)?;
    match lang {
        Lang::Rust => {
            write(
                "Cargo.toml",
                &format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                     [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nwit-bindgen = \"0.61\"\n\n\
                     [profile.release]\nstrip = true\n\n\
                     # A project of its own, even inside another workspace.\n[workspace]\n"
                ),
            )?;
            write(
                "src/lib.rs",
                &RUST_LIB.replace("path: \"../../wit\"", "path: \"wit\""),
            )?;
            write(&format!("{name}.toml"), &retitle(RUST_MANIFEST, name))?;
        }
        Lang::Js => {
            write("handler.js", JS_SOURCE)?;
            write(&format!("{name}.toml"), &retitle(JS_MANIFEST, name))?;
            write(
                "package.json",
                &format!(
                    "{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"devDependencies\": {{\n    \
                     \"@bytecodealliance/componentize-js\": \"{COMPONENTIZE_JS}\",\n    \
                     \"@bytecodealliance/preview2-shim\": \"0.25.0\"\n  }}\n}}\n"
                ),
            )?;
        }
        Lang::Python => {
            write("app.py", PY_SOURCE)?;
            write(&format!("{name}.toml"), &retitle(PY_MANIFEST, name))?;
            write(
                "requirements-build.txt",
                &format!("componentize-py=={COMPONENTIZE_PY}\n"),
            )?;
        }
    }
    write(
        "README.md",
        &format!(
            "# {name}\n\nA persona-bus handler ({lang:?}). The contract is `wit/bus.wit`.\n\n\
             ```sh\npersona-bus handlers build .                                   # -> {name}.wasm\n\
             persona-bus handlers test {name}.toml --event event.json      # run once, commit nothing\n\
             persona-bus handlers test {name}.toml --event events.jsonl    # several, in order (batches with [batch])\n\
             cp {name}.wasm /path/to/handlers/.{name}.wasm.tmp && mv /path/to/handlers/.{name}.wasm.tmp /path/to/handlers/{name}.wasm\n\
             cp {name}.toml /path/to/handlers/\n```\n\n\
             `event.json`: `{{\"event_type\": \"custom\", \"source_type\": \"system\", \"payload\": {{}}}}`.\n"
        ),
    )?;
    write(
        "event.json",
        "{\"event_type\": \"custom\", \"source_type\": \"system\", \"payload\": {\"hello\": \"world\"}}\n",
    )?;
    write(
        "events.jsonl",
        &(1..=3)
            .map(|n| {
                format!("{{\"event_type\": \"custom\", \"source_type\": \"system\", \"payload\": {{\"n\": {n}}}}}\n")
            })
            .collect::<String>(),
    )?;
    Ok(dir)
}

/// The template manifest under the new name.
fn retitle(manifest: &str, name: &str) -> String {
    manifest
        .lines()
        .map(|l| {
            if l.starts_with("name = ") {
                format!("name = \"{name}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Builds the handler in `dir` into `<name>.wasm` there; returns its
/// manifest's path.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = manifest_in(dir)?;
    let name = manifest
        .file_stem()
        .and_then(|s| s.to_str())
        .context("manifest file name")?
        .to_owned();
    let out = dir.join(format!("{name}.wasm"));
    if dir.join("Cargo.toml").is_file() {
        run(Command::new("cargo")
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml")))?;
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
        let crate_name = cargo_package_name(&dir.join("Cargo.toml"))?.replace('-', "_");
        let built = target.join(format!("wasm32-wasip2/release/{crate_name}.wasm"));
        std::fs::copy(&built, &out)
            .with_context(|| format!("cannot copy {} to {}", built.display(), out.display()))?;
    } else if dir.join("package.json").is_file() {
        let tool = componentize_js(dir)?;
        let source = ["handler.js", &format!("{name}.js")]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .with_context(|| format!("no handler.js in {}", dir.display()))?;
        run(Command::new(&tool)
            .arg(&source)
            .args(["--wit"])
            .arg(dir.join("wit/bus.wit"))
            .args(["--world-name", "batch-handler", "-d", "fetch-event", "-o"])
            .arg(&out))?;
    } else if dir.join("app.py").is_file() {
        let tool = componentize_py(dir)?;
        let out = std::path::absolute(&out).context("output path")?;
        run(Command::new(&tool)
            .args([
                "-d",
                "wit/bus.wit",
                "-w",
                "batch-handler",
                "componentize",
                "app",
                "-o",
            ])
            .arg(&out)
            .current_dir(dir))?;
    } else {
        bail!(
            "{}: no Cargo.toml (Rust), package.json (JavaScript) or app.py (Python)",
            dir.display()
        );
    }
    Ok(manifest)
}

/// The handler manifest (`name.toml`) in a handler's folder.
pub fn manifest_in(dir: &Path) -> anyhow::Result<PathBuf> {
    persona_bus::registry::manifests_in(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n != "Cargo.toml"))
        .with_context(|| format!("no handler manifest (name.toml) in {}", dir.display()))
}

/// `componentize-js`: the folder's own, `PERSONA_BUS_COMPONENTIZE_JS`, or
/// installed into the folder with npm.
fn componentize_js(dir: &Path) -> anyhow::Result<PathBuf> {
    let local = dir.join("node_modules/.bin/componentize-js");
    if local.is_file() {
        return Ok(local);
    }
    if let Some(tool) = std::env::var_os("PERSONA_BUS_COMPONENTIZE_JS") {
        return Ok(tool.into());
    }
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(dir))?;
    Ok(local)
}

/// `componentize-py`: the folder's `.venv`, `PERSONA_BUS_COMPONENTIZE_PY`,
/// one on the PATH, or installed into a new `.venv` with pip.
fn componentize_py(dir: &Path) -> anyhow::Result<PathBuf> {
    // Absolute: the build runs it from inside `dir`, where a path relative
    // to the caller's directory names nothing.
    let local = std::path::absolute(dir.join(".venv/bin/componentize-py"))
        .context("the virtual environment's path")?;
    if local.is_file() {
        return Ok(local);
    }
    if let Some(tool) = std::env::var_os("PERSONA_BUS_COMPONENTIZE_PY") {
        return Ok(tool.into());
    }
    if Command::new("componentize-py")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok("componentize-py".into());
    }
    run(Command::new("python3")
        .args(["-m", "venv", ".venv"])
        .current_dir(dir))?;
    run(Command::new(dir.join(".venv/bin/pip")).args([
        "install",
        "-q",
        &format!("componentize-py=={COMPONENTIZE_PY}"),
    ]))?;
    Ok(local)
}

fn cargo_package_name(cargo_toml: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(cargo_toml)?;
    let v: toml::Value = toml::from_str(&text).context("Cargo.toml does not parse")?;
    v.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .context("Cargo.toml has no package name")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}
