//! Kafka: client settings, topics, the wire format, the outbox relay that
//! produces events, and the host's consumer groups: the event processor
//! (`consumer`), the audit logger (`archive`) and the webhook ingester
//! (`webhooks`).
//!
//! SQLite stays the record: an event is stored first and queued in the
//! outbox (`persona_events.kafka_state = 'pending'`); the relay produces it
//! with an idempotent producer and marks it sent when the broker has
//! acknowledged it. A produce that is refused or times out leaves the event
//! queued, so nothing is lost while Kafka is away. A crash between the
//! broker's acknowledgement and `sent` can produce an event twice; consumers
//! deduplicate by event id (the `event-id` header), which the processed ledger
//! makes exact for handler effects.

pub mod admin;
pub mod archive;
pub mod consumer;
pub mod group;
pub mod outbox;
pub mod topics;
pub mod webhooks;
pub mod wire;

use crate::config::KafkaConfig;
use rdkafka::ClientConfig;
use std::time::Duration;

/// Why Kafka could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("no Kafka broker answered at {brokers} within {waited:?}: {reason}")]
    Unreachable {
        brokers: String,
        waited: Duration,
        reason: String,
    },
    #[error("Kafka client setup: {0}")]
    Client(String),
    #[error("creating topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

/// Client settings shared by producers, consumers and the admin client.
/// Secrets go into the librdkafka config and nowhere else (never a log line).
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", &k.client_id)
        // Small records should leave at once: batching is linger.ms's job.
        .set("socket.nagle.disable", "true");
    match (&k.sasl_username, &k.sasl_password) {
        (Some(user), Some(password)) => {
            c.set(
                "security.protocol",
                if k.ssl_enabled {
                    "SASL_SSL"
                } else {
                    "SASL_PLAINTEXT"
                },
            )
            .set("sasl.mechanisms", "PLAIN")
            .set("sasl.username", user)
            .set("sasl.password", password);
        }
        _ if k.ssl_enabled => {
            c.set("security.protocol", "SSL");
        }
        _ => {}
    }
    c
}

/// Checks that a broker answers (a metadata request), within `timeout`.
pub fn probe(k: &KafkaConfig, timeout: Duration) -> Result<(), KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = client_config(k)
        .create()
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    consumer
        .fetch_metadata(None, timeout)
        .map(|_| ())
        .map_err(|e| KafkaError::Unreachable {
            brokers: k.brokers.clone(),
            waited: timeout,
            reason: e.to_string(),
        })
}
