//! The outbox relay: produces events queued in SQLite to Kafka and marks
//! them sent once the broker has acknowledged them.

use crate::event::Event;
use crate::kafka::config::KafkaConfig;
use crate::kafka::wire::{WireEvent, framed_headers, headers};
use crate::kafka::{KafkaError, client_config};
use crate::schemas::Schemas;
use crate::store::Store;
use crate::supervisor::{StartError, StopToken, Supervisor};
use crate::switch::SourceSwitch;
use crate::wakeup::Wakeup;
use persona_bus_model::sync::Locked;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Events read from the outbox per round.
const ROUND: usize = 1_000;
/// How often the outbox is looked at when nothing rings.
const IDLE: Duration = Duration::from_millis(200);

/// Collects delivery reports (librdkafka calls back on its own thread).
#[derive(Default)]
struct Deliveries {
    acked: Mutex<Vec<String>>,
    failed: Mutex<Vec<(String, String)>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<String>;

    fn delivery(&self, result: &DeliveryResult<'_>, event_id: Box<String>) {
        match result {
            Ok(_) => self.acked.locked().push(*event_id),
            Err((e, _)) => self.failed.locked().push((*event_id, e.to_string())),
        }
    }
}

/// Starts the relay thread; it ends when `stop()` says so, after a last
/// short flush.
pub fn start(
    store: Arc<Store>,
    k: KafkaConfig,
    wakeup: Arc<Wakeup>,
    source: Arc<SourceSwitch>,
    schemas: Arc<Schemas>,
    tasks: &Supervisor,
) -> Result<(), StartError> {
    let producer: ThreadedProducer<Deliveries> = client_config(&k)
        // Exactly-once per producer session and in order per partition.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // A produce not acknowledged by then is reported failed and stays
        // in the outbox for the next round.
        .set("message.timeout.ms", "30000")
        .create_with_context(Deliveries::default())
        .map_err(|e| StartError::new("outbox relay", KafkaError::Client(e.to_string())))?;
    let stop = tasks.token().clone();
    tasks.spawn("kafka-outbox", move || {
        relay(store, k, producer, wakeup, source, &schemas, &stop)
    })
}

fn relay(
    store: Arc<Store>,
    k: KafkaConfig,
    producer: ThreadedProducer<Deliveries>,
    wakeup: Arc<Wakeup>,
    source: Arc<SourceSwitch>,
    schemas: &Schemas,
    stop: &StopToken,
) {
    // Produced but not yet acknowledged (or failed): never sent twice. With
    // when each was produced, to tell a stale failure from a fresh one.
    let mut in_flight: HashMap<String, Instant> = HashMap::new();
    let mut retry = Retry::default();
    tracing::info!(brokers = %k.brokers, "kafka outbox relay started (dual write)");
    loop {
        let stopping = stop.is_stopped();
        settle(&store, &producer, &source, &mut in_flight, &mut retry);
        if stopping {
            let _ = producer.flush(Duration::from_secs(2));
            settle(&store, &producer, &source, &mut in_flight, &mut retry);
            break;
        }
        if let Some(left) = retry.wait_left(Instant::now()) {
            // A ring (the breaker closed: Kafka is back) ends the wait.
            if wakeup.wait(left) {
                retry.rung();
            }
            continue;
        }
        if !source.may_produce() {
            // Kafka is the source but the breaker is open: the poller
            // handles these events now. Holding them until Kafka is back
            // means they go out marked as handled (`handled-by`), so no
            // other device runs them again.
            wakeup.wait(IDLE);
            continue;
        }
        let batch = match store.outbox_pending(ROUND) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                wakeup.wait(Duration::from_secs(1));
                continue;
            }
        };
        let fresh: Vec<Event> = batch
            .into_iter()
            .filter(|e| !in_flight.contains_key(&e.id))
            .collect();
        if fresh.is_empty() {
            wakeup.wait(if in_flight.is_empty() {
                IDLE
            } else {
                Duration::from_millis(5)
            });
            continue;
        }
        for e in &fresh {
            match produce(&producer, &k, schemas, e) {
                Produced::Queued => {
                    in_flight.insert(e.id.clone(), Instant::now());
                }
                Produced::Refused => {}
                Produced::WaitForSchema => {
                    // The rest of the round waits too (order per project);
                    // the registry is asked again each second.
                    retry.hold(Instant::now(), Duration::from_secs(1));
                    break;
                }
            }
        }
        // Wait for this round's acknowledgements (batched by linger.ms).
        let _ = producer.flush(Duration::from_secs(5));
    }
    tracing::info!("kafka outbox relay stopped");
}

enum Produced {
    Queued,
    /// The producer refused it; it stays in the outbox.
    Refused,
    /// Its Avro schema id cannot be had now (the registry is down).
    WaitForSchema,
}

