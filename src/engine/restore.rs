//! Dedupe state per partition: restored from the changelog before a newly
//! assigned partition is resumed, and the loop's rewind and drained checks.
//!
//! The restore gate: a partition that carries dedupe state is paused when
//! it is assigned (see `events`), and resumed only here, once its state is
//! restored; the loop restores between batches, with no transaction open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::RunError;
use super::events::RunContext;
use super::local::LocalHop;
use super::second_hop::SecondHop;
use super::topology::Part;
use crate::health::Phase;
use crate::kafka::{DeliveryTracker, Logged, lock};
use crate::pipeline::Pipeline;

/// Restores the dedupe state of `partitions` (newly assigned, paused)
/// from the changelog and resumes them. Runs between batches, with no
/// transaction open.
pub fn restore_assigned(
    (consumer, second_hop): (&Arc<BaseConsumer<RunContext>>, &mut SecondHop<RunContext>),
    restorer: &BaseConsumer<Logged>,
    pipeline: &mut Pipeline,
    partitions: &[i32],
    delivery_timeout: Duration,
) -> Result<(), RunError> {
    let context = consumer.context();
    let topology = &context.topology;
    let processed = topology.processed_topic();
    second_hop.retain(|partition| context.is_assigned(processed, partition));
    if partitions.is_empty() {
        return Ok(());
    }
    context.observed.health.set_phase(Phase::Restoring);
    let started = Instant::now();
    let dedupe = pipeline.dedupe();
    for partition in partitions {
        dedupe.drop_partition(*partition);
        dedupe.add_partition(*partition);
    }
    let failed = |reason: String| RunError::Restore {
        topic: topology.changelog.clone(),
        reason,
    };
    await_stable(consumer, partitions, delivery_timeout * 3).map_err(failed)?;
    // An open transaction of a crashed owner holds the end back until it
    // times out, and a leader that just moved answers with errors for a
    // while: either is only a failure well past that.
    let patience = delivery_timeout * 3;
    let (mut corrupt, mut changes) = (0_u64, 0_u64);
    let records = crate::kafka::read_to_end(
        restorer,
        (&topology.changelog, partitions),
        patience,
        |record| {
            let key = record.key().unwrap_or_default();
            match dedupe.restore(record.partition(), key, record.payload()) {
                Ok(held) => changes += held,
                Err(_) => corrupt += 1,
            }
        },
    )
    .map_err(failed)?;
    if corrupt > 0 {
        warn!(
            corrupt,
            topic = topology.changelog,
            "skipped changelog records leadflow did not write"
        );
    }
    if topology.repartition.is_some() {
        second_hop.split(consumer, processed, partitions);
    }
    resume(consumer, partitions).map_err(failed)?;
    let metrics = &context.observed.metrics;
    metrics
        .restore_duration
        .observe(started.elapsed().as_secs_f64());
    metrics.restored_records.inc_by(records);
    metrics.set_dedupe_size(dedupe.len(), dedupe.bytes());
    info!(
        ?partitions,
        records,
        changes,
        keys = dedupe.len(),
        millis = started.elapsed().as_millis() as u64,
        "dedupe state restored"
    );
    Ok(())
}

/// Moves the catch-up of repartition partitions along (see `local`):
/// takes the ends of those to catch up and pauses the input, makes those
/// read to their end local, and resumes the input when none is left
/// catching up. Runs between batches, with no transaction open.
pub fn catch_up(
    (consumer, lister): (&BaseConsumer<RunContext>, &BaseConsumer<Logged>),
    forwarded: &DeliveryTracker,
    local: &mut LocalHop,
) -> Result<(), RunError> {
    let topology = &consumer.context().topology;
    let Some(topic) = topology.repartition_topic() else {
        return Ok(());
    };
    let timeout = Duration::from_secs(5);
    let now = Instant::now();
    let measure = local.to_measure(now);
    if !measure.is_empty() {
        let mut ends = Vec::with_capacity(measure.len());
        for partition in measure {
            match lister.fetch_watermarks(topic, partition, timeout) {
                Ok((_, stable)) => {
                    ends.push((partition, end_of(stable, forwarded.reached(partition))));
                }
                Err(e) => {
                    // Asked again between the next batches.
                    debug!(error = %e, partition, "end of a repartition partition unknown");
                    return Ok(());
                }
            }
        }
        debug!(?ends, "catching up repartition partitions");
        local.measured(&ends, now);
    }
    if local.catching_up() {
        let positions = positions((consumer, lister), topic, timeout)?;
        let before = local.local();
        if local.advance(|p| positions.get(&p).copied(), Instant::now()) {
            match local.local() > before {
                true => info!(
                    local = local.local(),
                    "repartition partitions caught up: leads whose key maps to one skip the hop"
                ),
                false => warn!(
                    ?positions,
                    "repartition partitions did not catch up in time; their leads take the hop, and it is tried again later"
                ),
            }
        }
    }
    let metrics = &consumer.context().observed.metrics;
    metrics.repartition_local.set(local.local() as i64);
    // Pausing again is harmless, and pauses input partitions assigned
    // since; resuming only follows a pause.
    if local.catching_up() {
        consumer
            .pause(&assigned_input(consumer)?)
            .map_err(RunError::Consumer)?;
        local.input_paused = true;
    } else if std::mem::take(&mut local.input_paused) {
        consumer
            .resume(&assigned_input(consumer)?)
            .map_err(RunError::Consumer)?;
    }
    Ok(())
}

