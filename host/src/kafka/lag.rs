//! Consumer lag for `/metrics` and the alerts, read from the broker at most
//! once per [`FRESH_FOR`] per group.
//!
//! Reading a group's lag takes a group list, metadata and one watermark
//! request per partition. Done on every scrape with a new client each time,
//! it was the costliest thing the host did while a dashboard (a scrape every
//! 2 s) or a benchmark (every 100 ms) watched it: host CPU per event under a
//! backlog went from 46-57 to 66 us. Lag moves slowly next to a scrape
//! interval, so a sample serves every reader until it is [`FRESH_FOR`] old,
//! and each group keeps one observer client for the life of the host.

use super::KafkaError;
use super::admin::{self, GroupView};
use crate::kafka::config::KafkaConfig;
use persona_bus_model::sync::Locked;
use rdkafka::consumer::BaseConsumer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a lag sample serves before the broker is asked again.
pub const FRESH_FOR: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct LagReader {
    groups: Mutex<HashMap<String, Arc<Mutex<Group>>>>,
    /// Samples taken from the broker (`persona_bus_consumer_lag_reads_total`).
    reads: AtomicU64,
}

#[derive(Default)]
struct Group {
    observer: Option<BaseConsumer>,
    last: Option<(Instant, Result<Arc<GroupView>, String>)>,
}

impl LagReader {
    /// `group`'s lag on `topics`: the last sample if younger than
    /// `max_age`, else a new one (waiting up to `timeout` for the broker).
    /// Readers of one group wait for each other, so a burst of scrapes
    /// asks the broker once.
    pub fn read(
        &self,
        k: &KafkaConfig,
        group: &str,
        topics: &[&str],
        timeout: Duration,
        max_age: Duration,
    ) -> Result<Arc<GroupView>, String> {
        let entry = self
            .groups
            .locked()
            .entry(format!("{group}\0{}", topics.join(",")))
            .or_default()
            .clone();
        let mut g = entry.locked();
        if let Some((at, sample)) = &g.last
            && at.elapsed() < max_age
        {
            return sample.clone();
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let sample = g
            .sample(k, group, topics, timeout)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        g.last = Some((Instant::now(), sample.clone()));
        sample
    }

    /// How many times a group's lag was read from the broker.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

impl Group {
    fn sample(
        &mut self,
        k: &KafkaConfig,
        group: &str,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<GroupView, KafkaError> {
        let observer = match self.observer.take() {
            Some(o) => o,
            None => admin::observer(k, group)?,
        };
        let view = admin::describe_with(&observer, k, group, topics, timeout);
        // A client that failed is made again next time: after an outage a
        // fresh one finds the brokers at once.
        if view.is_ok() {
            self.observer = Some(observer);
        }
        view
    }
}
