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
    /// Only dead letters created at or after this RFC 3339 time (UTC)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only dead letters created before this RFC 3339 time (UTC)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only dead letters whose last error or reason contains this text (any case)
    #[arg(long, value_name = "TEXT")]
    pub error_contains: Option<String>,
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
    /// Send dead letters back to their handler (a redrive): one by id, or
    /// every one matching the filters (--all for every one at all). Each
    /// event keeps its history: earlier attempts and errors stay in
    /// `events show` and `dlq show`
    Retry {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Count and list what would be sent back; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters matching the filters (all of them with no filter)
    Purge {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Required: purging cannot be undone
        #[arg(long)]
        yes: bool,
        /// Count what would be deleted; change nothing
        #[arg(long)]
        dry_run: bool,
    },
}

impl DlqFilterArgs {
    /// Whether any filter narrows the selection.
    fn narrows(&self) -> bool {
        self.handler.is_some()
            || self.event_type.is_some()
            || self.since.is_some()
            || self.until.is_some()
            || self.error_contains.is_some()
    }
}

pub(super) fn dlq_filter(f: DlqFilterArgs, limit: usize) -> anyhow::Result<DeadLetterFilter> {
    let time = |flag: &str, t: Option<String>| -> anyhow::Result<Option<String>> {
        t.map(|t| {
            DeadLetterFilter::time(&t).with_context(|| {
                format!("{flag} {t:?} is not an RFC 3339 time (UTC, like 2026-12-07T10:00:00Z)")
            })
        })
        .transpose()
    };
    Ok(DeadLetterFilter {
        handler: f.handler,
        event_type: f.event_type,
        since: time("--since", f.since)?,
        until: time("--until", f.until)?,
        error_contains: f.error_contains.filter(|s| !s.is_empty()),
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
        DlqCommand::Retry {
            id,
            all,
            filter,
            dry_run,
        } => {
            let ids: Vec<i64> = match id {
                Some(id) => vec![id],
                None if all || filter.narrows() => {
                    let letters =
                        store.dead_letters_where(&dlq_filter(filter, usize::MAX >> 1)?)?;
                    if dry_run {
                        for d in &letters {
                            println!(
                                "{:<6} {}  {}@{}  {}  {}",
                                d.id,
                                d.created_at,
                                d.handler,
                                d.handler_version,
                                d.event_id,
                                d.last_error
                            );
                        }
                        println!(
                            "{} dead letters match; --dry-run: nothing was sent back",
                            letters.len()
                        );
                        return Ok(());
                    }
                    letters.into_iter().map(|d| d.id).collect()
                }
                None => bail!(
                    "give a dead letter id, filters (--handler, --error-contains, --since, ...) or --all"
                ),
            };
            if dry_run {
                println!(
                    "would send back dead letter {}; --dry-run: nothing was sent back",
                    ids[0]
                );
                return Ok(());
            }
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
        DlqCommand::Purge {
            filter,
            yes,
            dry_run,
        } => {
            let filter = dlq_filter(filter, 0)?;
            if dry_run {
                let n = store.count_dead_letters(&filter)?;
                println!("{n} dead letters match; --dry-run: nothing was deleted");
                return Ok(());
            }
            if !yes {
                bail!("purging deletes dead letters for good: add --yes (or --dry-run to count)");
            }
            let n = store.purge_dead_letters(&filter)?;
            println!("purged {n} dead letters");
        }
    }
    Ok(())
}
