//! The event processor (group `vibeman-event-processor`): consumes the
//! events and actions topics and runs each record through the same
//! dispatch and commit path as the SQLite poller.
//!
//! - Order: records of one project share a partition (key = project_id) and
//!   a dispatch lane, so they run in order; lanes and partitions run in
//!   parallel on the worker pool.
//! - At-least-once, effects once: a batch's outcomes (executions, ledger,
//!   state, follow-ups, the event row) are committed to SQLite first; only
//!   then are its offsets stored for Kafka's background commit. A crash in
//!   between redelivers the batch, and the processed ledger (consulted for
//!   every Kafka record) skips handlers that already finished.
//! - Pipelined like the poller: the committer writes batch k while this
//!   thread dispatches batch k+1. A commit that fails is retried until it
//!   succeeds or the host stops (then nothing is stored and Kafka
//!   redelivers), so a later batch's offsets never cover an uncommitted one.
//! - The circuit breaker ([`crate::source::SourceSwitch`]) hears about every
//!   consumer error and idle health check; while it is open this consumer
//!   pauses and the SQLite poller handles events.

use super::group::{self, Offsets, Owned, Position};
use super::wire::{ExecutionRecord, HANDLED_BY, HANDLED_STATUS, WireEvent};
use super::{KafkaError, client_config};
use crate::bus::Inner;
use crate::dispatch::Delivery;
use crate::event::now_rfc3339;
use crate::outcome::{Resolution, Verdict};
use crate::runtime::Origin;
use crate::store::RemoteOutcome;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A record that could not be decoded: dead-lettered, never dispatched.
struct Undecodable {
    at: Position,
    error: String,
    headers: Vec<(String, String)>,
    raw: Option<Vec<u8>>,
}

/// An event its origin device already handled from SQLite: archived with
/// that device's status, not run again.
struct Handled {
    event: crate::event::Event,
    device: String,
    status: String,
}

/// One dispatched batch on its way to the committer.
struct Batch {
    resolutions: Vec<Resolution>,
    undecodable: Vec<Undecodable>,
    handled: Vec<Handled>,
    offsets: Offsets,
}

enum Decoded {
    Dispatch(Delivery, Position),
    Handled(Handled, Position),
    Undecodable(Undecodable),
}

pub(crate) fn spawn(inner: Arc<Inner>) -> Result<JoinHandle<()>, KafkaError> {
    let k = &inner.config.kafka;
    let consumer = Arc::new(group::subscribe_with(
        k,
        &k.consumer_group,
        &[&k.topics.events.name, &k.topics.actions.name],
        inner.processor_partitions.clone(),
    )?);
    // Execution records and dead letters for other devices and tools. The
    // SQLite rows are the record; these are copies, so a failed send is
    // logged, not retried forever.
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(k)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || run(inner, consumer, producer))
        .map_err(|e| KafkaError::Client(format!("cannot start the Kafka consumer: {e}")))
}

