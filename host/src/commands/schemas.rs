//! `persona-bus schemas push | list | check`: registering schema versions,
//! in the registry when one is configured, else in the schemas folder.

use anyhow::{Context, bail};
use clap::Subcommand;
use persona_bus::config::Config;
use persona_bus::schemas::registry::RegistryClient;
use persona_bus::schemas::{Schema, Schemas, schema_type_of};
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Register a schema file (Avro `.avsc` or JSON Schema `.json`) as the
    /// next version of an event type, after a compatibility check
    Push {
        file: PathBuf,
        #[arg(long = "type", value_name = "EVENT_TYPE")]
        event_type: String,
        /// The version it must become (refused if the registry would give
        /// it another number); default: the next one
        #[arg(long)]
        version: Option<u32>,
        /// Topic for the subject name [default: the topic of the type]
        #[arg(long)]
        topic: Option<String>,
    },
    /// Event types with their schema versions
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check a schema file: that it parses, and that it is compatible with
    /// the type's latest version; exits 1 if not
    Check {
        file: PathBuf,
        #[arg(long = "type", value_name = "EVENT_TYPE")]
        event_type: String,
        #[arg(long)]
        topic: Option<String>,
    },
}

pub fn run(config: &Config, cmd: SchemasCommand) -> anyhow::Result<()> {
    let schemas = Schemas::new(config);
    match cmd {
        SchemasCommand::Push {
            file,
            event_type,
            version,
            topic,
        } => {
            let (text, kind) = read(&file)?;
            match schemas.registry() {
                Some(r) => {
                    let subject = subject(&schemas, topic.as_deref(), &event_type);
                    push_registry(r, &schemas, &subject, &text, kind, version)
                }
                None => push_folder(&schemas, &file, &event_type, &text, kind, version),
            }
        }
        SchemasCommand::List { json } => match schemas.registry() {
            Some(r) => list_registry(r, json),
            None => list_folder(&schemas, json),
        },
        SchemasCommand::Check {
            file,
            event_type,
            topic,
        } => {
            let (text, kind) = read(&file)?;
            match schemas.registry() {
                Some(r) => {
                    let subject = subject(&schemas, topic.as_deref(), &event_type);
                    let c = r.check(&subject, &text, kind)?;
                    if !c.compatible {
                        bail!(
                            "not compatible with the latest version of {subject}: {}",
                            reasons(&c.messages)
                        );
                    }
                    println!(
                        "compatible with the latest version of {subject} (or the subject is new)"
                    );
                }
                None => {
                    let next = folder_versions(&schemas, &event_type)?
                        .last()
                        .map_or(1, |v| v + 1);
                    println!(
                        "valid {kind} schema; it would be version {next} of {event_type} in {} (compatibility is checked by a registry only)",
                        schemas.config().dir.display()
                    );
                }
            }
            Ok(())
        }
    }
}

fn subject(schemas: &Schemas, topic: Option<&str>, event_type: &str) -> String {
    schemas.subject(topic.unwrap_or(schemas.topic_for(event_type)), event_type)
}

/// Reads and parses a schema file, so a broken one never reaches a registry.
fn read(file: &Path) -> anyhow::Result<(String, &'static str)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let kind = schema_type_of(file, &text);
    Schema::parse(&text, kind, None, file.display().to_string())?;
    Ok((text, kind))
}

fn reasons(messages: &[String]) -> String {
    if messages.is_empty() {
        "the registry gave no reason here; `schemas push` prints its refusal".into()
    } else {
        messages.join("; ")
    }
}

fn same_schema(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.trim() == b.trim(),
    }
}

