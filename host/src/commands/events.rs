//! `persona-bus events list|show`.

use crate::commands::open_store;
use anyhow::Context;
use clap::Subcommand;
use persona_bus::config::Config;
use persona_bus::event::EventStatus;
use persona_bus::store::EventFilter;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Newest events first
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        event_type: Option<String>,
        /// Only this project's events
        #[arg(long)]
        project: Option<String>,
        /// pending, processing, completed, failed, skipped, dead_letter, ...
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One event with its status and handler runs
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn events_list(
    config: &Config,
    limit: usize,
    (event_type, project_id): (Option<String>, Option<String>),
    status: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let status = status
        .map(|s| {
            EventStatus::parse(&s).with_context(|| {
                let known: Vec<_> = EventStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {s:?}; expected one of {}", known.join(", "))
            })
        })
        .transpose()?;
    let page = open_store(config)?.list_events(&EventFilter {
        event_type,
        project_id,
        status,
        limit,
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    println!(
        "{:<26}  {:<24}  {:<12}  {:<12}  {:<24}  SOURCE",
        "ID", "CREATED", "STATUS", "PROJECT", "TYPE"
    );
    for e in &page.events {
        println!(
            "{:<26}  {:<24}  {:<12}  {:<12}  {:<24}  {}:{}",
            e.id,
            e.created_at,
            e.status,
            e.project_id,
            e.event_type,
            e.source_type,
            e.source_id.as_deref().unwrap_or("-")
        );
    }
    println!(
        "{} shown, {} in all, {} pending",
        page.events.len(),
        page.total,
        page.pending_count
    );
    Ok(())
}

pub(super) fn events_show(config: &Config, id: &str, json: bool) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let event = store.event(id)?;
    let runs = store.executions(id)?;
    if json {
        let value = serde_json::json!({ "event": event, "executions": runs });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("id:          {}", event.id);
    println!("status:      {}", event.status);
    println!("type:        {}", event.event_type);
    println!(
        "source:      {}:{}",
        event.source_type,
        event.source_id.as_deref().unwrap_or("-")
    );
    println!("project:     {}", event.project_id);
    if let Some(t) = &event.target_persona_id {
        println!("target:      {t}");
    }
    println!("created:     {}", event.created_at);
    if let Some(p) = &event.processed_at {
        println!("processed:   {p}");
    }
    println!(
        "chain depth: {}   retries: {}",
        event.chain_depth, event.retry_count
    );
    if let Some(err) = &event.error_message {
        println!("error:       {err}");
    }
    println!("payload:     {}", event.payload);
    println!("runs:");
    if runs.is_empty() {
        println!("  (none)");
    }
    for r in runs {
        println!(
            "  {}  {}@{}  attempt {}  {}  {} us{}",
            r.started_at,
            r.handler,
            r.handler_version,
            r.attempt,
            r.outcome,
            r.duration_us,
            r.error.map(|e| format!("  {e}")).unwrap_or_default()
        );
    }
    Ok(())
}
