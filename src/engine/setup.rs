//! One life's clients, made and checked before anything is read: the
//! transactional producer, the group consumer, the restorer, the topics
//! (existence, partition counts, co-partitioning, configurations) and the
//! output schemas' registry ids. A failure here ends start-up in one line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use tracing::info;

use super::events::RunContext;
use super::schemas::schema_registry;
use super::topology::Topology;
use super::{RunError, RunOptions};
use crate::config::{Config, ProcessingGuarantee};
use crate::health::Observed;
use crate::kafka::purge::{Purger, delete_records};
use crate::kafka::txn::Txn;
use crate::kafka::{
    DeliveryTracker, LeadProducer, Logged, RECORD_HEADROOM, Role, SetupError, check_topics,
    client_config, topics,
};
use crate::registry::RegistryClient;

/// What one life of the pipeline runs with.
pub struct Clients {
    pub producer: Arc<LeadProducer>,
    /// Shared with the second hop's queues (`SecondHop`).
    pub consumer: Arc<BaseConsumer<RunContext>>,
    /// Reads changelogs, and asks for watermarks while the consumer's own
    /// connection is busy with long-polling fetches.
    pub restorer: BaseConsumer<Logged>,
    /// Where writer schemas of `confluent-avro` input come from.
    pub registry: Option<RegistryClient>,
    /// Registry ids of the output schemas by topic.
    pub schema_ids: HashMap<String, u32>,
    /// Deletes what was committed from the repartition topic.
    pub purger: Option<Purger>,
}

/// Makes the clients, checks the topics, fences the previous transaction
/// and subscribes.
pub fn connect(
    config: &Config,
    options: RunOptions,
    observed: &Observed,
) -> Result<Clients, RunError> {
    // Output schemas are registered (or found) before anything is read,
    // so every record written names its schema's id.
    let (registry, schema_ids) = schema_registry(config)?;
    let exactly_once = config.pipeline.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    let producer = producer(config, exactly_once, observed)?;
    let restorer = restorer(config)?;
    let topology = check_topology(config, options, &restorer)?;
    let timeout = Duration::from_millis(config.pipeline.delivery_timeout_ms);
    let txn = Txn::new(Arc::clone(&producer), exactly_once, timeout);
    let consumer = Arc::new(consumer(
        config,
        RunContext::new(topology, txn, observed.clone()),
    )?);
    let purger = match consumer.context().topology.repartition_topic() {
        Some(topic) if !options.mock_cluster => {
            let kafka = &config.kafka;
            let delete = delete_records(kafka, topic, purge_timeout(kafka))?;
            let purges = observed.metrics.repartition_purges.clone();
            Some(Purger::new(topic, delete, purges).map_err(|e| {
                RunError::Setup(SetupError::Limit(format!(
                    "cannot start the purge's thread: {e}"
                )))
            })?)
        }
        _ => None,
    };
    if exactly_once {
        // Fences any earlier producer with this transactional.id and
        // aborts what it left open.
        let id = config.transactional_id();
        producer
            .init_transactions(timeout)
            .map_err(|source| RunError::InitTransactions {
                id: id.clone(),
                source,
            })?;
        info!(transactional_id = %id, "exactly-once");
    }
    let subscriptions = consumer.context().topology.subscriptions();
    consumer
        .subscribe(&subscriptions)
        .map_err(|source| RunError::Subscribe {
            topics: subscriptions.iter().map(|t| (*t).to_owned()).collect(),
            source,
        })?;
    let group = &config.kafka.group_id;
    match options.http_address {
        Some(http) => info!(topics = ?subscriptions, %group, %http, "consuming"),
        None => info!(topics = ?subscriptions, %group, "consuming"),
    }
    Ok(Clients {
        producer,
        consumer,
        restorer,
        registry,
        schema_ids,
        purger,
    })
}

/// How long one purge waits for the brokers.
pub fn purge_timeout(kafka: &crate::config::KafkaConfig) -> Duration {
    Duration::from_millis(kafka.connect_timeout_ms.min(5_000))
}

