//! The event processor (group `vibeman-event-processor`): consumes the
//! events and actions topics and submits each record to the same pipeline
//! as the SQLite poller.
//!
//! - Order: records of one project share a partition (key = project_id) and
//!   a pipeline lane, so they run in order; projects run in parallel, and a
//!   slow handler holds up only its own project.
//! - At-least-once, effects once: outcomes (executions, ledger, state,
//!   follow-ups, the event row) are committed to SQLite first, and only then
//!   is an offset stored for Kafka's background commit. Lanes finish out of
//!   order, so an [`OffsetTracker`] keeps, per partition, the records still
//!   being handled: the stored offset never passes one of them. A crash in
//!   between redelivers, and the processed ledger (consulted for every Kafka
//!   record) skips handlers that already finished.
//! - A commit that fails is retried until it succeeds or the host stops
//!   (then nothing is stored and Kafka redelivers); see
//!   [`HostContext::commit_until_taken`].
//! - The circuit breaker ([`crate::switch::SourceSwitch`]) hears about every
//!   consumer error and idle health check; while it is open this consumer
//!   pauses and the SQLite poller handles events.

use crate::context::HostContext;
use crate::dispatch::Delivery;
use crate::event::now_rfc3339;
use crate::kafka::group::{self, OffsetTracker, Owned, Position};
use crate::kafka::wire::{
    ExecutionRecord, HANDLED_BY, HANDLED_STATUS, RecordError, WireEvent, decode_record,
};
use crate::kafka::{KafkaError, client_config};
use crate::outcome::{Resolution, Verdict};
use crate::pipeline::{Finished, Pipeline, Refused, Sink};
use crate::runtime::Origin;
use crate::schemas::Schemas;
use crate::store::RemoteOutcome;
use crate::supervisor::{StartError, Supervisor};
use persona_bus_model::sync::Locked;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
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

enum Decoded {
    Dispatch(Delivery, Position),
    Handled(Handled, Position),
    Undecodable(Undecodable),
    /// Its schema cannot be had now (the registry is down): the partition
    /// waits at this record and tries it again (see [`Holds`]).
    Hold(Position, String),
}

type CopyProducer = ThreadedProducer<DefaultProducerContext>;

/// The event processor: the `persona-event-processor` group over the events
/// and actions topics.
pub struct EventProcessor;

impl super::Source for EventProcessor {
    fn start(
        self: Box<Self>,
        cx: &super::SourceContext,
        tasks: &Supervisor,
    ) -> Result<(), StartError> {
        start(cx.ctx.clone(), cx.pipeline.clone(), tasks)
    }
}

fn start(
    ctx: Arc<HostContext>,
    pipeline: Arc<Pipeline>,
    tasks: &Supervisor,
) -> Result<(), StartError> {
    let failed = |e| StartError::new("Kafka event processor", e);
    let k = &ctx.config.kafka;
    let consumer = Arc::new(
        group::subscribe_with(
            k,
            &k.consumer_group,
            &[&k.topics.events.name, &k.topics.actions.name],
            k.prefetch_kb,
            ctx.processor_partitions.clone(),
        )
        .map_err(failed)?,
    );
    // Execution records and dead letters for other devices and tools. The
    // SQLite rows are the record; these are copies, so a failed send is
    // logged, not retried forever.
    let producer: CopyProducer = client_config(k)
        // librdkafka queues up to 1 GiB by default; a full queue makes the
        // copier wait (send_json), which bounds memory under a backlog.
        .set(
            "queue.buffering.max.kbytes",
            k.prefetch_kb.max(1024).to_string(),
        )
        .set("queue.buffering.max.messages", "20000")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(|e| failed(KafkaError::Client(e.to_string())))?;
    tasks.spawn("kafka-consumer", move || {
        run(ctx, pipeline, consumer, Arc::new(producer))
    })
}

