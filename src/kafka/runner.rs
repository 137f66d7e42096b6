//! The processing loop, exactly-once (the default) or at-least-once.
//!
//! Records are read in batches of at most `commit_interval_ms` or
//! `max_batch_records`. Each record's outputs (campaign, suppressed or
//! dead-letter record, and the dedupe changelog records of its state
//! changes) are produced as it is processed, and the batch ends with a
//! commit:
//!
//! - **exactly-once**: the batch is one Kafka transaction. The consumed
//!   offsets join it (`send_offsets_to_transaction`, with fresh group
//!   metadata) and it commits atomically. A retriable commit error is
//!   retried; one that requires an abort aborts, rolls the dedupe state back
//!   to the last commit and rewinds the consumer to the batch's first
//!   offsets, so the batch is processed again; a fatal one (fenced, say)
//!   ends the run with an error. The `transactional.id` is
//!   `GROUP-INSTANCE`, stable across restarts, so a restarted instance
//!   fences its predecessor.
//! - **at-least-once**: the producer is flushed and, only when every output
//!   is acknowledged, the offsets are committed. A crash between the two
//!   repeats that batch's outputs on restart, never loses them.
//!
//! Unless `pipeline.repartition` is off, raw leads are first re-keyed: each
//! is decoded and identified, and forwarded unchanged to the repartition
//! topic, to the partition its person-and-offer key hashes to. The same
//! loop reads that topic back and runs the whole pipeline there, so all
//! leads that dedupe compares share a partition, whichever process reads
//! them. Both hops commit in the loop's transactions.
//!
//! Dedupe state is kept per processed partition. When a partition is
//! assigned, it is paused, its state is restored from the changelog
//! (read_committed, to its end) between two batches, and it is resumed.
//! When one is revoked, the open batch is committed and its state dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, info, warn};

use super::purge::{Purgeable, Purger, delete_records};
use super::second_hop::SecondHop;
use super::{
    DeliveryTracker, LeadProducer, Logged, Role, SetupError, check_topics, client_config, copy_of,
    headers, lock, log_client_error, send,
};
use crate::config::{Config, ProcessingGuarantee};
use crate::domain::{Lead, Score};
use crate::error::{Failure, Stage};
use crate::health::Phase;
use crate::http::Observed;
use crate::metrics::{Batch, KindLabels, LeadOutcome, PartitionLabels, ResultLabels, Stopwatch};
use crate::pipeline::{
    Input, Outcome, Pipeline, PipelineSettings, Rekeyed, SourcePosition, StageClock, Tally,
};
use crate::registry::{Registration, RegistryClient};
use crate::reload::ReloadSlot;
use crate::stages::decode::{Format, WriterAnswer};
use crate::stages::dedupe::Change;
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
    #[error("cannot write to {topic:?}: {source}")]
    Produce { topic: String, source: KafkaError },
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: KafkaError,
    },
    #[error("cannot start transactions as {id:?}: {source}")]
    InitTransactions { id: String, source: KafkaError },
    #[error("transaction failed: {0}")]
    Transaction(KafkaError),
    #[error("the consumer has no group metadata to commit offsets with")]
    NoGroupMetadata,
    /// The transaction was aborted; the batch must be processed again.
    #[error("transaction aborted: {0}")]
    Aborted(KafkaError),
    /// The transaction stayed open past `transaction.timeout.ms`, so the
    /// coordinator aborted it (librdkafka says fenced): restart, not exit.
    #[error("the transaction outlived its timeout and was aborted by the broker: {0}")]
    TimedOut(KafkaError),
    /// At-least-once: the broker refused a record of the batch for good;
    /// the batch must be processed again with that record isolated.
    #[error("a record was refused: {0}")]
    Rejected(String),
    #[error("cannot restore dedupe state from {topic:?}: {reason}")]
    Restore { topic: String, reason: String },
    /// The registry could not be asked, so records that need a writer
    /// schema wait: the batch is processed again once it answers.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// A transaction call never returned: this life's producer is given
    /// up, and the next starts with fresh clients.
    #[error(transparent)]
    Wedged(#[from] super::Wedged),
    #[error("schema registry refused {file} under subject {subject:?}: {reason}")]
    SchemaRefused {
        subject: String,
        file: &'static str,
        reason: String,
    },
}

/// How `leadflow run` ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop once every assigned partition has been read to its end and
    /// committed, instead of waiting for more records.
    pub until_drained: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, for the log.
    pub http_address: Option<std::net::SocketAddr>,
    /// Copy input records unchanged to the first route's topic instead of
    /// processing them: the benchmarks' baseline, the same loop, clients
    /// and transactions with no stage in between.
    pub passthrough: bool,
    /// Running on librdkafka's mock cluster, which cannot describe topic
    /// configurations or delete records: the start-up check of topic
    /// configurations and the repartition purge are skipped.
    pub mock_cluster: bool,
}

/// Which of the loop's two input topics a partition belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hop {
    /// The raw input topic.
    Input,
    /// The repartition topic, read back after re-keying.
    Repartition,
}

type Part = (Hop, i32);

/// Consumer-side state that rebalance callbacks need: they run inside
/// `poll`, so they see the loop's state between two records.
struct RunContext {
    input: String,
    repartition: Option<String>,
    producer: Arc<LeadProducer>,
    exactly_once: bool,
    /// A transaction is open (exactly-once only).
    in_transaction: AtomicBool,
    /// When the open transaction began.
    began: Mutex<Option<Instant>>,
    /// A commit ran inside a rebalance callback, for the loop to catch up.
    committed_in_callback: AtomicBool,
    /// A transaction was aborted inside a rebalance callback: the loop
    /// rolls its batch back and rewinds.
    aborted_in_callback: AtomicBool,
    delivery_timeout: Duration,
    /// Next offset to commit per partition, for processed records.
    pending: Mutex<BTreeMap<Part, i64>>,
    /// Processed partitions assigned and paused, awaiting restore.
    to_restore: Mutex<BTreeSet<i32>>,
    /// Processed partitions revoked, whose state the loop drops.
    revoked: Mutex<Vec<i32>>,
    /// The partitions assigned now, kept from the rebalance events. A
    /// callback must not ask librdkafka: `assignment()` inside the revoke
    /// of a closing consumer waits forever (seen as a `kill -9` soak's run
    /// that never stopped on SIGTERM).
    assigned: Mutex<BTreeSet<(String, i32)>>,
    /// A fatal error raised inside a callback, for the loop to return.
    failure: Mutex<Option<RunError>>,
    /// This life of the pipeline failed (or a revoke's commit did): no
    /// callback commits anything from now on.
    failed: AtomicBool,
    observed: Observed,
    /// Partitions with a `consumer_lag` series, to remove when revoked.
    lag_series: Mutex<Vec<PartitionLabels>>,
    /// Offset resets librdkafka reported, for the loop to report.
    resets: Mutex<Vec<OffsetReset>>,
    /// Committed offsets of repartition partitions not yet purged.
    purgeable: Mutex<Purgeable>,
}

/// An offset reset on a consumed partition: the records from `from` on
/// were deleted (by retention, or `DeleteRecords`) before this consumer
/// read them, and librdkafka moved on to the log's start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OffsetReset {
    topic: String,
    partition: i32,
    from: i64,
}

/// The reset in a librdkafka `OFFSET` warning, which is the only report
/// of one when `auto.offset.reset` resets by itself: `TOPIC [P]: offset
/// reset (at offset N (leader epoch E), broker B) to offset BEGINNING ...`.
/// (`auto.offset.reset=error` would report it as a consumer error, but one
/// naming no partition, after which the partition stops until reassigned.)
fn parse_offset_reset(message: &str) -> Option<OffsetReset> {
    const MARKER: &str = "]: offset reset (at offset ";
    let at = message.find(MARKER)?;
    let (head, partition) = message[..at].rsplit_once(" [")?;
    // Topic names are [a-zA-Z0-9._-]: the last ": " ends the thread prefix.
    let topic = head.rsplit(": ").next()?;
    let rest = &message[at + MARKER.len()..];
    let digits = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    Some(OffsetReset {
        topic: topic.to_owned(),
        partition: partition.parse().ok()?,
        from: rest[..digits].parse().ok()?,
    })
}

impl ClientContext for RunContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "OFFSET"
            && let Some(reset) = parse_offset_reset(message)
        {
            lock(&self.resets).push(reset);
        }
        super::log_client_message(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.observed.health.set_broker_reachable(false);
        }
        log_client_error(error, reason);
    }

    /// Consumer lag per assigned partition and broker reachability, every
    /// `statistics.interval.ms`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.observed
            .health
            .set_broker_reachable(super::any_broker_up(&statistics));
        let lag = &self.observed.metrics.consumer_lag;
        let mut current = Vec::new();
        for (name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                // Partition -1 is librdkafka's unassigned queue; a partition
                // not desired was revoked and has no lag of this process's.
                if *partition < 0 || !stats.desired || stats.ls_offset < 0 {
                    continue;
                }
                let position = stats.app_offset.max(stats.committed_offset);
                if position < 0 {
                    continue;
                }
                let labels = PartitionLabels {
                    topic: name.clone(),
                    partition: *partition,
                };
                lag.get_or_create(&labels)
                    .set((stats.ls_offset - position).max(0));
                current.push(labels);
            }
        }
        let mut series = lock(&self.lag_series);
        for stale in series.iter().filter(|l| !current.contains(l)) {
            lag.remove(stale);
        }
        *series = current;
    }
}

