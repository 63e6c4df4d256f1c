//! The `persona-bus` binary: parse the command line, set up tracing, hand
//! over to the library.

mod commands;

use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = commands::Cli::parse_args();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(cli.default_log_filter())),
        )
        .with_writer(std::io::stderr)
        .init();
    // Compile cache misses in a child process of this same binary, so the
    // compiler's memory leaves with it (runtime/cache.rs).
    if let Ok(exe) = std::env::current_exe() {
        persona_bus::runtime::compile_in_child(exe);
    }
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
