//! The Kafka edge: client configuration, start-up checks, the processing
//! loop ([`runner`]), the lead producer ([`produce`]) and topic tools
//! ([`topics`]). Stages never see anything from here.
//!
//! Start-up fails fast and says why in one line: an unreachable broker, a
//! missing topic or an invalid client property ends the process with an
//! error within the configured connect timeout, never a hang.

pub mod demo;
pub mod headers;
pub mod produce;
pub mod replay;
pub mod runner;
pub mod tail;
pub mod topics;

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create Kafka client: {0}")]
    Client(KafkaError),
    #[error("cannot reach Kafka at {servers} within {timeout_ms} ms: {source}")]
    Unreachable {
        servers: String,
        timeout_ms: u64,
        source: KafkaError,
    },
    #[error("topic {0:?} does not exist (create it, e.g. with `leadflow topics create`)")]
    MissingTopic(String),
    #[error("topic {topic:?} is unusable: {reason}")]
    BadTopic { topic: String, reason: String },
    /// A client setting that cannot carry what leadflow writes.
    #[error("{0}")]
    Limit(String),
}

/// Room for what leadflow adds to an input record's bytes when it writes
/// them on: a dead letter's headers (its message capped at 1 KiB), and the
/// input's own key and headers up to [`KEPT_KEY_AND_HEADERS`]. A record
/// leadflow writes from an input is at most `pipeline.max_record_bytes`
/// plus this.
pub const RECORD_HEADROOM: usize = 64 * 1024;

/// The most of an input's key and headers a dead letter keeps; past it
/// both are dropped (and the dead letter says so), so it always fits.
pub const KEPT_KEY_AND_HEADERS: usize = 48 * 1024;

/// The most a campaign or suppressed record can take: its fields are
/// capped (`stages::decode::limits`), so this bound holds for any input.
pub const LEAD_RECORD_MAX: usize = 64 * 1024;

/// Which kind of client a configuration is for; each reads the shared
/// pass-through properties and then its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
    Admin,
}

/// Client settings: bootstrap servers, then leadflow's `defaults` for this
/// client, then the operator's pass-through librdkafka properties
/// (`kafka.client`, then `kafka.consumer` or `kafka.producer`), so that an
/// operator's explicit setting wins over a default. Settings correctness
/// depends on are set by the caller afterwards.
pub fn client_config(kafka: &KafkaConfig, role: Role, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    let own = match role {
        Role::Consumer => Some(&kafka.consumer),
        Role::Producer => Some(&kafka.producer),
        Role::Admin => None,
    };
    for (key, value) in kafka.client.iter().chain(own.into_iter().flatten()) {
        config.set(key, value);
    }
    config
}

/// Logs a client error, except end of partition: leadflow asks for those
/// events to learn where a partition ends, and they are no fault.
pub(crate) fn log_client_error(error: KafkaError, reason: &str) {
    if !matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    ) {
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

/// Logs a librdkafka log line as rdkafka's default context does, through
/// `tracing`, for contexts that look at some lines themselves first.
pub(crate) fn log_client_message(
    level: rdkafka::config::RDKafkaLogLevel,
    fac: &str,
    message: &str,
) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", "{fac} {message}");
        }
        L::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", "{fac} {message}"),
        L::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
    }
}

/// The context of a consumer that reads partitions to their end.
pub(crate) struct ReadToEnd;

impl ClientContext for ReadToEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for ReadToEnd {}

/// Metadata of every topic, or `Unreachable` within the connect timeout.
pub(crate) fn cluster_metadata<C: ClientContext>(
    client: &Client<C>,
    kafka: &KafkaConfig,
) -> Result<rdkafka::metadata::Metadata, SetupError> {
    client
        .fetch_metadata(None, Duration::from_millis(kafka.connect_timeout_ms))
        .map_err(|source| SetupError::Unreachable {
            servers: kafka.bootstrap_servers.clone(),
            timeout_ms: kafka.connect_timeout_ms,
            source,
        })
}

/// Checks that the cluster answers and that every topic exists, returning
/// each topic's partition count in order.
pub fn check_topics<C: ClientContext>(
    client: &Client<C>,
    kafka: &KafkaConfig,
    topics: &[&str],
) -> Result<Vec<usize>, SetupError> {
    let metadata = cluster_metadata(client, kafka)?;
    topics
        .iter()
        .map(|name| {
            let topic = metadata
                .topics()
                .iter()
                .find(|t| t.name() == *name)
                .ok_or_else(|| SetupError::MissingTopic((*name).to_owned()))?;
            if let Some(error) = topic.error() {
                let error = rdkafka::types::RDKafkaErrorCode::from(error);
                if error == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                    return Err(SetupError::MissingTopic((*name).to_owned()));
                }
                return Err(SetupError::BadTopic {
                    topic: (*name).to_owned(),
                    reason: error.to_string(),
                });
            }
            if topic.partitions().is_empty() {
                return Err(SetupError::MissingTopic((*name).to_owned()));
            }
            Ok(topic.partitions().len())
        })
        .collect()
}

