//! What every consumer group of the host shares: client settings, taking a
//! batch of records, and storing offsets once a batch is durable.

use super::{KafkaError, client_config};
use crate::fast_map::{FastMap, FastSet};
use crate::kafka::config::{KafkaConfig, OffsetReset};
use crate::supervisor::StopToken;
use persona_bus_model::sync::{Locked, ReadWrite};
use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, DefaultConsumerContext, Rebalance,
};
use rdkafka::message::{BorrowedMessage, Headers};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A consumer in `group` subscribed to `topics`. Offsets are stored by the
/// host only after a batch's outcome is durable in SQLite
/// (`enable.auto.offset.store=false`) and committed in the background.
pub fn subscribe(
    k: &KafkaConfig,
    group: &str,
    topics: &[&str],
    prefetch_kb: u32,
) -> Result<BaseConsumer, KafkaError> {
    subscribe_with(k, group, topics, prefetch_kb, DefaultConsumerContext)
}

/// [`subscribe`] with a context (rebalance callbacks). `prefetch_kb`
/// bounds what librdkafka buffers ahead of the consumer.
pub fn subscribe_with<C: ConsumerContext + 'static>(
    k: &KafkaConfig,
    group: &str,
    topics: &[&str],
    prefetch_kb: u32,
    context: C,
) -> Result<BaseConsumer<C>, KafkaError> {
    // librdkafka prefetches up to 64 MiB and 100,000 records per partition
    // by default: under a backlog that is most of a device host's memory.
    // Fetches are capped to the same budget (they are buffered whole).
    let prefetch_kb = prefetch_kb.max(1024);
    let consumer: BaseConsumer<C> = client_config(k)
        .set("queued.max.messages.kbytes", prefetch_kb.to_string())
        .set("queued.min.messages", "10000")
        // Once that buffer is full, librdkafka postpones the next fetch by
        // this long (1 s by default). With a bounded buffer that drains in
        // tens of milliseconds under a backlog, the default left the
        // pipeline idle for most of each second: on uncompressed records
        // half the run (18 pauses of ~0.5 s in a 300k backlog, 15k/s).
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.max.bytes", (prefetch_kb as u64 * 1024).to_string())
        .set(
            "max.partition.fetch.bytes",
            (prefetch_kb as u64 * 1024 / 4).max(1 << 20).to_string(),
        )
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match k.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        )
        // A killed host's partitions move to the others within seconds.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // Per-topic balance: each member gets its share of the events
        // topic. (cooperative-sticky balances the total count, and could give
        // one device every events partition and the other every actions one.)
        .set("partition.assignment.strategy", "range,roundrobin")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        // Notice topics created after the subscription (a broker that was
        // down when the host started) within seconds, not minutes.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create_with_context(context)
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    consumer
        .subscribe(topics)
        .map_err(|e| KafkaError::Client(format!("subscribe {topics:?} as {group}: {e}")))?;
    Ok(consumer)
}

