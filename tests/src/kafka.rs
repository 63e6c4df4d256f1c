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

/// The broker `make kafka-up` starts (override: `PERSONA_BUS_TEST_KAFKA`).
pub fn brokers() -> String {
    std::env::var("PERSONA_BUS_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
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
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", "lz4")
        .set("socket.nagle.disable", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// Sends one event to `topic` as device `device` would (key = project,
/// the plan's headers); retries while the local queue is full.
pub fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, e: &Event, device: &str) {
    let value = serde_json::to_vec(&WireEvent::from_event(e)).expect("encode");
    let mut hs = OwnedHeaders::new();
    for (k, v) in headers(e, device) {
        hs = hs.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut record = BaseRecord::to(topic)
        .key(e.project_id.as_bytes())
        .payload(&value)
        .headers(hs);
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