/// Collects delivery failures reported by the producer's callbacks, and
/// tells `health` whether the broker answers. The producer polls on its
/// own thread, so this keeps readiness true to the broker even while the
/// processing loop is blocked in a transaction call.
#[derive(Default)]
pub(crate) struct DeliveryTracker {
    failure: Mutex<Option<String>>,
    /// The first record the broker refused for good since the last
    /// [`DeliveryTracker::take_rejection`]: its topic and the refusal.
    rejection: Mutex<Option<(String, RDKafkaErrorCode)>>,
    pub(crate) health: Option<std::sync::Arc<crate::health::Health>>,
    /// Delivery reports served so far, for [`flush`] to wait on.
    delivered: Mutex<u64>,
    delivery: Condvar,
}

impl ClientContext for DeliveryTracker {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(health) = &self.health
            && matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown))
        {
            health.set_broker_reachable(false);
        }
        log_client_error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(health) = &self.health {
            health.set_broker_reachable(any_broker_up(&statistics));
        }
    }
}

/// Whether librdkafka's statistics show a connection to any real broker
/// (not a bootstrap or coordinator alias) up.
pub(crate) fn any_broker_up(statistics: &rdkafka::Statistics) -> bool {
    statistics
        .brokers
        .values()
        .any(|b| b.nodeid >= 0 && b.state == "UP")
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        *lock(&self.delivered) += 1;
        self.delivery.notify_all();
        if let Err((error, message)) = result {
            if let Some(code) = refusal(error) {
                lock(&self.rejection).get_or_insert((message.topic().to_owned(), code));
            }
            let mut failure = lock(&self.failure);
            if failure.is_none() {
                *failure = Some(format!(
                    "{} [{}]: {error}",
                    message.topic(),
                    message.partition()
                ));
            }
        }
    }
}

impl DeliveryTracker {
    pub(crate) fn take(&self) -> Option<String> {
        lock(&self.failure).take()
    }

    /// Whether a record was refused for good, without taking it.
    pub(crate) fn has_rejection(&self) -> bool {
        lock(&self.rejection).is_some()
    }

    /// The record refused for good since the last call, if one was.
    pub(crate) fn take_rejection(&self) -> Option<(String, RDKafkaErrorCode)> {
        lock(&self.rejection).take()
    }
}

/// Waits until every record produced so far is acknowledged or failed
/// (failures are in [`DeliveryTracker::take`]), or `timeout` passes.
///
/// Use this, not rdkafka's `flush`: that one waits in 100 ms polls, and on
/// a [`ThreadedProducer`] those polls see no events (its own thread serves
/// them), so every flush with a record in flight took 100 ms, a whole
/// commit interval per transaction (`commit_transaction` flushes the same
/// way first, but finds nothing left after this). Here librdkafka is asked
/// whether anything is still in flight (a flush that does not wait, which
/// also wakes its broker threads), and the wait is on the delivery reports.
pub(crate) fn flush(producer: &LeadProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    let tracker = producer.context();
    loop {
        let delivered = *lock(&tracker.delivered);
        match producer.flush(Duration::ZERO) {
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {}
            done => return done,
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        // Woken by the next report. librdkafka counts a record out of
        // flight only after its report's callback returns, so the last
        // wake-up can come early: the short bound re-asks soon after.
        let wait = (deadline - now).min(Duration::from_millis(1));
        let guard = lock(&tracker.delivered);
        if *guard == delivered {
            let _ = tracker
                .delivery
                .wait_timeout(guard, wait)
                .map_err(PoisonError::into_inner);
        }
    }
}

/// Producers poll on their own thread: transactional aborts need delivery
/// reports served while the caller blocks.
pub(crate) type LeadProducer = ThreadedProducer<DeliveryTracker>;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A record to `topic` with `message`'s value and the given key: how
/// leadflow passes a record's bytes on unchanged (re-keyed, dead-lettered,
/// replayed or copied). It is stamped when written, not with the source
/// record's timestamp: an input stamped with an old event time or by a
/// skewed clock would otherwise make a record that time-based retention
/// deletes minutes after it is written, or that the broker refuses
/// (`message.timestamp.after.max.ms`). The re-keying hop sets the source
/// timestamp itself, on a topic leadflow creates to keep it.
pub(crate) fn copy_of<'a>(
    topic: &'a str,
    message: &'a rdkafka::message::BorrowedMessage<'_>,
    key: Option<&'a [u8]>,
) -> BaseRecord<'a, [u8], [u8]> {
    let mut record = BaseRecord::to(topic);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    record
}

/// The broker's (or the client's) name for why it refused one record for
/// good: too large, a timestamp out of range, invalid. Writing the same
/// record again fails the same way, so it must be dead-lettered, not
/// retried. `None` for everything else (timeouts, a broker down, a
/// transaction that must abort, a missing permission or a policy, which
/// would refuse every record alike), which is no fault of the record.
pub(crate) fn refusal(error: &KafkaError) -> Option<RDKafkaErrorCode> {
    let KafkaError::MessageProduction(code) = error else {
        return None;
    };
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidTimestamp
            | RDKafkaErrorCode::InvalidRecord
    )
    .then_some(*code)
}

/// Enqueues a record, waiting for room when the producer's queue is full.
pub(crate) fn send(
    producer: &LeadProducer,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                // Serving delivery reports is what frees queue space.
                producer.poll(Duration::from_millis(100));
            }
            Err((error, _)) => return Err(error),
        }
    }
}
