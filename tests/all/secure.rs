//! Kafka over TLS and SASL, against the secure broker `make kafka-up-secure`
//! starts beside the plaintext one: SASL_SSL with SCRAM-SHA-512 on
//! 127.0.0.1:9096 and mutual TLS on 127.0.0.1:9097, credentials in
//! `build/kafka-secure.env`. Every test uses its own random topic names.

use crate::cli_with_env;
use crate::consume::{completed, topics_toml};
use persona_bus::config::Config;
use persona_bus::{Bus, BusError};
use persona_bus_tests::kafka::{self as k, Listener, SecureBroker};
use persona_bus_tests::{Sandbox, wait_for};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A phase-2 config (Kafka is the source) on `listener`, on `prefix`'s
/// topics, as device `device`.
fn secure_config(sb: &Sandbox, prefix: &str, device: &str, listener: Listener) -> Config {
    let mut c = sb.config();
    k::consuming(&mut c, prefix);
    c.kafka.client_id = device.into();
    SecureBroker::from_env_file().apply(&mut c, listener);
    c
}

/// The variables a host process or CLI needs for `prefix`'s group on
/// `listener` (topic names come from [`topics_toml`]).
fn secure_env(listener: Listener, prefix: &str, device: &str) -> Vec<(String, String)> {
    let mut env = SecureBroker::from_env_file().env(listener);
    env.extend(
        [
            ("KAFKA_ENABLED", "true".to_owned()),
            ("KAFKA_CLIENT_ID", device.to_owned()),
            ("KAFKA_CONSUMER_GROUP", format!("{prefix}.processor")),
            ("KAFKA_AUTO_OFFSET_RESET", "earliest".into()),
        ]
        .map(|(a, b)| (a.to_owned(), b)),
    );
    env
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

const EVENTS: usize = 20;

#[test]
#[ignore = "needs services: make test"]
fn sasl_ssl_carries_dual_write_consume_replay_and_status() {
    round_trip(Listener::SaslSsl);
}

#[test]
#[ignore = "needs services: make test"]
fn mutual_tls_carries_dual_write_consume_replay_and_status() {
    round_trip(Listener::Mtls);
}

/// Device A writes both (phase 1) over `listener`; device B, consuming
/// from Kafka (phase 2) over the same listener, reads A's events, then
/// publishes its own and handles each once from Kafka;
/// `status` and `replay` work there too.
fn round_trip(listener: Listener) {
    let prefix = k::prefix();
    let publish = |bus: &Bus, event_type: &str| -> Vec<String> {
        (0..EVENTS)
            .map(|i| {
                bus.publish(persona_bus::NewEvent {
                    project_id: Some(format!("p{}", i % 3)),
                    event_type: event_type.into(),
                    source_type: "system".into(),
                    ..Default::default()
                })
                .unwrap()
                .id
            })
            .collect()
    };

    let a = Sandbox::new();
    a.install_slow(0);
    let mut config = secure_config(&a, &prefix, "device-a", listener);
    config.kafka.dual_write = true;
    let bus = Bus::open(config).unwrap();
    bus.start().unwrap();
    // A type B's handler does not take: whether A's relay sent an event
    // before or after A handled it (dual write races the two), B's count
    // is its own events only.
    let from_a = publish(&bus, "note");
    wait_for(
        Duration::from_secs(60),
        "device A to handle its events and relay them to Kafka",
        || bus.store().unfinished().unwrap() == 0 && bus.store().outbox_len().unwrap() == 0,
    );
    assert_eq!(bus.store().status_counts().unwrap().len(), 1, "all final");
    bus.shutdown();

    let b = Sandbox::new();
    b.install_slow(0);
    let config = secure_config(&b, &prefix, "device-b", listener);
    let bus = Bus::open(config.clone()).unwrap();
    bus.start().unwrap();
    wait_for(
        Duration::from_secs(60),
        "device B to read A's events from Kafka",
        || from_a.iter().all(|id| bus.store().event(id).is_ok()),
    );
    publish(&bus, "work");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let handled = bus.store().state_counter("slow", "count").unwrap();
        let queued = bus.store().outbox_len().unwrap();
        if handled == EVENTS as i64 && queued == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "device B, 60 s after publishing: {handled} of {EVENTS} handled, {queued} still queued for Kafka; source: {:?}",
            bus.source().status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A healthy broker behind TLS and SASL is no outage.
    let source = bus.source().status();
    assert_eq!(
        source.transitions, 0,
        "the breaker moved: {:?}",
        source.history
    );
    bus.shutdown();
    drop(bus); // releases the data directory's lock

    let env = secure_env(listener, &prefix, "device-b");
    let toml = topics_toml(&b, &prefix, "");
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", toml.to_str().unwrap()];
        all.extend_from_slice(args);
        cli_with_env(&b, &all, &pairs(&env))
    };
    let (ok, out, err) = cli(&["status", "--json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["kafka"]["reachable"], true, "{status}");

    let (ok, out, err) = cli(&["replay", "--to", "earliest"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("will read {} records again", 2 * EVENTS)),
        "{out}"
    );

    // Read again over TLS, and skipped by the ledger: still once each.
    let bus = Bus::open(config).unwrap();
    let mut notices = bus.subscribe();
    bus.start().unwrap();
    let mut resolved = 0;
    wait_for(Duration::from_secs(60), "the replayed records", || {
        while let Ok(n) = notices.try_recv() {
            resolved += matches!(n, persona_bus::Notice::Resolved { .. }) as usize;
        }
        resolved >= EVENTS
    });
    bus.shutdown();
    let store = persona_bus::store::Store::open(&b.data_dir()).unwrap();
    assert_eq!(store.state_counter("slow", "count").unwrap(), EVENTS as i64);
}

/// A wrong password, a CA that did not sign the broker's certificate, and a
/// broker address the certificate does not name: each is one clear error
/// naming the brokers and the cause, at start with `KAFKA_REQUIRED` and in
/// `status`; without it SQLite takes over and nothing is lost.
#[test]
#[ignore = "needs services: make test"]
fn bad_credentials_or_tls_are_named_and_sqlite_takes_over() {
    let secure = SecureBroker::from_env_file();
    let other_ca = secure.var("KAFKA_TEST_OTHER_CA_LOCATION").to_owned();
    type Breakage = Box<dyn Fn(&mut Vec<(String, String)>)>;
    let set = |name: &'static str, value: String| -> Breakage {
        Box::new(move |env: &mut Vec<(String, String)>| {
            env.retain(|(n, _)| n != name);
            env.push((name.to_owned(), value.clone()));
        })
    };
    let cases: [(&str, Breakage, &str, &str); 3] = [
        (
            "a wrong password",
            set("KAFKA_SASL_PASSWORD", "not-the-password".into()),
            "refused this client's credentials",
            "127.0.0.1:9096",
        ),
        (
            "a CA that did not sign the broker's certificate",
            set("KAFKA_SSL_CA_LOCATION", other_ca),
            "TLS to the Kafka brokers",
            "127.0.0.1:9096",
        ),
        (
            "a broker name its certificate does not carry",
            set("KAFKA_BROKERS", "localhost:9096".into()),
            "TLS to the Kafka brokers",
            "localhost:9096",
        ),
    ];
    for (what, breakage, cause, brokers) in cases {
        let sb = Sandbox::new();
        sb.install_slow(0);
        let prefix = k::prefix();
        let mut env = secure_env(Listener::SaslSsl, &prefix, "device-bad");
        breakage(&mut env);
        let toml = topics_toml(&sb, &prefix, "");

        // `status` names the cause.
        let (ok, out, err) = cli_with_env(
            &sb,
            &["--config", toml.to_str().unwrap(), "status", "--json"],
            &pairs(&env),
        );
        assert!(ok, "{what}: {err}");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        let error = status["kafka"]["error"].as_str().unwrap_or_default();
        assert_eq!(status["kafka"]["reachable"], false, "{what}: {status}");
        assert!(
            error.contains(cause) && error.contains(brokers),
            "{what}: {error}"
        );

        // So does a host that must have Kafka, and it does not start.
        let mut required = env.clone();
        required.push(("KAFKA_REQUIRED".into(), "true".into()));
        let loaded = Config::load(Some(&toml), |key| {
            required
                .iter()
                .find(|(n, _)| n == key)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        let mut config = sb.config();
        config.kafka = loaded.kafka;
        let err = Bus::open(config.clone()).err().expect("must not start");
        assert!(matches!(err, BusError::Kafka(_)), "{what}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(cause) && text.contains(brokers),
            "{what}: {text}"
        );

        // Without KAFKA_REQUIRED the host runs on SQLite: nothing is lost.
        config.kafka.required = false;
        config.kafka.auto_offset_reset = persona_bus::config::OffsetReset::Earliest;
        let bus = Bus::open(config).unwrap();
        bus.start().unwrap();
        for i in 0..EVENTS {
            bus.publish(persona_bus::NewEvent {
                project_id: Some(format!("p{}", i % 3)),
                event_type: "work".into(),
                source_type: "system".into(),
                ..Default::default()
            })
            .unwrap();
        }
        wait_for(
            Duration::from_secs(30),
            "SQLite to handle every event",
            || completed(bus.store()) == EVENTS as u64,
        );
        assert_eq!(
            bus.store().state_counter("slow", "count").unwrap(),
            EVENTS as i64,
            "{what}: each once"
        );
        assert_eq!(
            bus.store().outbox_len().unwrap(),
            EVENTS as u64,
            "{what}: kept for Kafka"
        );
        bus.shutdown();
    }
}

/// The SASL password and the client key's password appear nowhere a user
/// or an operator looks: the host's log (at debug), `status` (text and
/// JSON), `/metrics`, `/ready`, `/health`, the dashboard and the API pages;
/// with the right secrets and with a wrong one (error paths quote more).
#[test]
#[ignore = "needs services: make test"]
fn secrets_appear_in_no_log_status_metric_or_page() {
    /// A variable to set in place of the broker file's value.
    type Swap = Option<(&'static str, &'static str)>;
    let runs: [(&str, Listener, Swap); 3] = [
        ("SASL_SSL", Listener::SaslSsl, None),
        (
            "SASL_SSL, a wrong password",
            Listener::SaslSsl,
            Some(("KAFKA_SASL_PASSWORD", "wrong-Pa55word-that-must-not-leak")),
        ),
        ("mutual TLS", Listener::Mtls, None),
    ];
    for (what, listener, swap) in runs {
        let sb = Sandbox::new();
        sb.install_slow(0);
        let prefix = k::prefix();
        let mut env = secure_env(listener, &prefix, "device-secret");
        if let Some((name, value)) = swap {
            env.retain(|(n, _)| n != name);
            env.push((name.into(), value.into()));
        }
        let secrets: Vec<String> = env
            .iter()
            .filter(|(n, _)| n.contains("PASSWORD"))
            .map(|(_, v)| v.clone())
            .collect();
        assert!(!secrets.is_empty(), "{what}: a secret to look for");
        let toml = topics_toml(&sb, &prefix, "");
        let port = k::free_port();
        let log = sb.root.path().join("host.log");
        let host = crate::Host(
            Command::new(crate::host_binary())
                .arg("--data-dir")
                .arg(sb.data_dir())
                .arg("--config")
                .arg(&toml)
                .args(["run", "--demo", "--handlers"])
                .arg(sb.handlers_dir())
                .envs(pairs(&env))
                .env("RUST_LOG", "debug")
                .env("PERSONA_BUS_HTTP_ADDR", format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let get = |path: &str| -> Option<String> {
            agent
                .get(&format!("http://127.0.0.1:{port}{path}"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
        };
        wait_for(Duration::from_secs(60), "the host's HTTP API", || {
            get("/health").is_some()
        });
        // Let it talk to the broker (or fail to) for a while.
        std::thread::sleep(Duration::from_secs(4));
        let mut seen: Vec<(String, String)> = [
            "/",
            "/health",
            "/ready",
            "/metrics",
            "/api/personas/handlers",
            "/api/personas/events",
        ]
        .iter()
        .map(|p| (p.to_string(), get(p).unwrap_or_default()))
        .collect();
        for args in [&["status"][..], &["status", "--json"]] {
            let mut all = vec!["--config", toml.to_str().unwrap()];
            all.extend_from_slice(args);
            let (_, out, err) = cli_with_env(&sb, &all, &pairs(&env));
            seen.push((format!("persona-bus {}", args.join(" ")), out + &err));
        }
        drop(host);
        seen.push((
            "the host's log".into(),
            std::fs::read_to_string(&log).unwrap(),
        ));
        let (_, metrics) = &seen[3];
        assert!(
            metrics.contains("persona_bus_"),
            "{what}: /metrics answered: {metrics}"
        );
        let (_, logged) = seen.last().unwrap();
        assert!(
            logged.contains(&env.iter().find(|(n, _)| n == "KAFKA_BROKERS").unwrap().1),
            "{what}: the log names the brokers (so it was captured)"
        );
        for (place, text) in &seen {
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{what}: a secret appears in {place}"
                );
            }
        }
    }
}

/// The other SASL mechanisms the host offers, against the same listener
/// (its broker also enables them): `status` reaches the broker with each,
/// and PLAIN stays the default for the plan's two variables.
#[test]
#[ignore = "needs services: make test"]
fn scram_sha_256_and_plain_authenticate_too() {
    let sb = Sandbox::new();
    for mechanism in ["SCRAM-SHA-256", "PLAIN", ""] {
        let mut env = secure_env(Listener::SaslSsl, &k::prefix(), "device-mech");
        env.retain(|(n, _)| n != "KAFKA_SASL_MECHANISM");
        if !mechanism.is_empty() {
            env.push(("KAFKA_SASL_MECHANISM".into(), mechanism.into()));
        }
        let (ok, out, err) = cli_with_env(&sb, &["status", "--json"], &pairs(&env));
        assert!(ok, "{mechanism}: {err}");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            status["kafka"]["reachable"], true,
            "{mechanism:?} (empty: the default, PLAIN): {status}"
        );
    }
}
