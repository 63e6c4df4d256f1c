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
        assert!(
            self.signal_quiet(sig).is_some(),
            "the private registry is not running"
        );
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
        let pid = String::from_utf8_lossy(&self.script("pid").stdout)
            .trim()
            .to_owned();
        (!pid.is_empty()).then(|| {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid])
                .status();
        })
    }
}

/// The 10-field payload of the schema runs (`kafka --schemas` and the `schemas` bench).
pub fn order10(i: usize, id: &str, project: &str, at: &str) -> String {
    format!(
        r#"{{"n":{i},"order_id":"{id}","project":"{project}","qty":{},"price":{}.5,"currency":"EUR","paid":{},"tags":["a","b"],"note":{},"at":"{at}"}}"#,
        i % 100 + 1,
        i % 1000,
        i.is_multiple_of(2),
        if i.is_multiple_of(3) {
            "null".to_owned()
        } else {
            format!(r#""note {i}""#)
        }
    )
}

/// Avro schema of [`order10`] (registered per event type by `kafka --schemas`).
pub const ORDER10_AVRO: &str = r#"{"type":"record","name":"Order10","namespace":"bench","fields":[
  {"name":"n","type":"long"},{"name":"order_id","type":"string"},{"name":"project","type":"string"},
  {"name":"qty","type":"int"},{"name":"price","type":"double"},{"name":"currency","type":"string"},
  {"name":"paid","type":"boolean"},{"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"note","type":["null","string"]},{"name":"at","type":"string"}]}"#;

/// The same as a JSON Schema (the folder default's kind).
pub const ORDER10_JSON: &str = r#"{"type":"object","additionalProperties":false,
  "required":["n","order_id","project","qty","price","currency","paid","tags","note","at"],
  "properties":{"n":{"type":"integer"},"order_id":{"type":"string"},"project":{"type":"string"},
  "qty":{"type":"integer","minimum":1},"price":{"type":"number"},"currency":{"enum":["EUR","USD"]},
  "paid":{"type":"boolean"},"tags":{"type":"array","items":{"type":"string"}},
  "note":{"type":["null","string"]},"at":{"type":"string"}}}"#;
