//! Alerting from the host itself (issue 14): a rule fires to a real local
//! webhook receiver (an HTTP server on a socket of this test), signed; it is
//! retried while the receiver is down; a host killed with SIGKILL and
//! started again does not announce it twice; it resolves once.

use crate::consume::spawn_host;
use crate::{Host, cli};
use hmac::{Hmac, Mac};
use persona_bus_tests::kafka::free_port;
use persona_bus_tests::{Sandbox, guests, wait_for};
use serde_json::Value;
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "alert-secret";

/// One request the receiver took: lower-cased headers and the body.
#[derive(Clone, Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A webhook receiver on `port`: answers 200 to every POST and keeps it.
fn receive_on(port: u16) -> Arc<Mutex<Vec<Received>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap(); // request line
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.trim().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            keep.lock().unwrap().push(Received {
                headers,
                body: String::from_utf8(body).unwrap(),
            });
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    got
}

/// The host process on the sandbox's folders (its log: `data.log`).
fn start_host(sb: &Sandbox, config: &std::path::Path) -> Host {
    spawn_host(sb, &sb.data_dir(), config, &[])
}

fn listing(sb: &Sandbox) -> Value {
    let (ok, out, err) = cli(sb, &["alerts", "list", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn an_alert_is_signed_retried_announced_once_across_a_restart_and_resolved_once() {
    let sb = Sandbox::new();
    sb.install(
        "trap",
        guests::TRAP,
        "[[subscriptions]]\nevent_type = \"boom\"\n[retry]\nmax_attempts = 1",
    );
    let port = free_port();
    let config = sb.root.path().join("bus.toml");
    std::fs::write(
        &config,
        format!(
            r#"[poll]
active_interval_ms = 10
idle_interval_ms = 50
[runtime]
cache_dir = "{cache}"
[alerts]
interval_ms = 200
retry_base_ms = 300
retry_max_ms = 1000
[[alerts.rules]]
name = "dead-letters"
signal = "dead_letters"
above = 0
window = "12s"
severity = "critical"
[[alerts.webhooks]]
url = "http://127.0.0.1:{port}/hooks/alerts"
secret = "{SECRET}"
"#,
            cache = guests::COMPILE_CACHE
        ),
    )
    .unwrap();
    let mut host = start_host(&sb, &config);
    let (ok, _, err) = cli(
        &sb,
        &["publish", "--event-type", "boom", "--source-type", "system"],
    );
    assert!(ok, "{err}");

    // The receiver is down: the firing notice is queued and retried.
    wait_for(Duration::from_secs(30), "failed delivery attempts", || {
        let l = listing(&sb);
        l["deliveries"][0]["attempts"].as_u64().unwrap_or(0) >= 2
    });
    let l = listing(&sb);
    assert_eq!(l["alerts"][0]["status"], "firing", "{l:#}");
    assert_eq!(l["alerts"][0]["rule"], "dead-letters");
    assert_eq!(l["deliveries"][0]["state"], "retrying", "{l:#}");
    assert!(
        l["deliveries"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains(&port.to_string()),
        "{l:#}"
    );
    let (ok, text, _) = cli(&sb, &["alerts", "list"]);
    assert!(
        ok && text.contains("firing") && text.contains("1 dead letters"),
        "{text}"
    );

    // It comes up: the next retry gets through, signed.
    let got = receive_on(port);
    wait_for(Duration::from_secs(10), "the firing notice", || {
        !got.lock().unwrap().is_empty()
    });
    let first = got.lock().unwrap()[0].clone();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(first.body.as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        first.header("x-persona-bus-signature-256"),
        format!("sha256={expected}")
    );
    assert_eq!(first.header("x-persona-bus-event"), "alert.firing");
    let body = first.json();
    assert_eq!(body["status"], "firing");
    assert_eq!(body["rule"], "dead-letters");
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["value"], 1.0);
    assert!(body["summary"].as_str().unwrap().contains("1 dead letters"));

    // A crash and a restart while it still fires: not announced again.
    // (Killed once the host has recorded the delivery: killed between the
    // receiver's 200 and that record, it would send the same delivery
    // again after the restart, with the same delivery id: at least once.)
    wait_for(Duration::from_secs(10), "the delivery recorded", || {
        listing(&sb)["deliveries"][0]["state"] == "delivered"
    });
    host.0.kill().unwrap();
    host.0.wait().unwrap();
    let _host = start_host(&sb, &config);
    wait_for(Duration::from_secs(30), "the resolve notice", || {
        got.lock().unwrap().len() >= 2
    });
    // Several more evaluations: nothing else is sent.
    std::thread::sleep(Duration::from_secs(2));
    let all = got.lock().unwrap().clone();
    let kinds: Vec<_> = all.iter().map(|r| r.json()["status"].clone()).collect();
    assert_eq!(kinds, ["firing", "resolved"], "{all:#?}");
    let resolved = all[1].json();
    assert_eq!(resolved["id"], body["id"], "the same alert resolves");
    assert!(resolved["resolved_at"].is_string());
    assert_ne!(
        all[0].header("x-persona-bus-delivery"),
        all[1].header("x-persona-bus-delivery")
    );
    let l = listing(&sb);
    assert_eq!(l["alerts"][0]["status"], "resolved", "{l:#}");
    let states: Vec<_> = l["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["delivered", "delivered"], "{l:#}");
    let log = std::fs::read_to_string(sb.data_dir().with_extension("log")).unwrap();
    assert!(log.contains("alert resolved"), "{log}");
}

#[test]
fn a_broken_alert_rule_is_refused_with_its_name() {
    let sb = Sandbox::new();
    let config = sb.root.path().join("bus.toml");
    std::fs::write(
        &config,
        "[[alerts.rules]]\nname = \"lag\"\nsignal = \"consumer_lag\"\nabove = 10\nwindow = \"5m\"\n",
    )
    .unwrap();
    let (ok, _, err) = cli(
        &sb,
        &["--config", config.to_str().unwrap(), "alerts", "list"],
    );
    assert!(!ok);
    assert!(
        err.contains("alerts.rules") && err.contains("\"lag\"") && err.contains("window"),
        "{err}"
    );
}
