//! The `persona-bus` command line.
//!
//! Every subcommand takes `--data-dir` (or `PERSONA_BUS_DATA_DIR`), so a
//! second process can publish into, or inspect, a running host's store.

use crate::config::Config;
use crate::event::{EventStatus, NewEvent};
use crate::registry::{load_handler, manifests_in};
use crate::runtime::Runtime;
use crate::store::{DeadLetterFilter, EventFilter, Store};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "persona-bus",
    version,
    about = "Event bus host running sandboxed WebAssembly handlers"
)]
pub struct Cli {
    /// Data directory: SQLite database, host lock, compiled-component cache
    /// [env: PERSONA_BUS_DATA_DIR] [default: .data]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file; environment variables override it
    #[arg(long, global = true, env = "PERSONA_BUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: poll events, dispatch them to handlers
    Run(RunArgs),
    /// Publish one event; prints its id as the last line
    Publish(PublishArgs),
    /// Inspect events
    #[command(subcommand)]
    Events(EventsCommand),
    /// Inspect and check handlers
    #[command(subcommand)]
    Handlers(HandlersCommand),
    /// Dead letters: list, show, retry, purge
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The host's alerts and their webhook deliveries
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Create a handler folder from the templates (then `handlers build`)
    New {
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::authoring::Lang,
        /// Where [default: ./NAME]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Event counts, handlers and transport (Kafka: brokers, topics, the
    /// group's members, assigned partitions and lag; the breaker)
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Reset a consumer group's offsets so its events are read again
    Replay(ReplayArgs),
    /// The store file: `compact` rewrites it so it gives freed space back
    /// (stop the host first; files from before retention need it once)
    #[command(subcommand)]
    Store(StoreCommand),
    /// Payload schemas: push a version, list, check compatibility
    #[command(subcommand)]
    Schemas(crate::schemas::commands::SchemasCommand),
    /// Internal: compile the component on stdin into OUT (the host runs
    /// this as a child process on a compiled-component cache miss)
    #[command(hide = true)]
    CompileComponent { out: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Rewrite the file without its free pages, with incremental vacuum on
    Compact,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Active alerts first, then recently resolved ones, with deliveries
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The group to move [default: KAFKA_CONSUMER_GROUP]
    #[arg(long)]
    pub group: Option<String>,
    /// earliest, latest, an RFC 3339 time (2026-11-27T09:00:00Z), or
    /// partition:offset (one partition of the first --topic)
    #[arg(long, value_name = "WHERE")]
    pub to: crate::kafka::admin::ReplayTo,
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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Handlers folder (`name.wasm` + `name.toml`) [env: PERSONA_BUS_HANDLERS_DIR] [default: build/handlers]
    #[arg(long, value_name = "DIR")]
    pub handlers: Option<PathBuf>,
    /// Publish a little demo traffic every 2 s
    #[arg(long)]
    pub demo: bool,
    /// Serve the HTTP API and dashboard here [env: PERSONA_BUS_HTTP_ADDR] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// Do not serve the HTTP API
    #[arg(long)]
    pub no_http: bool,
}

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

#[derive(Debug, Subcommand)]
pub enum HandlersCommand {
    /// Handlers as the host last loaded them, with their subscriptions
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check a manifest (or every manifest in a folder) and its component
    /// without running anything
    Validate { path: PathBuf },
    /// Ask the running host (same --data-dir) to rescan its handlers folder
    Reload,
    /// Build a handler folder (`persona-bus new`) into NAME.wasm beside
    /// its manifest, and check it loads
    Build { dir: PathBuf },
    /// Run one handler once on one event, commit nothing, print what it
    /// did (logs, state, events it would publish, HTTP requests, outcome);
    /// exits non-zero unless it completes
    Test {
        /// A handler's folder (as `new` made it), a manifest (`name.toml`
        /// beside `name.wasm`), or a handler's name in the handlers folder
        handler: PathBuf,
        /// The event as JSON: {"event_type": ..., "source_type": ..., "payload": {...}}
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
        /// The delivery attempt the handler sees
        #[arg(long, default_value_t = 1)]
        attempt: u32,
    },
}

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

impl Cli {
    /// Parses the process's arguments; `--help` ends with the environment
    /// variables, from the one table the loader reads.
    pub fn parse_args() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command().after_long_help(env_help()).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Log level when `RUST_LOG` is not set: the host narrates, tools are quiet.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Run(_) => "info,wasmtime=warn,cranelift=warn",
            // `status` reports why Kafka cannot be used (authentication,
            // TLS, no answer) in its own output; librdkafka's ERROR line per
            // reconnect attempt would only repeat it above the report.
            Command::Status { .. } => "warn,librdkafka=off,rdkafka=off",
            _ => "warn",
        }
    }
}

