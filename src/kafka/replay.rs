//! `leadflow dlq replay`: re-drives dead letters to the input topic after
//! a fix, with their original key, value and producer headers (stamped
//! when written, like every copy: see `kafka::copy_of`).
//!
//! Records are chosen by error class, stage and time range, at an optional
//! rate. Each batch of replayed records commits in one Kafka transaction
//! together with the dead-letter offsets it read, under the replay's name
//! (its consumer group and `transactional.id`). A replay that is
//! interrupted and run again with the same name fences the interrupted one
//! and goes on from the last commit: nothing is replayed twice. A new name
//! replays from the beginning of the dead-letter topic again.
//!
//! The replay reads the dead-letter topic up to its end as it finds it and
//! stops there. It assigns the partitions itself rather than joining a
//! group, so a killed replay never holds partitions for a session timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::txn::{Txn, TxnError};
use super::{
    DeliveryTracker, LeadProducer, Logged, Role, SetupError, check_topics, client_config, copy_of,
    headers, send,
};
use crate::config::Config;

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Only dead letters of these error classes; empty for any.
    pub classes: Vec<String>,
    /// Only dead letters of these stages; empty for any.
    pub stages: Vec<String>,
    /// Only records with a timestamp at or after this (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only records with a timestamp before this.
    pub until_ms: Option<i64>,
    /// Records replayed per second at most.
    pub rate: Option<f64>,
    /// Report what would be replayed; write and commit nothing.
    pub dry_run: bool,
    /// The replay's consumer group and `transactional.id`.
    pub name: String,
}

/// A dead letter the filters chose.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub partition: i32,
    pub offset: i64,
    pub stage: Option<String>,
    pub class: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Dead letters read.
    pub scanned: u64,
    /// Of those, chosen by the filters.
    pub chosen: u64,
    /// Of those, written to the input topic and committed (0 in a dry run).
    pub replayed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("replay failed: {0}")]
    Kafka(KafkaError),
    #[error(
        "where replay {name} stopped is unknown after {timeout_ms} ms ({error}); most likely \
         its last offsets are pending in an open transaction: a replay of that name is \
         running, or was stopped less than its transaction timeout ago. A replay without \
         --dry-run fences it and goes on; --name lists under a new name"
    )]
    Pending {
        name: String,
        timeout_ms: u64,
        error: KafkaError,
    },
    #[error("replayed records were not acknowledged: {0}")]
    Delivery(String),
    /// A rerun replays what this one left uncommitted.
    #[error(transparent)]
    Txn(#[from] TxnError),
}

impl From<KafkaError> for ReplayError {
    fn from(error: KafkaError) -> Self {
        ReplayError::Kafka(error)
    }
}

/// The header naming the dead letter a replayed record came from.
pub const REPLAYED_FROM: &str = "leadflow.replayed.from";

