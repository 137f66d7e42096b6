//! The loop's bookkeeping, free of Kafka: the open batch (where each
//! partition started, how far it was read, what it counted), what carries
//! over between batches (partitions awaiting restore, a refused record
//! being isolated), and the loop's reaction to each consumer [`Event`].
//!
//! Every decision here is unit-tested without a broker: what a revoke, a
//! lost assignment, an abort or a refusal does to the batch and to dedupe
//! state, and which records wait for a restore.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::RunError;
use super::events::Event;
use super::local::LocalHop;
use super::topology::{Hop, Part, Topology};
use crate::error::{Failure, Stage};
use crate::metrics::{Batch, LeadOutcome, Metrics, Stopwatch};
use crate::pipeline::{Outcome, Pipeline, Place, Tally};
use crate::stages::route::RoutingTable;

/// Stage timings are taken on one record in this many: reading the clock
/// costs about as much as a light stage.
const STAGE_SAMPLE: u64 = 16;

/// The open batch's metrics, and what sampling and gauges need.
#[derive(Default)]
pub struct Meter {
    pub batch: Batch,
    /// Records handled, for sampling stage timings.
    records: u64,
    /// Dedupe evictions already counted.
    evicted: u64,
}

impl Meter {
    /// A clock for this record's stages, if it is sampled.
    pub fn stopwatch(&mut self) -> Option<Stopwatch> {
        self.records += 1;
        self.records
            .is_multiple_of(STAGE_SAMPLE)
            .then(Stopwatch::start)
    }

    /// The batch committed: count it, and read the dedupe gauges.
    pub fn committed(&mut self, metrics: &Metrics, pipeline: &mut Pipeline) {
        metrics.commit(&mut self.batch, crate::metrics::now_ms());
        let dedupe = pipeline.dedupe();
        metrics.set_dedupe_size(dedupe.len(), dedupe.bytes());
        let evicted = dedupe.evicted();
        metrics
            .dedupe_evictions
            .inc_by(evicted.saturating_sub(self.evicted));
        self.evicted = evicted;
    }
}

/// Counts an input's outcome in the batch's metrics. `processed`: the
/// whole pipeline ran on it, so dedupe saw it if it got that far.
pub fn count_outcome(
    batch: &mut Batch,
    (outcome, routing): (&Outcome, &RoutingTable),
    processed: bool,
) {
    if let Outcome::Routed { score, lead, .. } = outcome {
        batch.scored(score.points, score.grade);
        if lead.catalogued.is_none() {
            batch.uncatalogued(lead.storefront);
        }
    }
    let (kind, checked) = match outcome.place(routing) {
        Place::Campaigns(_) => (LeadOutcome::Campaign, true),
        Place::Suppressed(_) => (LeadOutcome::Suppressed, true),
        Place::Duplicate => (LeadOutcome::Duplicate, true),
        Place::TestLead => (LeadOutcome::Test, false),
        Place::DeadLetter(failure) => {
            batch.dead_letter(failure.stage, failure.class);
            // Only the produce stage fails after dedupe let a lead through.
            let checked = matches!(failure.stage, Stage::Route | Stage::Produce);
            (LeadOutcome::DeadLetter, checked)
        }
    };
    batch.outcome(kind, checked && processed);
}

/// The batch being read: rolled back or committed as one.
#[derive(Debug, Default)]
pub struct OpenBatch {
    /// Records read, the one whose processing failed included.
    pub records: usize,
    /// First offset of each partition in this batch, to rewind to on abort.
    pub start: BTreeMap<Part, i64>,
    /// Next offset after the last record read per partition.
    pub read_to: BTreeMap<Part, i64>,
    /// What the batch's records came to, merged into the run's on commit.
    pub tally: Tally,
    /// A record's output was refused mid-transaction, which now only
    /// aborts: the batch ends, to find that record.
    pub refused: bool,
}

impl OpenBatch {
    /// Notes a record read.
    pub fn read(&mut self, part: Part, offset: i64) {
        self.records += 1;
        self.start.entry(part).or_insert(offset);
        self.read_to.insert(part, offset + 1);
    }
}

/// What the loop does after an event.
#[derive(Debug)]
pub enum Reaction {
    Continue,
    /// The open batch was aborted: seek these partitions, those still
    /// assigned, back to these offsets.
    Rewind(BTreeMap<Part, i64>),
    /// This life of the pipeline ends.
    Fail(RunError),
}

/// What carries over from one batch to the next.
#[derive(Debug, Default)]
pub struct Progress {
    /// What committed batches came to.
    pub tally: Tally,
    /// Assigned partitions whose dedupe state is not restored yet: no
    /// record of theirs is processed until it is.
    pub to_restore: BTreeSet<i32>,
    /// Finding a record the broker refused for good: the next offsets the
    /// failed batch reached, per partition; empty when not isolating.
    isolating: BTreeMap<Part, i64>,
    /// Records found refused, each with its dead letter's reason.
    poisoned: BTreeMap<Part, (i64, Failure)>,
    /// How long to wait before reading a batch refused again.
    reject_backoff: Duration,
    /// Which re-keyed leads skip the hop; `None` without a repartition
    /// topic (or in pass-through).
    pub local: Option<LocalHop>,
}

