//! The consumer's callbacks, and what they tell the loop.
//!
//! librdkafka calls these inside `poll`, on the loop's thread, between two
//! records. They do only what cannot wait for `poll` to return, and queue
//! the rest as typed [`Event`]s, which the loop drains after each poll:
//!
//! - a **revoke** commits the open batch first (Kafka Streams does the
//!   same in `onPartitionsRevoked`): once the callback returns, the
//!   partitions belong to another member, and their offsets can no longer
//!   join a transaction of this one;
//! - a **lost** assignment (the group moved on without this member) cannot
//!   commit, so the open transaction is aborted;
//! - an **assignment** pauses the partitions that carry dedupe state, since
//!   no record of theirs may be processed before their state is restored.
//!
//! A life that failed commits nothing more: dropping its consumer revokes
//! again, and what is open then must stay uncommitted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::RunError;
use super::sink::StagedChanges;
use super::topology::{Hop, Part, Topology};
use crate::health::Observed;
use crate::kafka::purge::Purgeable;
use crate::kafka::txn::{Committed, Txn, TxnError};
use crate::kafka::{Logged, lock, log_client_error};
use crate::metrics::{KindLabels, PartitionLabels, ResultLabels, TopicLabels};
use crate::pipeline::Tally;

/// What happened inside a poll, for the loop to act on, in order.
#[derive(Debug)]
pub enum Event {
    /// Partitions were assigned; `to_restore`, which carry dedupe state,
    /// are paused until their state is restored. `input`: some are the
    /// input's (with a repartition hop, they carry none).
    Assigned { to_restore: Vec<i32>, input: bool },
    /// Partitions were revoked; the open batch was committed first, or
    /// (`committed: false`) aborted, and is to be processed again.
    Revoked { parts: Vec<Part>, committed: bool },
    /// Partitions were lost: the open batch was aborted.
    Lost { parts: Vec<Part> },
    /// A failure inside a callback: this life of the pipeline ends.
    Failed(RunError),
}

/// An offset reset on a consumed partition: the records from `from` on
/// were deleted (by retention, or `DeleteRecords`) before this consumer
/// read them, and librdkafka moved on to the log's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetReset {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
}

/// The consumer's context: what the callbacks share with the loop.
pub struct RunContext {
    pub topology: Topology,
    pub txn: Txn,
    /// The open transaction's dedupe changes, written by its commit.
    pub changes: StagedChanges,
    /// Next offset to commit per partition, for processed records.
    pub pending: Mutex<BTreeMap<Part, i64>>,
    /// Committed offsets of repartition partitions not yet purged.
    pub purgeable: Mutex<Purgeable>,
    events: Mutex<VecDeque<Event>>,
    /// The partitions assigned now, kept from the rebalance events. A
    /// callback must not ask librdkafka: `assignment()` inside the revoke
    /// of a closing consumer waits forever (seen as a `kill -9` soak's run
    /// that never stopped on SIGTERM).
    assigned: Mutex<BTreeSet<(String, i32)>>,
    /// This life of the pipeline failed (or a revoke's commit did): no
    /// callback commits anything from now on.
    failed: AtomicBool,
    pub observed: Observed,
    /// Partitions with a `consumer_lag` series, to remove when revoked.
    lag_series: Mutex<Vec<PartitionLabels>>,
    /// Offset resets librdkafka reported, for the loop to report.
    resets: Mutex<Vec<OffsetReset>>,
}

impl RunContext {
    pub fn new(topology: Topology, txn: Txn, observed: Observed) -> RunContext {
        RunContext {
            topology,
            txn,
            changes: StagedChanges::default(),
            pending: Mutex::default(),
            purgeable: Mutex::default(),
            events: Mutex::default(),
            assigned: Mutex::default(),
            failed: AtomicBool::new(false),
            observed,
            lag_series: Mutex::default(),
            resets: Mutex::default(),
        }
    }

    /// The events queued since the last call, oldest first.
    pub fn events(&self) -> VecDeque<Event> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// The offset resets reported since the last call.
    pub fn resets(&self) -> Vec<OffsetReset> {
        std::mem::take(&mut *lock(&self.resets))
    }