fn producer(
    config: &Config,
    exactly_once: bool,
    observed: &Observed,
) -> Result<Arc<LeadProducer>, RunError> {
    let delivery_timeout_ms = config.pipeline.delivery_timeout_ms.to_string();
    // Room for the largest record leadflow writes from an input.
    let largest = config
        .pipeline
        .max_record_bytes
        .saturating_add(RECORD_HEADROOM);
    let message_max_bytes = largest.to_string();
    let defaults = [
        ("message.max.bytes", message_max_bytes.as_str()),
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        // Fewer bytes for the broker to write: with the changelog, a lead
        // is about three records. lz4 costs the least CPU per byte saved.
        ("compression.type", "lz4"),
        // Java's default partitioner, so a key lands where Java clients put it.
        ("partitioner", "murmur2_random"),
        ("message.timeout.ms", delivery_timeout_ms.as_str()),
        // A transaction left open by a crash blocks read_committed readers
        // (and committed-offset reads) until it times out or a restart fences
        // it, so it is kept as short as delivery allows (librdkafka requires
        // message.timeout.ms <= transaction.timeout.ms).
        ("transaction.timeout.ms", delivery_timeout_ms.as_str()),
        // Broker reachability for readiness, seen from the producer's own
        // polling thread.
        ("statistics.interval.ms", "5000"),
    ];
    let mut producer_config = client_config(&config.kafka, Role::Producer, &defaults);
    let allowed = producer_config
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if allowed < largest {
        return Err(SetupError::Limit(format!(
            "kafka.producer message.max.bytes={allowed} is below the {largest} bytes leadflow may write (pipeline.max_record_bytes={} plus {RECORD_HEADROOM} for a dead letter's headers); raise it or lower pipeline.max_record_bytes",
            config.pipeline.max_record_bytes,
        ))
        .into());
    }
    if exactly_once {
        producer_config.set("transactional.id", config.transactional_id());
    }
    // What it forwarded to the repartition topic: a catch-up reads up to it.
    let tracker = DeliveryTracker::with_health(Arc::clone(&observed.health))
        .tracking(config.repartition_topic().as_deref());
    Ok(Arc::new(
        producer_config
            .create_with_context(tracker)
            .map_err(SetupError::Client)?,
    ))
}

fn consumer(config: &Config, context: RunContext) -> Result<BaseConsumer<RunContext>, RunError> {
    let defaults = [
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
        // A rebalance moves only the partitions that change owner, so the
        // others keep their state and keep flowing.
        ("partition.assignment.strategy", "cooperative-sticky"),
        // Consumer lag and broker reachability come from these.
        ("statistics.interval.ms", "5000"),
    ];
    let mut consumer_config = client_config(&config.kafka, Role::Consumer, &defaults);
    // Offsets are committed by the loop only, after their outputs are acknowledged.
    consumer_config.set("group.id", &config.kafka.group_id);
    consumer_config.set("enable.auto.commit", "false");
    consumer_config.set("enable.auto.offset.store", "false");
    // Offset resets are reported only as warnings (see
    // `events::parse_offset_reset`), whatever the log filter.
    consumer_config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    Ok(consumer_config
        .create_with_context(context)
        .map_err(SetupError::Client)?)
}

fn restorer(config: &Config) -> Result<BaseConsumer<Logged>, RunError> {
    let group = format!("{}-restore", config.kafka.group_id);
    Ok(crate::kafka::reader(&config.kafka, &group).map_err(SetupError::Client)?)
}

/// Checks that every topic exists and is configured to keep what leadflow
/// writes (warning about what should change), and that the changelog is
/// co-partitioned with the topic dedupe runs on.
fn check_topology(
    config: &Config,
    options: RunOptions,
    client: &BaseConsumer<Logged>,
) -> Result<Topology, RunError> {
    let kafka = &config.kafka;
    let all_topics = config.all_topics();
    let names: Vec<&str> = all_topics.iter().map(String::as_str).collect();
    let counts = check_topics(client.client(), kafka, &names)?;
    let partitions_of = |name: &str| {
        names
            .iter()
            .zip(&counts)
            .find(|(n, _)| **n == name)
            .map_or(0, |(_, count)| *count)
    };
    if !options.mock_cluster {
        let roles = topics::roles(config);
        let roles: Vec<(&str, topics::TopicRole)> = roles
            .iter()
            .map(|(name, role)| (name.as_str(), *role))
            .collect();
        let max_record_bytes = config.pipeline.max_record_bytes;
        for (topic, advice) in topics::check_configs_blocking(kafka, &roles, max_record_bytes)? {
            tracing::warn!(topic, "{advice}");
        }
    }
    let repartition = config.repartition_topic();
    let changelog = config.changelog_topic();
    let processed = repartition.as_deref().unwrap_or(&config.topics.input);
    if partitions_of(&changelog) != partitions_of(processed) {
        return Err(SetupError::BadTopic {
            topic: changelog.clone(),
            reason: format!(
                "has {} partitions, but must have as many as {processed:?} ({})",
                partitions_of(&changelog),
                partitions_of(processed)
            ),
        }
        .into());
    }
    let exactly_once = config.pipeline.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    Ok(Topology {
        input: config.topics.input.clone(),
        repartition: repartition.map(|name| {
            let count = i32::try_from(partitions_of(&name)).unwrap_or(i32::MAX);
            (name, count)
        }),
        changelog,
        suppressed: config.topics.suppressed.clone(),
        dead_letter: config.topics.dead_letter.clone(),
        passthrough: options
            .passthrough
            .then(|| config.routes.first().map(|r| r.topic.clone()))
            .flatten(),
        changes_after_outputs: !exactly_once,
    })
}
