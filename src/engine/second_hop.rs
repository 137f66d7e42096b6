//! The second hop's own queues, so that re-keyed records never wait behind
//! the input. librdkafka hands a consumer's records over through one queue
//! in the order it fetched them, and stops fetching every partition while
//! that queue is full: with an input backlog, re-keyed records waited
//! behind up to a full queue of input (16 MiB), minutes over a slow
//! network. Here each assigned repartition partition has a queue of its
//! own, and [`SecondHop::poll`] takes the second hop's records and the
//! input's in turns while both have some. The second hop then keeps pace
//! with the first (each input record makes at most one re-keyed record),
//! and the input, and the consumer's events, are still served.
//!
//! Order within a partition holds: a partition is split while it is paused
//! for its restore, and librdkafka drops what a paused partition had
//! queued before (the pause bumps the partition's version), so its records
//! arrive through one queue only.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;

/// The longest wait on the input's queue while the second hop has queues:
/// how late a re-keyed record may be seen when both are idle.
const IDLE_WAIT: Duration = Duration::from_millis(5);

/// After a round of the second hop's queues found nothing, this many polls
/// read the input alone (each round polls every queue, which costs about a
/// microsecond with a dozen partitions): when leads skip the hop, its
/// queues stay empty.
const SKIP_AFTER_EMPTY: u32 = 64;

/// What a poll returned: `None` when nothing came within the wait.
pub type Polled<'a> = Option<KafkaResult<BorrowedMessage<'a>>>;

/// Queues of the assigned repartition partitions, by partition.
pub struct SecondHop<C: ConsumerContext + 'static> {
    queues: BTreeMap<i32, rdkafka::consumer::base_consumer::PartitionQueue<C>>,
    /// Where the round over the queues starts next, so that no partition
    /// of the second hop waits behind another.
    next: Cell<usize>,
    /// Whose turn it is first: the second hop's or the input's.
    second_first: Cell<bool>,
    /// Polls left that read the input alone (see [`SKIP_AFTER_EMPTY`]).
    skip: Cell<u32>,
}

impl<C: ConsumerContext + 'static> SecondHop<C> {
    pub fn new() -> SecondHop<C> {
        SecondHop {
            queues: BTreeMap::new(),
            next: Cell::new(0),
            second_first: Cell::new(true),
            skip: Cell::new(0),
        }
    }

    /// Gives each of `partitions` of `topic` a queue of its own. Call while
    /// they are paused, before they are resumed.
    pub fn split(&mut self, consumer: &Arc<BaseConsumer<C>>, topic: &str, partitions: &[i32]) {
        for partition in partitions {
            // `None` only for a topic name with a NUL: its records then
            // come through the consumer's queue, in order, just not first.
            match consumer.split_partition_queue(topic, *partition) {
                Some(queue) => self.queues.insert(*partition, queue),
                None => self.queues.remove(partition),
            };
        }
    }

    /// Drops the queues of partitions no longer assigned.
    pub fn retain(&mut self, assigned: impl Fn(i32) -> bool) {
        self.queues.retain(|partition, _| assigned(*partition));
    }

    /// The next record, waiting up to `wait`: the second hop's and the
    /// input's in turns. Without queues of its own, just the consumer's.
    pub fn poll<'a>(&'a self, consumer: &'a BaseConsumer<C>, wait: Duration) -> Polled<'a> {
        if self.queues.is_empty() {
            return consumer.poll(wait);
        }
        let skip = self.skip.get();
        if skip > 0 {
            self.skip.set(skip - 1);
            if let Some(polled) = consumer.poll(Duration::ZERO) {
                return Some(polled);
            }
        }
        let second_first = self.second_first.get();
        self.second_first.set(!second_first);
        if second_first {
            if let Some(polled) = self.poll_second() {
                return Some(polled);
            }
        } else {
            if let Some(polled) = consumer.poll(Duration::ZERO) {
                return Some(polled);
            }
            if let Some(polled) = self.poll_second() {
                return Some(polled);
            }
        }
        consumer.poll(wait.min(IDLE_WAIT))
    }

    /// Whether the second hop has queues of its own: a poll that returned
    /// nothing then waited [`IDLE_WAIT`] at most, not the whole wait.
    pub fn is_split(&self) -> bool {
        !self.queues.is_empty()
    }

    /// A record from the second hop's queues, round the partitions.
    fn poll_second(&self) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        let count = self.queues.len();
        let start = self.next.get() % count.max(1);
        for (at, queue) in self
            .queues
            .values()
            .enumerate()
            .cycle()
            .skip(start)
            .take(count)
        {
            if let Some(polled) = queue.poll(Duration::ZERO) {
                self.next.set(at + 1);
                self.skip.set(0);
                return Some(polled);
            }
        }
        self.skip.set(SKIP_AFTER_EMPTY);
        None
    }
}