impl ConsumerContext for RunContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            // A life that failed commits nothing more: dropping its consumer
            // revokes again, and what is open then (or was refused at an
            // earlier revoke, for partitions already handed over) must stay
            // uncommitted; the next owner, or this process's restart, takes
            // over from the last commit.
            let result = if self.failed.load(Ordering::Relaxed) {
                Ok(())
            } else {
                self.commit(consumer)
            };
            match result {
                Ok(()) if self.failed.load(Ordering::Relaxed) => {}
                Ok(()) => self.committed_in_callback.store(true, Ordering::Relaxed),
                // Nothing of the batch is visible; the next owner of these
                // partitions processes it, and the loop rewinds the rest.
                // (At-least-once: a refused record; the loop rewinds and
                // isolates it when the batch fails again.)
                Err(RunError::Aborted(_) | RunError::Rejected(_)) => {
                    self.aborted_in_callback.store(true, Ordering::Relaxed);
                }
                // Under exactly-once the partitions' outputs are not
                // visible; stopping is the way to keep them from being lost
                // here and repeated there.
                Err(e) if self.exactly_once => {
                    self.failed.store(true, Ordering::Relaxed);
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
            let mut to_restore = lock(&self.to_restore);
            let mut dropped = lock(&self.revoked);
            for tp in revoked.elements() {
                let Some(hop) = self.hop(tp.topic()) else {
                    continue;
                };
                let part = (hop, tp.partition());
                pending.remove(&part);
                if self.is_processed(hop) {
                    to_restore.remove(&tp.partition());
                    dropped.push(tp.partition());
                }
            }
            self.observed
                .metrics
                .rebalances
                .get_or_create(&KindLabels { kind: "revoke" })
                .inc();
            info!(partitions = revoked.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let mut paused = TopicPartitionList::new();
            let mut to_restore = lock(&self.to_restore);
            for tp in assigned.elements() {
                if self
                    .hop(tp.topic())
                    .is_some_and(|hop| self.is_processed(hop))
                {
                    paused.add_partition(tp.topic(), tp.partition());
                    to_restore.insert(tp.partition());
                }
            }
            // No record of a partition may be processed before its state
            // is restored; the loop resumes it after restoring.
            if paused.count() > 0
                && let Err(e) = consumer.pause(&paused)
            {
                lock(&self.failure).get_or_insert(RunError::Restore {
                    topic: self.input.clone(),
                    reason: format!("cannot pause assigned partitions: {e}"),
                });
            }
            let partitions: Vec<String> = assigned
                .elements()
                .iter()
                .map(|tp| format!("{}/{}", tp.topic(), tp.partition()))
                .collect();
            info!(?partitions, "partitions assigned");
            self.observed
                .metrics
                .rebalances
                .get_or_create(&KindLabels { kind: "assign" })
                .inc();
            self.observed.health.set_phase(if to_restore.is_empty() {
                Phase::Running
            } else {
                Phase::Restoring
            });
        }
        let assigned = track_assignment(&mut lock(&self.assigned), rebalance);
        self.observed.health.set_assigned(assigned);
    }
}

/// Applies a rebalance to the partitions assigned (cooperative: an
/// assignment adds, a revoke takes away); how many there are now.
fn track_assignment(assigned: &mut BTreeSet<(String, i32)>, rebalance: &Rebalance<'_>) -> usize {
    match rebalance {
        Rebalance::Assign(added) => {
            for tp in added.elements() {
                assigned.insert((tp.topic().to_owned(), tp.partition()));
            }
        }
        Rebalance::Revoke(taken) => {
            for tp in taken.elements() {
                assigned.remove(&(tp.topic().to_owned(), tp.partition()));
            }
        }
        Rebalance::Error(_) => {}
    }
    assigned.len()
}

impl RunContext {
    fn hop(&self, topic: &str) -> Option<Hop> {
        if topic == self.input {
            Some(Hop::Input)
        } else if self.repartition.as_deref() == Some(topic) {
            Some(Hop::Repartition)
        } else {
            None
        }
    }

    fn topic(&self, hop: Hop) -> &str {
        match (hop, &self.repartition) {
            (Hop::Repartition, Some(topic)) => topic,
            _ => &self.input,
        }
    }

    /// The topic whose partitions carry dedupe state.
    fn processed_topic(&self) -> &str {
        self.repartition.as_deref().unwrap_or(&self.input)
    }

    /// Whether dedupe runs on this hop's records (and keeps state per its
    /// partitions): the repartition topic's, or the input's without one.
    fn is_processed(&self, hop: Hop) -> bool {
        hop == Hop::Repartition || self.repartition.is_none()
    }

    /// Commits the outputs of the records processed so far together with
    /// their offsets: one transaction under exactly-once, a flush and then
    /// an offset commit under at-least-once.
    fn commit(&self, consumer: &BaseConsumer<Self>) -> Result<(), RunError> {
        let started = Instant::now();
        let committed = self.commit_pending(consumer);
        let metrics = &self.observed.metrics;
        let result = match &committed {
            Ok(true) => "committed",
            Ok(false) => return Ok(()),
            Err(RunError::Aborted(_)) => "aborted",
            Err(_) => return committed.map(|_| ()),
        };
        metrics
            .transactions
            .get_or_create(&ResultLabels { result })
            .inc();
        metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        if result == "committed" {
            self.observed.health.set_broker_reachable(true);
        }
        committed.map(|_| ())
    }

    /// [`RunContext::commit`]; `Ok(false)` when there was nothing to commit.
    fn commit_pending(&self, consumer: &BaseConsumer<Self>) -> Result<bool, RunError> {
        let mut pending = lock(&self.pending);
        if pending.is_empty() && !self.in_transaction.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let mut offsets = TopicPartitionList::with_capacity(pending.len());
        for ((hop, partition), offset) in pending.iter() {
            // Cannot fail for a non-negative offset.
            let _ =
                offsets.add_partition_offset(self.topic(*hop), *partition, Offset::Offset(*offset));
        }
        if self.exactly_once {
            self.commit_transaction(consumer, &offsets)?;
            self.committed_repartition(&pending);
            pending.clear();
            return Ok(true);
        }
        super::flush(&self.producer, self.delivery_timeout)
            .map_err(|e| RunError::Delivery(e.to_string()))?;
        if let Some(failure) = self.producer.context().take() {
            // A refused record is the loop's to isolate; anything else
            // (timeouts, say) restarts the pipeline from the last commit.
            if self.producer.context().has_rejection() {
                // A crash here, with the refusal known and nothing yet
                // done about it, is what at-least-once must survive.
                #[cfg(feature = "kafka-tests")]
                if crate::failpoint::fires("crash-on-refusal", Some("alo")) {
                    std::process::abort();
                }
                pending.clear();
                return Err(RunError::Rejected(failure));
            }
            return Err(RunError::Delivery(failure));
        }
        if offsets.count() == 0 {
            return Ok(true);
        }
        match consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => {
                debug!(partitions = pending.len(), "offsets committed");
                self.committed_repartition(&pending);
                pending.clear();
            }
            // Outputs are safe; the offsets are retried with the next batch.
            // If the partitions moved, their next owner repeats some outputs.
            Err(e) => warn!(error = %e, "offset commit failed; will retry"),
        }
        Ok(true)
    }

    /// Notes the committed offsets of repartition partitions: the records
    /// before them are never read again, so they may be purged.
    fn committed_repartition(&self, committed: &BTreeMap<Part, i64>) {
        let mut purgeable = lock(&self.purgeable);
        for ((hop, partition), offset) in committed {
            if *hop == Hop::Repartition {
                purgeable.insert(*partition, *offset);
            }
        }
    }

    /// A transaction call's failure. The coordinator aborts a transaction
    /// open longer than transaction.timeout.ms and bumps the producer's
    /// epoch, which librdkafka then reports as fenced: that is this process
    /// being slow (paused, or waiting on a slow broker), not another
    /// instance taking over, and a restart (which fences the old epoch
    /// itself) is the cure. Any other fence is final.
    fn transaction_error(&self, error: KafkaError) -> RunError {
        let open_for = lock(&self.began).map(|at| at.elapsed());
        if is_fence(&error) && open_for.is_some_and(|age| age >= self.delivery_timeout) {
            self.in_transaction.store(false, Ordering::Relaxed);
            return RunError::TimedOut(error);
        }
        RunError::Transaction(error)
    }

    /// Aborts the open transaction (a record of it was refused), so that
    /// the loop processes the batch again: always `Err(Aborted)`.
    fn abort(&self) -> Result<(), RunError> {
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::State);
        if self.in_transaction.load(Ordering::Relaxed) {
            let timeout = Duration::from_secs(10).min(self.delivery_timeout);
            self.producer
                .abort_transaction(timeout)
                .map_err(|e| self.transaction_error(e))?;
            self.in_transaction.store(false, Ordering::Relaxed);
        }
        lock(&self.pending).clear();
        self.observed
            .metrics
            .transactions
            .get_or_create(&ResultLabels { result: "aborted" })
            .inc();
        Err(RunError::Aborted(error))
    }

    /// Opens a transaction unless one is open.
    fn begin(&self) -> Result<(), RunError> {
        if self.exactly_once && !self.in_transaction.load(Ordering::Relaxed) {
            self.producer
                .begin_transaction()
                .map_err(RunError::Transaction)?;
            self.in_transaction.store(true, Ordering::Relaxed);
            *lock(&self.began) = Some(Instant::now());
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
        // A transaction of only changelog tombstones has no offsets.
        let mut offsets_sent = offsets.count() == 0;
        loop {
            // Fresh group metadata every time: a rebalance changes the
            // generation, and stale metadata would fence this process.
            let metadata = match offsets_sent {
                true => None,
                false => Some(consumer.group_metadata().ok_or(RunError::NoGroupMetadata)?),
            };
            // What the commit would wait for first, without rdkafka's 100 ms
            // polls (see `kafka::flush`). A flush that times out fails the
            // attempt: committing after it would wait as long again, past
            // the transaction timeout, and the coordinator's own abort would
            // then fence this producer.
            let mut attempt = super::flush(&self.producer, timeout);
            if let (Ok(()), Some(metadata)) = (&attempt, metadata) {
                attempt =
                    super::send_offsets_to_transaction(&self.producer, offsets, metadata, timeout)?;
            }
            let attempt = attempt
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
                    .map_err(|e| self.transaction_error(e))?;
                self.in_transaction.store(false, Ordering::Relaxed);
                return Err(RunError::Aborted(error));
            }
            return Err(self.transaction_error(error));
        }
    }
}

