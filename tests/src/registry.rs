//! The schema registry for tests: the shared one `make registry-up` starts
//! (Apicurio Registry, Confluent API), and private ones a test may stop.

use persona_bus::schemas::registry::RegistryClient;
use std::time::Duration;

/// The project's registry script (`make registry-up` runs it).
pub const REGISTRY_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/registry.sh");

/// The shared registry's Confluent API root (override:
/// `PERSONA_BUS_TEST_REGISTRY`).
pub fn url() -> String {
    std::env::var("PERSONA_BUS_TEST_REGISTRY")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into())
}

pub fn client(url: &str) -> RegistryClient {
    RegistryClient::new(url, None, None, Duration::from_secs(10))
}

/// A registry of this test's own (about 10 s to start), so stopping it
/// disturbs no other test. Stopped on drop.
pub struct PrivateRegistry {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateRegistry {
    pub fn start() -> Self {
        let r = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            port: crate::kafka::free_port(),
        };
        let out = r.script("up");
        assert!(
            out.status.success(),
            "private registry did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/apis/ccompat/v7", self.port)
    }

    fn script(&self, verb: &str) -> std::process::Output {
        std::process::Command::new(REGISTRY_SH)
            .arg(verb)
            .env("REGISTRY_INSTANCE_DIR", self.dir.path())
            .env("REGISTRY_PORT", self.port.to_string())
            .output()
            .expect("run scripts/registry.sh")
    }

    fn signal(&self, sig: &str) {
        assert!(self.signal_quiet(sig).is_some(), "the private registry is not running");
    }

    /// Stops the registry process (SIGSTOP): it answers nothing, as a
    /// registry that is down, and keeps its in-memory schemas for
    /// [`PrivateRegistry::resume`].
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.signal_quiet("-CONT");
        let _ = self.script("down");
    }
}

impl PrivateRegistry {
    fn signal_quiet(&self, sig: &str) -> Option<()> {
        let pid = String::from_utf8_lossy(&self.script("pid").stdout).trim().to_owned();
        (!pid.is_empty()).then(|| {
            let _ = std::process::Command::new("kill").args([sig, &pid]).status();
        })
    }
}
