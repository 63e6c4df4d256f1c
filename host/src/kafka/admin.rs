//! Looking at and resetting consumer groups from outside: `persona-bus
//! status` (members, assigned partitions, lag) and `persona-bus replay`.

use super::{KafkaError, client_config};
use crate::kafka::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// A live member of a group and what it was assigned.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub client_id: String,
    pub host: String,
    pub partitions: Vec<(String, i32)>,
}

/// One partition of a group: where the group is and where the log ends.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// Next offset the group will read (None: nothing committed yet).
    pub committed: Option<i64>,
    /// The log end offset (high watermark).
    pub end: i64,
    /// Records not yet consumed by the group.
    pub lag: i64,
    /// The member that has it, if any.
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub group: String,
    pub state: String,
    pub members: Vec<Member>,
    pub partitions: Vec<PartitionLag>,
}

impl GroupView {
    pub fn total_lag(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }
}

/// A consumer that joins nothing: it only reads group metadata and offsets.
pub(crate) fn observer(k: &KafkaConfig, group: &str) -> Result<BaseConsumer, KafkaError> {
    client_config(k)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| KafkaError::Client(e.to_string()))
}

fn unreachable(k: &KafkaConfig, timeout: Duration, e: impl std::fmt::Display) -> KafkaError {
    KafkaError::Unreachable {
        brokers: k.brokers.clone(),
        waited: timeout,
        reason: e.to_string(),
    }
}

/// Members, assignment and lag of `group` on `topics`.
pub fn describe(
    k: &KafkaConfig,
    group: &str,
    topics: &[&str],
    timeout: Duration,
) -> Result<GroupView, KafkaError> {
    describe_with(&observer(k, group)?, k, group, topics, timeout)
}

/// [`describe`] through an observer the caller keeps (made by
/// [`observer`] for the same `group`): a new client per call costs its
/// threads, connections and a metadata round-trip.
pub(crate) fn describe_with(
    consumer: &BaseConsumer,
    k: &KafkaConfig,
    group: &str,
    topics: &[&str],
    timeout: Duration,
) -> Result<GroupView, KafkaError> {
    let (state, members) =
        members(consumer, group, timeout).map_err(|e| unreachable(k, timeout, e))?;
    let mut tpl = TopicPartitionList::new();
    // Topic by topic: a broker's whole metadata can be thousands of topics.
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| unreachable(k, timeout, e))?;
        for t in metadata.topics().iter().filter(|t| t.name() == *topic) {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
    }
    let committed = consumer
        .committed_offsets(tpl.clone(), timeout)
        .map_err(|e| unreachable(k, timeout, e))?;
    let owner: HashMap<(String, i32), String> = members
        .iter()
        .flat_map(|m| {
            m.partitions
                .iter()
                .map(|p| (p.clone(), m.client_id.clone()))
        })
        .collect();
    let mut partitions = Vec::new();
    for e in committed.elements() {
        let (_, end) = consumer
            .fetch_watermarks(e.topic(), e.partition(), timeout)
            .map_err(|err| unreachable(k, timeout, err))?;
        let committed = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        partitions.push(PartitionLag {
            topic: e.topic().to_owned(),
            partition: e.partition(),
            committed,
            end,
            lag: (end - committed.unwrap_or(0)).max(0),
            owner: owner.get(&(e.topic().to_owned(), e.partition())).cloned(),
        });
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(GroupView {
        group: group.to_owned(),
        state,
        members,
        partitions,
    })
}

fn members(
    consumer: &BaseConsumer,
    group: &str,
    timeout: Duration,
) -> Result<(String, Vec<Member>), rdkafka::error::KafkaError> {
    let list = consumer.fetch_group_list(Some(group), timeout)?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(("Dead".into(), Vec::new()));
    };
    let members = info
        .members()
        .iter()
        .map(|m| Member {
            client_id: m.client_id().to_owned(),
            host: m.client_host().to_owned(),
            partitions: m.assignment().map(parse_assignment).unwrap_or_default(),
        })
        .collect();
    Ok((info.state().to_owned(), members))
}

