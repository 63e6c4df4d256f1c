//! Reading a replay's events from Kafka: the events and actions topics
//! from a time (offsets by timestamp), an offset, or the beginning, to the
//! log end when the replay starts (or a later `--to`). A consumer of its
//! own, assigned, that commits nothing: the live groups never notice.

use super::{Pages, ReplayError};
use crate::event::Event;
use crate::kafka::admin::ReplayTo;
use crate::kafka::config::KafkaConfig;
use crate::kafka::{group, wire};
use crate::schemas::Schemas;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long reading may stall before the replay gives up.
const STALL: Duration = Duration::from_secs(30);

pub struct KafkaPages {
    consumer: BaseConsumer,
    schemas: std::sync::Arc<Schemas>,
    /// The offset each assigned partition stops before.
    ends: HashMap<(String, i32), i64>,
    project: Option<String>,
    /// Records in the range.
    pub total: u64,
    /// Records that were not events (counted, skipped).
    pub undecodable: u64,
    /// Records read so far, in range.
    looked: u64,
}

fn kafka_error(e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Kafka(e.to_string())
}

impl KafkaPages {
    pub fn open(
        k: &KafkaConfig,
        schemas: std::sync::Arc<Schemas>,
        topics: &[String],
        (from, to): (&ReplayTo, Option<&ReplayTo>),
        project: Option<String>,
    ) -> Result<Self, ReplayError> {
        let timeout = Duration::from_secs(10);
        let consumer = crate::kafka::admin::reader(k).map_err(kafka_error)?;
        let mut partitions = Vec::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(kafka_error)?;
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    partitions.push((t.name().to_owned(), p.id()));
                }
            }
        }
        if partitions.is_empty() {
            return Err(ReplayError::Kafka(format!(
                "no partitions of {} on {}",
                topics.join(", "),
                k.brokers
            )));
        }
        let at_time = |ms: i64| -> Result<HashMap<(String, i32), i64>, ReplayError> {
            let mut ask = TopicPartitionList::new();
            for (t, p) in &partitions {
                ask.add_partition_offset(t, *p, Offset::Offset(ms))
                    .map_err(kafka_error)?;
            }
            let answer = consumer
                .offsets_for_times(ask, timeout)
                .map_err(kafka_error)?;
            Ok(answer
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                    _ => None,
                })
                .collect())
        };
        let starts = match from {
            ReplayTo::Time(ms) => Some(at_time(*ms)?),
            _ => None,
        };
        let stops = match to {
            Some(ReplayTo::Time(ms)) => Some(at_time(*ms)?),
            _ => None,
        };
        let mut assign = TopicPartitionList::new();
        let mut ends = HashMap::new();
        let mut total = 0;
        for (t, p) in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(t, *p, timeout)
                .map_err(kafka_error)?;
            let key = (t.clone(), *p);
            let start = match from {
                ReplayTo::Earliest => low,
                ReplayTo::Latest => high,
                // No record at or after that time: nothing to read here.
                ReplayTo::Time(_) => starts
                    .as_ref()
                    .and_then(|s| s.get(&key))
                    .copied()
                    .unwrap_or(high),
                ReplayTo::Offset { partition, offset } if partition == p => {
                    (*offset).clamp(low, high)
                }
                ReplayTo::Offset { .. } => continue,
            };
            let end = match to {
                None | Some(ReplayTo::Latest) => high,
                Some(ReplayTo::Earliest) => low,
                Some(ReplayTo::Time(_)) => stops
                    .as_ref()
                    .and_then(|s| s.get(&key))
                    .copied()
                    .unwrap_or(high),
                Some(ReplayTo::Offset { partition, offset }) if partition == p => {
                    (*offset).clamp(low, high)
                }
                Some(ReplayTo::Offset { .. }) => high,
            };
            if start < end {
                assign
                    .add_partition_offset(t, *p, Offset::Offset(start))
                    .map_err(kafka_error)?;
                ends.insert(key, end);
                total += (end - start) as u64;
            }
        }
        if assign.count() > 0 {
            consumer.assign(&assign).map_err(kafka_error)?;
        }
        Ok(Self {
            consumer,
            schemas,
            ends,
            project,
            total,
            undecodable: 0,
            looked: 0,
        })
    }
}

impl Pages for KafkaPages {
    fn next_page(&mut self, max: usize) -> Result<Option<Vec<Event>>, ReplayError> {
        if self.ends.is_empty() {
            return Ok(None);
        }
        let mut page = Vec::new();
        let mut progress = Instant::now();
        while !self.ends.is_empty() && page.len() < max {
            let Some(m) = self.consumer.poll(Duration::from_millis(100)) else {
                if !page.is_empty() {
                    break;
                }
                if progress.elapsed() > STALL {
                    return Err(ReplayError::Kafka(format!(
                        "reading stalled for {} s with {} partition(s) short of their end",
                        STALL.as_secs(),
                        self.ends.len()
                    )));
                }
                continue;
            };
            let m = m.map_err(kafka_error)?;
            progress = Instant::now();
            let key = (m.topic().to_owned(), m.partition());
            let Some(end) = self.ends.get(&key).copied() else {
                continue;
            };
            if m.offset() + 1 >= end {
                self.ends.remove(&key);
            }
            if m.offset() >= end {
                continue;
            }
            self.looked += 1;
            let at = group::Position::of(&m);
            match wire::decode_record(
                &self.schemas,
                m.payload(),
                || group::headers_of(&m),
                &at,
                false,
            ) {
                Ok(e) if self.project.as_ref().is_none_or(|p| *p == e.project_id) => page.push(e),
                Ok(_) => {}
                Err(e) => {
                    self.undecodable += 1;
                    tracing::warn!(at = %at, "replay skips a record that is not an event: {e:?}");
                }
            }
        }
        Ok(Some(page))
    }

    fn total(&self) -> Option<u64> {
        Some(self.total)
    }

    fn looked(&self) -> u64 {
        self.looked
    }
}
