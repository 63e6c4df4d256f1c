//! Creates the plan's topics when they are missing, and gives existing ones
//! the configured retention (plan phase 4: retention per topic).

use super::{KafkaError, client_config};
use crate::kafka::config::KafkaConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Creates every configured topic that does not exist yet, with the
/// configured partitions, replication and retention. An existing topic
/// whose `retention.ms` differs is altered to the configured one, keeping
/// its other settings; its partitions are left alone.
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
    let mut existing = Vec::new();
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, partitions = k.partitions, "created Kafka topic"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(topic),
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    for t in k.topics.all() {
        if existing.contains(&t.name) {
            let want = (t.retention_hours * 3_600_000).to_string();
            runtime.block_on(set_retention(&admin, &options, &t.name, &want))?;
        }
    }
    Ok(())
}

/// Sets `retention.ms` of an existing topic to `want` if it differs.
/// AlterConfigs replaces a topic's whole set of dynamic settings, so the
/// ones it has (an operator's `cleanup.policy`, our `min.insync.replicas`)
/// are sent again beside it.
async fn set_retention(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    topic: &str,
    want: &str,
) -> Result<(), KafkaError> {
    let fail = |reason: String| KafkaError::Topic {
        topic: topic.to_owned(),
        reason,
    };
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], options)
        .await
        .map_err(|e| fail(format!("cannot read its settings: {e}")))?;
    let Some(Ok(config)) = described.into_iter().next() else {
        return Err(fail("cannot read its settings".into()));
    };
    let dynamic: Vec<(String, String)> = config
        .entries
        .iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic && !e.is_sensitive)
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    let now = dynamic
        .iter()
        .find(|(name, _)| name == "retention.ms")
        .map(|(_, v)| v.as_str());
    if now == Some(want) {
        return Ok(());
    }
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (name, value) in &dynamic {
        alter = alter.set(name, value);
    }
    alter = alter.set("retention.ms", want);
    let altered = admin
        .alter_configs([&alter], options)
        .await
        .map_err(|e| fail(format!("cannot set retention.ms: {e}")))?;
    if let Some(Err((_, code))) = altered.into_iter().next() {
        return Err(fail(format!("cannot set retention.ms: {code}")));
    }
    tracing::info!(
        topic,
        from_ms = now.unwrap_or("the broker's default"),
        to_ms = want,
        "set the topic's retention"
    );
    Ok(())
}
