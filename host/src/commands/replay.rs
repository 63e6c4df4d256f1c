//! `persona-bus replay`: move a consumer group's offsets so its events are read again.

use crate::commands::open_store;
use anyhow::Context;
use clap::Args;
use persona_bus::config::Config;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The group to move [default: KAFKA_CONSUMER_GROUP]
    #[arg(long)]
    pub group: Option<String>,
    /// earliest, latest, an RFC 3339 time (2026-11-27T09:00:00Z), or
    /// partition:offset (one partition of the first --topic)
    #[arg(long, value_name = "WHERE")]
    pub to: persona_bus::kafka::admin::ReplayTo,
    /// Topics to move [default: the events and actions topics]
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Run the replayed events again for these handlers (all handlers when
    /// none is named) by clearing their processed-ledger entries in this
    /// data directory. Without it, replayed events are skipped as already
    /// processed.
    #[arg(long, value_name = "HANDLER", num_args = 0..)]
    pub rehandle: Option<Vec<String>>,
    #[arg(long)]
    pub json: bool,
}

pub(super) fn replay(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    use persona_bus::kafka::admin;
    let k = &config.kafka;
    let group = args.group.unwrap_or_else(|| k.consumer_group.clone());
    let topics: Vec<String> = if args.topics.is_empty() {
        vec![k.topics.events.name.clone(), k.topics.actions.name.clone()]
    } else {
        args.topics
    };
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let timeout = std::time::Duration::from_secs(10);
    let moved = admin::replay(k, &group, &topics, &args.to, timeout)
        .with_context(|| format!("cannot replay group {group}"))?;
    let mut cleared = None;
    if let Some(handlers) = &args.rehandle {
        let ids = admin::replayed_event_ids(k, &moved, timeout)
            .context("offsets were reset, but the replayed events could not be read to clear their ledger entries")?;
        let store = open_store(config)?;
        cleared = Some(store.clear_ledger(handlers, &ids)?);
    }
    let records: i64 = moved.iter().map(|m| (m.end - m.to).max(0)).sum();
    if args.json {
        let value = serde_json::json!({ "group": group, "moved": moved, "records": records, "ledger_cleared": cleared });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    for m in &moved {
        let from = m.from.map_or("-".into(), |o| o.to_string());
        println!(
            "{}/{}: {from} -> {} (end {})",
            m.topic, m.partition, m.to, m.end
        );
    }
    println!("group {group} will read {records} records again when it next starts");
    match (cleared, &args.rehandle) {
        (Some(n), Some(h)) if h.is_empty() => {
            println!("cleared {n} ledger entries: every handler runs them again")
        }
        (Some(n), Some(h)) => println!(
            "cleared {n} ledger entries: {} run(s) them again",
            h.join(", ")
        ),
        _ => println!(
            "handlers that already processed them skip them (add --rehandle to run them again)"
        ),
    }
    Ok(())
}