/// Reads a consumer-protocol assignment: version (i16), then an array (i32
/// count) of topic (i16-length string) with an array of i32 partitions.
/// Anything unexpected ends the parse with what was read so far.
pub fn parse_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            (self.0.len() >= n).then(|| {
                let (a, b) = self.0.split_at(n);
                self.0 = b;
                a
            })
        }
        fn i16(&mut self) -> Option<i16> {
            self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
        }
        fn i32(&mut self) -> Option<i32> {
            self.take(4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
    }
    let mut r = R(bytes);
    let mut out = Vec::new();
    let _version = r.i16();
    let Some(topics) = r.i32() else { return out };
    for _ in 0..topics.max(0) {
        let Some(len) = r.i16() else { return out };
        let Some(name) = r.take(len.max(0) as usize) else {
            return out;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let Some(n) = r.i32() else { return out };
        for _ in 0..n.max(0) {
            let Some(p) = r.i32() else { return out };
            out.push((name.clone(), p));
        }
    }
    out
}

/// Where `replay` moves a group.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayTo {
    Earliest,
    Latest,
    /// The first record at or after this time (ms since the epoch).
    Time(i64),
    /// One partition to one offset.
    Offset {
        partition: i32,
        offset: i64,
    },
}

impl std::str::FromStr for ReplayTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => return Ok(Self::Earliest),
            "latest" => return Ok(Self::Latest),
            _ => {}
        }
        if let Some((p, o)) = s.split_once(':')
            && let (Ok(partition), Ok(offset)) = (p.parse::<i32>(), o.parse::<i64>())
        {
            if partition < 0 || offset < 0 {
                return Err(format!("{s:?}: partition and offset must not be negative"));
            }
            return Ok(Self::Offset { partition, offset });
        }
        let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("{s:?}: expected earliest, latest, an RFC 3339 time (2026-11-27T09:00:00Z) or partition:offset")
        })?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| format!("{s:?} is before 1970"))?
            .as_millis() as i64;
        Ok(Self::Time(ms))
    }
}

/// A partition moved by a replay.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub topic: String,
    pub partition: i32,
    pub from: Option<i64>,
    pub to: i64,
    /// The log end when the replay was made.
    pub end: i64,
}

/// Why a replay was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "group {group} has {} live member(s) ({}); stop those hosts first: offsets of a group in use cannot be reset",
        members.len(),
        members.iter().map(|m| format!("{} on {}", m.client_id, m.host)).collect::<Vec<_>>().join(", ")
    )]
    LiveMembers { group: String, members: Vec<Member> },
    #[error("topic {topic} has no partition {partition}")]
    NoSuchPartition { topic: String, partition: i32 },
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// Resets `group`'s offsets on `topics`. Refuses while the group has live
/// members (they would overwrite the reset with their own commits).
pub fn replay(
    k: &KafkaConfig,
    group: &str,
    topics: &[&str],
    to: &ReplayTo,
    timeout: Duration,
) -> Result<Vec<Moved>, ReplayError> {
    let view = describe(k, group, topics, timeout)?;
    if !view.members.is_empty() {
        return Err(ReplayError::LiveMembers {
            group: group.to_owned(),
            members: view.members,
        });
    }
    let consumer = observer(k, group)?;
    let mut moved = Vec::new();
    let mut tpl = TopicPartitionList::new();
    // Begin and end of each partition, for earliest/latest and clamping.
    let mut marks = HashMap::new();
    for p in &view.partitions {
        let (low, high) = consumer
            .fetch_watermarks(&p.topic, p.partition, timeout)
            .map_err(|e| unreachable(k, timeout, e))?;
        marks.insert((p.topic.clone(), p.partition), (low, high));
    }
    let by_time = if let ReplayTo::Time(ms) = to {
        let mut ask = TopicPartitionList::new();
        for p in &view.partitions {
            ask.add_partition_offset(&p.topic, p.partition, Offset::Offset(*ms))
                .map_err(|e| unreachable(k, timeout, e))?;
        }
        let answer = consumer
            .offsets_for_times(ask, timeout)
            .map_err(|e| unreachable(k, timeout, e))?;
        answer
            .elements()
            .iter()
            .map(|e| ((e.topic().to_owned(), e.partition()), e.offset()))
            .collect::<HashMap<_, _>>()
    } else {
        HashMap::new()
    };
    if let ReplayTo::Offset { partition, .. } = to
        && !view.partitions.iter().any(|p| p.partition == *partition)
    {
        return Err(ReplayError::NoSuchPartition {
            topic: topics.first().copied().unwrap_or_default().to_owned(),
            partition: *partition,
        });
    }
    for p in &view.partitions {
        let key = (p.topic.clone(), p.partition);
        let (low, high) = marks[&key];
        let target = match to {
            ReplayTo::Earliest => low,
            ReplayTo::Latest => high,
            ReplayTo::Time(_) => match by_time.get(&key) {
                Some(Offset::Offset(o)) => *o,
                // No record at or after that time.
                _ => high,
            },
            ReplayTo::Offset { partition, offset } => {
                if p.partition != *partition || Some(p.topic.as_str()) != topics.first().copied() {
                    continue;
                }
                (*offset).clamp(low, high)
            }
        };
        tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(target))
            .map_err(|e| unreachable(k, timeout, e))?;
        moved.push(Moved {
            topic: p.topic.clone(),
            partition: p.partition,
            from: p.committed,
            to: target,
            end: high,
        });
    }
    if tpl.count() > 0 {
        consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| unreachable(k, timeout, e))?;
    }
    Ok(moved)
}