fn run(
    inner: Arc<Inner>,
    consumer: Arc<BaseConsumer<Owned>>,
    producer: ThreadedProducer<DefaultProducerContext>,
) {
    let k = inner.config.kafka.clone();
    let (to_committer, batches) = sync_channel::<Batch>(1);
    // Execution records are built and produced on a thread of their own:
    // the committer is the pipeline's bottleneck (SQLite), so it only
    // commits. A full channel waits (bounded memory), never drops.
    let (to_copier, copies) = sync_channel::<Vec<Resolution>>(2);
    let producer = Arc::new(producer);
    let copier = {
        let inner = inner.clone();
        let producer = producer.clone();
        std::thread::Builder::new()
            .name("kafka-copies".into())
            .spawn(move || {
                for resolutions in copies {
                    send_copies(&inner, &producer, &resolutions);
                }
                let _ = producer.flush(Duration::from_secs(2));
            })
    };
    let committer = {
        let inner = inner.clone();
        let consumer = consumer.clone();
        std::thread::Builder::new()
            .name("kafka-committer".into())
            .spawn(move || {
                for batch in batches {
                    if let Some(done) = commit(&inner, &consumer, &producer, batch)
                        && to_copier.send(done).is_err()
                    {
                        tracing::warn!("the execution-record thread is gone; records not sent");
                    }
                }
            })
    };
    let copier = match copier {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the execution-record thread; consumer not started");
            return;
        }
    };
    let committer = match committer {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the Kafka committer; consumer not started");
            return;
        }
    };
    tracing::info!(group = %k.consumer_group, topics = ?[&k.topics.events.name, &k.topics.actions.name], "kafka consumer started");
    let check_every = Duration::from_millis(k.breaker.failure_after_ms);
    let mut last_heard = Instant::now();
    // Records the half-open probe polled, for the next batch.
    let mut carried: Vec<Decoded> = Vec::new();
    // Size of the last batch: decides how long the next may linger.
    let mut previous = 0;
    while !inner.stopping.load(Ordering::Acquire) {
        if !inner.source.kafka_active() {
            if inner.source.tick() {
                carried = probe(&inner, &consumer, check_every);
            } else {
                let wait = inner
                    .source
                    .until_probe()
                    .unwrap_or(Duration::from_millis(200))
                    .clamp(Duration::from_millis(10), Duration::from_millis(200));
                std::thread::sleep(wait);
            }
            last_heard = Instant::now();
            continue;
        }
        let (mut records, error) = group::poll_batch(
            &consumer,
            k.consumer_batch,
            Duration::from_millis(100),
            group::linger_after(previous),
            decode,
        );
        previous = records.len();
        if !carried.is_empty() {
            carried.append(&mut records);
            records = std::mem::take(&mut carried);
        }
        match error {
            Some(e) if group::is_outage(&e) => {
                inner.source.failure(&format!("consumer: {e}"));
                last_heard = Instant::now();
            }
            Some(e) => tracing::warn!(error = %e, "consumer error"),
            None => {}
        }
        if records.is_empty() {
            // Idle: is the broker still there? A record is proof enough
            // while busy; when quiet, ask for metadata now and then.
            if last_heard.elapsed() >= check_every {
                last_heard = Instant::now();
                match consumer.fetch_metadata(Some(&k.topics.events.name), check_every) {
                    Ok(_) => inner.source.success("metadata answered"),
                    Err(e) => inner.source.failure(&format!("metadata: {e}")),
                }
            }
            continue;
        }
        last_heard = Instant::now();
        inner.source.success("records consumed");
        inner
            .metrics
            .consumed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut deliveries = Vec::with_capacity(records.len());
        let mut undecodable = Vec::new();
        let mut handled = Vec::new();
        let mut offsets = Offsets::default();
        for r in records {
            match r {
                Decoded::Dispatch(delivery, at) => {
                    offsets.add(&at);
                    deliveries.push(delivery);
                }
                Decoded::Handled(h, at) => {
                    offsets.add(&at);
                    handled.push(h);
                }
                Decoded::Undecodable(u) => {
                    offsets.add(&u.at);
                    undecodable.push(u);
                }
            }
        }
        let dispatch_started = Instant::now();
        let batch_len = deliveries.len();
        let resolutions = match inner.dispatcher.dispatch(deliveries) {
            Ok(r) => r,
            Err(e) => {
                // Only the ledger lookup can fail here. Storing nothing and
                // seeking back is not possible from here cleanly, so stop
                // consuming: the host's other paths keep running, and a
                // restart resumes from the stored offsets.
                tracing::error!(error = %e, "cannot read the processed ledger; the Kafka consumer stops (restart to resume)");
                break;
            }
        };
        tracing::debug!(events = batch_len, dispatch = ?dispatch_started.elapsed(), "batch dispatched");
        let batch = Batch {
            resolutions,
            undecodable,
            handled,
            offsets,
        };
        if to_committer.send(batch).is_err() {
            tracing::error!("the Kafka committer is gone; the consumer stops");
            break;
        }
    }
    drop(to_committer);
    let _ = committer.join();
    let _ = copier.join();
    // Everything handed over is durable and its offsets stored: commit them
    // now rather than at the next interval, then leave the group.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::info!(error = %e, "final offset commit did not complete; Kafka will redeliver from the last commit");
    }
    consumer.unsubscribe();
    tracing::info!("kafka consumer stopped");
}

