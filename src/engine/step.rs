//! One record, from plan to outputs: [`step`] plans the record, has a
//! [`Writer`] write what the plan says, turns a refused write into a dead
//! letter, and counts the outcome. It knows no Kafka type: the run loop's
//! writer is the producer (`sink`), and the tests' is a fake that records
//! what would have been written.

use crate::domain::{DedupeKey, HexKey, Lead, Score};
use crate::error::{Failure, Stage};
use crate::metrics::{Batch, Metrics, Stopwatch};
use crate::pipeline::{Outcome, Pipeline, SourcePosition};
use crate::stages::StageClock;
use crate::stages::dedupe::Change;
use crate::stages::route::Destination;

use super::RunError;
use super::batch::{Meter, OpenBatch, count_outcome};
use super::local::LocalHop;
use super::plan::{Plan, RecordView, plan, refused};
use super::topology::{Hop, Topology};

/// Where a record's outputs go. `M` is the consumed record, whose bytes
/// and headers copies and dead letters carry on. A refusal for good of
/// the record at fault is `Ok(Err(failure))`; any other failure to write
/// is a [`RunError`]. Each write counts what it produced in `batch`.
pub trait Writer<M: ?Sized> {
    /// Copies the record unchanged (pass-through).
    fn copy(&self, topic: &str, message: &M, batch: &mut Batch) -> Result<(), RunError>;

    /// Forwards the record to a partition of the repartition topic.
    fn forward(
        &self,
        message: &M,
        to: (&str, HexKey, i32),
        whence: (SourcePosition<'_>, Option<&[u8]>),
        batch: &mut Batch,
    ) -> Result<Result<(), Failure>, RunError>;

    /// Writes a routed lead to its campaign topics or the suppressed topic.
    fn lead(
        &self,
        pipeline: &Pipeline,
        whence: (SourcePosition<'_>, Option<i64>),
        lead: (Destination, &Lead, &Score),
        batch: &mut Batch,
    ) -> Result<Result<(), Failure>, RunError>;

    /// Writes the record to the dead-letter topic, saying why and whence.
    fn dead_letter(
        &self,
        whence: (&M, SourcePosition<'_>, Option<&[u8]>),
        pipeline: &Pipeline,
        failure: &Failure,
        batch: &mut Batch,
    ) -> Result<(), RunError>;

    /// Writes dedupe state changes to the changelog.
    fn changes(
        &self,
        changes: &mut dyn Iterator<Item = Change>,
        batch: &mut Batch,
    ) -> Result<(), RunError>;
}

/// What a step works with.
pub struct Stepper<'a> {
    pub topology: &'a Topology,
    pub pipeline: &'a mut Pipeline,
    pub meter: &'a mut Meter,
    pub metrics: &'a Metrics,
    /// Repartition partitions processed here without the hop, if any.
    pub local: Option<&'a LocalHop>,
}

/// What became of a plan.
enum Carried {
    /// Copied unchanged (pass-through).
    Copied,
    /// Forwarded to the repartition topic: settled when read back.
    Forwarded,
    Settled(Outcome),
}

impl Stepper<'_> {
    /// Plans `record` (read from `message`), writes its outputs through
    /// `writer`, and counts it in `batch`.
    pub fn step<M: ?Sized>(
        &mut self,
        (record, message): (&RecordView<'_>, &M),
        poison: Option<Failure>,
        writer: &impl Writer<M>,
        batch: &mut OpenBatch,
    ) -> Result<(), RunError> {
        let topology = self.topology;
        let mut stopwatch = match topology.passthrough {
            None => self.meter.stopwatch(),
            Some(_) => None,
        };
        let planned = plan(
            record,
            (topology, self.local),
            self.pipeline,
            poison,
            stopwatch.as_mut(),
        );
        let processed = matches!(
            planned,
            Plan::Settle {
                processed: true,
                ..
            }
        );
        let carried = self.carry_out(planned, (record, message), stopwatch.as_mut(), writer)?;
        if let Some(clock) = &stopwatch {
            self.metrics.observe_stages(&clock.laps);
        }
        let outcome = match carried {
            Carried::Settled(outcome) => outcome,
            Carried::Copied => {
                batch.tally.inputs += 1;
                return Ok(());
            }
            // Its outcome is counted when it is read back.
            Carried::Forwarded => {
                batch.tally.record_forwarded();
                return Ok(());
            }
        };
        let counts = &mut self.meter.batch;
        if let Outcome::Failed(failure) = &outcome {
            let whence = (message, record.source, record.original_key);
            writer.dead_letter(whence, self.pipeline, failure, counts)?;
        }
        if processed && !topology.changes_after_outputs {
            writer.changes(&mut self.pipeline.take_changes(), counts)?;
        }
        let routing = self.pipeline.routing();
        count_outcome(counts, (&outcome, routing), processed);
        match record.hop {
            Hop::Repartition => batch.tally.record_outcome(&outcome, routing),
            Hop::Input => batch.tally.record(&outcome, routing),
        }
        if processed && record.hop == Hop::Input && topology.repartition.is_some() {
            counts.skipped_hop();
        }
        Ok(())
    }

    /// Writes what a plan says.
    fn carry_out<M: ?Sized>(
        &mut self,
        planned: Plan<'_>,
        (record, message): (&RecordView<'_>, &M),
        stopwatch: Option<&mut Stopwatch>,
        writer: &impl Writer<M>,
    ) -> Result<Carried, RunError> {
        let counts = &mut self.meter.batch;
        let (outcome, savepoint) = match planned {
            Plan::Copy(topic) => {
                writer.copy(topic, message, counts)?;
                return Ok(Carried::Copied);
            }
            Plan::Forward {
                topic,
                key,
                partition,
            } => {
                let to = (topic, DedupeKey(key).hex(), partition);
                let whence = (record.source, record.original_key);
                return Ok(match writer.forward(message, to, whence, counts)? {
                    Ok(()) => Carried::Forwarded,
                    Err(failure) => Carried::Settled(Outcome::Failed(failure)),
                });
            }
            Plan::Settle {
                outcome, savepoint, ..
            } => (outcome, savepoint),
        };
        let Outcome::Routed {
            destination,
            ref lead,
            ref score,
        } = outcome
        else {
            return Ok(Carried::Settled(outcome));
        };
        let whence = (record.source, record.timestamp_ms);
        let sent = writer.lead(self.pipeline, whence, (destination, lead, score), counts)?;
        if let Some(clock) = stopwatch {
            clock.lap(Stage::Produce);
        }
        Ok(Carried::Settled(match sent {
            Ok(()) => outcome,
            Err(failure) => refused(failure, savepoint, self.pipeline),
        }))
    }
}
