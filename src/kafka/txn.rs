//! One batch's commit, the one way leadflow commits outputs with the
//! offsets they came from (the run loop, its rebalance callbacks, and
//! `dlq replay` all use [`Txn`]):
//!
//! - **exactly-once**: the outputs and the offsets are one transaction.
//!   Commit flushes, adds the offsets with fresh group metadata and
//!   commits; what librdkafka calls retriable is retried until the
//!   delivery timeout, what requires an abort aborts (`Aborted`: nothing of
//!   the batch is visible, so the caller processes it again), anything
//!   else is returned as it is.
//! - **at-least-once**: commit flushes and, only when every output is
//!   acknowledged, commits the offsets. A crash between the two repeats
//!   the batch's outputs, never loses them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, warn};

use super::{LeadProducer, Wedged, flush, lock, send_offsets_to_transaction};

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("outputs were not acknowledged, offsets not committed: {0}")]
    Delivery(String),
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
    /// A transaction call never returned: this producer is given up, and
    /// the next attempt starts with fresh clients.
    #[error(transparent)]
    Wedged(#[from] Wedged),
}

impl TxnError {
    /// Whether another producer with this `transactional.id` took over.
    pub fn is_fenced(&self) -> bool {
        matches!(self, TxnError::Transaction(e) | TxnError::Aborted(e) if is_fence(e))
    }

    /// Nothing of the batch became visible (at-least-once: a record was
    /// refused): it is to be processed again.
    pub fn is_retry(&self) -> bool {
        matches!(self, TxnError::Aborted(_) | TxnError::Rejected(_))
    }
}

/// Whether librdkafka reports a producer fenced: by another instance with
/// its `transactional.id`, or by the broker's timeout abort.
pub fn is_fence(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fenced)
    )
}

/// Where consumed offsets are committed: the consumer group.
pub trait Group {
    /// Fresh metadata: a rebalance changes the generation, and stale
    /// metadata would fence the producer.
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata>;
    fn commit_offsets(&self, offsets: &TopicPartitionList) -> KafkaResult<()>;
}

impl<C: ConsumerContext> Group for BaseConsumer<C> {
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        Consumer::group_metadata(self)
    }

    fn commit_offsets(&self, offsets: &TopicPartitionList) -> KafkaResult<()> {
        self.commit(offsets, CommitMode::Sync)
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Outputs and offsets.
    All,
    /// At-least-once only: the outputs are acknowledged, but the offset
    /// commit failed; the offsets are retried with the next batch.
    OutputsOnly,
}

/// A producer's transactions (or, at-least-once, its flushes).
pub struct Txn {
    producer: Arc<LeadProducer>,
    exactly_once: bool,
    /// A transaction is open (exactly-once only).
    open: AtomicBool,
    /// When the open transaction began.
    began: Mutex<Option<Instant>>,
    /// How long outputs may take to be acknowledged, and the transaction
    /// timeout: a commit retries within it.
    timeout: Duration,
}

impl Txn {
    pub(crate) fn new(producer: Arc<LeadProducer>, exactly_once: bool, timeout: Duration) -> Txn {
        Txn {
            producer,
            exactly_once,
            open: AtomicBool::new(false),
            began: Mutex::default(),
            timeout,
        }
    }

    pub(crate) fn producer(&self) -> &Arc<LeadProducer> {
        &self.producer
    }

