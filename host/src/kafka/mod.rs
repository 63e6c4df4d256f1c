//! The Kafka client layer: settings, topics, the wire format, consumer-group
//! machinery (`group`), lag and admin reads. What runs on it lives above:
//! the consumer groups are sources (`source::kafka`, `source::archive`,
//! `source::webhooks`), the relay that produces events is `outbox`.
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
pub mod config;
pub mod group;
pub mod lag;
pub mod topics;
pub mod wire;

pub use config::{check_settings, client_config};

use crate::kafka::config::KafkaConfig;
use persona_bus_model::sync::Locked;
use rdkafka::types::RDKafkaErrorCode;
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
    #[error(
        "Kafka brokers {brokers} refused this client's credentials (authentication failed): {reason}"
    )]
    Authentication { brokers: String, reason: String },
    #[error(
        "TLS to the Kafka brokers {brokers} failed: {reason} (check KAFKA_SSL_CA_LOCATION, and that the brokers' certificates name the hosts in KAFKA_BROKERS)"
    )]
    Tls { brokers: String, reason: String },
    #[error("Kafka client setup: {0}")]
    Client(String),
    #[error("creating topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

/// The last error librdkafka reported on a client: the cause behind a
/// request that only says it timed out.
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<(Option<RDKafkaErrorCode>, String)>>);

impl rdkafka::ClientContext for LastError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        *self.0.locked() = Some((error.rdkafka_error_code(), reason.to_owned()));
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// What went wrong talking to `brokers`, from librdkafka's last reported
/// error: bad credentials, a TLS failure (unknown CA, hostname mismatch, a
/// broker that does not speak TLS), or no answer at all.
fn classify(
    brokers: &str,
    waited: Duration,
    request: String,
    last: Option<(Option<RDKafkaErrorCode>, String)>,
) -> KafkaError {
    let brokers = brokers.to_owned();
    match last {
        Some((Some(RDKafkaErrorCode::Authentication), reason)) => {
            KafkaError::Authentication { brokers, reason }
        }
        Some((Some(RDKafkaErrorCode::SSL), reason)) => KafkaError::Tls { brokers, reason },
        Some((_, reason)) if reason.contains("SSL handshake") || reason.contains("certificate") => {
            KafkaError::Tls { brokers, reason }
        }
        Some((_, reason)) => KafkaError::Unreachable {
            brokers,
            waited,
            reason: format!("{request} ({reason})"),
        },
        None => KafkaError::Unreachable {
            brokers,
            waited,
            reason: request,
        },
    }
}

/// Checks that a broker answers (a metadata request), within `timeout`.
/// The error names the brokers and the cause: authentication, TLS, or no
/// answer.
pub fn probe(k: &KafkaConfig, timeout: Duration) -> Result<(), KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer<LastError> = client_config(k)
        .create_with_context(LastError::default())
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let error = match consumer.fetch_metadata(None, left.min(Duration::from_millis(500))) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        // librdkafka's own errors (the cause) arrive as events on the
        // consumer's queue: serve them into the context. At the deadline,
        // wait a moment for a cause still on its way (a slow handshake).
        let last_round = std::time::Instant::now() >= deadline;
        let _ = consumer.poll(if last_round {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        });
        let last = consumer.context().0.locked().take();
        let verdict = classify(&k.brokers, timeout, error.to_string(), last);
        // Bad credentials or TLS will not fix themselves: say so at once.
        let certain = matches!(
            verdict,
            KafkaError::Authentication { .. } | KafkaError::Tls { .. }
        );
        if certain || last_round {
            return Err(verdict);
        }
    }
}