/// The loop's fixed surroundings: where records come from and go to.
struct Topology<'a> {
    repartition: Option<(&'a str, i32)>,
    changelog: &'a str,
    /// Where records go unchanged, in pass-through mode.
    passthrough: Option<&'a str>,
    /// Where writer schemas of `confluent-avro` input come from.
    registry: Option<&'a RegistryClient>,
    /// Under at-least-once, a batch's dedupe state changes are written
    /// only once its outputs are acknowledged. Written beside them, a
    /// changelog record could be acknowledged before its lead's output, and
    /// after a crash the restarted run would drop the lead as a repeat of
    /// one never written: lost. (Under exactly-once the transaction makes
    /// both visible together, or neither.)
    changes_after_outputs: bool,
}

/// Runs the pipeline until `shutdown` is set (or the input is drained, with
/// [`RunOptions::until_drained`]) and returns what it committed.
///
/// A failure at start-up (bad configuration, unreachable broker, missing
/// topic) ends the run at once. Once it has run, a failure (the broker gone
/// for longer than the delivery timeout, say) restarts the pipeline in this
/// process from the last commit, with the same recovery as a crash (fencing
/// the old transaction, restoring state), after a backoff of 1 s doubling
/// to 30 s. Being fenced, by another process with this `transactional.id`,
/// is final: that process has taken over. A restart keeps the rules and
/// routes of the last reload.
pub fn run(
    config: &Config,
    options: RunOptions,
    controls: Controls<'_>,
) -> Result<Tally, RunError> {
    let Controls {
        shutdown, observed, ..
    } = controls;
    let mut config = config.clone();
    let mut tally = Tally::default();
    let mut started = false;
    let mut backoff = Duration::from_secs(1);
    loop {
        let attempt = Instant::now();
        let life = Life { options, controls };
        let mut reloaded = None;
        let outcome = run_once(&config, &life, &mut tally, (&mut started, &mut reloaded));
        if let Some(new) = reloaded {
            config.routes = new.routes;
            config.policy = new.policy;
            config.scoring = new.scoring;
        }
        observed.health.set_phase(Phase::Stopping);
        let error = match outcome {
            Ok(()) => return Ok(tally),
            Err(e) => e,
        };
        if !started || error.is_fenced() || shutdown.load(Ordering::Relaxed) {
            return Err(error);
        }
        observed.metrics.pipeline_restarts.inc();
        if attempt.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        warn!(%error, backoff_ms = backoff.as_millis() as u64, "pipeline failed; restarting from the last commit");
        let wake = Instant::now() + backoff;
        while Instant::now() < wake && !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

impl RunError {
    /// Whether another producer with this `transactional.id` took over.
    pub fn is_fenced(&self) -> bool {
        match self {
            RunError::Transaction(e) | RunError::Aborted(e) => is_fence(e),
            RunError::InitTransactions { source, .. } => is_fence(source),
            _ => false,
        }
    }
}

/// Whether librdkafka reports this producer fenced: by another instance
/// with its `transactional.id`, or by the broker's timeout abort.
fn is_fence(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fenced)
    )
}

/// What the loop shares with the rest of the process.
#[derive(Debug, Clone, Copy)]
pub struct Controls<'a> {
    /// Set to stop: the loop finishes and commits its batch, and returns.
    pub shutdown: &'a AtomicBool,
    /// Metrics and health the loop reports to.
    pub observed: &'a Observed,
    /// New rules and routes, applied between transactions.
    pub reloads: &'a ReloadSlot,
}

/// What one life of the pipeline is given.
struct Life<'a> {
    options: RunOptions,
    controls: Controls<'a>,
}