    pub fn exactly_once(&self) -> bool {
        self.exactly_once
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Opens a transaction unless one is open (exactly-once only).
    pub fn begin(&self) -> Result<(), TxnError> {
        if self.exactly_once && !self.is_open() {
            self.producer
                .begin_transaction()
                .map_err(TxnError::Transaction)?;
            self.open.store(true, Ordering::Relaxed);
            *lock(&self.began) = Some(Instant::now());
        }
        Ok(())
    }

    /// Commits what was produced since the last commit with `offsets`.
    pub fn commit(
        &self,
        group: &impl Group,
        offsets: &TopicPartitionList,
    ) -> Result<Committed, TxnError> {
        if self.exactly_once {
            self.commit_transaction(group, offsets)?;
            return Ok(Committed::All);
        }
        flush(&self.producer, self.timeout).map_err(|e| TxnError::Delivery(e.to_string()))?;
        if let Some(failure) = self.producer.context().take() {
            // A refused record is the caller's to isolate; anything else
            // (timeouts, say) restarts from the last commit.
            if self.producer.context().has_rejection() {
                // A crash here, with the refusal known and nothing yet
                // done about it, is what at-least-once must survive.
                #[cfg(feature = "kafka-tests")]
                if crate::failpoint::fires("crash-on-refusal", Some("alo")) {
                    std::process::abort();
                }
                return Err(TxnError::Rejected(failure));
            }
            return Err(TxnError::Delivery(failure));
        }
        if offsets.count() == 0 {
            return Ok(Committed::All);
        }
        match group.commit_offsets(offsets) {
            Ok(()) => {
                debug!(partitions = offsets.count(), "offsets committed");
                Ok(Committed::All)
            }
            // Outputs are safe; the offsets are retried with the next batch.
            // If the partitions moved, their next owner repeats some outputs.
            Err(e) => {
                warn!(error = %e, "offset commit failed; will retry");
                Ok(Committed::OutputsOnly)
            }
        }
    }

    /// Aborts the open transaction, if one is open, so that nothing of it
    /// becomes visible.
    pub fn abort(&self) -> Result<(), TxnError> {
        if self.is_open() {
            self.producer
                .abort_transaction(self.call_timeout())
                .map_err(|e| self.transaction_error(e))?;
            self.open.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One transaction call's limit.
    fn call_timeout(&self) -> Duration {
        Duration::from_secs(10).min(self.timeout)
    }

    /// A transaction call's failure. The coordinator aborts a transaction
    /// open longer than transaction.timeout.ms and bumps the producer's
    /// epoch, which librdkafka then reports as fenced: that is this process
    /// being slow (paused, or waiting on a slow broker), not another
    /// instance taking over, and a restart (which fences the old epoch
    /// itself) is the cure. Any other fence is final.
    fn transaction_error(&self, error: KafkaError) -> TxnError {
        let open_for = lock(&self.began).map(|at| at.elapsed());
        if is_fence(&error) && open_for.is_some_and(|age| age >= self.timeout) {
            self.open.store(false, Ordering::Relaxed);
            return TxnError::TimedOut(error);
        }
        TxnError::Transaction(error)
    }

    /// Adds the offsets to the open transaction and commits it, retrying
    /// what librdkafka calls retriable until the delivery timeout.
    fn commit_transaction(
        &self,
        group: &impl Group,
        offsets: &TopicPartitionList,
    ) -> Result<(), TxnError> {
        // A batch of only duplicates and test leads produced nothing, but
        // its offsets still commit in a transaction.
        self.begin()?;
        let deadline = Instant::now() + self.timeout;
        let timeout = self.call_timeout();
        // A transaction of only changelog tombstones has no offsets.
        let mut offsets_sent = offsets.count() == 0;
        loop {
            let metadata = match offsets_sent {
                true => None,
                false => Some(group.group_metadata().ok_or(TxnError::NoGroupMetadata)?),
            };
            // What the commit would wait for first, without rdkafka's 100 ms
            // polls (see `kafka::flush`). A flush that times out fails the
            // attempt: committing after it would wait as long again, past
            // the transaction timeout, and the coordinator's own abort would
            // then fence this producer.
            let mut attempt = flush(&self.producer, timeout);
            if let (Ok(()), Some(metadata)) = (&attempt, metadata) {
                attempt = send_offsets_to_transaction(&self.producer, offsets, metadata, timeout)?;
            }
            let attempt = attempt
                .map(|()| offsets_sent = true)
                .and_then(|()| self.producer.commit_transaction(timeout));
            let error = match attempt {
                Ok(()) => {
                    self.open.store(false, Ordering::Relaxed);
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
                self.open.store(false, Ordering::Relaxed);
                return Err(TxnError::Aborted(error));
            }
            return Err(self.transaction_error(error));
        }
    }
}
