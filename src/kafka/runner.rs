//! The processing loop, in at-least-once mode.
//!
//! Records are read in batches of at most `commit_interval_ms` or
//! `max_batch_records`. Each record's outputs (campaign, suppressed or
//! dead-letter record) are produced as it is processed; at the end of the
//! batch the producer is flushed, and only when every output is
//! acknowledged are the consumed offsets committed. A crash between the two
//! repeats that batch's outputs on restart, never loses them. The same
//! commit runs when partitions are revoked, so a rebalance hands over a
//! committed position.
//!
//! The batch boundary is the seam for exactly-once: there the flush and
//! commit become a transaction commit carrying the offsets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, Producer};
use tracing::{debug, info, warn};

use super::{
    DeliveryTracker, LeadProducer, Role, SetupError, check_topics, client_config, headers, lock,
    send,
};
use crate::config::Config;
use crate::domain::{Lead, Score};
use crate::error::{Failure, Stage};
use crate::pipeline::{Input, Outcome, Pipeline, PipelineSettings, SourcePosition, Tally};
use crate::stages::encode::Encoder;
use crate::stages::route::Destination;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("outputs were not acknowledged, offsets not committed: {0}")]
    Delivery(String),
    #[error("cannot write dead letter to {topic:?}: {source}")]
    DeadLetter { topic: String, source: KafkaError },
    #[error("cannot subscribe to {topic:?}: {source}")]
    Subscribe { topic: String, source: KafkaError },
}

/// How `leadflow run` ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop once every assigned partition has been read to its end and
    /// committed, instead of waiting for more records.
    pub until_drained: bool,
}

/// Consumer-side state that rebalance callbacks need: they run inside
/// `poll`, so they see the loop's state between two records.
struct RunContext {
    input: String,
    producer: Arc<LeadProducer>,
    delivery_timeout: Duration,
    /// Next offset to commit per input partition, for processed records.
    pending: Mutex<BTreeMap<i32, i64>>,
    /// Partitions read to their end since their last record.
    at_end: Mutex<BTreeSet<i32>>,
    /// A fatal error raised inside a callback, for the loop to return.
    failure: Mutex<Option<RunError>>,
}

impl ClientContext for RunContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // End of partition is how `--until-drained` learns it is done, not a fault.
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            warn!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for RunContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            // Hand over a committed position so the next owner does not
            // repeat what this process already produced.
            if let Err(e) = self.commit(consumer) {
                warn!(error = %e, "commit before revoke failed; the next owner may repeat some outputs");
                if matches!(e, RunError::Delivery(_)) {
                    lock(&self.failure).get_or_insert(e);
                }
            }
            let mut pending = lock(&self.pending);
            let mut at_end = lock(&self.at_end);
            for tp in revoked.elements() {
                pending.remove(&tp.partition());
                at_end.remove(&tp.partition());
            }
            info!(partitions = revoked.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let partitions: Vec<i32> = assigned
                .elements()
                .iter()
                .map(|tp| tp.partition())
                .collect();
            info!(?partitions, "partitions assigned");
        }
    }
}

impl RunContext {
    /// Waits for every output produced so far, then commits the offsets of
    /// the records that produced them.
    fn commit(&self, consumer: &BaseConsumer<Self>) -> Result<(), RunError> {
        let mut pending = lock(&self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        self.producer
            .flush(self.delivery_timeout)
            .map_err(|e| RunError::Delivery(e.to_string()))?;
        if let Some(failure) = self.producer.context().take() {
            return Err(RunError::Delivery(failure));
        }
        let mut offsets = TopicPartitionList::with_capacity(pending.len());
        for (partition, offset) in pending.iter() {
            // Cannot fail for a non-negative offset.
            let _ = offsets.add_partition_offset(&self.input, *partition, Offset::Offset(*offset));
        }
        match consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => {
                debug!(partitions = pending.len(), "offsets committed");
                pending.clear();
            }
            // Outputs are safe; the offsets are retried with the next batch.
            // If the partitions moved, their next owner repeats some outputs.
            Err(e) => warn!(error = %e, "offset commit failed; will retry"),
        }
        Ok(())
    }
}