/// How often a batch of replayed records commits.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// Replays the chosen dead letters; `on_chosen` sees each one first.
pub fn replay(
    config: &Config,
    options: &ReplayOptions,
    shutdown: &AtomicBool,
    mut on_chosen: impl FnMut(&Chosen),
) -> Result<ReplayReport, ReplayError> {
    let dlq = config.topics.dead_letter.as_str();
    let input = config.topics.input.as_str();
    let (consumer, partitions) = reader(config, options)?;
    // Before asking where the last replay stopped: a read_committed
    // consumer cannot learn that while an interrupted replay's offsets
    // are pending in its open transaction, and fencing it aborts that
    // transaction at once instead of after its timeout.
    let txn: Option<Txn> = match options.dry_run {
        true => None,
        false => Some(transactions(config, options)?),
    };
    resume(config, options, &consumer, partitions)?;

    let mut report = ReplayReport::default();
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let mut at_end = BTreeSet::new();
    // The rate's clock starts at the first chosen record.
    let mut first_chosen: Option<Instant> = None;
    loop {
        let due = last_commit.elapsed() >= COMMIT_INTERVAL;
        let finished = at_end.len() == partitions as usize || shutdown.load(Ordering::Relaxed);
        if (due || finished) && !pending.is_empty() {
            if let Some(txn) = &txn {
                commit(txn, &consumer, dlq, &pending)?;
                report.replayed = report.chosen;
            }
            pending.clear();
            last_commit = Instant::now();
        }
        if finished {
            break;
        }
        let message = match consumer.poll(COMMIT_INTERVAL) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
                continue;
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(message)) => message,
        };
        at_end.remove(&message.partition());
        report.scanned += 1;
        pending.insert(message.partition(), message.offset() + 1);
        let Some(chosen) = choose(&message, options) else {
            continue;
        };
        on_chosen(&chosen);
        report.chosen += 1;
        let Some(txn) = &txn else {
            continue;
        };
        txn.begin()?;
        let from = format!("{dlq}/{}/{}", message.partition(), message.offset());
        let record = copy_of(input, &message, message.key())
            .headers(replayed_headers(message.headers(), &from));
        send(txn.producer(), record)?;
        if let Some(rate) = options.rate.filter(|r| *r > 0.0) {
            let started = *first_chosen.get_or_insert_with(Instant::now);
            let due = started + Duration::from_secs_f64(report.chosen as f64 / rate);
            let now = Instant::now();
            if due > now {
                // Never past the next commit: a slow rate must not hold a
                // transaction open.
                std::thread::sleep((due - now).min(COMMIT_INTERVAL));
            }
        }
    }
    Ok(report)
}

/// The replay's consumer, once both topics are known to exist; and how
/// many dead-letter partitions there are.
fn reader(
    config: &Config,
    options: &ReplayOptions,
) -> Result<(BaseConsumer<Logged>, i32), ReplayError> {
    let kafka = &config.kafka;
    let dlq = config.topics.dead_letter.as_str();
    let consumer: BaseConsumer<Logged> = client_config(
        kafka,
        Role::Consumer,
        &[("isolation.level", "read_committed")],
    )
    .set("group.id", &options.name)
    .set("enable.auto.commit", "false")
    .set("enable.partition.eof", "true")
    .create_with_context(Logged)
    .map_err(SetupError::Client)?;
    let partitions = check_topics(consumer.client(), kafka, &[dlq, &config.topics.input])?[0];
    Ok((consumer, i32::try_from(partitions).unwrap_or(i32::MAX)))
}

/// Assigns `consumer` every dead-letter partition from where the last
/// replay under this name stopped.
fn resume(
    config: &Config,
    options: &ReplayOptions,
    consumer: &BaseConsumer<Logged>,
    partitions: i32,
) -> Result<(), ReplayError> {
    let dlq = config.topics.dead_letter.as_str();
    let timeout = Duration::from_millis(config.kafka.connect_timeout_ms);
    let mut wanted = TopicPartitionList::new();
    for partition in 0..partitions {
        wanted.add_partition(dlq, partition);
    }
    let committed = consumer
        .committed_offsets(wanted, timeout)
        .map_err(|error| match options.dry_run {
            // A dry run fences nothing, so it cannot end that transaction.
            true => ReplayError::Pending {
                name: options.name.clone(),
                timeout_ms: config.kafka.connect_timeout_ms,
                error,
            },
            false => ReplayError::Kafka(error),
        })?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let start = committed
            .find_partition(dlq, partition)
            .map(|tp| tp.offset())
            .filter(|o| matches!(o, Offset::Offset(_)))
            .unwrap_or(Offset::Beginning);
        assignment.add_partition_offset(dlq, partition, start)?;
    }
    consumer.assign(&assignment)?;
    Ok(())
}

/// The replay's transactions, under its name.
fn transactions(config: &Config, options: &ReplayOptions) -> Result<Txn, ReplayError> {
    let timeout = Duration::from_millis(config.kafka.connect_timeout_ms);
    let producer: LeadProducer = client_config(
        &config.kafka,
        Role::Producer,
        &[("partitioner", "murmur2_random"), ("linger.ms", "5")],
    )
    .set("transactional.id", &options.name)
    .create_with_context(DeliveryTracker::default())
    .map_err(SetupError::Client)?;
    // Fences an interrupted replay of the same name and aborts what it
    // left open.
    producer.init_transactions(timeout)?;
    Ok(Txn::new(Arc::new(producer), true, timeout))
}