/// The input partitions assigned now.
fn assigned_input(consumer: &BaseConsumer<RunContext>) -> Result<TopicPartitionList, RunError> {
    let input = &consumer.context().topology.input;
    let assigned = consumer.assignment().map_err(RunError::Consumer)?;
    let mut list = TopicPartitionList::new();
    for tp in assigned.elements_for_topic(input) {
        list.add_partition(input, tp.partition());
    }
    Ok(list)
}

/// How far each assigned partition of `topic` is read: the consumer's
/// position, or, where it delivered nothing since it was assigned, the
/// committed offset it started from, or the log's start (never committed:
/// `auto.offset.reset` is `earliest`).
fn positions(
    (consumer, lister): (&BaseConsumer<RunContext>, &BaseConsumer<Logged>),
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, RunError> {
    let mut known = BTreeMap::new();
    let mut unknown = TopicPartitionList::new();
    for tp in consumer
        .position()
        .map_err(RunError::Consumer)?
        .elements_for_topic(topic)
    {
        match tp.offset() {
            Offset::Offset(at) => {
                known.insert(tp.partition(), at);
            }
            _ => {
                unknown.add_partition(topic, tp.partition());
            }
        }
    }
    if unknown.count() > 0 {
        let committed = consumer
            .committed_offsets(unknown, timeout)
            .map_err(RunError::Consumer)?;
        for tp in committed.elements() {
            let at = match tp.offset() {
                Offset::Offset(at) => at,
                _ => match lister.fetch_watermarks(topic, tp.partition(), timeout) {
                    Ok((low, _)) => low,
                    Err(_) => continue,
                },
            };
            known.insert(tp.partition(), at);
        }
    }
    Ok(known)
}

/// Waits until the committed offsets of `partitions` are stable. KIP-447:
/// they are asked for as stable (read_committed), which waits while a
/// transaction of their previous owner is still pending. Only then does
/// the changelog hold that owner's last transaction, which a
/// read_committed restore would otherwise stop short of.
fn await_stable(
    consumer: &BaseConsumer<RunContext>,
    partitions: &[i32],
    timeout: Duration,
) -> Result<(), String> {
    consumer
        .committed_offsets(processed(consumer, partitions), timeout)
        .map(|_| ())
        .map_err(|e| format!("committed offsets did not become stable: {e}"))
}

/// `partitions` of the topic that carries dedupe state.
fn processed(consumer: &BaseConsumer<RunContext>, partitions: &[i32]) -> TopicPartitionList {
    let topic = consumer.context().topology.processed_topic();
    let mut list = TopicPartitionList::with_capacity(partitions.len());
    for partition in partitions {
        list.add_partition(topic, *partition);
    }
    list
}

/// Resumes restored partitions.
fn resume(consumer: &BaseConsumer<RunContext>, partitions: &[i32]) -> Result<(), String> {
    consumer
        .resume(&processed(consumer, partitions))
        .map_err(|e| format!("cannot resume partitions: {e}"))
}

/// Seeks each partition of an aborted batch that is still assigned back to
/// the batch's first record, and forgets what the batch had pending.
pub fn rewind(
    consumer: &BaseConsumer<RunContext>,
    batch_start: BTreeMap<Part, i64>,
) -> Result<(), RunError> {
    let context = consumer.context();
    let assigned = consumer.assignment().map_err(RunError::Consumer)?;
    let mut pending = lock(&context.pending);
    for ((hop, partition), offset) in batch_start {
        pending.remove(&(hop, partition));
        let topic = context.topology.topic(hop);
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
            .map_err(RunError::Consumer)?;
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
///
/// A repartition partition ends no earlier than past the records this
/// process forwarded there (see [`end_of`]).
pub fn drained(
    (consumer, lister): (&BaseConsumer<RunContext>, &BaseConsumer<Logged>),
    forwarded: &DeliveryTracker,
    restoring: bool,
) -> bool {
    let context = consumer.context();
    let repartition = context.topology.repartition_topic();
    if restoring || !lock(&context.pending).is_empty() {
        return false;
    }
    let Ok(positions) = consumer.position() else {
        return false;
    };
    let timeout = Duration::from_secs(5);
    let mut unpositioned = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for tp in positions.elements() {
        let Ok((low, stable)) = lister.fetch_watermarks(tp.topic(), tp.partition(), timeout) else {
            return false;
        };
        let ours = (repartition == Some(tp.topic())).then(|| forwarded.reached(tp.partition()));
        let end = end_of(stable, ours.flatten());
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

/// Where a repartition partition ends for this process: the end a
/// read_committed reader sees (the last stable offset), or past it the
/// last record this process forwarded there. That record is committed, but
/// the last stable offset stops short of it behind another process's open
/// transaction, and until the broker has written the commit's markers
/// (which it does after the commit returns).
fn end_of(stable: i64, forwarded: Option<i64>) -> i64 {
    forwarded.map_or(stable, |ours| stable.max(ours))
}

#[cfg(test)]
mod tests {
    use super::end_of;

    /// The benchmark's smoke run through the hop stopped with most
    /// forwarded leads unread: its last batch read nothing because the
    /// forwards' commit markers were not written yet, and the last stable
    /// offset, which had not moved either, passed for the end.
    #[test]
    fn a_repartition_partition_ends_past_this_processs_own_forwards() {
        // The markers not written yet: the stable offset lags the forwards.
        assert_eq!(end_of(100, Some(150)), 150);
        // Written (or the forwards aborted and stepped over): it rules.
        assert_eq!(end_of(151, Some(150)), 151);
        // Not the repartition topic, or nothing forwarded there.
        assert_eq!(end_of(100, None), 100);
    }
}