/// One life of the pipeline: set up, consume until told to stop or a
/// failure. `started` turns true once set-up is done; `reloaded` holds the
/// last configuration whose rules and routes were applied.
fn run_once(
    config: &Config,
    life: &Life<'_>,
    tally: &mut Tally,
    (started, reloaded): (&mut bool, &mut Option<Config>),
) -> Result<(), RunError> {
    let Life {
        options,
        controls:
            Controls {
                shutdown,
                observed,
                reloads,
            },
    } = *life;
    observed.health.set_phase(Phase::Starting);
    let kafka = &config.kafka;
    let topics = &config.topics;
    let delivery_timeout = Duration::from_millis(config.pipeline.delivery_timeout_ms);
    // Reference data and rules first: a bad rules file fails before any I/O.
    let mut pipeline = Pipeline::new(PipelineSettings::from_config(config)?);
    observed.metrics.set_rules_version(pipeline.rules_version());
    // Output schemas are registered (or found) before anything is read,
    // so every record written names its schema's id.
    let (registry, schema_ids) = schema_registry(config)?;

    let exactly_once = config.pipeline.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    let delivery_timeout_ms = config.pipeline.delivery_timeout_ms.to_string();
    // Room for the largest record leadflow writes from an input.
    let largest = config
        .pipeline
        .max_record_bytes
        .saturating_add(super::RECORD_HEADROOM);
    let message_max_bytes = largest.to_string();
    let producer_defaults = [
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
    let mut producer_config = client_config(kafka, Role::Producer, &producer_defaults);
    let allowed = producer_config
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if allowed < largest {
        return Err(SetupError::Limit(format!(
            "kafka.producer message.max.bytes={allowed} is below the {largest} bytes leadflow may write (pipeline.max_record_bytes={} plus {} for a dead letter's headers); raise it or lower pipeline.max_record_bytes",
            config.pipeline.max_record_bytes,
            super::RECORD_HEADROOM
        ))
        .into());
    }
    let transactional_id = config.transactional_id();
    if exactly_once {
        producer_config.set("transactional.id", &transactional_id);
    }
    let producer: Arc<LeadProducer> = Arc::new(
        producer_config
            .create_with_context(DeliveryTracker {
                health: Some(Arc::clone(&observed.health)),
                ..DeliveryTracker::default()
            })
            .map_err(SetupError::Client)?,
    );

    let consumer_defaults = [
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
        // A rebalance moves only the partitions that change owner, so the
        // others keep their state and keep flowing.
        ("partition.assignment.strategy", "cooperative-sticky"),
        // Consumer lag and broker reachability come from these.
        ("statistics.interval.ms", "5000"),
    ];
    let mut consumer_config = client_config(kafka, Role::Consumer, &consumer_defaults);
    // Offsets are committed by the loop only, after their outputs are acknowledged.
    consumer_config.set("group.id", &kafka.group_id);
    consumer_config.set("enable.auto.commit", "false");
    consumer_config.set("enable.auto.offset.store", "false");
    // Offset resets are reported only as warnings (see `parse_offset_reset`),
    // whatever the log filter.
    consumer_config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    let repartition_topic = config.repartition_topic();
    let changelog_topic = config.changelog_topic();
    let context = RunContext {
        input: topics.input.clone(),
        repartition: repartition_topic.clone(),
        producer: Arc::clone(&producer),
        exactly_once,
        in_transaction: AtomicBool::new(false),
        began: Mutex::default(),
        committed_in_callback: AtomicBool::new(false),
        aborted_in_callback: AtomicBool::new(false),
        delivery_timeout,
        pending: Mutex::default(),
        to_restore: Mutex::default(),
        revoked: Mutex::default(),
        assigned: Mutex::default(),
        failure: Mutex::default(),
        observed: observed.clone(),
        lag_series: Mutex::default(),
        resets: Mutex::default(),
        purgeable: Mutex::default(),
        failed: AtomicBool::new(false),
    };
    // Shared with the second hop's queues (`SecondHop`), which are
    // declared later and so dropped first.
    let consumer: Arc<BaseConsumer<RunContext>> = Arc::new(
        consumer_config
            .create_with_context(context)
            .map_err(SetupError::Client)?,
    );
    // Dropped before the consumer (declared after it): on any early return,
    // the consumer's closing revoke then commits nothing.
    let failure_guard = FailureGuard {
        failed: &consumer.context().failed,
        succeeded: false,
    };

    let all_topics = config.all_topics();
    let names: Vec<&str> = all_topics.iter().map(String::as_str).collect();
    let counts = check_topics(consumer.client(), kafka, &names)?;
    let partitions_of = |name: &str| {
        names
            .iter()
            .zip(&counts)
            .find(|(n, _)| **n == name)
            .map_or(0, |(_, count)| *count)
    };
    let roles = super::topics::roles(config);
    let roles: Vec<(&str, super::topics::TopicRole)> = roles
        .iter()
        .map(|(name, role)| (name.as_str(), *role))
        .collect();
    if !options.mock_cluster {
        let advice =
            super::topics::check_configs_blocking(kafka, &roles, config.pipeline.max_record_bytes)?;
        for (topic, advice) in advice {
            tracing::warn!(topic, "{advice}");
        }
    }
    let processed = repartition_topic.as_deref().unwrap_or(&topics.input);
    if partitions_of(&changelog_topic) != partitions_of(processed) {
        return Err(SetupError::BadTopic {
            topic: changelog_topic.clone(),
            reason: format!(
                "has {} partitions, but must have as many as {processed:?} ({})",
                partitions_of(&changelog_topic),
                partitions_of(processed)
            ),
        }
        .into());
    }
    let topology = Topology {
        repartition: repartition_topic
            .as_deref()
            .map(|name| (name, i32::try_from(partitions_of(name)).unwrap_or(i32::MAX))),
        changelog: &changelog_topic,
        passthrough: options
            .passthrough
            .then(|| config.routes.first().map(|r| r.topic.as_str()))
            .flatten(),
        registry: registry.as_ref(),
        changes_after_outputs: !exactly_once,
    };
    let restorer: BaseConsumer<Logged> = client_config(
        kafka,
        Role::Consumer,
        &[("isolation.level", "read_committed")],
    )
    .set("enable.partition.eof", "true")
    .set("enable.auto.commit", "false")
    // Never joins or commits (it assigns partitions itself), but librdkafka
    // wants a group to unassign.
    .set("group.id", format!("{}-restore", kafka.group_id))
    .set("statistics.interval.ms", "0")
    .create_with_context(Logged)
    .map_err(SetupError::Client)?;

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
    let subscriptions: Vec<&str> = std::iter::once(topics.input.as_str())
        .chain(repartition_topic.as_deref())
        .collect();
    consumer
        .subscribe(&subscriptions)
        .map_err(|source| RunError::Subscribe {
            topics: subscriptions.iter().map(|t| (*t).to_owned()).collect(),
            source,
        })?;
    match options.http_address {
        Some(http) => info!(topics = ?subscriptions, group = %kafka.group_id, %http, "consuming"),
        None => info!(topics = ?subscriptions, group = %kafka.group_id, "consuming"),
    }
    observed.health.set_phase(Phase::Joining);

    let mut sink = Sink::new(&producer, config, &observed.metrics, schema_ids);
    *started = true;
    let commit_interval = Duration::from_millis(config.pipeline.commit_interval_ms);
    let mut last_report = Instant::now();
    let mut eviction_logged = false;
    let metrics = &observed.metrics;
    let purged = repartition_topic
        .as_deref()
        .filter(|_| !options.mock_cluster);
    let mut purger = match purged {
        Some(topic) => Some(
            Purger::new(
                topic,
                delete_records(kafka, topic, purge_timeout(kafka))?,
                metrics.repartition_purges.clone(),
            )
            .map_err(|e| RunError::Delivery(format!("cannot start the purge's thread: {e}")))?,
        ),
        None => None,
    };
    let mut last_purge = Instant::now();
    let mut batch_seq: u64 = 0;
    let mut meter = Meter {
        batch: Batch::default(),
        records: 0,
        evicted: 0,
    };
    // Finding a record the broker refused for good: the next offsets the
    // failed batch reached, per partition; empty when not isolating.
    let mut isolating: BTreeMap<Part, i64> = BTreeMap::new();
    // Records found refused, each with its dead letter's reason.
    let mut poisoned: BTreeMap<Part, (i64, Failure)> = BTreeMap::new();
    let mut reject_backoff = Duration::ZERO;
    let mut lookups = SchemaLookups::new();
    let mut second_hop = SecondHop::new();
    // How long the last commit took: a batch reads for at least as long,
    // so that slow commits (a cold or distant cluster) are spread over
    // more records instead of leaving batches of a few.
    let mut last_commit = Duration::ZERO;

    while !shutdown.load(Ordering::Relaxed) {
        restore_assigned(
            (&consumer, &mut second_hop),
            &restorer,
            &topology,
            &mut pipeline,
            delivery_timeout,
        )?;
        // No transaction is open here: the last batch committed.
        if let Some(new) = reloads.take() {
            let current = reloaded.as_ref().unwrap_or(config);
            if apply_reload(
                &new,
                current,
                (&consumer, kafka),
                &mut pipeline,
                &mut sink,
                metrics,
            ) {
                *reloaded = Some(new);
            }
        }
        meter.batch.clear();
        pipeline.set_now(crate::metrics::now_ms());
        lookups.expire(&mut pipeline);
        let deadline =
            Instant::now() + batch_window(commit_interval, last_commit, delivery_timeout);
        let mut batch = 0;
        // First offset of each partition in this batch, to rewind to on abort.
        let mut batch_start: BTreeMap<Part, i64> = BTreeMap::new();
        // Next offset after the last record read per partition in this
        // batch, the one whose processing failed included.
        let mut read_to: BTreeMap<Part, i64> = BTreeMap::new();
        batch_seq += 1;
        // Every log line of the batch carries its number, and once it
        // commits, its record count and offsets.
        let span = tracing::info_span!(
            "batch",
            seq = batch_seq,
            records = tracing::field::Empty,
            offsets = tracing::field::Empty
        );
        let _entered = span.enter();
        let mut batch_tally = Tally::default();
        if last_report.elapsed() >= Duration::from_secs(10) {
            // Expiry writes tombstones, so it belongs to a transaction.
            consumer.context().begin()?;
            let expired = pipeline.expire_dedupe();
            metrics.dedupe_expired.inc_by(expired as u64);
            sink.send_changes(
                topology.changelog,
                pipeline.take_changes(),
                &mut meter.batch,
            )?;
            last_report = Instant::now();
            info!(
                ?tally,
                dedupe_keys = pipeline.dedupe_keys(),
                expired,
                "progress"
            );
        }
        // While a refused record is being found, one record per transaction.
        let batch_limit = match isolating.is_empty() {
            true => config.pipeline.max_batch_records,
            false => 1,
        };
        let mut refused_mid_batch = false;
        while batch < batch_limit && !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let polled = second_hop.poll(&consumer, deadline - now);
            let context = consumer.context();
            if context.committed_in_callback.swap(false, Ordering::Relaxed) {
                // A revoke committed the batch so far inside `poll`.
                pipeline.commit_batch();
                meter.committed(metrics, &mut pipeline);
                tally.merge(std::mem::take(&mut batch_tally));
                batch_start.clear();
            }
            if context.aborted_in_callback.swap(false, Ordering::Relaxed) {
                // A refused record aborted it: it fails again in a batch of
                // the loop's own, which isolates it.
                let _ = producer.context().take_rejection();
                pipeline.rollback_batch();
                meter.batch.clear();
                batch_tally = Tally::default();
                rewind(&consumer, std::mem::take(&mut batch_start))?;
            }
            for partition in std::mem::take(&mut *lock(&context.revoked)) {
                pipeline.dedupe().drop_partition(partition);
            }
            if let Some(error) = lock(&context.failure).take() {
                return Err(error);
            }
            report_offset_resets(&consumer, &restorer, tally);
            match polled {
                // With the second hop's own queues, a poll waits a moment
                // only, not to the batch's deadline.
                None if second_hop.is_split() && Instant::now() < deadline => {}
                None => break,
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                Some(Ok(message)) => {
                    let Some(hop) = context.hop(message.topic()) else {
                        continue;
                    };
                    let mut not_asked = None;
                    if let Some(registry) = topology.registry
                        && pipeline.missing_writer_schema(message.payload()).is_some()
                    {
                        if context.in_transaction.load(Ordering::Relaxed) && lookups.can_ask() {
                            // Asking the registry may take its timeouts and
                            // retries, longer than a transaction may stay
                            // open (the broker would abort it and fence this
                            // producer): the batch ends before this record,
                            // which the next one reads first. (Over the
                            // lookup budget, nothing is asked.)
                            consumer
                                .seek(
                                    message.topic(),
                                    message.partition(),
                                    Offset::Offset(message.offset()),
                                    Duration::from_secs(10),
                                )
                                .map_err(RunError::Transaction)?;
                            break;
                        }
                        not_asked = learn_writer_schema(
                            &mut pipeline,
                            (registry, &mut lookups),
                            message.payload(),
                            metrics,
                        )?;
                    }
                    batch += 1;
                    let part = (hop, message.partition());
                    batch_start.entry(part).or_insert(message.offset());
                    read_to.insert(part, message.offset() + 1);
                    context.begin()?;
                    let poison = match poisoned.get(&part) {
                        Some((offset, _)) if *offset == message.offset() => {
                            poisoned.remove(&part).map(|(_, failure)| failure)
                        }
                        _ => None,
                    };
                    let step = Step {
                        message: &message,
                        hop,
                        processed: context.is_processed(hop),
                        poison,
                    };
                    let handled = handle(
                        step,
                        &topology,
                        &mut pipeline,
                        &sink,
                        &mut batch_tally,
                        &mut meter,
                    );
                    if let Some(id) = not_asked {
                        pipeline.forget_writer_schema(id);
                    }
                    match handled {
                        Ok(()) => {}
                        // The broker refused a record of this transaction, which
                        // now only aborts: end the batch and find the record.
                        Err(RunError::Produce {
                            source: KafkaError::MessageProduction(RDKafkaErrorCode::State),
                            ..
                        }) if exactly_once => {
                            refused_mid_batch = true;
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                    lock(&context.pending).insert(part, message.offset() + 1);
                }
            }
            if !lock(&context.to_restore).is_empty() {
                // Restoring takes a while: commit first, so that no
                // transaction stays open across it.
                break;
            }
        }
        let commit_started = Instant::now();
        if batch > 0 && !span.is_disabled() {
            span.record("records", batch);
            span.record(
                "offsets",
                offset_ranges(consumer.context(), &batch_start).as_str(),
            );
        }
        if topology.changes_after_outputs && !refused_mid_batch {
            super::flush(&producer, delivery_timeout)
                .map_err(|e| RunError::Delivery(e.to_string()))?;
            // A failed or refused output leaves the changes unwritten; the
            // commit reports it and the batch's state is rolled back.
            if !producer.context().failed() {
                sink.send_changes(
                    topology.changelog,
                    pipeline.take_changes(),
                    &mut meter.batch,
                )?;
            }
        }
        let reached = lock(&consumer.context().pending).clone();
        let committed = match refused_mid_batch {
            true => consumer.context().abort(),
            false => consumer.context().commit(&consumer),
        };
        match committed {
            Ok(()) => {
                if batch > 0 {
                    debug!("batch committed");
                }
                pipeline.commit_batch();
                meter.committed(metrics, &mut pipeline);
                tally.merge(batch_tally);
                if let Some(purger) = purger
                    .as_mut()
                    .filter(|_| last_purge.elapsed() >= PURGE_INTERVAL)
                {
                    purger.purge(&consumer.context().purgeable);
                    last_purge = Instant::now();
                }
                reject_backoff = Duration::ZERO;
                // Isolation ends once the loop is past the failed batch on
                // every partition it still owns.
                if !isolating.is_empty() {
                    let assigned = consumer.assignment().unwrap_or_default();
                    let context = consumer.context();
                    isolating.retain(|part, end| {
                        assigned
                            .find_partition(context.topic(part.0), part.1)
                            .is_some()
                            && reached.get(part).is_none_or(|r| r < end)
                    });
                }
            }
            Err(RunError::Aborted(_) | RunError::Rejected(_)) => {
                // Nothing of the batch is visible (under at-least-once, some
                // of it may be): forget its state changes and read its
                // records again.
                pipeline.rollback_batch();
                meter.batch.clear();
                if let Some((topic, code)) = producer.context().take_rejection() {
                    // Where leadflow puts what it cannot deliver, and its
                    // state, refusing: no record is at fault, so no record is
                    // dead-lettered for it; the pipeline restarts (backoff).
                    if topic == config.topics.dead_letter || topic == changelog_topic {
                        return Err(RunError::Delivery(format!(
                            "{topic} refused a record for good: {code}"
                        )));
                    }
                    metrics
                        .produce_rejections
                        .get_or_create(&crate::metrics::RejectionLabels {
                            topic: topic.clone(),
                            error: format!("{code:?}"),
                        })
                        .inc();
                    match (batch, batch_start.iter().next()) {
                        // The batch was this one record: it is the one.
                        (1, Some((part, offset))) => {
                            warn!(topic, error = %code, partition = part.1, offset, "record refused for good; it goes to the dead-letter topic");
                            poisoned.insert(*part, (*offset, rejected(&topic, code)));
                        }
                        _ => {
                            warn!(topic, error = %code, records = batch, "a record of the batch was refused for good; finding it, one record per transaction");
                            isolating = read_to.clone();
                        }
                    }
                    // Never a tight loop, whatever keeps being refused.
                    let wake = Instant::now() + reject_backoff;
                    while Instant::now() < wake && !shutdown.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    reject_backoff = (reject_backoff * 2)
                        .clamp(Duration::from_millis(100), Duration::from_secs(5));
                }
                rewind(&consumer, batch_start)?;
            }
            Err(e) => return Err(e),
        }
        last_commit = commit_started.elapsed();
        producer.poll(Duration::ZERO);
        if !eviction_logged && pipeline.dedupe().evicted() > 0 {
            eviction_logged = true;
            warn!(
                budget_mib = config.dedupe.memory_budget_mib,
                "dedupe state reached its memory budget: the least recently seen keys are being forgotten"
            );
        }
        // Only a batch interval without a record says the input may be drained.
        if options.until_drained && batch == 0 && drained(&consumer, &restorer) {
            info!("input drained");
            break;
        }
    }
    observed.health.set_phase(Phase::Stopping);
    consumer.context().commit(&consumer)?;
    pipeline.commit_batch();
    meter.committed(metrics, &mut pipeline);
    if let Some(purger) = purger.as_mut() {
        purger.finish(&consumer.context().purgeable, purge_timeout(kafka) * 2);
    }
    consumer.unsubscribe();
    info!(?tally, "stopped");
    failure_guard.succeed();
    Ok(())
}

/// How long a batch reads: `pipeline.commit_interval_ms`, or as long as
/// the last commit took when that was longer (so that commits cost at
/// most about half the time), but never more than a quarter of the
/// transaction timeout, which the batch and its commit must stay within.
fn batch_window(
    commit_interval: Duration,
    last_commit: Duration,
    txn_timeout: Duration,
) -> Duration {
    commit_interval.max(last_commit.min(txn_timeout / 4))
}

/// Marks a life of the pipeline failed when it ends without
/// [`FailureGuard::succeed`]: any return through `?`.
struct FailureGuard<'a> {
    failed: &'a AtomicBool,
    succeeded: bool,
}

impl FailureGuard<'_> {
    fn succeed(mut self) {
        self.succeeded = true;
    }
}

