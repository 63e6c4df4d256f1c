//! `persona-bus publish`: one event into the store (and the outbox).

use anyhow::Context;
use clap::Args;
use persona_bus::config::Config;
use persona_bus::event::NewEvent;
use persona_bus::store::Store;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[arg(long, required_unless_present = "from_json")]
    pub event_type: Option<String>,
    #[arg(long, required_unless_present = "from_json")]
    pub source_type: Option<String>,
    #[arg(long)]
    pub source_id: Option<String>,
    /// Deliver only to this persona (handler)
    #[arg(long)]
    pub target_persona: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
    /// Payload as JSON text (must parse)
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// A header, `key=value`; repeatable
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Payload schema version (selects the schema when schemas are on)
    #[arg(long, value_name = "N")]
    pub schema_version: Option<u32>,
    /// Read the whole event as a JSON object from FILE (`-` = stdin);
    /// unknown fields are refused
    #[arg(long, value_name = "FILE", conflicts_with_all = ["event_type", "source_type", "payload"])]
    pub from_json: Option<PathBuf>,
}

pub(super) fn publish(config: &Config, args: PublishArgs) -> anyhow::Result<()> {
    let new = match &args.from_json {
        Some(path) => {
            let text = read_input(path)?;
            NewEvent::from_json(&text)?
        }
        None => NewEvent {
            event_type: args.event_type.unwrap_or_default(),
            source_type: args.source_type.unwrap_or_default(),
            source_id: args.source_id,
            target_persona_id: args.target_persona,
            project_id: args.project,
            payload: args
                .payload
                .as_deref()
                .map(NewEvent::parse_payload)
                .transpose()?,
            headers: args
                .headers
                .iter()
                .map(|h| {
                    h.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .with_context(|| format!("header {h:?} is not key=value"))
                })
                .collect::<anyhow::Result<_>>()?,
            schema_version: args.schema_version,
        },
    };
    let event = new.validate(config.limits.event_limits(), 0)?;
    persona_bus::schemas::Schemas::new(config).check(&event)?;
    let store = Store::open_tuned(
        &config.data_dir,
        persona_bus::store::Sync::Normal,
        persona_bus::store::Role::Tool,
        config.store.clone(),
    )
    .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    if config.kafka.enabled {
        // The running host's outbox relay produces it.
        store.enable_outbox();
    }
    // The same free-space floor as the host's publishes.
    store.check_room().context("cannot store the event")?;
    store.insert(&event).context("cannot store the event")?;
    println!("{}", event.id);
    Ok(())
}

pub(super) fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}
