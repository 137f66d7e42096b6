//! `leadflow topics`: create leadflow's topics and count what is in them.
//! Counting uses watermarks (high minus low), which for topics written
//! without transactions is the number of records.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::{Role, SetupError, check_topics, client_config};
use crate::config::KafkaConfig;

/// Creates each topic that does not exist yet, with `partitions` partitions.
/// Returns the names of the topics it created.
pub async fn create(
    kafka: &KafkaConfig,
    names: &[&str],
    partitions: i32,
) -> Result<Vec<String>, SetupError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, Role::Admin, &[])
        .create()
        .map_err(SetupError::Client)?;
    // Fail fast on an unreachable broker rather than waiting on the admin call.
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|source| SetupError::Unreachable {
            servers: kafka.bootstrap_servers.clone(),
            timeout_ms: kafka.connect_timeout_ms,
            source,
        })?;
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(SetupError::Client)?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(SetupError::BadTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    wait_until_visible(admin.inner(), kafka, names)?;
    Ok(created)
}

/// Waits until every topic has a leader for each partition in the broker's
/// metadata. A created topic takes a moment to propagate, and a command run
/// right after `topics create` must find it.
fn wait_until_visible<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    kafka: &KafkaConfig,
    names: &[&str],
) -> Result<(), SetupError> {
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let metadata =
            client
                .fetch_metadata(None, timeout)
                .map_err(|source| SetupError::Unreachable {
                    servers: kafka.bootstrap_servers.clone(),
                    timeout_ms: kafka.connect_timeout_ms,
                    source,
                })?;
        let missing = names.iter().find(|name| {
            !metadata.topics().iter().any(|t| {
                t.name() == **name
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
        });
        match missing {
            None => return Ok(()),
            Some(name) if std::time::Instant::now() >= deadline => {
                return Err(SetupError::BadTopic {
                    topic: (*name).to_owned(),
                    reason: format!(
                        "created but not visible with leaders within {} ms",
                        kafka.connect_timeout_ms
                    ),
                });
            }
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Records held by each topic (the sum over partitions of high minus low watermark).
pub fn counts(kafka: &KafkaConfig, names: &[&str]) -> Result<Vec<u64>, SetupError> {
    let consumer: BaseConsumer = client_config(kafka, Role::Admin, &[])
        .create()
        .map_err(SetupError::Client)?;
    let partitions = check_topics(consumer.client(), kafka, names)?;
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    names
        .iter()
        .zip(partitions)
        .map(|(name, count)| {
            (0..count).try_fold(0u64, |sum, partition| {
                let (low, high) = consumer
                    .fetch_watermarks(name, partition as i32, timeout)
                    .map_err(|e| SetupError::BadTopic {
                        topic: (*name).to_owned(),
                        reason: e.to_string(),
                    })?;
                Ok(sum + u64::try_from(high - low).unwrap_or(0))
            })
        })
        .collect()
}