/// Where a record sits.
#[derive(Debug, Clone)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Position {
    pub fn of(m: &BorrowedMessage<'_>) -> Self {
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kafka:{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// The record's headers as text (non-UTF-8 values are replaced).
pub fn headers_of(m: &BorrowedMessage<'_>) -> Vec<(String, String)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Takes up to `max` records: waits up to `wait` for the first, then takes
/// what is already fetched (a short linger while the batch is small).
/// `f` turns each record into what the caller keeps. A consumer error ends
/// the batch and is returned beside it.
pub fn poll_batch<T, C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    max: usize,
    wait: Duration,
    linger: Duration,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> T,
) -> (Vec<T>, Option<rdkafka::error::KafkaError>) {
    let mut out = Vec::new();
    let started = Instant::now();
    let mut timeout = wait;
    while out.len() < max {
        match consumer.poll(timeout) {
            Some(Ok(m)) => {
                if out.is_empty() && tracing::enabled!(tracing::Level::TRACE) {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    let age = m.timestamp().to_millis().map(|t| now - t);
                    tracing::trace!(age_ms = ?age, topic = m.topic(), "first record of a batch");
                }
                out.push(f(&m));
                // Records already fetched come back at once.
                timeout = Duration::ZERO;
            }
            Some(Err(e)) => return (out, Some(e)),
            None if out.is_empty() || started.elapsed() >= linger => break,
            // Nothing fetched just now: while lingering, a tiny wait lets a
            // few more arrive so a batch shares one SQLite commit. (The
            // clock is read only here, not once per record.)
            None => timeout = Duration::from_micros(200),
        }
    }
    (out, None)
}

/// How long a batch may wait to fill once it has its first record, given
/// the size of the one before: none when traffic is light (latency first),
/// up to 2 ms when busy (throughput: fewer, larger commits).
pub fn linger_after(previous: usize) -> Duration {
    match previous {
        0..=16 => Duration::ZERO,
        17..=256 => Duration::from_micros(500),
        _ => Duration::from_millis(2),
    }
}

/// The next offset to consume per partition, for what a batch covered.
/// Keyed by topic, then partition, so that adding a record looks its topic
/// up by `&str` (a batch has a few partitions and up to thousands of
/// records; cloning each record's topic into a key was most of `add`).
#[derive(Debug, Default, Clone)]
pub struct Offsets(FastMap<String, FastMap<i32, i64>>);

impl Offsets {
    pub fn add(&mut self, p: &Position) {
        self.raise(&p.topic, p.partition, p.offset + 1);
    }

    /// Notes `next` for the partition, unless it already has a later one.
    fn raise(&mut self, topic: &str, partition: i32, next: i64) {
        let parts = match self.0.get_mut(topic) {
            Some(parts) => parts,
            None => self.0.entry(topic.to_owned()).or_default(),
        };
        let at = parts.entry(partition).or_insert(next);
        *at = (*at).max(next);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Stores them for the next background commit. A partition taken away
    /// by a rebalance refuses: its new owner gets those records again, and
    /// the processed ledger keeps their effects from happening twice.
    pub fn store<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        if self.0.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(self.0.values().map(|p| p.len()).sum());
        for (topic, parts) in &self.0 {
            for (partition, next) in parts {
                if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                    tracing::warn!(topic, partition, error = %e, "cannot note an offset");
                }
            }
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::info!(error = %e, "offsets not stored (partitions reassigned?); the records will be seen again and deduplicated");
        }
    }
}

/// Which records of each partition are still being handled, so the offset
/// stored for a partition never passes a record whose outcome is not yet
/// durable, although the pipeline finishes records of different projects
/// (lanes) out of order.
///
/// Keyed by topic, then partition, so that the per-record calls look a
/// partition up by the record's `&str` topic instead of cloning it into a
/// key (the clone was 2% of the committer's time).
#[derive(Default)]
pub struct OffsetTracker(std::sync::Mutex<FastMap<String, FastMap<i32, Pending>>>);

#[derive(Default)]
struct Pending {
    offsets: std::collections::BTreeSet<i64>,
    /// One past the highest offset begun.
    next: i64,
}

impl OffsetTracker {
    /// A record was taken from the partition.
    pub fn begin(&self, at: &Position) {
        let mut topics = self.0.locked();
        // The topic is cloned only the first time it is seen.
        let parts = match topics.get_mut(at.topic.as_str()) {
            Some(parts) => parts,
            None => topics.entry(at.topic.clone()).or_default(),
        };
        let part = parts.entry(at.partition).or_default();
        part.offsets.insert(at.offset);
        part.next = part.next.max(at.offset + 1);
    }

    /// These records' outcomes are durable. Returns, for each partition they
    /// touch, the offset safe to store: the lowest still being handled, or
    /// one past the highest begun when none is.
    pub fn finish<'a>(&self, done: impl IntoIterator<Item = &'a Position>) -> Offsets {
        let mut topics = self.0.locked();
        let mut touched: FastSet<(&str, i32)> = FastSet::default();
        for at in done {
            if let Some(part) = topics
                .get_mut(at.topic.as_str())
                .and_then(|parts| parts.get_mut(&at.partition))
            {
                part.offsets.remove(&at.offset);
                touched.insert((&at.topic, at.partition));
            }
        }
        let mut out = Offsets::default();
        for (topic, partition) in touched {
            let part = &topics[topic][&partition];
            let safe = part.offsets.first().copied().unwrap_or(part.next);
            out.raise(topic, partition, safe);
        }
        out
    }
}

/// A record copied out of the consumer, for the simple groups.
pub struct Record {
    pub at: Position,
    /// None when the group's `keep` filter passed on it (only its offset
    /// matters then).
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    pub kept: bool,
}

/// What a simple group does besides writing batches.
pub trait GroupWork {
    /// Whether a record is worth copying out and handing to `handle`.
    fn keep(&self, _m: &BorrowedMessage<'_>) -> bool {
        true
    }
    /// Called before each poll (pause or resume partitions, say).
    fn tend(&mut self, _consumer: &BaseConsumer) {}
    /// Writes a batch; an error is retried.
    fn handle(&mut self, records: &[Record]) -> Result<(), String>;
}