impl Progress {
    /// The most records the next batch may read: one per transaction while
    /// a refused record is being found.
    pub fn batch_limit(&self, max_batch_records: usize) -> usize {
        if self.isolating.is_empty() {
            max_batch_records
        } else {
            1
        }
    }

    /// Whether a record of `partition` may be processed: not before its
    /// partition's state is restored, nor an input record before a
    /// catch-up that is due (see `local`).
    pub fn may_process(&self, topology: &Topology, part: Part) -> bool {
        let held = part.0 == Hop::Input && self.local.as_ref().is_some_and(LocalHop::holds_input);
        let restoring = topology.is_processed(part.0) && self.to_restore.contains(&part.1);
        !held && !restoring
    }

    /// The dead letter's reason if this record was found refused.
    pub fn poison(&mut self, part: Part, offset: i64) -> Option<Failure> {
        match self.poisoned.get(&part) {
            Some((at, _)) if *at == offset => self.poisoned.remove(&part).map(|(_, f)| f),
            _ => None,
        }
    }

    /// Applies a consumer event to the open batch and dedupe state.
    pub fn apply(
        &mut self,
        event: Event,
        (topology, pipeline): (&Topology, &mut Pipeline),
        (batch, meter, metrics): (&mut OpenBatch, &mut Meter, &Metrics),
    ) -> Reaction {
        let (parts, committed) = match event {
            Event::Assigned { to_restore, input } => {
                self.to_restore.extend(to_restore);
                if let Some(local) = self.local.as_mut().filter(|_| input) {
                    local.input_assigned(std::time::Instant::now());
                }
                return Reaction::Continue;
            }
            Event::Failed(error) => return Reaction::Fail(error),
            Event::Revoked { parts, committed } => (parts, committed),
            Event::Lost { parts } => (parts, false),
        };
        let reaction = if committed {
            // The revoke committed the batch so far.
            self.tally.merge(std::mem::take(&mut batch.tally));
            batch.start.clear();
            Self::settle(pipeline, meter, metrics);
            Reaction::Continue
        } else {
            // Nothing of it is visible: read its records again.
            batch.tally = Tally::default();
            Self::roll_back(pipeline, meter);
            Reaction::Rewind(std::mem::take(&mut batch.start))
        };
        for (hop, partition) in parts {
            if topology.is_processed(hop) {
                pipeline.dedupe().drop_partition(partition);
                self.to_restore.remove(&partition);
                if let Some(local) = self.local.as_mut() {
                    local.dropped(partition);
                }
            }
        }
        reaction
    }

    /// The batch committed. `reached`: the next offsets it committed;
    /// `assigned`: whether a partition is still this member's.
    pub fn committed(
        &mut self,
        batch: OpenBatch,
        (pipeline, meter, metrics): (&mut Pipeline, &mut Meter, &Metrics),
        (reached, assigned): (&BTreeMap<Part, i64>, impl Fn(Part) -> bool),
    ) {
        Self::settle(pipeline, meter, metrics);
        self.tally.merge(batch.tally);
        self.reject_backoff = Duration::ZERO;
        // Isolation ends once the loop is past the failed batch on every
        // partition it still owns.
        self.isolating
            .retain(|part, end| assigned(*part) && reached.get(part).is_none_or(|r| r < end));
    }

    /// Nothing of the batch is visible (under at-least-once, some of it
    /// may be): its state changes and counts are forgotten, and its
    /// records are to be read again from `batch.start`.
    pub fn aborted(&mut self, pipeline: &mut Pipeline, meter: &mut Meter) {
        Self::roll_back(pipeline, meter);
    }

    /// Dedupe state and metrics once a batch committed.
    fn settle(pipeline: &mut Pipeline, meter: &mut Meter, metrics: &Metrics) {
        pipeline.commit_batch();
        meter.committed(metrics, pipeline);
    }

    fn roll_back(pipeline: &mut Pipeline, meter: &mut Meter) {
        pipeline.rollback_batch();
        meter.batch.clear();
    }

    /// The broker refused one of the batch's records for good (`failure`
    /// naming it). A batch of one record: that record is the one, and it
    /// goes to the dead-letter topic next time; else the batch is read
    /// again one record per transaction. Returns how long to wait first:
    /// never a tight loop, whatever keeps being refused.
    pub fn refused(&mut self, batch: &OpenBatch, failure: Failure) -> Duration {
        match (batch.records, batch.start.iter().next()) {
            (1, Some((part, offset))) => {
                tracing::warn!(partition = part.1, offset, reason = %failure.message, "record refused for good; it goes to the dead-letter topic");
                self.poisoned.insert(*part, (*offset, failure));
            }
            _ => {
                tracing::warn!(records = batch.records, reason = %failure.message, "a record of the batch was refused for good; finding it, one record per transaction");
                self.isolating = batch.read_to.clone();
            }
        }
        let wait = self.reject_backoff;
        self.reject_backoff = (wait * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        wait
    }
}