impl Drop for FailureGuard<'_> {
    fn drop(&mut self) {
        if !self.succeeded {
            self.failed.store(true, Ordering::Relaxed);
        }
    }
}

/// Swaps in the rules and routes of `new`, if its campaign topics exist.
/// Returns whether it did.
fn apply_reload(
    new: &Config,
    current: &Config,
    (consumer, kafka): (&BaseConsumer<RunContext>, &crate::config::KafkaConfig),
    pipeline: &mut Pipeline,
    sink: &mut Sink<'_>,
    metrics: &crate::metrics::Metrics,
) -> bool {
    let topics: Vec<&str> = new.routes.iter().map(|r| r.topic.as_str()).collect();
    let rules = match check_topics(consumer.client(), kafka, &topics)
        .map_err(|e| e.to_string())
        .and_then(|_| sink.check_schema_ids(&new.routes))
        .and_then(|_| new.scoring_rules().map_err(|e| e.to_string()))
    {
        Ok(rules) => rules,
        Err(error) => {
            metrics.reloaded("refused");
            warn!(%error, rules_version = pipeline.rules_version(), "reload refused; the rules in use stay");
            return false;
        }
    };
    let restart = crate::reload::needs_restart(current, new);
    if !restart.is_empty() {
        warn!(sections = ?restart, "reload: changes outside routes, policy and scoring wait for a restart");
    }
    pipeline.set_rules(rules, new.routing_table());
    sink.set_routes(&new.routes);
    metrics.set_rules_version(pipeline.rules_version());
    metrics.reloaded("applied");
    info!(
        rules_version = pipeline.rules_version(),
        routes = new.routes.len(),
        "rules reloaded"
    );
    true
}

/// The open batch's metrics, and what sampling and gauges need.
struct Meter {
    batch: Batch,
    /// Records handled, for sampling stage timings.
    records: u64,
    /// Dedupe evictions already counted.
    evicted: u64,
}

/// Stage timings are taken on one record in this many: reading the clock
/// costs about as much as a light stage.
const STAGE_SAMPLE: u64 = 16;

impl Meter {
    /// A clock for this record's stages, if it is sampled.
    fn stopwatch(&mut self) -> Option<Stopwatch> {
        self.records += 1;
        self.records
            .is_multiple_of(STAGE_SAMPLE)
            .then(Stopwatch::start)
    }

    /// The batch committed: count it, and read the dedupe gauges.
    fn committed(&mut self, metrics: &crate::metrics::Metrics, pipeline: &mut Pipeline) {
        let now_ms = crate::metrics::now_ms();
        metrics.commit(&mut self.batch, now_ms);
        let dedupe = pipeline.dedupe();
        metrics.set_dedupe_size(dedupe.len(), dedupe.bytes());
        let evicted = dedupe.evicted();
        metrics
            .dedupe_evictions
            .inc_by(evicted.saturating_sub(self.evicted));
        self.evicted = evicted;
    }
}

/// How often committed records are deleted from the repartition topic
/// (Kafka Streams' `repartition.purge.interval.ms`).
const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// How long one purge waits for the brokers.
fn purge_timeout(kafka: &crate::config::KafkaConfig) -> Duration {
    Duration::from_millis(kafka.connect_timeout_ms.min(5_000))
}

/// Reports the offset resets librdkafka logged since the last call: a
/// warning naming the partition and both offsets, the metric, `/readyz`
/// and the run's tally. The records in between are gone from the broker.
fn report_offset_resets(
    consumer: &BaseConsumer<RunContext>,
    lister: &BaseConsumer<Logged>,
    tally: &mut Tally,
) {
    let context = consumer.context();
    let resets = std::mem::take(&mut *lock(&context.resets));
    for OffsetReset {
        topic,
        partition,
        from,
    } in resets
    {
        // librdkafka resets to the log's start, which is where it now reads.
        let to = lister
            .fetch_watermarks(&topic, partition, Duration::from_secs(5))
            .map(|(low, _)| low)
            .ok();
        let skipped = to.map_or(0, |to| u64::try_from(to - from).unwrap_or(0));
        warn!(
            topic,
            partition,
            from_offset = from,
            to_offset = to,
            skipped,
            "offset reset: records were deleted before leadflow read them (retention or DeleteRecords); they are not processed"
        );
        context
            .observed
            .metrics
            .offset_resets
            .get_or_create(&crate::metrics::TopicLabels { topic })
            .inc();
        context.observed.health.record_offset_reset(skipped);
        tally.offset_resets += 1;
        tally.skipped_records += skipped;
    }
}

