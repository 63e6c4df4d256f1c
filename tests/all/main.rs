//! Integration tests: one binary, one module per area. Every test runs the
//! real bus on a real SQLite file in its own temporary folder, with real
//! compiled handler components.
//!
//! Two tiers: plain `cargo test` runs the tests that need only Rust, SQLite
//! and the compiled Rust guests; tests that need a broker, the schema
//! registry, the collector, a browser or the JavaScript and Python
//! toolchains are `#[ignore = "needs services: make test"]`, and `make test`
//! starts those services and runs every test (`--include-ignored`).

mod alerts;
mod authoring;
mod batch;
mod browser;
mod cli;
mod cluster;
mod consistency;
mod consume;
mod crash;
mod embedded;
mod failover;
mod fleet;
mod fuzz;
mod hostile;
mod http;
mod input;
mod isolation;
mod kafka;
mod languages;
mod layers;
mod lifecycle;
mod matching;
mod migration;
mod monitoring;
mod oci;
mod ordering;
mod outbound;
mod outcomes;
mod plan;
mod redrive;
mod retention;
mod rollout;
mod schemas;
mod secure;
mod traces;

use persona_bus_tests::Sandbox;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A host process started by a test. Killed (SIGKILL) and reaped when
/// dropped, so a failing test does not leave it running.
pub struct Host(pub std::process::Child);

impl std::ops::Deref for Host {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Host {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Host {
    /// A graceful stop (SIGTERM): the host drains and must exit cleanly.
    pub fn terminate(mut self) {
        std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "host exited with {status}");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The host binary under test, for tests that need a real process.
pub fn host_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_persona-bus-host"))
}

/// Runs `persona-bus --data-dir <sandbox> ARGS`: (success, stdout, stderr).
pub fn cli(sb: &Sandbox, args: &[&str]) -> (bool, String, String) {
    run_host(sb, args, None, &[])
}

/// [`cli`] with `stdin` fed to the process.
pub fn cli_with_input(sb: &Sandbox, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    run_host(sb, args, stdin, &[])
}

/// [`cli`] with environment variables set (the plan's `KAFKA_*`).
pub fn cli_with_env(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    run_host(sb, args, None, env)
}

/// Runs `persona-bus --data-dir DIR ARGS` with `env` (another device's
/// data directory).
pub fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(host_binary())
        .env("PERSONA_BUS_HTTP_ADDR", "127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run persona-bus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `persona-bus --data-dir DIR --config TOML publish` of a `work` event in
/// `project` (with `payload`, if any); returns the new event's id.
pub fn publish_work(
    dir: &Path,
    toml: &Path,
    env: &[(&str, &str)],
    project: &str,
    payload: Option<&str>,
) -> String {
    let mut args = vec![
        "--config",
        toml.to_str().unwrap(),
        "publish",
        "--event-type",
        "work",
        "--source-type",
        "system",
        "--project",
        project,
    ];
    if let Some(p) = payload {
        args.extend(["--payload", p]);
    }
    let (ok, out, err) = run_in(dir, &args, env);
    assert!(ok, "publish failed: {err}");
    out.lines().last().unwrap().to_owned()
}

fn run_host(
    sb: &Sandbox,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut child = Command::new(host_binary())
        // Hosts started by tests serve HTTP on a port of their own.
        .env("PERSONA_BUS_HTTP_ADDR", "127.0.0.1:0")
        .arg("--data-dir")
        .arg(sb.data_dir())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
