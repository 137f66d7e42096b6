//! The producer side: delivery tracking, waiting for acknowledgements,
//! librdkafka calls bounded against wedging, and how a record is copied,
//! sent and, when refused for good, told apart from a failure.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use super::{lock, log_client_error};

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
    /// Flushes waiting on `delivery`, counted under the `delivered` lock:
    /// a notification is a system call, and three records a lead would
    /// make one each, mostly with no one waiting.
    waiting: std::sync::atomic::AtomicUsize,
    /// The topic whose delivered offsets are kept (the repartition topic),
    /// and per partition the offset after the last record delivered there.
    tracked: Option<String>,
    reached: Mutex<std::collections::BTreeMap<i32, i64>>,
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
        let mut delivered = lock(&self.delivered);
        *delivered += 1;
        let waiting = self.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0;
        drop(delivered);
        if waiting {
            self.delivery.notify_all();
        }
        if let (Ok(message), Some(tracked)) = (result, &self.tracked)
            && message.topic() == tracked
        {
            let mut reached = lock(&self.reached);
            let next = reached.entry(message.partition()).or_insert(0);
            *next = (*next).max(message.offset() + 1);
        }
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
    /// A tracker that also tells `health` whether the broker answers.
    pub(crate) fn with_health(health: std::sync::Arc<crate::health::Health>) -> DeliveryTracker {
        DeliveryTracker {
            health: Some(health),
            ..DeliveryTracker::default()
        }
    }

    /// Keeps the offsets of records delivered to `topic`, if any.
    pub(crate) fn tracking(self, topic: Option<&str>) -> DeliveryTracker {
        DeliveryTracker {
            tracked: topic.map(str::to_owned),
            ..self
        }
    }

    /// The offset after the last record delivered to `partition` of the
    /// tracked topic, if any was.
    pub(crate) fn reached(&self, partition: i32) -> Option<i64> {
        lock(&self.reached).get(&partition).copied()
    }

    pub(crate) fn take(&self) -> Option<String> {
        lock(&self.failure).take()
    }

    /// Whether a delivery failed since the last [`DeliveryTracker::take`],
    /// without taking it.
    pub(crate) fn failed(&self) -> bool {
        lock(&self.failure).is_some() || self.has_rejection()
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
            let waiting = &tracker.waiting;
            waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tracker
                .delivery
                .wait_timeout(guard, wait)
                .map_err(PoisonError::into_inner);
            waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A librdkafka call that had not returned long after its own timeout. The
/// client it was called on must not be used again: the call may never
/// return, and the client's transaction state is unknown.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "librdkafka's {call} had not returned {waited_ms} ms later, past its own timeout \
     (a coordinator broker that died is never looked up again: librdkafka issues 5456 and 5511)"
)]
pub struct Wedged {
    pub call: &'static str,
    pub waited_ms: u64,
}

/// How long past its own timeout a librdkafka call may take before
/// [`within`] gives it up. librdkafka ends a call at its timeout on a
/// timer, so a call still waiting 2 s later is stuck; every second more
/// is a second of the pipeline stalled after a coordinator died (the soak
/// measured 15 s of a 32 s recovery here, with 5 s).
pub(super) const WEDGED_AFTER: Duration = Duration::from_secs(2);

/// Runs `call` (named `name`) on a thread of its own and waits at most
/// `limit` for it: past that, `Err(Wedged)`, and the call is left running
/// (it cannot be interrupted), holding whatever it captured.
pub(crate) fn within<T: Send + 'static>(
    name: &'static str,
    limit: Duration,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Wedged> {
    let (done, result) = std::sync::mpsc::sync_channel(1);
    let wedged = Wedged {
        call: name,
        waited_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
    };
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // The receiver is gone once the call was given up.
            let _ = done.send(call());
        })
        // Without a thread the call cannot be bounded; not making it
        // leaves the client as unusable as a wedged call would.
        .map_err(|_| wedged)?;
    result.recv_timeout(limit).map_err(|_| wedged)
}

/// `send_offsets_to_transaction`, bounded: librdkafka's own timeout does
/// not cover its wait for the group coordinator (librdkafka issue 5456),
/// and when that coordinator's broker dies and leaves the cluster's
/// metadata the wait never ends (issue 5511; both open in librdkafka 2.12,
/// and seen here as a pipeline stalled for good after `kill -9` of a
/// broker). Past `timeout` and a margin the producer is given up as
/// [`Wedged`]: the caller must start again with fresh clients (whose
/// `init_transactions` fences this producer's transaction).
pub(crate) fn send_offsets_to_transaction(
    producer: &Arc<LeadProducer>,
    offsets: &TopicPartitionList,
    metadata: ConsumerGroupMetadata,
    timeout: Duration,
) -> Result<Result<(), KafkaError>, Wedged> {
    let producer = Arc::clone(producer);
    let offsets = offsets.clone();
    within(
        "send_offsets_to_transaction",
        timeout + WEDGED_AFTER,
        move || producer.send_offsets_to_transaction(&offsets, &metadata, timeout),
    )
}

/// Producers poll on their own thread: transactional aborts need delivery
/// reports served while the caller blocks.
pub(crate) type LeadProducer = ThreadedProducer<DeliveryTracker>;
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