/// Runs the pipeline until `shutdown` is set (or the input is drained, with
/// [`RunOptions::until_drained`]) and returns what it did.
pub fn run(config: &Config, options: RunOptions, shutdown: &AtomicBool) -> Result<Tally, RunError> {
    let kafka = &config.kafka;
    let topics = &config.topics;
    let delivery_timeout = Duration::from_millis(config.pipeline.delivery_timeout_ms);
    // Reference data and rules first: a bad rules file fails before any I/O.
    let mut pipeline = Pipeline::new(PipelineSettings::from_config(config)?);

    let delivery_timeout_ms = config.pipeline.delivery_timeout_ms.to_string();
    let producer_defaults = [
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        // Java's default partitioner, so a key lands where Java clients put it.
        ("partitioner", "murmur2_random"),
        ("message.timeout.ms", delivery_timeout_ms.as_str()),
    ];
    let producer: Arc<LeadProducer> = Arc::new(
        client_config(kafka, Role::Producer, &producer_defaults)
            .create_with_context(DeliveryTracker::default())
            .map_err(SetupError::Client)?,
    );

    let consumer_defaults = [
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
    ];
    let mut consumer_config = client_config(kafka, Role::Consumer, &consumer_defaults);
    // Offsets are committed by the loop only, after their outputs are acknowledged.
    consumer_config.set("group.id", &kafka.group_id);
    consumer_config.set("enable.auto.commit", "false");
    consumer_config.set("enable.auto.offset.store", "false");
    consumer_config.set("enable.partition.eof", "true");
    let context = RunContext {
        input: topics.input.clone(),
        producer: Arc::clone(&producer),
        delivery_timeout,
        pending: Mutex::default(),
        at_end: Mutex::default(),
        failure: Mutex::default(),
    };
    let consumer: BaseConsumer<RunContext> = consumer_config
        .create_with_context(context)
        .map_err(SetupError::Client)?;

    check_topics(consumer.client(), kafka, &config.all_topics())?;
    consumer
        .subscribe(&[&topics.input])
        .map_err(|source| RunError::Subscribe {
            topic: topics.input.clone(),
            source,
        })?;
    info!(input = %topics.input, group = %kafka.group_id, "consuming");

    let sink = Sink::new(&producer, config);
    let mut tally = Tally::default();
    let commit_interval = Duration::from_millis(config.pipeline.commit_interval_ms);
    let mut last_report = Instant::now();

    while !shutdown.load(Ordering::Relaxed) {
        let deadline = Instant::now() + commit_interval;
        let mut batch = 0;
        while batch < config.pipeline.max_batch_records && !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match consumer.poll(deadline - now) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    lock(&consumer.context().at_end).insert(partition);
                }
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                Some(Ok(message)) => {
                    batch += 1;
                    let partition = message.partition();
                    let next = message.offset() + 1;
                    handle(&message, &mut pipeline, &sink, &mut tally)?;
                    let context = consumer.context();
                    lock(&context.pending).insert(partition, next);
                    lock(&context.at_end).remove(&partition);
                }
            }
            if let Some(error) = lock(&consumer.context().failure).take() {
                return Err(error);
            }
        }
        consumer.context().commit(&consumer)?;
        producer.poll(Duration::ZERO);
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let expired = pipeline.expire_dedupe();
            info!(
                ?tally,
                dedupe_keys = pipeline.dedupe_keys(),
                expired,
                "progress"
            );
        }
        if options.until_drained && drained(&consumer) {
            info!("input drained");
            break;
        }
    }
    consumer.context().commit(&consumer)?;
    consumer.unsubscribe();
    info!(?tally, "stopped");
    Ok(tally)
}

/// Every assigned partition read to its end, and nothing left to commit.
fn drained(consumer: &BaseConsumer<RunContext>) -> bool {
    let Ok(assignment) = consumer.assignment() else {
        return false;
    };
    let context = consumer.context();
    let at_end = lock(&context.at_end);
    assignment.count() > 0
        && lock(&context.pending).is_empty()
        && assignment
            .elements()
            .iter()
            .all(|tp| at_end.contains(&tp.partition()))
}

