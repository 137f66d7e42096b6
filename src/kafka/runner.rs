//! The processing loop, exactly-once (the default) or at-least-once.
//!
//! Records are read in batches of at most `commit_interval_ms` or
//! `max_batch_records`. Each record's outputs (campaign, suppressed or
//! dead-letter record) are produced as it is processed, and the batch ends
//! with a commit:
//!
//! - **exactly-once**: the batch is one Kafka transaction. The consumed
//!   offsets join it (`send_offsets_to_transaction`, with fresh group
//!   metadata) and it commits atomically. A retriable commit error is
//!   retried; one that requires an abort aborts, rolls the dedupe state back
//!   to the last commit and rewinds the consumer to the batch's first
//!   offsets, so the batch is processed again; a fatal one (fenced, say)
//!   ends the process with an error. The `transactional.id` is
//!   `GROUP-INSTANCE`, stable across restarts, so a restarted instance
//!   fences its predecessor.
//! - **at-least-once**: the producer is flushed and, only when every output
//!   is acknowledged, the offsets are committed. A crash between the two
//!   repeats that batch's outputs on restart, never loses them.
//!
//! The same commit runs when partitions are revoked, so a rebalance hands
//! over a committed position.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, Producer};
use tracing::{debug, info, warn};

use super::{
    DeliveryTracker, LeadProducer, Role, SetupError, check_topics, client_config, headers, lock,
    log_client_error, send,
};
use crate::config::{Config, ProcessingGuarantee};
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
    #[error("cannot start transactions as {id:?}: {source}")]
    InitTransactions { id: String, source: KafkaError },
    #[error("transaction failed: {0}")]
    Transaction(KafkaError),
    #[error("the consumer has no group metadata to commit offsets with")]
    NoGroupMetadata,
    /// The transaction was aborted; the batch must be processed again.
    #[error("transaction aborted: {0}")]
    Aborted(KafkaError),
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
    exactly_once: bool,
    /// A transaction is open (exactly-once only).
    in_transaction: AtomicBool,
    /// A commit ran inside a rebalance callback, for the loop to catch up.
    committed_in_callback: AtomicBool,
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
        log_client_error(error, reason);
    }
}

