//! What to do with one consumed record, decided without Kafka: a
//! [`RecordView`] (plain data, no client types) and the pipeline give a
//! [`Plan`]. The sink carries a plan out; when the broker refuses what a
//! plan writes, [`refused`] turns it into a dead letter.

use crate::domain::DedupeKey;
use crate::error::{Failure, Stage};
use crate::metrics::Stopwatch;
use crate::pipeline::{Input, Outcome, Pipeline, Rekeyed, SourcePosition};
use crate::stages::dedupe::Savepoint;

use super::local::LocalHop;
use super::topology::{Hop, Topology, partition_for};

/// One consumed record, as the engine decides on it.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub hop: Hop,
    pub partition: i32,
    pub value: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
    /// Where the lead entered leadflow: this record, or for one read back
    /// from the repartition topic, the input record its headers name.
    pub source: SourcePosition<'a>,
    /// The input record's own key.
    pub original_key: Option<&'a [u8]>,
}

/// What becomes of a record.
#[derive(Debug)]
pub enum Plan<'t> {
    /// Pass-through: copied unchanged to this topic.
    Copy(&'t str),
    /// Re-keyed: forwarded unchanged to this partition of the repartition
    /// topic, under the hex of its person-and-offer key.
    Forward {
        topic: &'t str,
        key: u128,
        partition: i32,
    },
    /// Settled: routed (written to its places), dropped (duplicate or
    /// test lead) or failed (a dead letter). `processed`: the whole
    /// pipeline ran on it here, so its dedupe state changes are to be
    /// written. `savepoint` is where dedupe stood before the lead, to
    /// forget it if its outputs are refused.
    Settle {
        outcome: Outcome,
        processed: bool,
        savepoint: Option<Savepoint>,
    },
}

/// Decides on `record`. `poison`: the broker refused what this record
/// produced, for good, so it goes to the dead-letter topic as it is.
/// `local`: the repartition partitions processed here without the hop.
/// `stopwatch`: the record's stage timings, if it is sampled.
pub fn plan<'t>(
    record: &RecordView<'_>,
    (topology, local): (&'t Topology, Option<&LocalHop>),
    pipeline: &mut Pipeline,
    poison: Option<Failure>,
    stopwatch: Option<&mut Stopwatch>,
) -> Plan<'t> {
    if let Some(topic) = &topology.passthrough {
        return Plan::Copy(topic);
    }
    let input = Input {
        value: record.value,
        timestamp_ms: record.timestamp_ms,
        source: record.source,
        shard: record.partition,
    };
    // Only the input's records are re-keyed, and only when there is a
    // repartition topic; every other record runs the whole pipeline.
    let repartition = match &topology.repartition {
        Some((topic, partitions)) if record.hop == Hop::Input => Some((topic, *partitions)),
        _ => None,
    };
    let local = |key: DedupeKey| local.and_then(|hop| hop.shard(key.0));
    if let Some(failure) = poison {
        return poisoned(failure, (input, repartition.is_some(), local), pipeline);
    }
    let savepoint = Some(pipeline.dedupe().savepoint());
    let Some((topic, partitions)) = repartition else {
        let outcome = match stopwatch {
            Some(clock) => pipeline.process_clocked(input, clock),
            None => pipeline.process(input),
        };
        return Plan::Settle {
            outcome,
            processed: true,
            savepoint,
        };
    };
    let rekeyed = match stopwatch {
        Some(clock) => pipeline.rekey_clocked(input, local, clock),
        None => pipeline.rekey_clocked(input, local, &mut ()),
    };
    match rekeyed {
        Rekeyed::Processed(outcome) => Plan::Settle {
            outcome,
            processed: true,
            savepoint,
        },
        Rekeyed::Forward(key) => Plan::Forward {
            topic,
            key: key.0,
            partition: partition_for(key.0, partitions),
        },
        // A test lead or a failure: dealt with here, never forwarded.
        Rekeyed::Done(outcome) => Plan::Settle {
            outcome,
            processed: false,
            savepoint: None,
        },
    }
}

/// The plan for a record whose outputs the broker refused for good: a
/// dead letter. Under at-least-once, the refused attempt's dedupe state
/// reached the changelog outside a transaction: the lead is run again only
/// to find the keys it touched, whose values from before it are written
/// back (with the changes). Under exactly-once the abort discarded that
/// state, and writing the same values again changes nothing. A lead to
/// forward touches no state.
fn poisoned<'t>(
    failure: Failure,
    (input, rekeyed, local): (Input<'_>, bool, impl FnOnce(DedupeKey) -> Option<i32>),
    pipeline: &mut Pipeline,
) -> Plan<'t> {
    let savepoint = pipeline.dedupe().savepoint();
    let processed = if rekeyed {
        matches!(
            pipeline.rekey_clocked(input, local, &mut ()),
            Rekeyed::Processed(_)
        )
    } else {
        let _ = pipeline.process(input);
        true
    };
    pipeline.dedupe().revert_to(savepoint);
    Plan::Settle {
        outcome: Outcome::Failed(failure),
        processed,
        savepoint: None,
    }
}

/// The outcome once the broker refused a lead's records for good: a dead letter,
/// and dedupe forgets the lead was let through (a replay of it must not
/// count as a duplicate).
pub fn refused(failure: Failure, savepoint: Option<Savepoint>, pipeline: &mut Pipeline) -> Outcome {
    if let Some(savepoint) = savepoint {
        pipeline.dedupe().rollback_to(savepoint);
    }
    Outcome::Failed(failure)
}

/// The dead letter's reason when `topic` refused a record for good.
pub fn rejected(topic: &str, code: impl std::fmt::Debug + std::fmt::Display) -> Failure {
    Failure {
        stage: Stage::Produce,
        class: "produce_rejected",
        message: format!("{topic} refused the record: {code:?} ({code})"),
        schema_id: None,
    }
}
