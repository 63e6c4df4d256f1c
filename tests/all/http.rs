//! The HTTP API against a real bus (real SQLite, real handlers): every
//! route's shape, each bad input's status and message, webhook signatures,
//! the bearer token, health, readiness, metrics and the event stream.

use hmac::{Hmac, Mac};
use persona_bus::Bus;
use persona_bus::config::{Config, WebhookTrigger};
use persona_bus_tests::{Sandbox, guests, wait_for};
use serde_json::{Value, json};
use sha2::Sha256;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::Duration;

/// A bus with the API on an ephemeral port; stopped on drop.
pub(crate) struct Server {
    pub(crate) base: String,
    bus: Arc<Bus>,
    _rt: tokio::runtime::Runtime,
    _sb: Sandbox,
}

impl Server {
    pub(crate) fn start(sb: Sandbox, edit: impl FnOnce(&mut Config)) -> Self {
        let mut c = sb.config();
        c.http.webhooks.insert(
            "github".into(),
            WebhookTrigger {
                secret: "gh-secret".into(),
                enabled: true,
                project_id: Some("repo".into()),
            },
        );
        c.http.webhooks.insert(
            "stripe".into(),
            WebhookTrigger {
                secret: "stripe-secret".into(),
                enabled: true,
                project_id: None,
            },
        );
        c.http.webhooks.insert(
            "old".into(),
            WebhookTrigger {
                secret: "old-secret".into(),
                enabled: false,
                project_id: None,
            },
        );
        c.http.max_body_bytes = 64 * 1024;
        edit(&mut c);
        c.validate().unwrap();
        let bus = Arc::new(Bus::open(c).unwrap());
        bus.start().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(persona_bus::api::bind("127.0.0.1:0")).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(persona_bus::api::serve(
            bus.clone(),
            listener,
            std::future::pending(),
        ));
        Self {
            base,
            bus,
            _rt: rt,
            _sb: sb,
        }
    }