fn decode(m: &rdkafka::message::BorrowedMessage<'_>) -> Decoded {
    let at = Position::of(m);
    match WireEvent::decode(m.payload()) {
        Ok(event) => match handled_by(m) {
            Some((device, status)) => Decoded::Handled(
                Handled {
                    event,
                    device,
                    status,
                },
                at,
            ),
            None => Decoded::Dispatch(
                Delivery {
                    event,
                    claims: 1,
                    origin: Origin::Kafka {
                        topic: at.topic.clone(),
                        partition: at.partition,
                        offset: at.offset,
                    },
                },
                at,
            ),
        },
        Err(e) => Decoded::Undecodable(Undecodable {
            error: e.to_string(),
            headers: group::headers_of(m),
            raw: m.payload().map(<[u8]>::to_vec),
            at,
        }),
    }
}

/// The `handled-by` and `handled-status` headers, when present.
fn handled_by(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<(String, String)> {
    use rdkafka::message::Headers;
    let hs = m.headers()?;
    let get = |key: &str| {
        hs.iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    Some((
        get(HANDLED_BY)?,
        get(HANDLED_STATUS).unwrap_or_else(|| "completed".into()),
    ))
}

/// Makes a batch durable, then stores its offsets; returns the outcomes
/// for the execution records (None if nothing was committed).
fn commit(
    inner: &Inner,
    consumer: &BaseConsumer<Owned>,
    producer: &ThreadedProducer<DefaultProducerContext>,
    batch: Batch,
) -> Option<Vec<Resolution>> {
    let k = &inner.config.kafka;
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let committed = loop {
        match inner.store.commit_consumed(&batch.resolutions) {
            Ok(c) => break c,
            Err(e) if inner.stopping.load(Ordering::Acquire) => {
                tracing::error!(error = %e, events = batch.resolutions.len(), "cannot commit consumed events while stopping; Kafka will redeliver them");
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?backoff, "cannot commit consumed events; retrying (offsets are not stored until it succeeds)");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    if !batch.handled.is_empty() {
        // Handled on their device already: keep a copy with its outcome.
        let events: Vec<_> = batch.handled.iter().map(|h| h.event.clone()).collect();
        let outcomes: Vec<_> = batch
            .handled
            .iter()
            .filter(|h| h.device != k.client_id)
            .map(|h| RemoteOutcome {
                event_id: h.event.id.clone(),
                status: h.status.clone(),
                error: None,
                processed_at: None,
            })
            .collect();
        let written = inner
            .store
            .archive(&events)
            .and_then(|_| inner.store.apply_remote_outcomes(&outcomes));
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot archive events handled on their own device");
        }
    }
    for u in &batch.undecodable {
        inner.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(at = %u.at, error = %u.error, "undecodable Kafka record dead-lettered");
        if let Err(e) = inner
            .store
            .record_undecodable(&u.at.to_string(), &u.error, &u.headers)
        {
            tracing::error!(at = %u.at, error = %e, "cannot record an undecodable record; it is still sent to the dlq topic");
        }
        let mut record = BaseRecord::<(), [u8]>::to(&k.topics.dlq.name);
        if let Some(raw) = &u.raw {
            record = record.payload(raw.as_slice());
        }
        if let Err((e, _)) = producer.send(record) {
            tracing::warn!(at = %u.at, error = %e, "cannot send an undecodable record to the dlq topic");
        }
    }
    tracing::debug!(events = batch.resolutions.len(), commit = ?started.elapsed(), "batch committed");
    batch.offsets.store(consumer);
    if committed.published > 0 {
        // Handlers published follow-ups: they are in the outbox now.
        inner.outbox_wakeup.ring();
    }
    if committed.duplicates > 0 {
        tracing::debug!(
            runs = committed.duplicates,
            "redelivered runs skipped by the ledger"
        );
    }
    inner.notify_resolved(&batch.resolutions);
    Some(batch.resolutions)
}

/// Execution records (one per handled event) and dead letters, for other
/// devices and tools.
fn send_copies(
    inner: &Inner,
    producer: &ThreadedProducer<DefaultProducerContext>,
    resolutions: &[Resolution],
) {
    let k = &inner.config.kafka;
    let now = now_rfc3339();
    for r in resolutions {
        if k.publish_executions {
            send_json(
                producer,
                &k.topics.executions.name,
                &r.event.project_id,
                &k.client_id,
                &ExecutionRecord::from_resolution(r, &k.client_id, &now),
            );
        }
        for run in &r.runs {
            if let Verdict::DeadLetter { reason } = &run.verdict {
                let letter = serde_json::json!({
                    "event": WireEvent::from_event(&r.event),
                    "handler": &*run.handler,
                    "handler_version": &*run.version,
                    "attempts": run.attempt,
                    "reason": reason,
                    "last_error": run.outcome.error(),
                    "device": k.client_id,
                });
                send_json(
                    producer,
                    &k.topics.dlq.name,
                    &r.event.project_id,
                    &k.client_id,
                    &letter,
                );
            }
        }
    }
}

fn send_json(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    device: &str,
    value: &impl serde::Serialize,
) {
    let Ok(bytes) = serde_json::to_vec(value) else {
        return;
    };
    // Lets audit loggers skip their own device's records undecoded.
    let headers =
        rdkafka::message::OwnedHeaders::new_with_capacity(1).insert(rdkafka::message::Header {
            key: "origin-device",
            value: Some(device.as_bytes()),
        });
    let mut record = BaseRecord::to(topic)
        .key(key)
        .payload(&bytes)
        .headers(headers);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => {
                tracing::debug!(topic, error = %e, "copy not sent");
                return;
            }
        }
    }
}

/// The half-open probe: a metadata request and a consumer poll. Topics
/// are created again if the broker came back without them.
fn probe(inner: &Inner, consumer: &BaseConsumer<Owned>, timeout: Duration) -> Vec<Decoded> {
    let k = &inner.config.kafka;
    // A broker that just came back can be slow to answer its first requests.
    let timeout = timeout.max(Duration::from_secs(5));
    let result = consumer
        .fetch_metadata(Some(&k.topics.events.name), timeout)
        .map_err(|e| format!("metadata: {e}"))
        .and_then(|_| super::topics::ensure(k, timeout).map_err(|e| e.to_string()))
        .and_then(|()| {
            // Errors queued while the consumer was paused are stale (the
            // broker just answered): drain them, keeping any record.
            let mut records = Vec::new();
            for _ in 0..10_000 {
                match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => records.push(decode(&m)),
                    Some(Err(_)) => {}
                    None => break,
                }
            }
            // Then a poll of its own: only an outage now fails the probe
            // ("topic not yet known" right after creating it does not).
            match consumer.poll(Duration::from_millis(100)) {
                Some(Err(e)) if group::is_outage(&e) => Err(format!("poll: {e}")),
                Some(Ok(m)) => {
                    records.push(decode(&m));
                    Ok(records)
                }
                _ => Ok(records),
            }
        });
    match result {
        Ok(records) => {
            inner
                .source
                .success("metadata and a consumer poll answered");
            records
        }
        Err(e) => {
            inner.source.failure(&e);
            Vec::new()
        }
    }
}
