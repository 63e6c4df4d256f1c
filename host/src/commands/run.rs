//! `persona-bus run`: the host, until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Args;
use persona_bus::config::Config;
use std::path::PathBuf;

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

pub(super) fn run(mut config: Config, args: RunArgs) -> anyhow::Result<()> {
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
    let options = persona_bus::RunOptions {
        demo: args.demo,
        demo_every: None,
    };
    runtime.block_on(persona_bus::run(config, options, shutdown_signal()))
}

/// Resolves on the first ctrl-c or SIGTERM. A second one exits at once,
/// without waiting for the handler calls the first gave a grace period.
pub(super) async fn shutdown_signal() {
    signal().await;
    tokio::spawn(async {
        signal().await;
        eprintln!("second signal: exiting now, without waiting for handler calls in flight");
        std::process::exit(130);
    });
}

/// The next ctrl-c or SIGTERM.
pub(super) async fn signal() {
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