    pub(crate) fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into()
    }

    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        let mut r = Self::agent()
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let agent = Self::agent();
        let mut req = match method {
            "POST" => agent.post(&url),
            "PUT" => agent.put(&url),
            _ => panic!("{method}"),
        }
        .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send(body).unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn delete(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = Self::agent().delete(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.call().unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn audit_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.install_shipped("audit", guests::AUDIT, guests::AUDIT_MANIFEST);
    sb
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn events_publish_and_list_with_the_original_shapes_and_clear_errors() {
    let s = Server::start(audit_sandbox(), |_| {});
    let body = json!({"event_type": "task_created", "source_type": "system", "source_id": "x",
                      "project_id": "p1", "payload": {"title": "hi"}});
    let (code, v) = s.send("POST", "/api/personas/events", &body.to_string(), &[]);
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["ok"], true);
    let id = v["event_id"].as_str().unwrap().to_owned();
    persona_bus_tests::wait_final(&s.bus, &id, Duration::from_secs(10));

    let (code, text) = s.get("/api/personas/events?limit=10&event_type=task_created");
    assert_eq!(code, 200);
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["pendingCount"], 0);
    let e = &page["events"][0];
    assert_eq!(
        (e["id"].as_str(), e["status"].as_str()),
        (Some(id.as_str()), Some("completed"))
    );
    for field in [
        "project_id",
        "event_type",
        "source_type",
        "source_id",
        "target_persona_id",
        "payload",
        "error_message",
        "processed_at",
        "created_at",
    ] {
        assert!(e.get(field).is_some(), "event lacks {field}: {e}");
    }
    assert_eq!(
        page["kafka"]["enabled"], false,
        "the plan's Kafka health in GET"
    );

    // Each bad input: its status and a message that says what is wrong.
    let cases: [(&str, u16, &str); 5] = [
        (
            r#"{"source_type":"system"}"#,
            400,
            "`event_type` is required",
        ),
        (r#"{"event_type":"x"}"#, 400, "`source_type` is required"),
        (r#"{"event_type":"x","#, 400, "not valid JSON"),
        (
            r#"{"event_type":"bad type!","source_type":"s"}"#,
            400,
            "event_type",
        ),
        (
            r#"{"event_type":"x","source_type":"s","surprise":1}"#,
            400,
            "surprise",
        ),
    ];
    for (body, code, message) in cases {
        let (got, v) = s.send("POST", "/api/personas/events", body, &[]);
        assert_eq!(got, code, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(message),
            "{body}: {v}"
        );
    }
    let big =
        json!({"event_type": "x", "source_type": "s", "payload": "a".repeat(100_000)}).to_string();
    let (code, _) = s.send("POST", "/api/personas/events", &big, &[]);
    assert_eq!(code, 413);
    let (code, text) = s.get("/api/personas/events?status=bogus");
    assert_eq!(code, 400, "{text}");
    assert_eq!(
        s.bus
            .store()
            .list_events(&Default::default())
            .unwrap()
            .total,
        1,
        "nothing stored by bad requests"
    );
}

#[test]
fn subscriptions_crud() {
    let s = Server::start(audit_sandbox(), |_| {});
    let (code, v) = s.send(
        "POST",
        "/api/personas/events/subscriptions",
        r#"{"persona_id":"audit","event_type":"deploy","source_filter":"ci-*"}"#,
        &[],
    );
    assert_eq!(code, 201, "{v}");
    let id = v["subscription"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["subscription"]["enabled"], true);
    let (_, text) = s.get("/api/personas/events/subscriptions");
    let list: Value = serde_json::from_str(&text).unwrap();
    assert!(
        list["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str())
    );

    let (code, v) = s.send(
        "PUT",
        &format!("/api/personas/events/subscriptions/{id}"),
        r#"{"persona_id":"audit","event_type":"deploy","enabled":false}"#,
        &[],
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["subscription"]["enabled"], false);
    let (code, _) = s.send(
        "PUT",
        "/api/personas/events/subscriptions/sub_nope",
        r#"{"persona_id":"audit","event_type":"deploy"}"#,
        &[],
    );
    assert_eq!(code, 404);
    let (code, v) = s.send(
        "POST",
        "/api/personas/events/subscriptions",
        r#"{"event_type":"deploy"}"#,
        &[],
    );
    assert_eq!(
        (code, v["error"].as_str().unwrap().contains("persona_id")),
        (400, true),
        "{v}"
    );
    let (code, v) = s.send(
        "POST",
        "/api/personas/events/subscriptions",
        r#"{"persona_id":"audit","event_type":"x","source_filter":{"nonsense":true}}"#,
        &[],
    );
    assert_eq!(code, 400, "{v}");

    let (code, _) = s.delete(&format!("/api/personas/events/subscriptions/{id}"), &[]);
    assert_eq!(code, 200);
    let (code, _) = s.delete(&format!("/api/personas/events/subscriptions/{id}"), &[]);
    assert_eq!(code, 404);
}

#[test]
fn webhooks_need_the_right_signature() {
    let s = Server::start(audit_sandbox(), |_| {});
    let body = br#"{"action":"opened","number":7}"#;
    let post = |path: &str, sig: Option<&str>| {
        let headers: Vec<(&str, &str)> = sig
            .map(|g| vec![("x-hub-signature-256", g)])
            .unwrap_or_default();
        s.send("POST", path, std::str::from_utf8(body).unwrap(), &headers)
    };
    let good = sign("gh-secret", body);
    let (code, v) = post("/api/personas/webhooks/github", Some(&good));
    assert_eq!(code, 202, "{v}");
    let id = v["event_id"].as_str().unwrap().to_owned();
    let e = persona_bus_tests::wait_final(&s.bus, &id, Duration::from_secs(10));
    assert_eq!(
        (e.event_type.as_str(), e.project_id.as_str()),
        ("webhook_received", "repo")
    );
    let payload: Value = serde_json::from_str(&e.payload).unwrap();
    assert_eq!(payload["trigger_id"], "github");
    // The original bus's payload: {trigger_id, headers, body}, ours beside.
    assert_eq!(payload["body"]["number"], 7, "{payload}");
    assert!(payload["headers"].is_object(), "{payload}");
    assert_eq!(payload["webhook_id"], id.as_str(), "{payload}");
    assert!(payload["received_at"].is_string(), "{payload}");

    let stripe_sig = sign("stripe-secret", body);
    let wrong = [
        ("/api/personas/webhooks/github", None, 401, "missing"),
        (
            "/api/personas/webhooks/github",
            Some("sha256=00ff"),
            401,
            "does not match",
        ),
        (
            "/api/personas/webhooks/github",
            Some("md5=abc"),
            401,
            "sha256=",
        ),
        // The same body signed for another trigger is not valid here.
        (
            "/api/personas/webhooks/github",
            Some(stripe_sig.as_str()),
            401,
            "does not match",
        ),
        (
            "/api/personas/webhooks/nobody",
            Some(good.as_str()),
            404,
            "no webhook trigger",
        ),
        (
            "/api/personas/webhooks/old",
            Some(good.as_str()),
            403,
            "disabled",
        ),
    ];
    for (path, sig, code, message) in wrong {
        let (got, v) = post(path, sig);
        assert_eq!(got, code, "{path} {sig:?}: {v}");
        assert!(v["error"].as_str().unwrap().contains(message), "{v}");
    }
    let (code, _) = post("/api/personas/webhooks/stripe", Some(&stripe_sig));
    assert_eq!(code, 202);
    wait_for(Duration::from_secs(5), "two webhooks stored", || {
        persona_bus_tests::events_of_type(&s.bus, "webhook_received").total == 2
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        persona_bus_tests::events_of_type(&s.bus, "webhook_received").total,
        2,
        "refused webhooks published nothing"
    );
}

#[test]
fn a_configured_token_guards_mutating_routes() {
    let s = Server::start(audit_sandbox(), |c| c.http.token = Some("t0ken".into()));
    let body = r#"{"event_type":"x","source_type":"s"}"#;
    let (code, v) = s.send("POST", "/api/personas/events", body, &[]);
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Bearer"));
    let (code, _) = s.send(
        "POST",
        "/api/personas/events",
        body,
        &[("authorization", "Bearer wrong")],
    );
    assert_eq!(code, 401);
    let (code, _) = s.send(
        "POST",
        "/api/personas/events",
        body,
        &[("authorization", "Bearer t0ken")],
    );
    assert_eq!(code, 201);
    let (code, _) = s.get("/api/personas/events");
    assert_eq!(code, 200, "reading needs no token");
    // Webhooks are checked by signature, not by the token.
    let hook = b"{}";
    let (code, _) = s.send(
        "POST",
        "/api/personas/webhooks/github",
        "{}",
        &[("x-hub-signature-256", &sign("gh-secret", hook))],
    );
    assert_eq!(code, 202);
    // And a host never listens beyond loopback without one.
    let mut c = Config::default();
    c.http.addr = "0.0.0.0:8080".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("needs a bearer token"), "{err}");
}

#[test]
fn health_ready_metrics_handlers_and_dead_letters() {
    let sb = audit_sandbox();
    sb.install(
        "trap",
        guests::TRAP,
        "[[subscriptions]]\nevent_type = \"boom\"\n[retry]\nmax_attempts = 1",
    );
    let s = Server::start(sb, |_| {});
    let (code, text) = s.get("/health");
    assert_eq!((code, text.contains("\"ok\"")), (200, true));
    let (code, text) = s.get("/ready");
    let ready: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(code, 200, "{ready}");
    assert_eq!(
        (ready["ready"].as_bool(), ready["sqlite_writable"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(ready["handlers_loaded"], 2);
    assert_eq!(ready["breaker"]["breaker"], "closed");

    let (_, v) = s.send(
        "POST",
        "/api/personas/events",
        r#"{"event_type":"boom","source_type":"s"}"#,
        &[],
    );
    let id = v["event_id"].as_str().unwrap().to_owned();
    persona_bus_tests::wait_final(&s.bus, &id, Duration::from_secs(10));
    let (_, text) = s.get("/metrics");
    for needle in [
        "persona_bus_events_published_total 1",
        "persona_bus_events_handled_total{outcome=\"dead_letter\"} 1",
        "persona_bus_handler_runs_total{handler=\"trap\",outcome=\"trap\"} 1",
        "persona_bus_handler_duration_seconds_bucket{handler=\"audit\"",
        "persona_bus_dead_letters 1",
        "persona_bus_breaker_state 0",
        "persona_bus_handler_reloads_total 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    let (_, text) = s.get("/api/personas/handlers");
    let h: Value = serde_json::from_str(&text).unwrap();
    let trap = h["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "trap")
        .unwrap()
        .clone();
    assert_eq!(
        (trap["version"].as_str(), trap["errors"].as_u64()),
        (Some("1"), Some(1)),
        "{trap}"
    );

    let (_, text) = s.get("/api/personas/dead-letters");
    let d: Value = serde_json::from_str(&text).unwrap();
    let letter = d["dead_letters"][0].clone();
    assert_eq!(letter["event_id"], id.as_str());
    let path = format!("/api/personas/dead-letters/{}/retry", letter["id"]);
    let (code, v) = s.send("POST", &path, "", &[]);
    assert_eq!(
        (code, v["event_id"].as_str()),
        (200, Some(id.as_str())),
        "{v}"
    );
    let (code, _) = s.send("POST", &path, "", &[]);
    assert_eq!(code, 404, "a letter is retried once");
    let (code, _) = s.send("POST", "/api/personas/dead-letters/abc/retry", "", &[]);
    assert_eq!(code, 400);
    let (code, text) = s.get("/");
    assert!(
        code == 200 && text.contains("<title>persona-bus</title>") && !text.contains("http://cdn")
    );
}

#[test]
fn the_stream_sends_the_initial_batch_then_new_events_and_status_changes() {
    let s = Server::start(audit_sandbox(), |_| {});
    let (_, v) = s.send(
        "POST",
        "/api/personas/events",
        r#"{"event_type":"before","source_type":"s"}"#,
        &[],
    );
    let before = v["event_id"].as_str().unwrap().to_owned();
    let resp = Server::agent()
        .get(format!("{}/api/personas/events/stream", s.base))
        .call()
        .unwrap();
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
    let mut next_event = || {
        let mut kind = String::new();
        loop {
            let line = lines.next().unwrap().unwrap();
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                return (
                    kind.clone(),
                    serde_json::from_str::<Value>(data).unwrap_or(Value::Null),
                );
            }
        }
    };
    let (kind, init) = next_event();
    assert_eq!(kind, "init");
    assert_eq!(init["events"][0]["id"], before.as_str());
    let (_, v) = s.send(
        "POST",
        "/api/personas/events",
        r#"{"event_type":"after","source_type":"s"}"#,
        &[],
    );
    let after = v["event_id"].as_str().unwrap().to_owned();
    let mut saw_published = false;
    let mut saw_completed = false;
    while !(saw_published && saw_completed) {
        let (kind, data) = next_event();
        match kind.as_str() {
            "published" if data["event"]["id"] == after.as_str() => saw_published = true,
            "status" if data["event_id"] == after.as_str() && data["status"] == "completed" => {
                saw_completed = true
            }
            _ => {}
        }
    }
}
