//! Integration tests: one binary, one module per area. Every test runs the
//! real bus on a real SQLite file in its own temporary folder, with real
//! compiled handler components.

mod cli;
mod crash;
mod embedded;
mod hostile;
mod input;
mod languages;
mod lifecycle;
mod matching;
mod outcomes;

use std::path::Path;

/// The host binary under test, for tests that need a real process.
pub fn host_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_persona-bus-host"))
}