    /// Whether `partition` of `topic` is assigned now.
    pub fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        lock(&self.assigned).contains(&(topic.to_owned(), partition))
    }

    /// From now on, no callback commits: this life failed.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Commits the outputs of the records processed so far together with
    /// their offsets (see [`Txn::commit`]); `Ok(false)` when there was
    /// nothing to commit.
    pub fn commit(&self, consumer: &impl crate::kafka::txn::Group) -> Result<bool, RunError> {
        let started = Instant::now();
        let mut pending = lock(&self.pending);
        if pending.is_empty() && !self.txn.is_open() && self.changes.is_empty() {
            return Ok(false);
        }
        // The batch's dedupe changes, in its transaction.
        if !self.changes.is_empty() {
            self.txn.begin()?;
        }
        let changelog = &self.topology.changelog;
        let written = match self.changes.send(self.txn.producer(), changelog) {
            Ok(written) => written,
            // A record of the transaction was refused, so it can only
            // abort: the commit below says so, and the batch is retried
            // with that record isolated.
            Err(RunError::Produce {
                source: KafkaError::MessageProduction(RDKafkaErrorCode::State),
                ..
            }) if self.txn.exactly_once() => 0,
            Err(e) => return Err(e),
        };
        let mut offsets = TopicPartitionList::with_capacity(pending.len());
        for ((hop, partition), offset) in pending.iter() {
            // Cannot fail for a non-negative offset.
            let _ = offsets.add_partition_offset(
                self.topology.topic(*hop),
                *partition,
                Offset::Offset(*offset),
            );
        }
        let committed = match self.txn.commit(consumer, &offsets) {
            Ok(committed) => committed,
            Err(error) => {
                if matches!(error, TxnError::Aborted(_)) {
                    self.count_transaction("aborted", started);
                }
                if matches!(error, TxnError::Rejected(_)) {
                    pending.clear();
                }
                return Err(error.into());
            }
        };
        self.count_transaction("committed", started);
        self.observed.health.set_broker_reachable(true);
        if written > 0 {
            let topic = changelog.clone();
            let records_out = &self.observed.metrics.records_out;
            records_out
                .get_or_create(&TopicLabels { topic })
                .inc_by(written);
        }
        if committed == Committed::All {
            let mut purgeable = lock(&self.purgeable);
            for ((hop, partition), offset) in pending.iter() {
                // The records before them are never read again.
                if *hop == Hop::Repartition {
                    purgeable.insert(*partition, *offset);
                }
            }
            pending.clear();
        }
        Ok(true)
    }

    fn count_transaction(&self, result: &'static str, started: Instant) {
        let metrics = &self.observed.metrics;
        metrics
            .transactions
            .get_or_create(&ResultLabels { result })
            .inc();
        metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// Aborts the open batch: nothing of it becomes visible, and its
    /// offsets are forgotten.
    pub fn abort(&self) -> Result<(), RunError> {
        self.changes.clear();
        self.txn.abort()?;
        lock(&self.pending).clear();
        self.observed
            .metrics
            .transactions
            .get_or_create(&ResultLabels { result: "aborted" })
            .inc();
        Ok(())
    }

    fn push(&self, event: Event) {
        lock(&self.events).push_back(event);
    }

    /// The partitions of `list` the loop consumes.
    fn parts(&self, list: &TopicPartitionList) -> Vec<Part> {
        list.elements()
            .iter()
            .filter_map(|tp| Some((self.topology.hop(tp.topic())?, tp.partition())))
            .collect()
    }

    /// Commits (or, for a lost assignment, aborts) the open batch before
    /// its partitions go.
    fn revoke(&self, consumer: &BaseConsumer<Self>, revoked: &TopicPartitionList) {
        let parts = self.parts(revoked);
        let lost = consumer.assignment_lost();
        let result = match (self.failed.load(Ordering::Relaxed), lost) {
            (true, _) => Ok(false),
            // Their offsets cannot join the transaction any more.
            (false, true) => self.abort().map(|()| false),
            (false, false) => self.commit(consumer),
        };
        let mut pending = lock(&self.pending);
        for part in &parts {
            pending.remove(part);
        }
        drop(pending);
        let kind = if lost { "lost" } else { "revoke" };
        self.observed
            .metrics
            .rebalances
            .get_or_create(&KindLabels { kind })
            .inc();
        info!(partitions = revoked.count(), lost, "partitions revoked");
        let committed = match result {
            _ if self.failed.load(Ordering::Relaxed) => return,
            Ok(_) if lost => return self.push(Event::Lost { parts }),
            Ok(_) => true,
            // Nothing of the batch is visible; the next owner of these
            // partitions processes it, and the loop rewinds the rest.
            // (At-least-once: a refused record; the loop rewinds and
            // isolates it when the batch fails again.)
            Err(RunError::Txn(e)) if e.is_retry() => false,
            // Under exactly-once the partitions' outputs are not visible;
            // stopping is the way to keep them from being lost here and
            // repeated there.
            Err(e) if self.txn.exactly_once() => {
                self.fail();
                return self.push(Event::Failed(e));
            }
            Err(e) => {
                warn!(error = %e, "commit before revoke failed; the next owner may repeat some outputs");
                if matches!(e, RunError::Txn(TxnError::Delivery(_))) {
                    self.push(Event::Failed(e));
                }
                true
            }
        };
        self.push(Event::Revoked { parts, committed });
    }

    /// Pauses the assigned partitions that carry dedupe state.
    fn assign(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        let mut paused = TopicPartitionList::new();
        let mut to_restore = Vec::new();
        let mut input = false;
        for (hop, partition) in self.parts(assigned) {
            input |= hop == Hop::Input;
            if self.topology.is_processed(hop) {
                paused.add_partition(self.topology.topic(hop), partition);
                to_restore.push(partition);
            }
        }
        // No record of a partition may be processed before its state
        // is restored; the loop resumes it after restoring.
        if paused.count() > 0
            && let Err(e) = consumer.pause(&paused)
        {
            self.push(Event::Failed(RunError::Restore {
                topic: self.topology.input.clone(),
                reason: format!("cannot pause assigned partitions: {e}"),
            }));
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
        self.push(Event::Assigned { to_restore, input });
    }
}

/// Reports the offset resets librdkafka logged since the last call: a
/// warning naming the partition and both offsets, the metric, `/readyz`
/// and `tally`. The records in between are gone from the broker.
pub fn report_offset_resets(
    context: &RunContext,
    lister: &BaseConsumer<Logged>,
    tally: &mut Tally,
) {
    for OffsetReset {
        topic,
        partition,
        from,
    } in context.resets()
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
        let observed = &context.observed;
        observed
            .metrics
            .offset_resets
            .get_or_create(&TopicLabels { topic })
            .inc();
        observed.health.record_offset_reset(skipped);
        tally.offset_resets += 1;
        tally.skipped_records += skipped;
    }
}