/// Restores the dedupe state of newly assigned partitions from the
/// changelog and resumes them. Runs between batches, with no transaction
/// open.
fn restore_assigned(
    (consumer, second_hop): (&Arc<BaseConsumer<RunContext>>, &mut SecondHop<RunContext>),
    restorer: &BaseConsumer<Logged>,
    topology: &Topology<'_>,
    pipeline: &mut Pipeline,
    delivery_timeout: Duration,
) -> Result<(), RunError> {
    let context = consumer.context();
    {
        let assigned = lock(&context.assigned);
        let processed = context.processed_topic().to_owned();
        second_hop.retain(|partition| assigned.contains(&(processed.clone(), partition)));
    }
    let partitions: Vec<i32> = std::mem::take(&mut *lock(&context.to_restore))
        .into_iter()
        .collect();
    if partitions.is_empty() {
        return Ok(());
    }
    context.observed.health.set_phase(Phase::Restoring);
    let started = Instant::now();
    let dedupe = pipeline.dedupe();
    for partition in &partitions {
        dedupe.drop_partition(*partition);
        dedupe.add_partition(*partition);
    }
    let failed = |reason: String| RunError::Restore {
        topic: topology.changelog.to_owned(),
        reason,
    };
    // KIP-447: the committed offsets of these partitions are asked for as
    // stable (read_committed), which waits while a transaction of their
    // previous owner is still pending. Only then does the changelog hold
    // that owner's last transaction, which a read_committed restore would
    // otherwise stop short of.
    let mut stable = TopicPartitionList::new();
    for partition in &partitions {
        stable.add_partition(context.processed_topic(), *partition);
    }
    consumer
        .committed_offsets(stable, delivery_timeout * 3)
        .map_err(|e| failed(format!("committed offsets did not become stable: {e}")))?;
    // An open transaction of a crashed owner holds the end back until it
    // times out, and a leader that just moved answers with errors for a
    // while: either is only a failure well past that.
    let patience = delivery_timeout * 3;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = BTreeSet::new();
    for partition in &partitions {
        let (low, high) =
            super::watermarks(restorer.client(), topology.changelog, *partition, patience)
                .map_err(|e| failed(format!("partition {partition}: {e}")))?;
        if high > low {
            assignment
                .add_partition_offset(topology.changelog, *partition, Offset::Beginning)
                .map_err(|e| failed(e.to_string()))?;
            remaining.insert(*partition);
        }
    }
    let mut records = 0_u64;
    let mut corrupt = 0_u64;
    if !remaining.is_empty() {
        restorer
            .assign(&assignment)
            .map_err(|e| failed(e.to_string()))?;
        let mut last_progress = Instant::now();
        while !remaining.is_empty() {
            if last_progress.elapsed() > patience {
                return Err(failed(format!(
                    "no progress for {} s on partitions {remaining:?}",
                    patience.as_secs()
                )));
            }
            match restorer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(record)) => {
                    last_progress = Instant::now();
                    records += 1;
                    let key = record.key().unwrap_or_default();
                    if dedupe
                        .restore(record.partition(), key, record.payload())
                        .is_err()
                    {
                        corrupt += 1;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    last_progress = Instant::now();
                    remaining.remove(&partition);
                }
                Some(Err(e)) => warn!(error = %e, "changelog read error; retrying"),
            }
        }
        restorer.unassign().map_err(|e| failed(e.to_string()))?;
    }
    if corrupt > 0 {
        warn!(
            corrupt,
            topic = topology.changelog,
            "skipped changelog records leadflow did not write"
        );
    }
    if topology.repartition.is_some() {
        second_hop.split(consumer, context.processed_topic(), &partitions);
    }
    let mut resume = TopicPartitionList::new();
    for partition in &partitions {
        resume.add_partition(context.processed_topic(), *partition);
    }
    consumer
        .resume(&resume)
        .map_err(|e| failed(format!("cannot resume partitions: {e}")))?;
    let metrics = &context.observed.metrics;
    metrics
        .restore_duration
        .observe(started.elapsed().as_secs_f64());
    metrics.restored_records.inc_by(records);
    metrics.set_dedupe_size(dedupe.len(), dedupe.bytes());
    // A rebalance during the restore queued more partitions: still restoring.
    if lock(&context.to_restore).is_empty() {
        context.observed.health.set_phase(Phase::Running);
    }
    info!(
        ?partitions,
        records,
        keys = dedupe.len(),
        millis = started.elapsed().as_millis() as u64,
        "dedupe state restored"
    );
    Ok(())
}

/// Seeks each partition of an aborted batch that is still assigned back to
/// the batch's first record, and forgets what the batch had pending.
fn rewind(
    consumer: &BaseConsumer<RunContext>,
    batch_start: BTreeMap<Part, i64>,
) -> Result<(), RunError> {
    let context = consumer.context();
    let assigned = consumer.assignment().map_err(RunError::Transaction)?;
    let mut pending = lock(&context.pending);
    for ((hop, partition), offset) in batch_start {
        pending.remove(&(hop, partition));
        let topic = context.topic(hop);
        if assigned.find_partition(topic, partition).is_none() {
            continue;
        }
        consumer
            .seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            )
            .map_err(RunError::Transaction)?;
    }
    Ok(())
}

/// Every assigned partition read to its end and restored, and nothing left
/// to commit. Asked only after a batch interval without records. A
/// partition is at its end when the consumer's position (which steps over
/// transaction markers), or the log's start if later, reaches the end a
/// read_committed reader sees now
/// (the last stable offset, asked through `lister`, an idle client, since
/// the consumer's own connection is busy with long-polling fetches). A
/// partition with no position delivered nothing since it was assigned: it
/// is at its end if its committed offset is.
fn drained(consumer: &BaseConsumer<RunContext>, lister: &BaseConsumer<Logged>) -> bool {
    let context = consumer.context();
    if !lock(&context.pending).is_empty() || !lock(&context.to_restore).is_empty() {
        return false;
    }
    let Ok(positions) = consumer.position() else {
        return false;
    };
    let timeout = Duration::from_secs(5);
    let mut unpositioned = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for tp in positions.elements() {
        let Ok((low, end)) = lister.fetch_watermarks(tp.topic(), tp.partition(), timeout) else {
            return false;
        };
        match tp.offset() {
            // A position before the log's start names deleted records: the
            // consumer reads on from the start (an offset reset, reported),
            // and its position moves only once it reads a record there.
            Offset::Offset(position) if position.max(low) >= end => {}
            Offset::Offset(_) => return false,
            _ => {
                unpositioned.add_partition(tp.topic(), tp.partition());
                ends.insert((tp.topic().to_owned(), tp.partition()), (low, end));
            }
        }
    }
    if positions.count() == 0 {
        return false;
    }
    if unpositioned.count() == 0 {
        return true;
    }
    let Ok(committed) = consumer.committed_offsets(unpositioned, timeout) else {
        return false;
    };
    committed.elements().iter().all(|tp| {
        let Some((low, end)) = ends.get(&(tp.topic().to_owned(), tp.partition())) else {
            return false;
        };
        match tp.offset() {
            Offset::Offset(committed) => committed.max(*low) >= *end,
            // Never committed: read from the start, so at the end if empty.
            _ => low >= end,
        }
    })
}

/// One consumed record and what the loop knows about it.
struct Step<'a, 'm> {
    message: &'a BorrowedMessage<'m>,
    hop: Hop,
    /// Whether the whole pipeline runs on it (else it is re-keyed).
    processed: bool,
    /// The broker refused what this record produced, for good: it goes to
    /// the dead-letter topic as it is, and nothing else of it is written.
    poison: Option<Failure>,
}

/// Connects to the schema registry when a topic is `confluent-avro`, and
/// registers leadflow's output schemas under their subjects (or, without
/// `auto_register`, finds them there): the id to frame each output
/// topic's records with.
fn schema_registry(
    config: &Config,
) -> Result<(Option<RegistryClient>, HashMap<String, u32>), RunError> {
    let schemas = crate::registry::topic_schemas(config);
    let uses_registry = !schemas.is_empty();
    if !uses_registry {
        return Ok((None, HashMap::new()));
    }
    let client = RegistryClient::new(&config.schema_registry)?;
    let mut ids = HashMap::new();
    for topic in schemas {
        // The input's schema is the reader's; producers register theirs.
        if topic.topic == config.topics.input
            && topic.schema == crate::stages::decode::RAW_LEAD_SCHEMA
        {
            continue;
        }
        let refused = |reason: String| RunError::SchemaRefused {
            subject: topic.subject.clone(),
            file: topic.file,
            reason,
        };
        let id = if config.schema_registry.auto_register {
            match client.register(&topic.subject, topic.schema)? {
                Registration::Registered(id) => id,
                Registration::Incompatible(reason) => return Err(refused(reason)),
            }
        } else {
            client
                .lookup(&topic.subject, topic.schema)?
                .ok_or_else(|| {
                    refused("not registered, and schema_registry.auto_register is false".into())
                })?
        };
        info!(subject = %topic.subject, id, topic = %topic.topic, "output schema registered");
        ids.insert(topic.topic, id);
    }
    Ok((Some(client), ids))
}

/// Asks the registry for the writer schema a Confluent-framed record
/// names, the first time one does. An id the registry does not know is
/// an answer (the record becomes a dead letter); a registry that cannot
/// answer fails the batch, which runs again from the last commit once it
/// does, so that no good record is dead-lettered for the registry's sake.
fn learn_writer_schema(
    pipeline: &mut Pipeline,
    (registry, lookups): (&RegistryClient, &mut SchemaLookups),
    value: Option<&[u8]>,
    metrics: &crate::metrics::Metrics,
) -> Result<Option<u32>, RunError> {
    let Some(id) = pipeline.missing_writer_schema(value) else {
        return Ok(None);
    };
    if !lookups.may_ask() {
        // Not asked: this record is a dead letter, and the id is asked
        // about again for the next record that names it, budget allowing.
        metrics.schema_looked_up("skipped");
        pipeline.add_writer_schema(id, WriterAnswer::NotAsked);
        return Ok(Some(id));
    }
    let answer = registry.schema_by_id(id).inspect_err(|error| {
        metrics.schema_looked_up("failed");
        warn!(%error, schema_id = id, "cannot look up a writer schema; the batch waits for the registry");
    })?;
    match answer {
        Some(schema) if schema.schema_type.eq_ignore_ascii_case("AVRO") => {
            metrics.schema_looked_up("found");
            pipeline.add_writer_schema(id, WriterAnswer::Avro(&schema.schema));
        }
        Some(schema) => {
            metrics.schema_looked_up("found");
            pipeline.add_writer_schema(id, WriterAnswer::Other(&schema.schema_type));
        }
        None => {
            metrics.schema_looked_up("unknown");
            pipeline.add_writer_schema(id, WriterAnswer::Unknown);
            lookups.remember_unknown(id, pipeline);
        }
    }
    Ok(None)
}

