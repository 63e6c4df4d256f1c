//! The `persona-bus` command line: the arguments, and one module per
//! command that does it.
//!
//! Every subcommand takes `--data-dir` (or `PERSONA_BUS_DATA_DIR`), so a
//! second process can publish into, or inspect, a running host's store.

mod alerts;
mod dlq;
mod events;
mod handlers;
mod new;
mod publish;
mod replay;
mod run;
mod schemas;
mod status;
mod store;

use alerts::AlertsCommand;
use anyhow::Context;
use clap::{Parser, Subcommand};
use dlq::DlqCommand;
use events::EventsCommand;
use handlers::HandlersCommand;
use persona_bus::config::Config;
use persona_bus::store::Store;
use publish::PublishArgs;
use replay::ReplayArgs;
use run::RunArgs;
use std::path::PathBuf;
use store::StoreCommand;

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
        lang: new::Lang,
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
    Schemas(schemas::SchemasCommand),
    /// Internal: compile the component on stdin into OUT (the host runs
    /// this as a child process on a compiled-component cache miss)
    #[command(hide = true)]
    CompileComponent { out: PathBuf },
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

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::CompileComponent { out } = &cli.command {
        // Before reading the configuration: the child needs none of it.
        return persona_bus::runtime::compile_child_main(out);
    }
    let mut config = Config::from_env(cli.config.as_deref()).context("invalid configuration")?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    match cli.command {
        Command::Run(args) => run::run(config, args),
        Command::Publish(args) => publish::publish(&config, args),
        Command::Events(EventsCommand::List {
            limit,
            event_type,
            project,
            status,
            json,
        }) => events::events_list(&config, limit, (event_type, project), status, json),
        Command::Events(EventsCommand::Show { id, json }) => {
            events::events_show(&config, &id, json)
        }
        Command::Handlers(HandlersCommand::List { json }) => handlers::handlers_list(&config, json),
        Command::Handlers(HandlersCommand::Validate { path }) => {
            handlers::handlers_validate(&config, &path)
        }
        Command::Handlers(HandlersCommand::Reload) => handlers::handlers_reload(&config),
        Command::Handlers(HandlersCommand::Diff {
            name,
            examples,
            json,
        }) => handlers::diff(&config, &name, examples, json),
        Command::Handlers(HandlersCommand::Promote { name }) => handlers::promote(&config, &name),
        Command::Handlers(HandlersCommand::Discard { name }) => handlers::discard(&config, &name),
        Command::Handlers(HandlersCommand::Push { path, reference }) => {
            handlers::push(&path, &reference)
        }
        Command::Handlers(HandlersCommand::Pull { reference, output }) => {
            handlers::pull(&reference, output.as_deref())
        }
        Command::Handlers(HandlersCommand::Sign { target, key }) => handlers::sign(&target, &key),
        Command::Handlers(HandlersCommand::Verify { target, keys }) => {
            handlers::verify(&target, &keys)
        }
        Command::New { name, lang, dir } => {
            let dir = new::new(&name, lang, dir.as_deref())?;
            println!(
                "created {}: build it with `persona-bus handlers build {}`",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Command::Handlers(HandlersCommand::Build { dir }) => {
            let manifest = new::build(&dir)?;
            handlers::handlers_validate(&config, &manifest)?;
            println!("built {}", manifest.with_extension("wasm").display());
            Ok(())
        }
        Command::Handlers(HandlersCommand::Test {
            handler,
            event,
            attempt,
        }) => handlers::test::run(&config, &handler, &event, attempt),
        Command::Dlq(cmd) => dlq::dlq(&config, cmd),
        Command::Alerts(AlertsCommand::List { limit, json }) => {
            alerts::alerts_list(&config, limit, json)
        }
        Command::Status { json } => status::status(&config, json),
        Command::Replay(args) => replay::replay(&config, args),
        Command::Store(StoreCommand::Compact) => store::compact(&config),
        Command::Schemas(cmd) => schemas::run(&config, cmd),
        Command::CompileComponent { .. } => unreachable!("handled above"),
    }
}

/// The environment variables, as `--help` lists them.
pub fn env_help() -> String {
    let vars = persona_bus::config::env_vars();
    let width = vars.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut text = String::from("Environment variables (they override the --config file):\n");
    for v in vars {
        text.push_str(&format!("  {:width$}  {} ({})\n", v.name, v.help, v.key));
    }
    text
}

pub(crate) fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))
}