/// Hands one event to the producer: the payload Avro-encoded in the
/// registry framing when its type has an Avro schema (see `schemas`),
/// otherwise the JSON record.
fn produce(
    producer: &ThreadedProducer<Deliveries>,
    k: &KafkaConfig,
    schemas: &Schemas,
    e: &Event,
) -> Produced {
    let (value, hs) = match schemas.wire_value(e) {
        Ok(Some((id, framed))) => (framed, framed_headers(e, &k.client_id, id)),
        Ok(None) => match serde_json::to_vec(&WireEvent::raw_from_event(e)) {
            Ok(v) => (v, headers(e, &k.client_id)),
            Err(err) => {
                tracing::error!(event_id = %e.id, error = %err, "cannot encode event for Kafka");
                return Produced::Refused;
            }
        },
        Err(err) if err.is_transient() => {
            tracing::warn!(event_id = %e.id, error = %err, "event waits in the outbox for its schema id");
            return Produced::WaitForSchema;
        }
        Err(err) => {
            // Published before its schema existed (or with schemas off): it
            // goes as JSON, and consumers that check it dead-letter it.
            tracing::warn!(event_id = %e.id, error = %err, "payload does not fit its Avro schema; produced as JSON");
            match serde_json::to_vec(&WireEvent::raw_from_event(e)) {
                Ok(v) => (v, headers(e, &k.client_id)),
                Err(_) => return Produced::Refused,
            }
        }
    };
    let mut owned = OwnedHeaders::new_with_capacity(hs.len());
    for (key, val) in &hs {
        owned = owned.insert(Header {
            key,
            value: Some(val.as_bytes()),
        });
    }
    let mut record = BaseRecord::with_opaque_to(k.topic_for(&e.event_type), Box::new(e.id.clone()))
        .key(e.project_id.as_bytes())
        .payload(&value)
        .headers(owned);
    loop {
        match producer.send(record) {
            Ok(()) => return Produced::Queued,
            Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(50));
            }
            Err((err, _)) => {
                tracing::warn!(event_id = %e.id, error = %err, "produce refused; the event stays in the outbox");
                return Produced::Refused;
            }
        }
    }
}

/// When the relay may try again after Kafka did not take events: 500 ms
/// after the first failure, doubling to 30 s, back to none on the first
/// acknowledgement.
///
/// Invariant: a wait always ends, by its deadline or by a ring. The relay
/// once kept waiting after the deadline until something rang, so events
/// whose delivery failed after the breaker's ring stayed in the outbox.
#[derive(Debug, Default)]
struct Retry {
    /// The last wait's length (zero: no failure since the last ack).
    backoff: Duration,
    /// No round before this.
    until: Option<Instant>,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(30);

    fn failed(&mut self, now: Instant) {
        self.backoff = (self.backoff * 2).clamp(Self::FIRST, Self::MOST);
        self.until = Some(now + self.backoff);
    }

    /// Waits `wait` without raising the level (Kafka is not at fault).
    fn hold(&mut self, now: Instant, wait: Duration) {
        self.until = Some(now + wait);
    }

    /// Kafka took events: the next failure starts from the first wait.
    fn succeeded(&mut self) {
        self.backoff = Duration::ZERO;
        self.until = None;
    }

    /// Something says Kafka is back: try now, but keep the backoff level
    /// in case it is not.
    fn rung(&mut self) {
        self.until = None;
    }

    /// How long the relay still waits before its next round, if at all.
    fn wait_left(&mut self, now: Instant) -> Option<Duration> {
        let until = self.until?;
        if until > now {
            return Some(until - now);
        }
        self.until = None;
        None
    }
}

/// Records acknowledgements as sent; failures stay queued, with backoff.
fn settle(
    store: &Store,
    producer: &ThreadedProducer<Deliveries>,
    source: &SourceSwitch,
    in_flight: &mut HashMap<String, Instant>,
    retry: &mut Retry,
) {
    let ctx = producer.context();
    let acked = std::mem::take(&mut *ctx.acked.locked());
    let failed = std::mem::take(&mut *ctx.failed.locked());
    for id in &acked {
        in_flight.remove(id);
    }
    // When the newest failed produce was handed over: the breaker judges by it.
    let newest_failure = failed
        .iter()
        .filter_map(|(id, _)| in_flight.remove(id))
        .max();
    if !acked.is_empty() {
        if let Err(e) = store.outbox_sent(&acked) {
            // They were delivered; marking them fails only if SQLite does. The
            // next round sends them again and consumers dedupe by event id.
            tracing::error!(error = %e, events = acked.len(), "cannot mark outbox events sent");
        }
        retry.succeeded();
    }
    let first_error = failed.first().map(|(_, e)| e.as_str());
    source.produced(!acked.is_empty(), newest_failure.zip(first_error));
    if let Some((_, first)) = failed.first() {
        retry.failed(Instant::now());
        tracing::warn!(events = failed.len(), error = %first, retry_in = ?retry.backoff, "Kafka did not take events; they stay in the outbox");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_round_is_tried_again_once_its_wait_is_over_without_a_ring() {
        let t0 = Instant::now();
        let mut r = Retry::default();
        assert_eq!(r.wait_left(t0), None);
        r.failed(t0);
        assert_eq!(r.wait_left(t0), Some(Retry::FIRST));
        let later = t0 + Retry::FIRST;
        assert_eq!(r.wait_left(later), None, "the wait ends by itself");
        assert_eq!(r.wait_left(later), None);
    }

    #[test]
    fn waits_double_up_to_the_most_and_an_ack_starts_them_over() {
        let t0 = Instant::now();
        let mut r = Retry::default();
        let mut waits = Vec::new();
        for _ in 0..9 {
            r.failed(t0);
            waits.push(r.wait_left(t0).unwrap().as_millis());
        }
        assert_eq!(
            waits,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
            ]
        );
        r.succeeded();
        assert_eq!(r.wait_left(t0), None);
        r.failed(t0);
        assert_eq!(r.wait_left(t0), Some(Retry::FIRST));
    }

    #[test]
    fn a_ring_ends_the_wait_but_keeps_the_level() {
        let t0 = Instant::now();
        let mut r = Retry::default();
        r.failed(t0);
        r.failed(t0);
        r.rung();
        assert_eq!(r.wait_left(t0), None);
        r.failed(t0);
        assert_eq!(r.wait_left(t0), Some(Duration::from_secs(2)));
    }
}
