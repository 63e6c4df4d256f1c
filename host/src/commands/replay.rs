//! `persona-bus replay`: move a consumer group's offsets so its events are
//! read again; or, with `--handler`, run one handler again over past events.

use crate::commands::open_store;
use anyhow::Context;
use clap::Args;
use persona_bus::config::Config;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The group to move [default: KAFKA_CONSUMER_GROUP]
    #[arg(long)]
    pub group: Option<String>,
    /// Where to move the group: earliest, latest, an RFC 3339 time
    /// (2026-11-27T09:00:00Z), or partition:offset (one partition of the
    /// first --topic). With --handler: the end of the range (an RFC 3339
    /// time, exclusive) [default: now]
    #[arg(long, value_name = "WHERE")]
    pub to: Option<String>,
    /// Run this handler alone again over the stored events from --from on,
    /// into a fresh ledger generation (each event once per replay), beside
    /// a running host; other handlers are untouched
    #[arg(long, value_name = "NAME", conflicts_with_all = ["group", "rehandle"])]
    pub handler: Option<String>,
    /// With --handler: where to start. An RFC 3339 time; from Kafka also
    /// `earliest` or partition:offset (that partition only)
    #[arg(long, value_name = "TIME|OFFSET", requires = "handler")]
    pub from: Option<String>,
    /// With --handler: only this project's events
    #[arg(long, requires = "handler")]
    pub project: Option<String>,
    /// With --handler: read the events from `sqlite` (this device's table)
    /// or `kafka` (the topics) [default: kafka when Kafka is on, else sqlite]
    #[arg(long, value_name = "SOURCE", requires = "handler")]
    pub source: Option<String>,
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
    if let Some(handler) = &args.handler {
        return replay_handler(config, handler, &args);
    }
    let to: admin::ReplayTo = args
        .to
        .as_deref()
        .context("--to WHERE is required (or --handler NAME --from TIME)")?
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let k = &config.kafka;
    let group = args.group.unwrap_or_else(|| k.consumer_group.clone());
    let topics: Vec<String> = if args.topics.is_empty() {
        vec![k.topics.events.name.clone(), k.topics.actions.name.clone()]
    } else {
        args.topics
    };
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let timeout = std::time::Duration::from_secs(10);
    let moved = admin::replay(k, &group, &topics, &to, timeout)
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

fn replay_handler(config: &Config, handler: &str, args: &ReplayArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let from = args
        .from
        .clone()
        .context("--handler needs --from TIME (RFC 3339: 2026-12-07T09:00:00Z)")?;
    let store = std::sync::Arc::new(open_store(config)?);
    let req = persona_bus::replay::ReplayRequest {
        handler: handler.to_owned(),
        from,
        to: args.to.clone(),
        project: args.project.clone(),
    };
    let source = args.source.clone().unwrap_or_else(|| {
        if config.kafka.enabled {
            "kafka"
        } else {
            "sqlite"
        }
        .to_owned()
    });
    let mut pages: Box<dyn persona_bus::replay::Pages> = match source.as_str() {
        "sqlite" => Box::new(persona_bus::replay::SqlitePages::open(store.clone(), &req)?),
        "kafka" => {
            use persona_bus::kafka::admin::ReplayTo;
            let parse = |s: &str| -> anyhow::Result<ReplayTo> {
                s.parse().map_err(|e: String| anyhow::anyhow!(e))
            };
            let k = &config.kafka;
            let topics: Vec<String> = if args.topics.is_empty() {
                vec![k.topics.events.name.clone(), k.topics.actions.name.clone()]
            } else {
                args.topics.clone()
            };
            let to = args.to.as_deref().map(parse).transpose()?;
            Box::new(persona_bus::replay::kafka::KafkaPages::open(
                k,
                std::sync::Arc::new(persona_bus::schemas::Schemas::new(config)),
                &topics,
                (&parse(&req.from)?, to.as_ref()),
                req.project.clone(),
            )?)
        }
        other => anyhow::bail!("--source {other:?}: expected sqlite or kafka"),
    };
    let started = std::time::Instant::now();
    let bar = !args.json && std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let replay = persona_bus::replay::replay(config, store, &req, (&source, pages.as_mut()), |r| {
        if args.json {
            return;
        }
        if bar {
            eprint!("{}", persona_bus::replay::progress_line(r, started, true));
        } else if last_line.elapsed() >= std::time::Duration::from_secs(3) {
            eprintln!("{}", persona_bus::replay::progress_line(r, started, false));
            last_line = std::time::Instant::now();
        }
    })
    .with_context(|| format!("cannot replay handler {handler}"))?;
    if bar {
        eprintln!();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&replay)?);
        return Ok(());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "replay {} of {handler} {}: {} events looked at, {} run: {} completed, {} failed, in {secs:.1} s ({:.0} events/s); its runs are recorded as {}",
        replay.id,
        replay.status,
        replay.done,
        replay.completed + replay.failed,
        replay.completed,
        replay.failed,
        replay.done as f64 / secs.max(0.001),
        replay.ledger_name()
    );
    Ok(())
}