/// A consumer for reading records again: a group of its own that commits
/// nothing, so no live group notices it; partitions are assigned by hand.
pub(crate) fn reader(k: &KafkaConfig) -> Result<BaseConsumer, KafkaError> {
    client_config(k)
        .set(
            "group.id",
            format!("persona-bus-replay-{}", ulid::Ulid::new()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| KafkaError::Client(e.to_string()))
}

/// The ids of the events between each moved partition's new offset and
/// its end at replay time: the events the group will see again.
pub fn replayed_event_ids(
    k: &KafkaConfig,
    moved: &[Moved],
    timeout: Duration,
) -> Result<Vec<String>, KafkaError> {
    let wanted: Vec<&Moved> = moved.iter().filter(|m| m.to < m.end).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let consumer = reader(k)?;
    let mut tpl = TopicPartitionList::new();
    for m in &wanted {
        tpl.add_partition_offset(&m.topic, m.partition, Offset::Offset(m.to))
            .map_err(|e| KafkaError::Client(e.to_string()))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    let mut left: HashMap<(String, i32), i64> = wanted
        .iter()
        .map(|m| ((m.topic.clone(), m.partition), m.end))
        .collect();
    let mut ids = Vec::new();
    let mut last_progress = Instant::now();
    while !left.is_empty() {
        if last_progress.elapsed() > timeout {
            return Err(unreachable(
                k,
                timeout,
                "reading the replayed records stalled",
            ));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(|e| unreachable(k, timeout, e))?;
        last_progress = Instant::now();
        let key = (m.topic().to_owned(), m.partition());
        let Some(end) = left.get(&key).copied() else {
            continue;
        };
        if m.offset() < end {
            // A framed record's id is in its headers (no schema needed).
            let id = match m.payload() {
                Some(v) if crate::schemas::is_framed(v) => Some(super::wire::framed_event_id(
                    &super::group::headers_of(&m),
                    &super::group::Position::of(&m).to_string(),
                )),
                v => super::wire::WireEvent::decode(v).ok().map(|e| e.id),
            };
            ids.extend(id);
        }
        if m.offset() + 1 >= end {
            left.remove(&key);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_consumer_protocol_assignment() {
        let mut b = Vec::new();
        b.extend(0i16.to_be_bytes());
        b.extend(2i32.to_be_bytes());
        for (name, parts) in [("events", &[0i32, 3][..]), ("actions", &[5i32][..])] {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        assert_eq!(
            parse_assignment(&b),
            vec![
                ("events".into(), 0),
                ("events".into(), 3),
                ("actions".into(), 5)
            ]
        );
        // Truncated input gives what was read, never a panic.
        assert_eq!(
            parse_assignment(&b[..b.len() - 10]),
            vec![("events".into(), 0), ("events".into(), 3)]
        );
        assert!(parse_assignment(&[]).is_empty());
    }

    #[test]
    fn replay_targets_parse() {
        assert_eq!("earliest".parse(), Ok(ReplayTo::Earliest));
        assert_eq!("latest".parse(), Ok(ReplayTo::Latest));
        assert_eq!(
            "3:42".parse(),
            Ok(ReplayTo::Offset {
                partition: 3,
                offset: 42
            })
        );
        assert_eq!(
            "2026-11-27T09:00:00Z".parse::<ReplayTo>(),
            Ok(ReplayTo::Time(1_795_770_000_000))
        );
        let err = "yesterday".parse::<ReplayTo>().unwrap_err();
        assert!(err.contains("expected earliest, latest"), "{err}");
        assert!("-1:5".parse::<ReplayTo>().is_err());
    }
}
