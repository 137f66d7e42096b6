//! `leadflow topics`: create leadflow's topics and count what is in them.
//! Counting reads every record with `read_committed`: watermarks would also
//! count transaction markers and aborted records, which exactly-once writes.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::collections::HashSet;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{ReadToEnd, Role, SetupError, check_topics, client_config, cluster_metadata};
use crate::config::KafkaConfig;

/// Creates each topic that does not exist yet, with `partitions` partitions;
/// those in `compacted` keep only the latest record per key. Returns the
/// names of the topics it created.
pub async fn create(
    kafka: &KafkaConfig,
    names: &[&str],
    partitions: i32,
    compacted: &[&str],
) -> Result<Vec<String>, SetupError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, Role::Admin, &[])
        .create()
        .map_err(SetupError::Client)?;
    // Fail fast on an unreachable broker rather than waiting on the admin call.
    cluster_metadata(admin.inner(), kafka)?;
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
            if compacted.contains(name) {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
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
        let metadata = cluster_metadata(client, kafka)?;
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

/// Committed records in each topic, read from the beginning to the end
/// with `read_committed`, one topic at a time (an end-of-partition event
/// names only the partition).
pub fn counts(kafka: &KafkaConfig, names: &[&str]) -> Result<Vec<u64>, SetupError> {
    let defaults = [
        ("group.id", "leadflow-topics-counts"),
        ("enable.auto.commit", "false"),
        ("isolation.level", "read_committed"),
        ("enable.partition.eof", "true"),
    ];
    let config = client_config(kafka, Role::Consumer, &defaults);
    let probe: BaseConsumer<ReadToEnd> = config
        .create_with_context(ReadToEnd)
        .map_err(SetupError::Client)?;
    let partitions = check_topics(probe.client(), kafka, names)?;
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let mut counts = Vec::with_capacity(names.len());
    for (name, count) in names.iter().zip(partitions) {
        let bad = |reason: String| SetupError::BadTopic {
            topic: (*name).to_owned(),
            reason,
        };
        let consumer: BaseConsumer<ReadToEnd> = config
            .create_with_context(ReadToEnd)
            .map_err(SetupError::Client)?;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = HashSet::new();
        for partition in 0..i32::try_from(count).unwrap_or(i32::MAX) {
            let (low, high) = consumer
                .fetch_watermarks(name, partition, timeout)
                .map_err(|e| bad(e.to_string()))?;
            if high > low {
                remaining.insert(partition);
                let _ = assignment.add_partition_offset(name, partition, Offset::Beginning);
            }
        }
        consumer.assign(&assignment).map_err(SetupError::Client)?;
        let mut records = 0u64;
        let mut last_progress = Instant::now();
        while !remaining.is_empty() {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(_)) => {
                    records += 1;
                    last_progress = Instant::now();
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    remaining.remove(&partition);
                }
                Some(Err(e)) => return Err(bad(e.to_string())),
                // Reading stalls only behind an open transaction, which the
                // broker aborts within leadflow's transaction timeout.
                None if last_progress.elapsed() > Duration::from_secs(60) => {
                    return Err(bad("no progress for 60 s: a transaction left open?".into()));
                }
                None => {}
            }
        }
        counts.push(records);
    }
    Ok(counts)
}