/// Where the outcomes of consumed records go (on the pipeline's committer
/// thread): SQLite first, then their offsets, then the copies.
struct KafkaSink {
    ctx: Arc<HostContext>,
    consumer: Arc<BaseConsumer<Owned>>,
    tracker: Arc<OffsetTracker>,
    /// To the thread that produces execution records (None once stopped).
    copies: Mutex<Option<SyncSender<Vec<Resolution>>>>,
}

impl Sink for KafkaSink {
    fn commit(&self, batch: Vec<Finished>) -> bool {
        let mut resolutions = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        for f in batch {
            if let Origin::Kafka {
                topic,
                partition,
                offset,
            } = f.origin
            {
                positions.push(Position {
                    topic,
                    partition,
                    offset,
                });
            }
            resolutions.push(f.resolution);
        }
        let started = Instant::now();
        // Offsets are not stored until the commit lands; stopping before
        // that, Kafka redelivers.
        let Some(committed) = self.ctx.commit_until_taken(resolutions.len(), || {
            self.ctx.store.commit_consumed(&resolutions)
        }) else {
            return false;
        };
        tracing::debug!(events = resolutions.len(), commit = ?started.elapsed(), "batch committed");
        self.tracker.finish(&positions).store(&self.consumer);
        if committed.published > 0 {
            // Handlers published follow-ups: they are in the outbox now.
            self.ctx.outbox_wakeup.ring();
        }
        if committed.duplicates > 0 {
            tracing::debug!(
                runs = committed.duplicates,
                "redelivered runs skipped by the ledger"
            );
        }
        self.ctx.notify_resolved(&resolutions);
        let copies = self.copies.locked();
        if let Some(copies) = copies.as_ref()
            && copies.send(resolutions).is_err()
        {
            tracing::warn!("the execution-record thread is gone; records not sent");
        }
        true
    }

    fn abandoned(&self, events: Vec<(String, Origin)>) {
        // Their offsets stay unstored: Kafka redelivers them to whoever
        // owns the partition next.
        tracing::info!(
            events = events.len(),
            "abandoned Kafka records will be redelivered"
        );
    }
}