/// The dead letter's details, if the filters choose it.
fn choose(message: &BorrowedMessage<'_>, options: &ReplayOptions) -> Option<Chosen> {
    let found = message.headers();
    let header = |key: &str| found.and_then(|h| headers::get(h, key)).map(str::to_owned);
    let chosen = Chosen {
        partition: message.partition(),
        offset: message.offset(),
        stage: header(headers::ERROR_STAGE),
        class: header(headers::ERROR_CLASS),
    };
    options
        .admits(&chosen, message.timestamp().to_millis())
        .then_some(chosen)
}

impl ReplayOptions {
    /// Whether a dead letter of this stage and class, with this record
    /// time, is to be replayed.
    pub fn admits(&self, dead_letter: &Chosen, time_ms: Option<i64>) -> bool {
        let listed = |wanted: &[String], got: &Option<String>| {
            wanted.is_empty() || got.as_ref().is_some_and(|g| wanted.contains(g))
        };
        let in_range = self
            .since_ms
            .is_none_or(|s| time_ms.is_some_and(|t| t >= s))
            && self.until_ms.is_none_or(|u| time_ms.is_some_and(|t| t < u));
        listed(&self.classes, &dead_letter.class)
            && listed(&self.stages, &dead_letter.stage)
            && in_range
    }
}

/// The producer's own headers of a dead letter, without what leadflow
/// added (`leadflow.error.*`, `leadflow.source.*`, the version), plus
/// where the replay took it from.
fn replayed_headers<H: Headers>(original: Option<&H>, from: &str) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    for header in original.into_iter().flat_map(Headers::iter) {
        if !header.key.starts_with("leadflow.") {
            out = out.insert(header);
        }
    }
    out.insert(Header {
        key: REPLAYED_FROM,
        value: Some(from),
    })
}

/// Commits the open transaction with the dead-letter offsets read, opening
/// one for a batch that chose nothing.
fn commit(
    txn: &Txn,
    consumer: &BaseConsumer<Logged>,
    dlq: &str,
    pending: &BTreeMap<i32, i64>,
) -> Result<(), ReplayError> {
    let mut offsets = TopicPartitionList::new();
    for (partition, next) in pending {
        offsets.add_partition_offset(dlq, *partition, Offset::Offset(*next))?;
    }
    // Nothing of an aborted batch is visible; a rerun replays it.
    txn.commit(consumer, &offsets)?;
    if let Some(failure) = txn.producer().context().take() {
        return Err(ReplayError::Delivery(failure));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_choose_by_class_stage_and_time() {
        let dead_letter = |stage: &str, class: &str| Chosen {
            partition: 0,
            offset: 0,
            stage: Some(stage.to_owned()),
            class: Some(class.to_owned()),
        };
        let any = ReplayOptions::default();
        assert!(any.admits(&dead_letter("decode", "json_syntax"), None));
        let options = ReplayOptions {
            classes: vec!["json_syntax".into(), "missing_email".into()],
            stages: vec!["decode".into()],
            since_ms: Some(1_000),
            until_ms: Some(2_000),
            ..ReplayOptions::default()
        };
        assert!(options.admits(&dead_letter("decode", "missing_email"), Some(1_000)));
        assert!(!options.admits(&dead_letter("enrich", "missing_email"), Some(1_500)));
        assert!(!options.admits(&dead_letter("decode", "unknown_offer"), Some(1_500)));
        assert!(!options.admits(&dead_letter("decode", "json_syntax"), Some(2_000)));
        assert!(!options.admits(&dead_letter("decode", "json_syntax"), Some(999)));
        assert!(!options.admits(&dead_letter("decode", "json_syntax"), None));
        let unlabelled = Chosen {
            class: None,
            ..dead_letter("decode", "x")
        };
        assert!(!options.admits(&unlabelled, Some(1_500)));
    }
}