/// Bounds what writer schema ids from input can cost: registry lookups
/// are a token bucket ([`LOOKUP_BURST`], then [`LOOKUPS_PER_SECOND`]; a
/// record whose id is not asked about for lack of budget is a dead letter,
/// and the id is asked about for the next one), and ids the registry does
/// not know are remembered for [`UNKNOWN_TTL`] and at most [`MAX_UNKNOWN`]
/// of them, then asked about again. Schemas the registry knows are few and
/// kept for good.
struct SchemaLookups {
    tokens: f64,
    refilled: Instant,
    unknown: std::collections::VecDeque<(u32, Instant)>,
}

const LOOKUP_BURST: f64 = 50.0;
const LOOKUPS_PER_SECOND: f64 = 1.0;
const MAX_UNKNOWN: usize = 1_000;
const UNKNOWN_TTL: Duration = Duration::from_secs(300);

impl SchemaLookups {
    fn new() -> SchemaLookups {
        SchemaLookups {
            tokens: LOOKUP_BURST,
            refilled: Instant::now(),
            unknown: std::collections::VecDeque::new(),
        }
    }

    /// Whether the budget has a lookup left (taking none).
    fn can_ask(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * LOOKUPS_PER_SECOND;
        self.tokens = (self.tokens + earned).min(LOOKUP_BURST);
        self.refilled = now;
        self.tokens >= 1.0
    }

    /// Takes a lookup from the budget, if one is left.
    fn may_ask(&mut self) -> bool {
        if self.can_ask() {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Remembers an unknown id, forgetting the oldest past the limit.
    fn remember_unknown(&mut self, id: u32, pipeline: &mut Pipeline) {
        self.unknown.push_back((id, Instant::now()));
        while self.unknown.len() > MAX_UNKNOWN {
            if let Some((old, _)) = self.unknown.pop_front() {
                pipeline.forget_writer_schema(old);
            }
        }
    }

    /// Forgets unknown ids remembered longer than [`UNKNOWN_TTL`].
    fn expire(&mut self, pipeline: &mut Pipeline) {
        while let Some((id, _)) = self
            .unknown
            .front()
            .filter(|(_, at)| at.elapsed() >= UNKNOWN_TTL)
            .copied()
        {
            self.unknown.pop_front();
            pipeline.forget_writer_schema(id);
        }
    }
}

/// Processes one record and produces its outputs.
fn handle(
    step: Step<'_, '_>,
    topology: &Topology<'_>,
    pipeline: &mut Pipeline,
    sink: &Sink<'_>,
    tally: &mut Tally,
    meter: &mut Meter,
) -> Result<(), RunError> {
    let message = step.message;
    meter.batch.consumed(message.topic());
    if let Some(topic) = topology.passthrough {
        let record = copy_of(topic, message, message.key());
        send(sink.producer, record).map_err(|source| RunError::Produce {
            topic: topic.to_owned(),
            source,
        })?;
        meter.batch.produced(topic);
        tally.inputs += 1;
        return Ok(());
    }
    let mut stopwatch = meter.stopwatch();
    let batch = &mut meter.batch;
    let own = SourcePosition {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
    };
    // Records read back from the repartition topic name the input record.
    let (source, original_key) = match (step.hop, message.headers()) {
        (Hop::Repartition, Some(h)) => headers::source_of(h).unwrap_or((own, message.key())),
        _ => (own, message.key()),
    };
    let timestamp_ms = message.timestamp().to_millis();
    let input = Input {
        value: message.payload(),
        timestamp_ms,
        source,
        shard: message.partition(),
    };
    let outcome = if let Some(failure) = step.poison {
        if step.processed {
            // Under at-least-once, the refused attempt's dedupe state
            // reached the changelog outside a transaction: the lead is
            // run again only to find the keys it touched, whose values
            // from before it are written back (below, with the changes).
            // Under exactly-once the abort discarded that state, and
            // writing the same values again changes nothing.
            let savepoint = pipeline.dedupe().savepoint();
            let _ = pipeline.process(input);
            pipeline.dedupe().revert_to(savepoint);
        }
        Outcome::Failed(failure)
    } else if step.processed {
        let savepoint = pipeline.dedupe().savepoint();
        let outcome = match &mut stopwatch {
            Some(clock) => pipeline.process_clocked(input, clock),
            None => pipeline.process(input),
        };
        match outcome {
            Outcome::Routed {
                destination,
                ref lead,
                ref score,
            } => {
                let sent = sink.send_lead(
                    pipeline,
                    (source, timestamp_ms),
                    (destination, lead, score),
                    batch,
                )?;
                if let Some(clock) = &mut stopwatch {
                    clock.lap(Stage::Produce);
                }
                match sent {
                    Ok(()) => outcome,
                    // Rather than stop the pipeline, the record becomes a
                    // dead letter, and dedupe forgets it was let through:
                    // a replay of it must not count as a duplicate.
                    Err(failure) => {
                        pipeline.dedupe().rollback_to(savepoint);
                        Outcome::Failed(failure)
                    }
                }
            }
            other => other,
        }
    } else {
        let rekeyed = match &mut stopwatch {
            Some(clock) => pipeline.rekey_clocked(input, clock),
            None => pipeline.rekey(input),
        };
        match rekeyed {
            Rekeyed::Forward(key) => {
                if let Some(clock) = &stopwatch {
                    sink.metrics.observe_stages(&clock.laps);
                }
                let Some((topic, partitions)) = topology.repartition else {
                    return Ok(());
                };
                let partition = partition_for(key.0, partitions);
                let key = key.hex();
                let mut record = copy_of(topic, message, Some(key.as_str().as_bytes()))
                    .partition(partition)
                    .headers(headers::forwarded(message.headers(), source, original_key));
                // The record timestamp is the event time of a lead without
                // `received_at`, so the hop keeps it (see `topics::create`).
                if let Some(ts) = timestamp_ms {
                    record = record.timestamp(ts);
                }
                match send(sink.producer, record) {
                    Ok(()) => {
                        batch.produced(topic);
                        tally.record_forwarded();
                        return Ok(());
                    }
                    // Too large with its headers, say: a dead letter, which
                    // always fits, rather than a pipeline stopped for good.
                    Err(error) => match super::refusal(&error) {
                        Some(code) => Outcome::Failed(rejected(topic, code)),
                        None => {
                            return Err(RunError::Produce {
                                topic: topic.to_owned(),
                                source: error,
                            });
                        }
                    },
                }
            }
            // A test lead or a failure: dealt with here, never forwarded.
            Rekeyed::Done(outcome) => outcome,
        }
    };
    if let Some(clock) = &stopwatch {
        sink.metrics.observe_stages(&clock.laps);
    }
    if let Outcome::Failed(failure) = &outcome {
        sink.send_dead_letter(
            (step.message, source, original_key),
            pipeline,
            failure,
            batch,
        )?;
    }
    if step.processed && !topology.changes_after_outputs {
        sink.send_changes(topology.changelog, pipeline.take_changes(), batch)?;
    }
    count_outcome(batch, &outcome, step.processed);
    if step.hop == Hop::Repartition {
        tally.record_outcome(&outcome, pipeline.routing());
    } else {
        tally.record(&outcome, pipeline.routing());
    }
    Ok(())
}

/// The dead letter's reason when `topic` refused a record for good.
fn rejected(topic: &str, code: RDKafkaErrorCode) -> Failure {
    Failure {
        stage: Stage::Produce,
        class: "produce_rejected",
        message: format!("{topic} refused the record: {code:?} ({code})"),
        schema_id: None,
    }
}

/// `topic/partition:first-last` for each partition a batch read, for its
/// log span.
fn offset_ranges(context: &RunContext, batch_start: &BTreeMap<Part, i64>) -> String {
    let pending = lock(&context.pending);
    let ranges: Vec<String> = batch_start
        .iter()
        .map(|(part, first)| {
            let last = pending.get(part).map_or(*first, |next| next - 1);
            format!("{}/{}:{first}-{last}", context.topic(part.0), part.1)
        })
        .collect();
    ranges.join(",")
}

/// Counts an input's outcome in the batch's metrics. `processed`: the
/// whole pipeline ran on it, so dedupe saw it if it got that far.
fn count_outcome(batch: &mut Batch, outcome: &Outcome, processed: bool) {
    let (kind, checked) = match outcome {
        Outcome::Routed {
            destination, score, ..
        } => {
            batch.scored(score.points, score.grade);
            match destination {
                Destination::Campaigns(_) => (LeadOutcome::Campaign, true),
                Destination::Suppressed(_) => (LeadOutcome::Suppressed, true),
            }
        }
        Outcome::Duplicate { .. } => (LeadOutcome::Duplicate, true),
        Outcome::TestLead => (LeadOutcome::Test, false),
        Outcome::Failed(failure) => {
            batch.dead_letter(failure.stage, failure.class);
            // Only the produce stage fails after dedupe let a lead through.
            let checked = matches!(failure.stage, Stage::Route | Stage::Produce);
            (LeadOutcome::DeadLetter, checked)
        }
    };
    batch.outcome(kind, checked && processed);
}

/// The repartition topic's partition for a key: leadflow's own hash, so
/// that co-partitioning does not depend on a client's partitioner.
fn partition_for(key: u128, partitions: i32) -> i32 {
    let partitions = u128::from(partitions.max(1).unsigned_abs());
    i32::try_from(key % partitions).unwrap_or(0)
}

/// Where outputs go and how they are encoded: one encoder per route (in
/// table order) and one for the suppressed topic.
/// The encoder for one output topic. A `confluent-avro` topic frames
/// records with the id its schema was registered under at start. Reloads
/// that route to a `confluent-avro` topic without one are refused
/// ([`Sink::check_schema_ids`]), so the fallback 0 (which no registry
/// assigns) never frames a record.
fn encoder_for(schema_ids: &HashMap<String, u32>, topic: &str, format: Format) -> Encoder {
    match format {
        Format::ConfluentAvro => Encoder::confluent(schema_ids.get(topic).copied().unwrap_or(0)),
        other => Encoder::new(other),
    }
}

struct Sink<'a> {
    producer: &'a LeadProducer,
    config: &'a Config,
    metrics: &'a crate::metrics::Metrics,
    routes: Vec<Encoder>,
    suppressed: Encoder,
    /// Registry ids of the campaign-lead schema by `confluent-avro` topic.
    schema_ids: HashMap<String, u32>,
    /// One buffer for every encoded lead: librdkafka copies the bytes.
    payload: std::cell::RefCell<Vec<u8>>,
}

impl<'a> Sink<'a> {
    /// Produces a dead letter: the input record's key, value and headers,
    /// with headers saying why and whence (its timestamp among them).
    fn send_dead_letter(
        &self,
        (message, source, key): (&BorrowedMessage<'_>, SourcePosition<'_>, Option<&[u8]>),
        pipeline: &Pipeline,
        failure: &Failure,
        batch: &mut Batch,
    ) -> Result<(), RunError> {
        let dlq = self.config.topics.dead_letter.as_str();
        // A dead letter always fits (see `kafka::RECORD_HEADROOM`): the
        // value is cut to the input limit, and a key and headers larger
        // than leadflow keeps are dropped; the dead letter says which.
        let limit = self.config.pipeline.max_record_bytes;
        let value = message.payload().unwrap_or_default();
        // Each header also costs its encoding (lengths, varints): counted
        // generously, so that many tiny headers cannot slip past.
        let extra = key.map_or(0, <[u8]>::len)
            + message.headers().map_or(0, |h| {
                h.iter()
                    .map(|h| 16 + h.key.len() + h.value.map_or(0, <[u8]>::len))
                    .sum()
            });
        let keep_extra = extra <= super::KEPT_KEY_AND_HEADERS;
        let mut cut = Vec::new();
        if value.len() > limit {
            cut.push(format!("value:{}", value.len()));
        }
        if !keep_extra {
            cut.push(format!("key+headers:{extra}"));
        }
        let truncated = (!cut.is_empty()).then(|| cut.join(","));
        let mut record =
            copy_of(dlq, message, key.filter(|_| keep_extra)).headers(headers::dead_letter(
                message.headers().filter(|_| keep_extra),
                (source, message.timestamp().to_millis()),
                pipeline.version(),
                (failure, truncated.as_deref()),
            ));
        if let Some(kept) = value.get(..limit).filter(|_| value.len() > limit) {
            record = record.payload(kept);
        }
        match send(self.producer, record) {
            Ok(()) => {}
            // Refused all the same (too large after all): the source
            // position and the reason alone, which always fit.
            Err(error) if super::refusal(&error).is_some() => {
                let minimal = BaseRecord::<[u8], [u8]>::to(dlq).headers(headers::dead_letter(
                    None::<&rdkafka::message::OwnedHeaders>,
                    (source, message.timestamp().to_millis()),
                    pipeline.version(),
                    (
                        failure,
                        Some(&format!("value:{},key+headers:{extra}", value.len())),
                    ),
                ));
                send(self.producer, minimal).map_err(|source| RunError::Produce {
                    topic: dlq.to_owned(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(RunError::Produce {
                    topic: dlq.to_owned(),
                    source,
                });
            }
        }
        batch.produced(dlq);
        batch.output_of(message.timestamp().to_millis());
        Ok(())
    }

    /// Produces dedupe state changes to the changelog partition of the
    /// shard they belong to.
    fn send_changes(
        &self,
        changelog: &str,
        changes: impl Iterator<Item = Change>,
        batch: &mut Batch,
    ) -> Result<(), RunError> {
        for change in changes {
            let mut record = BaseRecord::<[u8], [u8]>::to(changelog)
                .key(change.key.as_slice())
                .partition(change.partition);
            if let Some(value) = &change.value {
                record = record.payload(value.as_slice());
            }
            send(self.producer, record).map_err(|source| RunError::Produce {
                topic: changelog.to_owned(),
                source,
            })?;
            batch.produced(changelog);
        }
        Ok(())
    }

    fn new(
        producer: &'a LeadProducer,
        config: &'a Config,
        metrics: &'a crate::metrics::Metrics,
        schema_ids: HashMap<String, u32>,
    ) -> Sink<'a> {
        let suppressed = encoder_for(
            &schema_ids,
            &config.topics.suppressed,
            config.topics.output_format,
        );
        let mut sink = Sink {
            producer,
            config,
            metrics,
            routes: Vec::new(),
            suppressed,
            schema_ids,
            payload: std::cell::RefCell::new(Vec::with_capacity(1024)),
        };
        sink.set_routes(&config.routes);
        sink
    }

    /// Refuses routes to `confluent-avro` topics whose schema leadflow
    /// did not register at start: the registry is asked only then.
    fn check_schema_ids(&self, routes: &[crate::stages::route::Route]) -> Result<(), String> {
        let output = self.config.topics.output_format;
        let missing: Vec<&str> = routes
            .iter()
            .filter(|r| r.format.unwrap_or(output) == Format::ConfluentAvro)
            .map(|r| r.topic.as_str())
            .filter(|topic| !self.schema_ids.contains_key(*topic))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "confluent-avro topics {missing:?} have no schema registered by this process; restart leadflow to register them"
            ))
        }
    }