/// The loop of a group that writes each batch to SQLite (audit logger,
/// webhook ingester): take a batch, hand it to `handle`, retry `handle`
/// until it succeeds (or the host stops, and nothing is stored), then store
/// the batch's offsets. Ends when `stop` fires, committing what is
/// stored.
pub fn run_loop(
    name: &str,
    consumer: BaseConsumer,
    max: usize,
    stop: &StopToken,
    mut work: impl GroupWork,
) {
    tracing::info!(group = name, "kafka {name} started");
    while !stop.is_stopped() {
        work.tend(&consumer);
        let (records, error) = poll_batch(
            &consumer,
            max,
            Duration::from_millis(200),
            Duration::ZERO,
            |m| {
                let kept = work.keep(m);
                Record {
                    at: Position::of(m),
                    value: kept
                        .then(|| rdkafka::Message::payload(m).map(<[u8]>::to_vec))
                        .flatten(),
                    headers: if kept { headers_of(m) } else { Vec::new() },
                    kept,
                }
            },
        );
        if let Some(e) = error {
            tracing::debug!(group = name, error = %e, "consumer error");
        }
        if records.is_empty() {
            continue;
        }
        let mut backoff = Duration::from_millis(100);
        let done = loop {
            match work.handle(&records) {
                Ok(()) => break true,
                Err(e) if stop.is_stopped() => {
                    tracing::error!(group = name, error = %e, "batch not written while stopping; Kafka will redeliver it");
                    break false;
                }
                Err(e) => {
                    tracing::error!(group = name, error = %e, retry_in = ?backoff, "batch not written; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        if !done {
            break;
        }
        let mut offsets = Offsets::default();
        for r in &records {
            offsets.add(&r.at);
        }
        offsets.store(&consumer);
    }
    let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    consumer.unsubscribe();
    tracing::info!(group = name, "kafka {name} stopped");
}

/// The partitions a consumer owns, kept current by its rebalance callbacks.
/// The audit logger reads the event processor's: events on those
/// partitions are written to SQLite by the processor anyway, so archiving
/// them again would only double the writes.
#[derive(Clone, Default)]
pub struct Owned(Arc<RwLock<HashSet<(String, i32)>>>);

impl Owned {
    pub fn contains(&self, topic: &str, partition: i32) -> bool {
        self.0
            .read_locked()
            .contains(&(topic.to_owned(), partition))
    }

    pub fn len(&self) -> usize {
        self.0.read_locked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl rdkafka::ClientContext for Owned {}

impl ConsumerContext for Owned {
    // Before a revocation takes effect, and after an assignment: so the set
    // never claims a partition the consumer does not hold.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut set = self.0.write_locked();
            for e in tpl.elements() {
                set.remove(&(e.topic().to_owned(), e.partition()));
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut set = self.0.write_locked();
            for e in tpl.elements() {
                set.insert((e.topic().to_owned(), e.partition()));
            }
        }
    }
}

/// Whether a consumer error means Kafka is away (counted by the breaker),
/// rather than something about one topic or record (logged only).
pub fn is_outage(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::Resolve
                | C::RequestTimedOut
                | C::OperationTimedOut
                | C::NetworkException
                | C::BrokerNotAvailable
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::MessageTimedOut
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Position {
        Position {
            topic: "t".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn the_stored_offset_never_passes_a_record_still_being_handled() {
        let tracker = OffsetTracker::default();
        for o in 10..15 {
            tracker.begin(&at(0, o));
        }
        tracker.begin(&at(1, 3));
        // 12 and 13 (other projects' lanes) finish before 10 and 11.
        let safe = tracker.finish([&at(0, 12), &at(0, 13)]);
        assert_eq!(safe.0["t"][&0], 10);
        assert!(!safe.0["t"].contains_key(&1), "untouched");
        let safe = tracker.finish([&at(0, 10)]);
        assert_eq!(safe.0["t"][&0], 11);
        let safe = tracker.finish([&at(0, 11), &at(0, 14)]);
        assert_eq!(safe.0["t"][&0], 15, "all durable: past the last");
        assert_eq!(tracker.finish([&at(1, 3)]).0["t"][&1], 4);
    }

    #[test]
    fn a_batch_stores_one_past_the_highest_offset_of_each_partition() {
        let mut offsets = Offsets::default();
        for p in [at(0, 7), at(0, 5), at(1, 2)] {
            offsets.add(&p);
        }
        assert_eq!(offsets.0["t"][&0], 8);
        assert_eq!(offsets.0["t"][&1], 3);
    }
}