pub fn main(cli: Cli) -> anyhow::Result<()> {
    if let Command::CompileComponent { out } = &cli.command {
        // Before reading the configuration: the child needs none of it.
        return crate::runtime::compile_child_main(out);
    }
    let mut config = Config::from_env(cli.config.as_deref()).context("invalid configuration")?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    match cli.command {
        Command::Run(args) => run(config, args),
        Command::Publish(args) => publish(&config, args),
        Command::Events(EventsCommand::List {
            limit,
            event_type,
            project,
            status,
            json,
        }) => events_list(&config, limit, (event_type, project), status, json),
        Command::Events(EventsCommand::Show { id, json }) => events_show(&config, &id, json),
        Command::Handlers(HandlersCommand::List { json }) => handlers_list(&config, json),
        Command::Handlers(HandlersCommand::Validate { path }) => handlers_validate(&config, &path),
        Command::Handlers(HandlersCommand::Reload) => handlers_reload(&config),
        Command::New { name, lang, dir } => {
            let dir = crate::authoring::new(&name, lang, dir.as_deref())?;
            println!(
                "created {}: build it with `persona-bus handlers build {}`",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Command::Handlers(HandlersCommand::Build { dir }) => {
            let manifest = crate::authoring::build(&dir)?;
            handlers_validate(&config, &manifest)?;
            println!("built {}", manifest.with_extension("wasm").display());
            Ok(())
        }
        Command::Handlers(HandlersCommand::Test {
            handler,
            event,
            attempt,
        }) => crate::dry_run::run(&config, &handler, &event, attempt),
        Command::Dlq(cmd) => dlq(&config, cmd),
        Command::Alerts(AlertsCommand::List { limit, json }) => alerts_list(&config, limit, json),
        Command::Status { json } => status(&config, json),
        Command::Replay(args) => replay(&config, args),
        Command::Store(StoreCommand::Compact) => compact(&config),
        Command::Schemas(cmd) => crate::schemas::commands::run(&config, cmd),
        Command::CompileComponent { .. } => unreachable!("handled above"),
    }
}

fn run(mut config: Config, args: RunArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.handlers {
        config.handlers_dir = dir;
    }
    if let Some(addr) = args.http_addr {
        config.http.addr = addr;
    }
    if args.no_http {
        config.http.enabled = false;
    }
    config.validate().context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = crate::RunOptions {
        demo: args.demo,
        demo_every: None,
    };
    runtime.block_on(crate::run(config, options, shutdown_signal()))
}

/// Resolves on the first ctrl-c or SIGTERM. A second one exits at once,
/// without waiting for the handler calls the first gave a grace period.
async fn shutdown_signal() {
    signal().await;
    tokio::spawn(async {
        signal().await;
        eprintln!("second signal: exiting now, without waiting for handler calls in flight");
        std::process::exit(130);
    });
}

/// The next ctrl-c or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))
}

fn publish(config: &Config, args: PublishArgs) -> anyhow::Result<()> {
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
    crate::schemas::Schemas::new(config).check(&event)?;
    let store = Store::open_tuned(
        &config.data_dir,
        crate::store::Sync::Normal,
        crate::store::Role::Tool,
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

fn read_input(path: &Path) -> anyhow::Result<String> {
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

fn events_list(
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

fn events_show(config: &Config, id: &str, json: bool) -> anyhow::Result<()> {
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

fn handlers_list(config: &Config, json: bool) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let records = store.handler_records()?;
    let subs = store.subscriptions()?;
    if json {
        let list: Vec<_> = records
            .iter()
            .map(|r| {
                let mine: Vec<_> = subs.iter().filter(|s| s.persona_id == r.name).collect();
                serde_json::json!({ "handler": r, "subscriptions": mine })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if records.is_empty() {
        println!(
            "no handlers recorded in {} yet: start the host with `persona-bus run`",
            config.data_dir.display()
        );
    }
    for r in records {
        let mine: Vec<String> = subs
            .iter()
            .filter(|s| s.persona_id == r.name)
            .map(|s| {
                let filter = s
                    .source_filter
                    .as_deref()
                    .map(|f| format!(" [{f}]"))
                    .unwrap_or_default();
                format!(
                    "{}{}{}",
                    s.event_type,
                    filter,
                    if s.enabled { "" } else { " (disabled)" }
                )
            })
            .collect();
        println!(
            "{:<20} {:<10} {:<8} {}",
            r.name,
            r.version.as_deref().unwrap_or("-"),
            r.status,
            mine.join(", ")
        );
        if let Some(err) = r.error {
            println!("    error: {err}");
        }
    }
    Ok(())
}

fn handlers_validate(config: &Config, path: &Path) -> anyhow::Result<()> {
    let manifests = if path.is_dir() {
        manifests_in(path).with_context(|| format!("cannot read {}", path.display()))?
    } else {
        vec![path.to_owned()]
    };
    if manifests.is_empty() {
        bail!("no manifests (*.toml) in {}", path.display());
    }
    let runtime = Runtime::new(&config.runtime, &config.limits, None)?;
    let mut failed = 0;
    for m in &manifests {
        match load_handler(&runtime, m, &config.limits) {
            Ok(h) => println!(
                "ok     {} {} ({} subscriptions, timeout {:?}, memory {} MiB)",
                h.name,
                h.version,
                h.manifest.subscriptions.len(),
                h.manifest.limits.timeout,
                h.manifest.limits.memory_bytes >> 20
            ),
            Err(e) => {
                failed += 1;
                println!("error  {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} handlers are invalid", manifests.len());
    }
    Ok(())
}

fn handlers_reload(config: &Config) -> anyhow::Result<()> {
    let control = config.data_dir.join("control");
    std::fs::create_dir_all(&control)
        .with_context(|| format!("cannot create {}", control.display()))?;
    let file = control.join(crate::registry::RELOAD_REQUEST_FILE);
    std::fs::write(&file, crate::event::now_rfc3339())
        .with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "asked the host on {} to rescan its handlers; see `handlers list`",
        config.data_dir.display()
    );
    Ok(())
}

fn dlq_filter(f: DlqFilterArgs, limit: usize) -> anyhow::Result<DeadLetterFilter> {
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

fn alerts_list(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let listing = crate::alerts::listing(&store, limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    let alerts = listing["alerts"].as_array().map_or(&[][..], Vec::as_slice);
    for a in alerts {
        let subject = a["subject"].as_str().unwrap_or("");
        println!(
            "{:<6} {:<9} {:<8} {}{}  since {}  {}",
            a["id"],
            a["status"].as_str().unwrap_or("?"),
            a["severity"].as_str().unwrap_or("?"),
            a["rule"].as_str().unwrap_or("?"),
            if subject.is_empty() {
                String::new()
            } else {
                format!(" [{subject}]")
            },
            a["since"].as_str().unwrap_or("?"),
            a["summary"].as_str().unwrap_or(""),
        );
    }
    let deliveries = listing["deliveries"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let waiting = deliveries
        .iter()
        .filter(|d| d["state"] == "retrying")
        .count();
    let failed = deliveries
        .iter()
        .filter(|d| d["state"] == "gave_up")
        .count();
    println!(
        "{} alerts ({} firing); {} deliveries ({waiting} retrying, {failed} given up)",
        alerts.len(),
        alerts.iter().filter(|a| a["status"] == "firing").count(),
        deliveries.len()
    );
    Ok(())
}

fn dlq(config: &Config, cmd: DlqCommand) -> anyhow::Result<()> {
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

fn replay(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    use crate::kafka::admin;
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

/// The running host's source status (written on each breaker transition).
fn source_status(config: &Config) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(config.data_dir.join("control").join("source.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let counts = store.status_counts()?;
    let handlers = store.handler_records()?;
    let outbox = store.outbox_len()?;
    let size = store.size()?;
    let retention = &config.store.retention;
    let horizons = retention.horizons(
        std::time::SystemTime::now(),
        crate::retention::redelivery_hours(&config.kafka),
    );
    let would_free = store.prunable(&horizons)?;
    // The plan's phase-1 connectivity check: does a broker answer?
    let kafka = if config.kafka.enabled {
        let k = &config.kafka;
        let wait = std::time::Duration::from_secs(3);
        let reached = crate::kafka::probe(k, wait);
        let topics = [&k.topics.events.name, &k.topics.actions.name];
        let group = reached.is_ok().then(|| {
            crate::kafka::admin::describe(k, &k.consumer_group, &[topics[0], topics[1]], wait)
                .map_err(|e| e.to_string())
        });
        serde_json::json!({
            "enabled": true,
            "brokers": k.brokers,
            "client_id": k.client_id,
            "dual_write": k.dual_write,
            "source": if k.consuming() { "kafka" } else { "sqlite (dual write)" },
            "reachable": reached.is_ok(),
            "error": reached.err().map(|e| e.to_string()),
            "outbox": outbox,
            "topics": k.topics.all().iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
            "group": match &group {
                Some(Ok(view)) => serde_json::to_value(view)?,
                Some(Err(e)) => serde_json::json!({ "name": k.consumer_group, "error": e }),
                None => serde_json::json!({ "name": k.consumer_group }),
            },
            "total_lag": group.as_ref().and_then(|g| g.as_ref().ok()).map(|v| v.total_lag()),
            "host": source_status(config),
        })
    } else {
        serde_json::json!({ "enabled": false, "outbox": outbox })
    };
    if json {
        let counts: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), (*n).into()))
            .collect();
        let store = serde_json::json!({
            "size": size,
            "retention": retention,
            "retention_would_delete": would_free,
        });
        let value = serde_json::json!({ "data_dir": config.data_dir, "events": counts, "handlers": handlers, "kafka": kafka, "store": store });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("data dir: {}", config.data_dir.display());
    match (kafka["enabled"].as_bool(), kafka["reachable"].as_bool()) {
        (Some(true), Some(true)) => println!(
            "kafka:    enabled, {} reachable; {outbox} events waiting in the outbox",
            config.kafka.brokers
        ),
        (Some(true), _) => println!(
            "kafka:    enabled, NOT reachable ({}); {outbox} events waiting in the outbox",
            kafka["error"].as_str().unwrap_or("?")
        ),
        _ if outbox > 0 => println!(
            "kafka:    disabled (embedded SQLite bus); {outbox} events from an earlier dual write wait in the outbox"
        ),
        _ => println!("kafka:    disabled (embedded SQLite bus)"),
    }
    if let Some(view) = kafka.get("group").filter(|g| g.get("members").is_some()) {
        println!(
            "group:    {} ({}), {} member(s), lag {}",
            view["group"].as_str().unwrap_or("?"),
            view["state"].as_str().unwrap_or("?"),
            view["members"].as_array().map_or(0, Vec::len),
            kafka["total_lag"]
        );
        for p in view["partitions"].as_array().into_iter().flatten() {
            println!(
                "          {}/{}: committed {}, end {}, lag {}, {}",
                p["topic"].as_str().unwrap_or("?"),
                p["partition"],
                p["committed"],
                p["end"],
                p["lag"],
                p["owner"]
                    .as_str()
                    .map_or("unassigned".into(), |o| format!("assigned to {o}"))
            );
        }
    }
    if let Some(host) = kafka.get("host").filter(|h| !h.is_null()) {
        println!(
            "source:   {} in charge (configured {}), breaker {}, {} transition(s){}",
            host["active"].as_str().unwrap_or("?"),
            host["configured"].as_str().unwrap_or("?"),
            host["breaker"].as_str().unwrap_or("?"),
            host["transitions"],
            host["last_transition"]["reason"]
                .as_str()
                .map_or(String::new(), |r| format!("; last: {r}"))
        );
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!(
        "events:   {}",
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    );
    let loaded = handlers.iter().filter(|h| h.status == "loaded").count();
    println!("handlers: {loaded} loaded of {} recorded", handlers.len());
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "store:    {:.1} MiB (WAL {:.1} MiB, free inside {:.1} MiB{}); retention would delete {} events, {} execution rows, {} dead letters now",
        mib(size.file_bytes),
        mib(size.wal_bytes),
        mib(size.free_bytes),
        if size.gives_back {
            ""
        } else {
            ", kept: run `persona-bus store compact` once with the host stopped"
        },
        would_free.events,
        would_free.executions,
        would_free.dead_letters
    );
    Ok(())
}

/// `store compact`: VACUUM with incremental auto-vacuum on. Refused while a
/// host runs on the folder (it holds the writer for the whole rewrite).
fn compact(config: &Config) -> anyhow::Result<()> {
    // Held for the whole rewrite, so no host starts on the folder meanwhile.
    let _lock = crate::bus::take_lock(config)
        .context("stop the host first: compacting holds the store for the whole rewrite")?;
    let store = open_store(config)?;
    let before = store.size()?;
    let after = store.compact()?;
    println!(
        "compacted {}: {} -> {} bytes; freed pages are given back from now on",
        store.path().display(),
        before.file_bytes + before.wal_bytes,
        after.file_bytes + after.wal_bytes
    );
    Ok(())
}

/// The environment variables, as `--help` lists them.
pub fn env_help() -> String {
    let vars = crate::config::env_vars();
    let width = vars.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut text = String::from("Environment variables (they override the --config file):\n");
    for v in vars {
        text.push_str(&format!("  {:width$}  {} ({})\n", v.name, v.help, v.key));
    }
    text
}