    /// One encoder per route, in table order.
    fn set_routes(&mut self, routes: &[crate::stages::route::Route]) {
        let output = self.config.topics.output_format;
        self.routes = routes
            .iter()
            .map(|route| {
                encoder_for(
                    &self.schema_ids,
                    &route.topic,
                    route.format.unwrap_or(output),
                )
            })
            .collect();
    }

    /// Produces a routed lead to each of its campaign topics, or to the
    /// suppressed topic. A lead whose record the client refuses for good
    /// (too large, say) fails at the produce stage (`Ok(Err(..))`).
    fn send_lead(
        &self,
        pipeline: &Pipeline,
        (source, timestamp_ms): (SourcePosition<'_>, Option<i64>),
        (destination, lead, score): (Destination, &Lead, &Score),
        batch: &mut Batch,
    ) -> Result<Result<(), Failure>, RunError> {
        let key = lead.dedupe_key.hex();
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
        let mut payload = self.payload.borrow_mut();
        for (topic, campaign, encoder) in targets {
            encoder.encode(lead, score, destination, campaign, &mut payload);
            // Stamped when written (see `copy_of`); the event time is in the value.
            let record = BaseRecord::to(topic)
                .key(key.as_str().as_bytes())
                .payload(payload.as_slice())
                .headers(headers::output(
                    (source, timestamp_ms),
                    pipeline.version(),
                    lead_headers,
                ));
            if let Err(error) = send(self.producer, record) {
                // Campaign records are bounded (`kafka::LEAD_RECORD_MAX`) and
                // the limits are checked at start, so a lead is refused here
                // before any of its records is written, or not at all; a
                // broker's refusal aborts the whole transaction.
                return match super::refusal(&error) {
                    Some(code) => Ok(Err(rejected(topic, code))),
                    None => Err(RunError::Produce {
                        topic: topic.to_owned(),
                        source: error,
                    }),
                };
            }
            batch.produced(topic);
            #[cfg(feature = "kafka-tests")]
            if crate::failpoint::fires("between-routes", lead.event_id.as_deref()) {
                return Err(RunError::Produce {
                    topic: topic.to_owned(),
                    source: KafkaError::MessageProduction(RDKafkaErrorCode::Fail),
                });
            }
        }
        batch.output_of(timestamp_ms);
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(partitions: &[(&str, i32)]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        list
    }

    #[test]
    fn a_batch_reads_at_least_as_long_as_the_last_commit_took() {
        let ms = Duration::from_millis;
        let timeout = ms(10_000);
        // Fast commits: the configured interval.
        assert_eq!(batch_window(ms(100), ms(20), timeout), ms(100));
        // A commit slower than the interval: as long as it took.
        assert_eq!(batch_window(ms(50), ms(900), timeout), ms(900));
        // Never more than a quarter of the transaction timeout.
        assert_eq!(batch_window(ms(50), ms(8_000), timeout), ms(2_500));
        // A configured interval above that cap is the user's to keep.
        assert_eq!(batch_window(ms(5_000), ms(8_000), timeout), ms(5_000));
    }

    #[test]
    fn the_assignment_is_kept_from_the_rebalances_alone() {
        let mut assigned = BTreeSet::new();
        let first = list(&[("raw", 0), ("raw", 1), ("repartition", 0)]);
        assert_eq!(
            track_assignment(&mut assigned, &Rebalance::Assign(&first)),
            3
        );
        // Cooperative: a later assignment adds, a revoke takes away.
        let more = list(&[("repartition", 1)]);
        assert_eq!(
            track_assignment(&mut assigned, &Rebalance::Assign(&more)),
            4
        );
        let taken = list(&[("raw", 1), ("repartition", 0)]);
        assert_eq!(
            track_assignment(&mut assigned, &Rebalance::Revoke(&taken)),
            2
        );
        assert!(assigned.contains(&("raw".to_owned(), 0)));
        assert!(assigned.contains(&("repartition".to_owned(), 1)));
        let error = Rebalance::Error(KafkaError::Canceled);
        assert_eq!(track_assignment(&mut assigned, &error), 2);
    }
}
