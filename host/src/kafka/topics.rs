//! Creates the plan's topics when they are missing.

use super::{KafkaError, client_config};
use crate::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Creates every configured topic that does not exist yet, with the
/// configured partitions, replication and retention. Existing topics are
/// left alone.
///
/// With replication (`kafka.replication_factor` above 1) a record is
/// acknowledged (the outbox producer asks `acks=all`) once it is on all
/// in-sync replicas, and the topic requires at least two of them
/// (`min.insync.replicas`), so losing the leader loses no acknowledged
/// record and one broker may be down without stopping writes.
pub fn ensure(k: &KafkaConfig, timeout: Duration) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(k)
        .create()
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    let retention: Vec<String> = k
        .topics
        .all()
        .iter()
        .map(|t| (t.retention_hours * 3_600_000).to_string())
        .collect();
    let replication = i32::from(k.replication_factor);
    let min_insync = k
        .replication_factor
        .saturating_sub(1)
        .clamp(1, 2)
        .to_string();
    let new: Vec<NewTopic<'_>> = k
        .topics
        .all()
        .iter()
        .zip(&retention)
        .map(|(t, ms)| {
            let topic = NewTopic::new(&t.name, k.partitions, TopicReplication::Fixed(replication))
                .set("retention.ms", ms);
            if k.replication_factor > 1 {
                topic.set("min.insync.replicas", &min_insync)
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KafkaError::Client(e.to_string()))?;
    let results = runtime
        .block_on(admin.create_topics(&new, &options))
        .map_err(|e| KafkaError::Unreachable {
            brokers: k.brokers.clone(),
            waited: timeout,
            reason: e.to_string(),
        })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, partitions = k.partitions, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
