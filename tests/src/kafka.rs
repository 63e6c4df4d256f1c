//! Kafka helpers for tests and benchmarks: the test broker's address, a
//! config with throwaway topic and group names, and producing events the
//! way another device (or a load generator) would.

use persona_bus::Event;
use persona_bus::config::Config;
use persona_bus::kafka::wire::{WireEvent, headers};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::time::Duration;

/// Benchmarks over TLS: set by [`use_secure`], or inherited by a child
/// process (a load generator) as `PERSONA_BUS_TEST_KAFKA_SECURE=1`.
static SECURE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, [`brokers`], [`consuming`] and [`producer`] talk to the
/// secure broker's SASL_SSL listener (`make kafka-up-secure`).
pub fn use_secure(on: bool) {
    SECURE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether clients made here use the secure broker.
pub fn secure() -> bool {
    SECURE.load(std::sync::atomic::Ordering::Relaxed)
        || std::env::var("PERSONA_BUS_TEST_KAFKA_SECURE").is_ok_and(|v| v == "1")
}

/// The broker `make kafka-up` starts (override: `PERSONA_BUS_TEST_KAFKA`),
/// or the secure one's SASL_SSL listener after [`use_secure`].
pub fn brokers() -> String {
    if secure() {
        return SecureBroker::from_env_file()
            .var("KAFKA_BROKERS")
            .to_owned();
    }
    std::env::var("PERSONA_BUS_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A client config for [`brokers`], with the security settings the host
/// itself would use there (the host's own `client_config`, so a load
/// generator talks to the secure broker exactly as the host does).
pub fn client() -> ClientConfig {
    let mut c = Config::default();
    c.kafka.brokers = brokers();
    if secure() {
        SecureBroker::from_env_file().apply(&mut c, Listener::SaslSsl);
    }
    persona_bus::kafka::client_config(&c.kafka)
}

/// Turns `c` into a Kafka-consuming config (plan phases 2-3) whose topics
/// and groups are named `<prefix>.<name>`, read from the earliest offset
/// (so records produced before the group joins are not skipped). Returns
/// the prefix.
pub fn consuming(c: &mut Config, prefix: &str) {
    let k = &mut c.kafka;
    k.enabled = true;
    k.dual_write = false;
    k.brokers = brokers();
    k.client_id = format!("device-{prefix}");
    k.consumer_group = format!("{prefix}.processor");
    k.audit_group = format!("{prefix}.audit");
    k.webhook_group = format!("{prefix}.webhooks");
    k.auto_offset_reset = persona_bus::config::OffsetReset::Earliest;
    if secure() {
        SecureBroker::from_env_file().apply(c, Listener::SaslSsl);
    }
    let k = &mut c.kafka;
    for (topic, name) in [
        (&mut k.topics.events, "events"),
        (&mut k.topics.webhooks, "webhooks"),
        (&mut k.topics.actions, "actions"),
        (&mut k.topics.executions, "executions"),
        (&mut k.topics.dlq, "dlq"),
    ] {
        topic.name = format!("{prefix}.{name}");
    }
}

/// A fresh random prefix for topic and group names.
pub fn prefix() -> String {
    format!("t{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A producer like the host's relay (idempotent, acks=all, lz4).
pub fn producer(linger_ms: u32) -> ThreadedProducer<DefaultProducerContext> {
    producer_compressed(linger_ms, "lz4")
}

/// [`producer`] with another `compression.type` (`none`, `lz4`, ...).
pub fn producer_compressed(
    linger_ms: u32,
    compression: &str,
) -> ThreadedProducer<DefaultProducerContext> {
    client()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", compression)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// Sends one event to `topic` as device `device` would (key = project,
/// the plan's headers); retries while the local queue is full.
pub fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, e: &Event, device: &str) {
    let value = serde_json::to_vec(&WireEvent::from_event(e)).expect("encode");
    send_with(p, topic, e, &value, &headers(e, device));
}

/// Sends `e` as `value` with `hs` (for example a payload in the schema
/// registry's framing, with `wire::framed_headers`).
pub fn send_with(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    e: &Event,
    value: &[u8],
    hs: &[(&str, String)],
) {
    let mut owned = OwnedHeaders::new();
    for (k, v) in hs {
        owned = owned.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut record = BaseRecord::to(topic)
        .key(e.project_id.as_bytes())
        .payload(value)
        .headers(owned);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                p.poll(Duration::from_millis(5));
            }
        }
    }
}

/// Sends raw bytes (for malformed-record tests).
pub fn send_raw(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    value: &[u8],
) {
    p.send(BaseRecord::to(topic).key(key).payload(value))
        .map_err(|(e, _)| e)
        .expect("send raw");
}

/// Waits until everything sent is acknowledged.
pub fn flush(p: &ThreadedProducer<DefaultProducerContext>) {
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// Deletes the topics named `<prefix>.*` (a test's or a benchmark run's),
/// so the broker does not carry them into later runs. Returns how many.
pub fn drop_topics(prefix: &str) -> usize {
    let start = format!("{prefix}.");
    drop_topics_where(|name| name.starts_with(&start))
}

/// Deletes topics that tests and benchmarks named with [`prefix`] more than
/// `older_than` ago (the ULID in the name says when): a broker carrying the
/// thousands of partitions that earlier runs left is slower, which moved a
/// backlog benchmark by a fifth. Younger ones may belong to a run still
/// going, and are left.
pub fn drop_stale_topics(older_than: Duration) -> usize {
    let now = std::time::SystemTime::now();
    drop_topics_where(|name| {
        let Some(id) = name.strip_prefix('t').and_then(|rest| rest.get(..26)) else {
            return false;
        };
        if name.as_bytes().get(27) != Some(&b'.') {
            return false;
        }
        ulid::Ulid::from_string(&id.to_uppercase())
            .ok()
            .and_then(|u| now.duration_since(u.datetime()).ok())
            .is_some_and(|age| age > older_than)
    })
}

fn drop_topics_where(doomed: impl Fn(&str) -> bool) -> usize {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let Ok(admin) = client().create::<AdminClient<DefaultClientContext>>() else {
        return 0;
    };
    let Ok(metadata) = admin.inner().fetch_metadata(None, Duration::from_secs(10)) else {
        return 0;
    };
    let names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| doomed(n))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut dropped = 0;
    for chunk in names.chunks(200) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        if let Ok(results) = rt.block_on(admin.delete_topics(&chunk, &options)) {
            dropped += results.iter().filter(|r| r.is_ok()).count();
        }
    }
    dropped
}

/// A broker of the test's own (port, data and process), started by the
/// project's script, that the test may `kill -9` and restart without
/// disturbing the shared broker other tests use. Stopped on drop.
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    port: u16,
    controller: u16,
}

/// The project's broker script (`make kafka-up` and friends run it).
pub const KAFKA_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh");

/// `kill -9` of the broker with process id `pid`, listening on `port`;
/// returns once the port no longer answers.
pub fn kill9(pid: &str, port: u16) {
    assert!(!pid.is_empty(), "the broker is not running");
    let status = std::process::Command::new("kill")
        .args(["-9", pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "broker still answers after kill -9"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PrivateBroker {
    /// Starts it (about 10 s; the jars come from `make kafka-up`'s cache).
    pub fn start() -> Self {
        let b = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            controller: free_port(),
        };
        b.up();
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, verb: &str) -> std::process::Output {
        std::process::Command::new(KAFKA_SH)
            .arg(verb)
            .env("KAFKA_INSTANCE_DIR", self.dir.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller.to_string())
            // Small: it only carries a test's events.
            .env("KAFKA_HEAP", "-Xms128m -Xmx384m")
            .output()
            .expect("run scripts/kafka.sh")
    }

    /// Starts it again after a kill (same data: the topics and offsets are
    /// still there).
    pub fn up(&self) {
        let out = self.script("up");
        assert!(
            out.status.success(),
            "private broker did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kill -9` of the broker process; returns once it is gone.
    pub fn kill9(&self) {
        let out = self.script("pid");
        kill9(String::from_utf8_lossy(&out.stdout).trim(), self.port);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.script("down");
    }
}

/// The secure broker `make kafka-up-secure` starts, as the file it writes
/// (`build/kafka-secure.env`) describes it.
pub struct SecureBroker {
    vars: std::collections::BTreeMap<String, String>,
}

/// One of the secure broker's listeners.
#[derive(Clone, Copy, Debug)]
pub enum Listener {
    /// SASL_SSL with SCRAM-SHA-512 (127.0.0.1:9096).
    SaslSsl,
    /// TLS with a client certificate, no SASL (127.0.0.1:9097).
    Mtls,
}

impl SecureBroker {
    pub fn from_env_file() -> Self {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/kafka-secure.env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: start the secure broker first (`make kafka-up-secure`)",
                path.display()
            )
        });
        let vars = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { vars }
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from build/kafka-secure.env"))
    }

    /// The plan's `KAFKA_*` variables for a host process on `listener`.
    pub fn env(&self, listener: Listener) -> Vec<(String, String)> {
        let pairs: Vec<(&str, &str)> = match listener {
            Listener::SaslSsl => [
                "KAFKA_BROKERS",
                "KAFKA_SSL_ENABLED",
                "KAFKA_SSL_CA_LOCATION",
                "KAFKA_SASL_MECHANISM",
                "KAFKA_SASL_USERNAME",
                "KAFKA_SASL_PASSWORD",
            ]
            .iter()
            .map(|k| (*k, self.var(k)))
            .collect(),
            Listener::Mtls => vec![
                ("KAFKA_BROKERS", self.var("KAFKA_MTLS_BROKERS")),
                ("KAFKA_SSL_ENABLED", "true"),
                (
                    "KAFKA_SSL_CA_LOCATION",
                    self.var("KAFKA_MTLS_SSL_CA_LOCATION"),
                ),
                (
                    "KAFKA_SSL_CERT_LOCATION",
                    self.var("KAFKA_MTLS_SSL_CERT_LOCATION"),
                ),
                (
                    "KAFKA_SSL_KEY_LOCATION",
                    self.var("KAFKA_MTLS_SSL_KEY_LOCATION"),
                ),
                (
                    "KAFKA_SSL_KEY_PASSWORD",
                    self.var("KAFKA_MTLS_SSL_KEY_PASSWORD"),
                ),
            ],
        };
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Points `c` at `listener` with its credentials (through the same
    /// environment parsing a host process uses).
    pub fn apply(&self, c: &mut Config, listener: Listener) {
        let env = self.env(listener);
        let mut loaded = Config::load(None, |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .expect("the secure broker's variables load");
        let k = &mut c.kafka;
        let s = &mut loaded.kafka;
        k.brokers = std::mem::take(&mut s.brokers);
        k.ssl_enabled = s.ssl_enabled;
        k.ssl_ca_location = s.ssl_ca_location.take();
        k.ssl_cert_location = s.ssl_cert_location.take();
        k.ssl_key_location = s.ssl_key_location.take();
        k.ssl_key_password = s.ssl_key_password.take();
        k.sasl_mechanism = s.sasl_mechanism;
        k.sasl_username = s.sasl_username.take();
        k.sasl_password = s.sasl_password.take();
    }
}
