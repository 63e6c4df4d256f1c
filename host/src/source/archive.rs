//! The audit logger (group `vibeman-audit-logger`): archives every event on
//! the events and actions topics into this device's SQLite, so `events
//! list` and the dashboard show events published and handled elsewhere, and
//! applies the outcomes other devices report on the executions topic.
//!
//! Every device must see every event, so each joins its own group,
//! `<audit_group>.<client_id>`; a group shared by all devices would split
//! the events between them. Events on partitions this device's event
//! processor owns are skipped: the processor writes their rows itself (on a
//! single device that is every event, so the archive costs nothing).

use crate::context::HostContext;
use crate::kafka::group::{self, GroupWork, Record};
use crate::kafka::wire::{ExecutionRecord, decode_record};
use crate::store::RemoteOutcome;
use crate::supervisor::{StartError, Supervisor};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

pub fn group_id(k: &crate::kafka::config::KafkaConfig) -> String {
    format!("{}.{}", k.audit_group, k.client_id)
}

/// The audit logger: its own group over every topic, other hosts'
/// execution records into the ledger.
pub struct AuditLogger;

impl super::Source for AuditLogger {
    fn start(
        self: Box<Self>,
        cx: &super::SourceContext,
        tasks: &Supervisor,
    ) -> Result<(), StartError> {
        let inner = cx.ctx.clone();
        let k = &inner.config.kafka;
        let group = group_id(k);
        let consumer = group::subscribe(
            k,
            &group,
            &[
                &k.topics.events.name,
                &k.topics.actions.name,
                &k.topics.executions.name,
            ],
            k.prefetch_kb / 4,
        )
        .map_err(|e| StartError::new("audit logger", e))?;
        let stop = tasks.token().clone();
        tasks.spawn("kafka-audit", move || {
            let work = Archive {
                inner,
                paused: HashSet::new(),
            };
            group::run_loop(&group, consumer, 5_000, &stop, work)
        })
    }
}

struct Archive {
    inner: Arc<HostContext>,
    /// Partitions paused because this device's event processor owns them.
    paused: HashSet<(String, i32)>,
}

impl GroupWork for Archive {
    /// This device's own execution records are skipped undecoded.
    fn keep(&self, m: &BorrowedMessage<'_>) -> bool {
        let k = &self.inner.config.kafka;
        !(m.topic() == k.topics.executions.name
            && m.headers().is_some_and(|hs| {
                hs.iter()
                    .any(|h| h.key == "origin-device" && h.value == Some(k.client_id.as_bytes()))
            }))
    }

    /// Pauses the events and actions partitions this device's event
    /// processor owns (it writes those rows itself; fetching them twice
    /// would only cost), and resumes those it gave up, from this group's
    /// own offsets, so nothing is missed when a partition moves away.
    fn tend(&mut self, consumer: &BaseConsumer) {
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        let k = &self.inner.config.kafka;
        let owned = &self.inner.processor_partitions;
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let mut now_paused = HashSet::new();
        for e in assigned.elements() {
            if e.topic() == k.topics.executions.name {
                continue;
            }
            let key = (e.topic().to_owned(), e.partition());
            if owned.contains(e.topic(), e.partition()) {
                if !self.paused.contains(&key) {
                    pause.add_partition(e.topic(), e.partition());
                }
                now_paused.insert(key);
            } else if self.paused.contains(&key) {
                resume.add_partition(e.topic(), e.partition());
            }
        }
        if pause.count() > 0 {
            let _ = consumer.pause(&pause);
        }
        if resume.count() > 0 {
            let _ = consumer.resume(&resume);
        }
        self.paused = now_paused;
    }

    fn handle(&mut self, records: &[Record]) -> Result<(), String> {
        archive(&self.inner, records)
    }
}

fn archive(inner: &HostContext, records: &[Record]) -> Result<(), String> {
    let k = &inner.config.kafka;
    // This device's event processor writes the events of its partitions.
    let mine = &inner.processor_partitions;
    let mut events = Vec::new();
    let mut outcomes = Vec::new();
    for r in records.iter().filter(|r| r.kept) {
        if r.at.topic == k.topics.executions.name {
            match r
                .value
                .as_deref()
                .map(serde_json::from_slice::<ExecutionRecord>)
            {
                // This device's own records (when headers were stripped).
                Some(Ok(x)) if x.device == k.client_id => {}
                Some(Ok(x)) => outcomes.push(RemoteOutcome {
                    event_id: x.event_id.into_owned(),
                    status: x.status.into_owned(),
                    error: x.error.map(Cow::into_owned),
                    processed_at: Some(x.processed_at.into_owned()),
                }),
                Some(Err(e)) => {
                    tracing::debug!(at = %r.at, error = %e, "not an execution record; skipped")
                }
                None => {}
            }
        } else if !mine.contains(&r.at.topic, r.at.partition) {
            // Undecodable events are the event processor's to dead-letter.
            // A framed record whose schema cannot be had now is skipped
            // here: the event processor of its partition holds it.
            let decoded = decode_record(
                &inner.schemas,
                r.value.as_deref(),
                || r.headers.clone(),
                &r.at,
                false,
            );
            if let Ok(e) = decoded {
                events.push(e);
            }
        }
    }
    let new = inner.store.archive(&events).map_err(|e| e.to_string())?;
    inner
        .store
        .apply_remote_outcomes(&outcomes)
        .map_err(|e| e.to_string())?;
    if new > 0 {
        tracing::debug!(events = new, "archived events from other devices");
    }
    Ok(())
}