fn push_registry(
    r: &RegistryClient,
    schemas: &Schemas,
    subject: &str,
    text: &str,
    kind: &str,
    version: Option<u32>,
) -> anyhow::Result<()> {
    let versions = match r.versions(subject) {
        Ok(v) => v,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let latest = versions.iter().copied().max().unwrap_or(0);
    if let Some(n) = version {
        if n == 0 || n > latest + 1 {
            bail!(
                "{subject} has {latest} version(s); the next is {}, not {n}",
                latest + 1
            );
        }
        if n <= latest {
            let existing = r.version(subject, &n.to_string())?;
            if same_schema(&existing.schema, text) {
                println!(
                    "{subject} version {n} is already this schema (id {})",
                    existing.id
                );
                return Ok(());
            }
            bail!(
                "{subject} version {n} exists with another schema; versions are immutable, push it as version {}",
                latest + 1
            );
        }
    }
    let level = &schemas.config().compatibility;
    r.set_compatibility(subject, level)
        .with_context(|| format!("cannot set compatibility {level} on {subject}"))?;
    // The registry checks compatibility as it registers, and its refusal
    // carries the reason (some registries' check endpoint gives none).
    let id = match r.register(subject, text, kind) {
        Ok(id) => id,
        Err(persona_bus::schemas::registry::RegistryError::Refused {
            status: 409,
            message,
            ..
        }) => {
            bail!("refused: not {level}-compatible with the latest version of {subject}: {message}")
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("the registry refused the schema for {subject}"));
        }
    };
    let registered = r.version(subject, "latest")?;
    println!(
        "registered {kind} schema as {subject} version {} (id {id})",
        registered.version
    );
    Ok(())
}

fn folder_versions(schemas: &Schemas, event_type: &str) -> anyhow::Result<Vec<u32>> {
    let dir = schemas.config().dir.join(event_type);
    let mut out: Vec<u32> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                let ext = p.extension()?.to_str()?;
                if ext != "json" && ext != "avsc" {
                    return None;
                }
                p.file_stem()?.to_str()?.parse().ok()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn push_folder(
    schemas: &Schemas,
    file: &Path,
    event_type: &str,
    text: &str,
    kind: &str,
    version: Option<u32>,
) -> anyhow::Result<()> {
    if !persona_bus::event::is_valid_event_type(event_type) {
        bail!("{event_type:?} is not a valid event type");
    }
    let versions = folder_versions(schemas, event_type)?;
    let next = versions.last().map_or(1, |v| v + 1);
    let n = version.unwrap_or(next);
    if n == 0 {
        bail!("schema versions start at 1");
    }
    let ext = if kind == "AVRO" { "avsc" } else { "json" };
    let dir = schemas.config().dir.join(event_type);
    if versions.contains(&n) {
        for e in ["json", "avsc"] {
            let existing = dir.join(format!("{n}.{e}"));
            if let Ok(old) = std::fs::read_to_string(&existing)
                && same_schema(&old, text)
            {
                println!("{} is already this schema", existing.display());
                return Ok(());
            }
        }
        bail!(
            "{event_type} version {n} exists with another schema; versions are immutable, push it as version {next}"
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dest = dir.join(format!("{n}.{ext}"));
    // Written beside, then renamed: a running host never reads half a file.
    let tmp = dir.join(format!(".{n}.{ext}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    println!(
        "{} -> {} ({kind}, {event_type} version {n}; no registry, so no compatibility check)",
        file.display(),
        dest.display()
    );
    Ok(())
}

fn list_registry(r: &RegistryClient, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut subjects = r.subjects()?;
    subjects.sort();
    for s in subjects {
        for v in r.versions(&s)? {
            let reg = r.version(&s, &v.to_string())?;
            rows.push(serde_json::json!({
                "subject": s,
                "version": v,
                "id": reg.id,
                "type": reg.schema_type.unwrap_or_else(|| "AVRO".into()),
            }));
        }
    }
    print_rows(&rows, json, r.url());
    Ok(())
}

fn list_folder(schemas: &Schemas, json: bool) -> anyhow::Result<()> {
    let dir = &schemas.config().dir;
    let mut rows = Vec::new();
    let mut types: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    types.sort();
    for t in types {
        for v in folder_versions(schemas, &t)? {
            let kind = if dir.join(&t).join(format!("{v}.avsc")).exists() {
                "AVRO"
            } else {
                "JSON"
            };
            rows.push(serde_json::json!({"subject": t, "version": v, "id": null, "type": kind}));
        }
    }
    print_rows(&rows, json, &dir.display().to_string());
    Ok(())
}

fn print_rows(rows: &[serde_json::Value], json: bool, from: &str) {
    if json {
        println!("{}", serde_json::Value::Array(rows.to_vec()));
        return;
    }
    println!("schemas in {from}");
    println!("{:<50} {:>7} {:>6}  TYPE", "SUBJECT", "VERSION", "ID");
    for r in rows {
        println!(
            "{:<50} {:>7} {:>6}  {}",
            r["subject"].as_str().unwrap_or(""),
            r["version"],
            r["id"].as_u64().map_or("-".into(), |i| i.to_string()),
            r["type"].as_str().unwrap_or("")
        );
    }
}
