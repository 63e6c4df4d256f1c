//! Traces (issue 14): two host processes on one Kafka, each exporting over
//! OTLP to a real OpenTelemetry Collector. An event published on device A
//! with the caller's `traceparent` is one trace in the collector's output:
//! A's publish, dispatch, handler and commit spans, B's dispatch of the
//! same event (a child of A's publish span, through the Kafka record), and
//! the dispatch of the event a handler published (a child of that
//! handler's span).

use crate::consume::{env_for, spawn_host, topics_toml, wait_for_topic};
use persona_bus_tests::kafka::{self as k, free_port};
use persona_bus_tests::otel::{Collector, SpanRecord};
use persona_bus_tests::{Sandbox, guests, wait_for};
use std::time::Duration;

#[test]
#[ignore = "needs services: make test"]
fn one_trace_follows_an_event_across_two_devices() {
    let collector = Collector::start();
    let prefix = k::prefix();
    let sb = Sandbox::new();
    sb.install_shipped("router", guests::ROUTER, guests::ROUTER_MANIFEST);
    sb.install_shipped("counter", guests::COUNTER, guests::COUNTER_MANIFEST);
    let toml = topics_toml(&sb, &prefix, "");
    let port_a = free_port();
    let device = |name: &str, group: &str| {
        let mut env = env_for(&prefix, name);
        // Each device in a group of its own: both handle every event.
        env.retain(|(k, _)| k != "KAFKA_CONSUMER_GROUP");
        env.extend(
            [
                ("KAFKA_CONSUMER_GROUP", format!("{prefix}.{group}")),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
                ("OTEL_SERVICE_NAME", name.to_owned()),
                ("OTEL_TRACES_SAMPLER_ARG", "1.0".to_owned()),
            ]
            .map(|(a, b)| (a.to_owned(), b)),
        );
        env
    };
    let mut env_a = device("device-a", "processor-a");
    env_a.push((
        "PERSONA_BUS_HTTP_ADDR".into(),
        format!("127.0.0.1:{port_a}"),
    ));
    let _a = spawn_host(&sb, &sb.root.path().join("a"), &toml, &env_a);
    let _b = spawn_host(
        &sb,
        &sb.root.path().join("b"),
        &toml,
        &device("device-b", "processor-b"),
    );
    wait_for_topic(&format!("{prefix}.events"));
    let base = format!("http://127.0.0.1:{port_a}");
    wait_for(Duration::from_secs(30), "device A to be ready", || {
        ureq::get(format!("{base}/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });
    // The caller's own trace: the event joins it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let mut r = ureq::post(format!("{base}/api/personas/events"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .send_json(serde_json::json!({
            "event_type": "task_created",
            "source_type": "system",
            "project_id": "traced",
            "payload": {"title": "follow me"},
        }))
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );

    let find = |spans: &[SpanRecord], service: &str, name: &str| -> Vec<SpanRecord> {
        spans
            .iter()
            .filter(|s| s.trace_id == trace && s.service == service && s.name == name)
            .cloned()
            .collect()
    };
    let mut spans = Vec::new();
    wait_for(Duration::from_secs(60), "the trace on both devices", || {
        spans = collector.spans();
        let routed = spans
            .iter()
            .any(|s| s.trace_id == trace && s.name == "dispatch persona_action");
        !find(&spans, "device-b", "dispatch task_created").is_empty()
            && !find(&spans, "device-a", "commit").is_empty()
            && !find(&spans, "device-b", "commit").is_empty()
            && routed
    });
    let publish = find(&spans, "device-a", "publish task_created");
    assert_eq!(publish.len(), 1, "{spans:#?}");
    assert_eq!(publish[0].parent, caller, "the caller's span is the parent");
    for device in ["device-a", "device-b"] {
        let dispatch = find(&spans, device, "dispatch task_created");
        assert_eq!(dispatch.len(), 1, "{device}: {spans:#?}");
        assert_eq!(
            dispatch[0].parent, publish[0].span_id,
            "{device} dispatches as a child of A's publish (via Kafka)"
        );
        let router = find(&spans, device, "handler router");
        assert_eq!(router.len(), 1, "{device}: {spans:#?}");
        assert_eq!(router[0].parent, dispatch[0].span_id);
        assert_eq!(
            router[0].attr("handler.outcome").as_deref(),
            Some("completed")
        );
        let commits = find(&spans, device, "commit");
        assert!(
            commits.iter().any(|c| c.parent == dispatch[0].span_id),
            "{device}: a commit span under the dispatch: {spans:#?}"
        );
    }
    // The event the router published carries its handler span's context.
    let routers: Vec<String> = spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == "handler router")
        .map(|s| s.span_id.clone())
        .collect();
    let action = spans
        .iter()
        .find(|s| s.trace_id == trace && s.name == "dispatch persona_action")
        .unwrap();
    assert!(routers.contains(&action.parent), "{spans:#?}");
    assert_eq!(action.attr("event.chain_depth").as_deref(), Some("1"));
}
