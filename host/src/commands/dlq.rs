//! `persona-bus dlq list|show|retry|purge`: dead letters.

use crate::commands::open_store;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use persona_bus::config::Config;
use persona_bus::store::DeadLetterFilter;

#[derive(Debug, Args)]
pub struct DlqFilterArgs {
    /// Only this handler's dead letters
    #[arg(long)]
    pub handler: Option<String>,
    /// Only dead events of this type
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only dead letters created at or after this RFC 3339 time
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Include letters already retried
    #[arg(long)]
    pub include_retried: bool,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters, newest first
    List {
        #[command(flatten)]
        filter: DlqFilterArgs,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its event and the handler's runs
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their handler: one by id, or all matching
    /// the filters with --all
    Retry {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
    /// Delete dead letters matching the filters (all of them with no filter)
    Purge {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Required: purging cannot be undone
        #[arg(long)]
        yes: bool,
    },
}

pub(super) fn dlq_filter(f: DlqFilterArgs, limit: usize) -> anyhow::Result<DeadLetterFilter> {
    if let Some(since) = &f.since {
        humantime::parse_rfc3339_weak(since)
            .with_context(|| format!("--since {since:?} is not an RFC 3339 time"))?;
    }
    Ok(DeadLetterFilter {
        handler: f.handler,
        event_type: f.event_type,
        since: f.since,
        include_retried: f.include_retried,
        limit,
    })
}

pub(super) fn dlq(config: &Config, cmd: DlqCommand) -> anyhow::Result<()> {
    let store = open_store(config)?;
    match cmd {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let letters = store.dead_letters_where(&dlq_filter(filter, limit)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(());
            }
            for d in &letters {
                println!(
                    "{:<6} {}  {:<16} {}@{}  {} attempts  {}  {}{}",
                    d.id,
                    d.created_at,
                    d.event_type.as_deref().unwrap_or("?"),
                    d.handler,
                    d.handler_version,
                    d.attempts,
                    d.reason,
                    d.last_error,
                    if d.retried_at.is_some() {
                        "  (retried)"
                    } else {
                        ""
                    }
                );
            }
            println!("{} dead letters", letters.len());
        }
        DlqCommand::Show { id, json } => {
            let d = store
                .dead_letter(id)?
                .with_context(|| format!("no dead letter {id}"))?;
            let event = store.event(&d.event_id)?;
            let runs: Vec<_> = store
                .executions(&d.event_id)?
                .into_iter()
                .filter(|r| r.handler == d.handler)
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "dead_letter": d, "event": event, "runs": runs })
                    )?
                );
                return Ok(());
            }
            println!(
                "dead letter {}: {}@{} gave up on {} ({}) after {} attempts",
                d.id, d.handler, d.handler_version, d.event_id, event.event_type, d.attempts
            );
            println!("reason:     {}", d.reason);
            println!("last error: {}", d.last_error);
            println!("headers:    {:?}", d.headers);
            println!("payload:    {}", event.payload);
            for r in runs {
                println!(
                    "  attempt {}  {}  {}  {}",
                    r.attempt,
                    r.started_at,
                    r.outcome,
                    r.error.unwrap_or_default()
                );
            }
        }
        DlqCommand::Retry { id, all, filter } => {
            let ids: Vec<i64> = match (id, all) {
                (Some(id), _) => vec![id],
                (None, true) => store
                    .dead_letters_where(&dlq_filter(filter, usize::MAX >> 1)?)?
                    .into_iter()
                    .map(|d| d.id)
                    .collect(),
                (None, false) => {
                    bail!("give a dead letter id, or --all (with filters) to retry every match")
                }
            };
            let mut retried = 0;
            for id in ids {
                match store.retry_dead_letter(id)? {
                    Some(event) => {
                        retried += 1;
                        println!("retrying dead letter {id}: event {event} is pending again");
                    }
                    None => println!("dead letter {id} does not exist or was already retried"),
                }
            }
            println!("{retried} dead letters sent back");
        }
        DlqCommand::Purge { filter, yes } => {
            if !yes {
                bail!("purging deletes dead letters for good: add --yes");
            }
            let n = store.purge_dead_letters(&dlq_filter(filter, 0)?)?;
            println!("purged {n} dead letters");
        }
    }
    Ok(())
}