/// Processes one record and produces its output, if it has one.
fn handle(
    message: &BorrowedMessage<'_>,
    pipeline: &mut Pipeline,
    sink: &Sink<'_>,
    tally: &mut Tally,
) -> Result<(), RunError> {
    let source = SourcePosition {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
    };
    let timestamp_ms = message.timestamp().to_millis();
    let outcome = pipeline.process(Input {
        value: message.payload(),
        timestamp_ms,
        source,
    });
    let outcome = match outcome {
        Outcome::Routed {
            destination,
            ref lead,
            ref score,
        } => match sink.send_lead(pipeline, source, timestamp_ms, (destination, lead, score)) {
            Ok(()) => outcome,
            // Rather than stop the pipeline, the record becomes a dead letter.
            Err(failure) => Outcome::Failed(failure),
        },
        other => other,
    };
    if let Outcome::Failed(failure) = &outcome {
        let dlq = sink.config.topics.dead_letter.as_str();
        let mut record = BaseRecord::<[u8], [u8]>::to(dlq).headers(headers::dead_letter(
            message.headers(),
            source,
            pipeline.version(),
            failure,
        ));
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(ts) = timestamp_ms {
            record = record.timestamp(ts);
        }
        send(sink.producer, record).map_err(|source| RunError::DeadLetter {
            topic: dlq.to_owned(),
            source,
        })?;
    }
    tally.record(&outcome, pipeline.routing());
    Ok(())
}

/// Where outputs go and how they are encoded: one encoder per route (in
/// table order) and one for the suppressed topic.
struct Sink<'a> {
    producer: &'a LeadProducer,
    config: &'a Config,
    routes: Vec<Encoder>,
    suppressed: Encoder,
}

impl<'a> Sink<'a> {
    fn new(producer: &'a LeadProducer, config: &'a Config) -> Sink<'a> {
        let output = config.topics.output_format;
        Sink {
            producer,
            config,
            routes: config
                .routes
                .iter()
                .map(|route| Encoder::new(route.format.unwrap_or(output)))
                .collect(),
            suppressed: Encoder::new(output),
        }
    }

    /// Produces a routed lead to each of its campaign topics, or to the
    /// suppressed topic. A lead that cannot be encoded, or whose record the
    /// broker will never take (too large, say), fails at the produce stage.
    fn send_lead(
        &self,
        pipeline: &Pipeline,
        source: SourcePosition<'_>,
        timestamp_ms: Option<i64>,
        (destination, lead, score): (Destination, &Lead, &Score),
    ) -> Result<(), Failure> {
        let key = lead.dedupe_key.to_hex();
        let mut lead_headers = headers::LeadHeaders {
            storefront: lead.storefront.as_str(),
            grade: score.grade.as_str(),
            rules_version: &score.rules_version,
            suppressed_reason: None,
        };
        let targets: Vec<(&str, Option<&str>, &Encoder)> = match destination {
            Destination::Campaigns(set) => set
                .iter()
                .filter_map(|i| Some((pipeline.routing().routes().get(i)?, self.routes.get(i)?)))
                .map(|(route, encoder)| {
                    (route.topic.as_str(), Some(route.campaign.as_str()), encoder)
                })
                .collect(),
            Destination::Suppressed(reason) => {
                lead_headers.suppressed_reason = Some(reason.as_str());
                vec![(
                    self.config.topics.suppressed.as_str(),
                    None,
                    &self.suppressed,
                )]
            }
        };
        for (topic, campaign, encoder) in targets {
            let payload = encoder
                .encode(lead, score, destination, campaign)
                .map_err(|e| Failure::new(Stage::Produce, &e))?;
            let mut record = BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(payload.as_slice())
                .headers(headers::output(source, pipeline.version(), lead_headers));
            if let Some(ts) = timestamp_ms {
                record = record.timestamp(ts);
            }
            send(self.producer, record).map_err(|e| Failure {
                stage: Stage::Produce,
                class: "produce_rejected",
                message: format!("{topic}: {e}"),
            })?;
        }
        Ok(())
    }
}