fn run(
    ctx: Arc<HostContext>,
    pipeline: Arc<Pipeline>,
    consumer: Arc<BaseConsumer<Owned>>,
    producer: Arc<CopyProducer>,
) {
    let k = ctx.config.kafka.clone();
    // Execution records are built and produced on a thread of their own:
    // the committer is the pipeline's bottleneck (SQLite), so it only
    // commits. A full channel waits (bounded memory: two committed batches
    // at most), never drops.
    let (to_copier, copies) = sync_channel::<Vec<Resolution>>(2);
    let copier = {
        let ctx = ctx.clone();
        let producer = producer.clone();
        std::thread::Builder::new()
            .name("kafka-copies".into())
            .spawn(move || {
                for resolutions in copies {
                    send_copies(&ctx, &producer, &resolutions);
                }
                let _ = producer.flush(Duration::from_secs(2));
            })
    };
    let copier = match copier {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the execution-record thread; consumer not started");
            return;
        }
    };
    let tracker = Arc::new(OffsetTracker::default());
    let sink = Arc::new(KafkaSink {
        ctx: ctx.clone(),
        consumer: consumer.clone(),
        tracker: tracker.clone(),
        copies: Mutex::new(Some(to_copier)),
    });
    let as_sink: Arc<dyn Sink> = sink.clone();
    tracing::info!(group = %k.consumer_group, topics = ?[&k.topics.events.name, &k.topics.actions.name], "kafka consumer started");
    let check_every = Duration::from_millis(k.breaker.failure_after_ms);
    let mut last_heard = Instant::now();
    // Records the half-open probe polled, for the next batch.
    let mut carried: Vec<Decoded> = Vec::new();
    // Size of the last batch: decides how long the next may linger.
    let mut previous = 0;
    let mut holds = Holds::default();
    while !ctx.stopping() {
        holds.release_due(&consumer);
        if !ctx.source.kafka_active() {
            if ctx.source.tick() {
                carried = probe(&ctx, &consumer, check_every);
            } else {
                let wait = ctx
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
            |m| decode(&ctx.schemas, m),
        );
        previous = records.len();
        if !carried.is_empty() {
            carried.append(&mut records);
            records = std::mem::take(&mut carried);
        }
        match error {
            Some(e) if group::is_outage(&e) => {
                // A broker lost is not Kafka lost: in a cluster, losing one
                // broker (a leader killed, a rolling restart) reports
                // transport failures while its partitions move to new
                // leaders. Such an error counts only if the cluster does
                // not answer a metadata request either. When librdkafka
                // says no broker at all is connected it counts at once, so
                // SQLite takes over within moments of a real outage, except
                // right after the breaker closed, while the outage's own
                // late errors are still arriving. A live cluster answers a
                // metadata request in milliseconds, so the check waits a
                // quarter of `failure_after_ms`: a dead one then opens the
                // breaker within a second, not after three full timeouts.
                let all_down = e.rdkafka_error_code()
                    == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
                let confirm = !all_down || ctx.source.settling();
                let confirm_within = (check_every / 4).max(Duration::from_millis(100));
                if confirm && answers(&consumer, &k, confirm_within) {
                    tracing::debug!(error = %e, "consumer error while the cluster answers (a broker lost, or an outage just over); not counted");
                } else {
                    ctx.source.failure(&format!("consumer: {e}"));
                }
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
                    Ok(_) => ctx.source.success("metadata answered"),
                    Err(e) => ctx.source.failure(&format!("metadata: {e}")),
                }
            }
            continue;
        }
        last_heard = Instant::now();
        ctx.source.success("records consumed");
        ctx.metrics
            .consumed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut deliveries = Vec::with_capacity(records.len());
        let mut undecodable = Vec::new();
        let mut handled = Vec::new();
        for r in records {
            // Behind a held record, its partition waits (order per project).
            let at = match &r {
                Decoded::Dispatch(_, at) | Decoded::Handled(_, at) | Decoded::Hold(at, _) => at,
                Decoded::Undecodable(u) => &u.at,
            };
            if holds.holds(at) {
                continue;
            }
            match r {
                Decoded::Hold(at, error) => holds.hold(&consumer, at, &error),
                Decoded::Dispatch(delivery, at) => {
                    tracker.begin(&at);
                    deliveries.push(delivery);
                }
                Decoded::Handled(h, at) => {
                    tracker.begin(&at);
                    handled.push((h, at));
                }
                Decoded::Undecodable(u) => {
                    tracker.begin(&u.at);
                    undecodable.push(u);
                }
            }
        }
        match pipeline.submit(deliveries, &as_sink) {
            Ok(()) => {}
            Err(Refused::Closed) => break,
            Err(Refused::Store(e)) => {
                // Only the ledger lookup can fail here. The records' offsets
                // are never stored, so stop consuming: the host's other
                // paths keep running, and a restart resumes from the stored
                // offsets.
                tracing::error!(error = %e, "cannot read the processed ledger; the Kafka consumer stops (restart to resume)");
                break;
            }
        }
        if !handled.is_empty() || !undecodable.is_empty() {
            write_side_records(&ctx, &producer, &handled, &undecodable);
            let done = handled
                .iter()
                .map(|(_, at)| at)
                .chain(undecodable.iter().map(|u| &u.at));
            tracker.finish(done).store(&consumer);
        }
    }
    if ctx.stopping() {
        // The bus is closing the pipeline: once it is empty, every outcome
        // that became durable has had its offset stored.
        let grace = Duration::from_millis(ctx.config.shutdown_grace_ms);
        pipeline.wait_idle(grace + Duration::from_secs(5));
    }
    drop(sink.copies.locked().take());
    let _ = copier.join();
    // Commit what is stored now rather than at the next interval, then
    // leave the group.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::info!(error = %e, "final offset commit did not complete; Kafka will redeliver from the last commit");
    }
    consumer.unsubscribe();
    tracing::info!("kafka consumer stopped");
}