impl ConsumerContext for RunContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            // Hand over a committed position so the next owner does not
            // repeat what this process already produced.
            match self.commit(consumer) {
                Ok(()) => self.committed_in_callback.store(true, Ordering::Relaxed),
                // Under exactly-once the partitions' outputs are not
                // visible; stopping is the way to keep them from being lost
                // here and repeated there.
                Err(e) if self.exactly_once => {
                    lock(&self.failure).get_or_insert(e);
                }
                Err(e) => {
                    warn!(error = %e, "commit before revoke failed; the next owner may repeat some outputs");
                    if matches!(e, RunError::Delivery(_)) {
                        lock(&self.failure).get_or_insert(e);
                    }
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
    /// Commits the outputs of the records processed so far together with
    /// their offsets: one transaction under exactly-once, a flush and then
    /// an offset commit under at-least-once.
    fn commit(&self, consumer: &BaseConsumer<Self>) -> Result<(), RunError> {
        let mut pending = lock(&self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::with_capacity(pending.len());
        for (partition, offset) in pending.iter() {
            // Cannot fail for a non-negative offset.
            let _ = offsets.add_partition_offset(&self.input, *partition, Offset::Offset(*offset));
        }
        if self.exactly_once {
            self.commit_transaction(consumer, &offsets)?;
            pending.clear();
            return Ok(());
        }
        self.producer
            .flush(self.delivery_timeout)
            .map_err(|e| RunError::Delivery(e.to_string()))?;
        if let Some(failure) = self.producer.context().take() {
            return Err(RunError::Delivery(failure));
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

    /// Opens a transaction unless one is open.
    fn begin(&self) -> Result<(), RunError> {
        if self.exactly_once && !self.in_transaction.load(Ordering::Relaxed) {
            self.producer
                .begin_transaction()
                .map_err(RunError::Transaction)?;
            self.in_transaction.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Adds the offsets to the open transaction and commits it, retrying
    /// what librdkafka calls retriable until the delivery timeout.
    fn commit_transaction(
        &self,
        consumer: &BaseConsumer<Self>,
        offsets: &TopicPartitionList,
    ) -> Result<(), RunError> {
        // A batch of only duplicates and test leads produced nothing, but
        // its offsets still commit in a transaction.
        self.begin()?;
        let deadline = Instant::now() + self.delivery_timeout;
        let timeout = Duration::from_secs(10).min(self.delivery_timeout);
        let mut offsets_sent = false;
        loop {
            let attempt = if offsets_sent {
                Ok(())
            } else {
                // Fresh group metadata every time: a rebalance changes the
                // generation, and stale metadata would fence this process.
                let metadata = consumer.group_metadata().ok_or(RunError::NoGroupMetadata)?;
                self.producer
                    .send_offsets_to_transaction(offsets, &metadata, timeout)
            }
            .map(|()| offsets_sent = true)
            .and_then(|()| self.producer.commit_transaction(timeout));
            let error = match attempt {
                Ok(()) => {
                    self.in_transaction.store(false, Ordering::Relaxed);
                    debug!(partitions = offsets.count(), "transaction committed");
                    return Ok(());
                }
                Err(error) => error,
            };
            let (retriable, abortable) = match &error {
                KafkaError::Transaction(e) => (e.is_retriable(), e.txn_requires_abort()),
                _ => (false, false),
            };
            if retriable && Instant::now() < deadline {
                warn!(%error, "transaction commit failed; retrying");
                continue;
            }
            if abortable {
                warn!(%error, "transaction must be aborted; the batch will be processed again");
                self.producer
                    .abort_transaction(timeout)
                    .map_err(RunError::Transaction)?;
                self.in_transaction.store(false, Ordering::Relaxed);
                return Err(RunError::Aborted(error));
            }
            return Err(RunError::Transaction(error));
        }
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

    let exactly_once = config.pipeline.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    let delivery_timeout_ms = config.pipeline.delivery_timeout_ms.to_string();
    let producer_defaults = [
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        // Java's default partitioner, so a key lands where Java clients put it.
        ("partitioner", "murmur2_random"),
        ("message.timeout.ms", delivery_timeout_ms.as_str()),
        // A transaction left open by a crash blocks read_committed readers
        // (and committed-offset reads) until it times out or a restart fences
        // it, so it is kept as short as delivery allows (librdkafka requires
        // message.timeout.ms <= transaction.timeout.ms).
        ("transaction.timeout.ms", delivery_timeout_ms.as_str()),
    ];
    let mut producer_config = client_config(kafka, Role::Producer, &producer_defaults);
    let transactional_id = config.transactional_id();
    if exactly_once {
        producer_config.set("transactional.id", &transactional_id);
    }
    let producer: Arc<LeadProducer> = Arc::new(
        producer_config
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
        exactly_once,
        in_transaction: AtomicBool::new(false),
        committed_in_callback: AtomicBool::new(false),
        delivery_timeout,
        pending: Mutex::default(),
        at_end: Mutex::default(),
        failure: Mutex::default(),
    };
    let consumer: BaseConsumer<RunContext> = consumer_config
        .create_with_context(context)
        .map_err(SetupError::Client)?;

    check_topics(consumer.client(), kafka, &config.all_topics())?;
    if exactly_once {
        // Fences any earlier producer with this transactional.id and
        // aborts what it left open.
        producer
            .init_transactions(delivery_timeout)
            .map_err(|source| RunError::InitTransactions {
                id: transactional_id.clone(),
                source,
            })?;
        info!(transactional_id = %transactional_id, "exactly-once");
    }
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
        // First offset of each partition in this batch, to rewind to on abort.
        let mut batch_start: BTreeMap<i32, i64> = BTreeMap::new();
        let mut batch_tally = Tally::default();
        while batch < config.pipeline.max_batch_records && !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let polled = consumer.poll(deadline - now);
            let context = consumer.context();
            if context.committed_in_callback.swap(false, Ordering::Relaxed) {
                // A revoke committed the batch so far inside `poll`.
                pipeline.commit_batch();
                tally.merge(std::mem::take(&mut batch_tally));
                batch_start.clear();
            }
            if let Some(error) = lock(&context.failure).take() {
                return Err(error);
            }
            match polled {
                None => break,
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    lock(&context.at_end).insert(partition);
                }
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                Some(Ok(message)) => {
                    batch += 1;
                    let partition = message.partition();
                    batch_start.entry(partition).or_insert(message.offset());
                    context.begin()?;
                    handle(&message, &mut pipeline, &sink, &mut batch_tally)?;
                    lock(&context.pending).insert(partition, message.offset() + 1);
                    lock(&context.at_end).remove(&partition);
                }
            }
        }
        match consumer.context().commit(&consumer) {
            Ok(()) => {
                pipeline.commit_batch();
                tally.merge(batch_tally);
            }
            Err(RunError::Aborted(_)) => {
                // Nothing of the batch is visible: forget its state changes
                // and read its records again.
                pipeline.rollback_batch();
                rewind(&consumer, &topics.input, &batch_start)?;
            }
            Err(e) => return Err(e),
        }
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

/// Seeks each partition of an aborted batch back to the batch's first
/// record, and forgets what the batch had pending.
fn rewind(
    consumer: &BaseConsumer<RunContext>,
    topic: &str,
    batch_start: &BTreeMap<i32, i64>,
) -> Result<(), RunError> {
    let context = consumer.context();
    let mut pending = lock(&context.pending);
    let mut at_end = lock(&context.at_end);
    for (partition, offset) in batch_start {
        pending.remove(partition);
        at_end.remove(partition);
        consumer
            .seek(
                topic,
                *partition,
                Offset::Offset(*offset),
                Duration::from_secs(10),
            )
            .map_err(RunError::Transaction)?;
    }
    Ok(())
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