/// The reset in a librdkafka `OFFSET` warning, which is the only report
/// of one when `auto.offset.reset` resets by itself: `TOPIC [P]: offset
/// reset (at offset N (leader epoch E), broker B) to offset BEGINNING ...`.
/// (`auto.offset.reset=error` would report it as a consumer error, but one
/// naming no partition, after which the partition stops until reassigned.)
pub fn parse_offset_reset(message: &str) -> Option<OffsetReset> {
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
        crate::kafka::log_client_message(level, fac, message);
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
            .set_broker_reachable(crate::kafka::any_broker_up(&statistics));
        let lag = &self.observed.metrics.consumer_lag;
        let mut current = Vec::new();
        for (name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                // Partition -1 is librdkafka's unassigned queue; a partition
                // not desired was revoked and has no lag of this process's.
                if *partition < 0 || !stats.desired || stats.ls_offset < 0 {
                    continue;
                }
                // Never read nor committed (a repartition partition whose
                // leads all skipped the hop, say): read from the log's
                // start, as `auto.offset.reset` says.
                let position = match stats.app_offset.max(stats.committed_offset) {
                    at if at >= 0 => at,
                    _ if stats.lo_offset >= 0 => stats.lo_offset,
                    _ => continue,
                };
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
            self.revoke(consumer, revoked);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            self.assign(consumer, assigned);
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

/// Marks a life of the pipeline failed when it ends without
/// [`FailureGuard::succeed`]: any return through `?`.
pub struct FailureGuard<'a> {
    context: &'a RunContext,
    succeeded: bool,
}

impl<'a> FailureGuard<'a> {
    pub fn new(context: &'a RunContext) -> FailureGuard<'a> {
        FailureGuard {
            context,
            succeeded: false,
        }
    }

    pub fn succeed(mut self) {
        self.succeeded = true;
    }
}

impl Drop for FailureGuard<'_> {
    fn drop(&mut self) {
        if !self.succeeded {
            self.context.fail();
        }
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