fn decode(schemas: &Schemas, m: &rdkafka::message::BorrowedMessage<'_>) -> Decoded {
    let at = Position::of(m);
    match decode_record(schemas, m.payload(), || group::headers_of(m), &at, true) {
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
        Err(RecordError::Unavailable(error)) => Decoded::Hold(at, error),
        Err(RecordError::Bad(error)) => Decoded::Undecodable(Undecodable {
            error,
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

/// Records that are not dispatched: events their own device already
/// handled (archived with its outcome) and records that are not events
/// (dead-lettered here and copied raw to the dlq topic).
fn write_side_records(
    ctx: &HostContext,
    producer: &CopyProducer,
    handled: &[(Handled, Position)],
    undecodable: &[Undecodable],
) {
    let k = &ctx.config.kafka;
    if !handled.is_empty() {
        let events: Vec<_> = handled.iter().map(|(h, _)| h.event.clone()).collect();
        let outcomes: Vec<_> = handled
            .iter()
            .filter(|(h, _)| h.device != k.client_id)
            .map(|(h, _)| RemoteOutcome {
                event_id: h.event.id.clone(),
                status: h.status.clone(),
                error: None,
                processed_at: None,
            })
            .collect();
        let written = ctx
            .store
            .archive(&events)
            .and_then(|_| ctx.store.apply_remote_outcomes(&outcomes));
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot archive events handled on their own device");
        }
    }
    for u in undecodable {
        ctx.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(at = %u.at, error = %u.error, "undecodable Kafka record dead-lettered");
        if let Err(e) = ctx
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
}

/// Execution records (one per handled event) and dead letters, for other
/// devices and tools.
fn send_copies(ctx: &HostContext, producer: &CopyProducer, resolutions: &[Resolution]) {
    let k = &ctx.config.kafka;
    let now = now_rfc3339();
    // One buffer for every record of the batch (librdkafka copies each
    // value): a vector grown from empty per record was a fifth of this
    // thread.
    let mut buf = Vec::with_capacity(1024);
    for r in resolutions {
        if k.publish_executions {
            for record in ExecutionRecord::of_resolution(r, &k.client_id, &now) {
                send_json(
                    &mut buf,
                    producer,
                    &k.topics.executions.name,
                    &r.event.project_id,
                    &k.client_id,
                    &record,
                );
            }
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
                    &mut buf,
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
    buf: &mut Vec<u8>,
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    device: &str,
    value: &impl serde::Serialize,
) {
    buf.clear();
    if serde_json::to_writer(&mut *buf, value).is_err() {
        return;
    }
    // Lets audit loggers skip their own device's records undecoded.
    let headers =
        rdkafka::message::OwnedHeaders::new_with_capacity(1).insert(rdkafka::message::Header {
            key: "origin-device",
            value: Some(device.as_bytes()),
        });
    let mut record = BaseRecord::to(topic)
        .key(key)
        .payload(&buf[..])
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

/// Whether the broker answers a metadata request within `timeout`.
fn answers(
    consumer: &BaseConsumer<Owned>,
    k: &crate::kafka::config::KafkaConfig,
    timeout: Duration,
) -> bool {
    consumer
        .fetch_metadata(Some(&k.topics.events.name), timeout)
        .is_ok()
}

/// The half-open probe: a metadata request and a consumer poll. Topics
/// are created again if the broker came back without them.
fn probe(ctx: &HostContext, consumer: &BaseConsumer<Owned>, timeout: Duration) -> Vec<Decoded> {
    let k = &ctx.config.kafka;
    // A broker that just came back can be slow to answer its first requests.
    let timeout = timeout.max(Duration::from_secs(5));
    let result = consumer
        .fetch_metadata(Some(&k.topics.events.name), timeout)
        .map_err(|e| format!("metadata: {e}"))
        .and_then(|_| crate::kafka::topics::ensure(k, timeout).map_err(|e| e.to_string()))
        .and_then(|()| {
            // Errors queued while the consumer was paused are stale (the
            // broker just answered): drain them, keeping any record.
            let mut records = Vec::new();
            for _ in 0..10_000 {
                match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => records.push(decode(&ctx.schemas, &m)),
                    Some(Err(_)) => {}
                    None => break,
                }
            }
            // Then a poll of its own: only an outage now fails the probe
            // ("topic not yet known" right after creating it does not), and
            // only if the broker then fails a metadata request too: errors
            // of the outage keep arriving for a while after it ends.
            match consumer.poll(Duration::from_millis(100)) {
                Some(Err(e)) if group::is_outage(&e) && !answers(consumer, k, timeout) => {
                    Err(format!("poll: {e}"))
                }
                Some(Ok(m)) => {
                    records.push(decode(&ctx.schemas, &m));
                    Ok(records)
                }
                _ => Ok(records),
            }
        });
    match result {
        Ok(records) => {
            ctx.source.success("metadata and a consumer poll answered");
            records
        }
        Err(e) => {
            ctx.source.failure(&e);
            Vec::new()
        }
    }
}

/// Partitions waiting at a record whose schema could not be had (the
/// registry is down). The partition is rewound to that record and paused;
/// after a backoff it resumes and the record is decoded again. Nothing past
/// it is handled meanwhile (records of a project stay in order), its offset
/// is never stored past it, and other partitions go on.
#[derive(Default)]
struct Holds {
    held: Vec<Held>,
}

struct Held {
    at: Position,
    /// Some while paused; None once resumed (the backoff is remembered in
    /// case the same record fails again).
    until: Option<Instant>,
    backoff: Duration,
    since: Instant,
}

impl Holds {
    /// Whether a record sits behind a held one in a paused partition (it
    /// came in the same batch): skipped now, fetched again after the seek.
    fn holds(&self, at: &Position) -> bool {
        self.held.iter().any(|h| {
            h.until.is_some()
                && h.at.topic == at.topic
                && h.at.partition == at.partition
                && at.offset > h.at.offset
        })
    }

    fn hold(&mut self, consumer: &BaseConsumer<Owned>, at: Position, error: &str) {
        let same = |h: &Held| h.at.topic == at.topic && h.at.partition == at.partition;
        // The backoff doubles while the same record keeps failing.
        let backoff = self
            .held
            .iter()
            .find(|h| same(h) && h.at.offset == at.offset)
            .map(|h| (h.backoff * 2).min(Duration::from_secs(10)))
            .unwrap_or(Duration::from_millis(500));
        self.held.retain(|h| !same(h));
        tracing::warn!(at = %at, error, retry_in = ?backoff, "record waits for its schema; its partition is paused");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&at.topic, at.partition);
        if let Err(e) = consumer.pause(&tpl) {
            tracing::warn!(at = %at, error = %e, "cannot pause the partition");
        }
        if let Err(e) = consumer.seek(
            &at.topic,
            at.partition,
            rdkafka::Offset::Offset(at.offset),
            Duration::from_secs(5),
        ) {
            tracing::warn!(at = %at, error = %e, "cannot rewind the partition; the record comes back with the next rebalance");
        }
        self.held.push(Held {
            at,
            until: Some(Instant::now() + backoff),
            backoff,
            since: Instant::now(),
        });
    }

    /// Resumes the partitions whose backoff is over; forgets old ones.
    fn release_due(&mut self, consumer: &BaseConsumer<Owned>) {
        let now = Instant::now();
        for h in &mut self.held {
            if h.until.is_some_and(|until| until <= now) {
                let mut tpl = rdkafka::TopicPartitionList::new();
                tpl.add_partition(&h.at.topic, h.at.partition);
                if let Err(e) = consumer.resume(&tpl) {
                    tracing::warn!(at = %h.at, error = %e, "cannot resume the partition");
                }
                h.until = None;
            }
        }
        self.held
            .retain(|h| h.until.is_some() || h.since.elapsed() < Duration::from_secs(120));
    }
}
