//! Purging the repartition topic, whose time-based retention is off (see
//! `topics::TopicRole::Repartition`): what the group committed is deleted,
//! as Kafka Streams does after its commits. A purge runs on a thread of its
//! own, so the batch loop never waits for one; a purge that fails keeps
//! its offsets for the next.
//!
//! Why a thread: a purge waits for each partition's leader, up to its
//! timeout. After `kill -9` of a broker, the soak saw the batch loop held
//! up for 10 s by a purge asking the dead leader, while the input's
//! backlog grew.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use super::{Role, SetupError, client_config, lock};
use crate::config::KafkaConfig;
use crate::metrics::ResultLabels;

/// Per partition, the offset before which every record is committed.
pub(crate) type Purgeable = BTreeMap<i32, i64>;

/// Deletes the records before the given offsets; `Err` says what failed.
pub(crate) type Delete = Box<dyn FnMut(&Purgeable) -> Result<(), String> + Send>;

/// Hands purges to its thread, one at a time, and reports each result:
/// logged, counted in `leadflow_repartition_purges_total{result}`, and on
/// failure its offsets put back.
pub(crate) struct Purger {
    topic: String,
    requests: SyncSender<Purgeable>,
    results: Receiver<(Purgeable, Result<(), String>)>,
    in_flight: bool,
    purges: Family<ResultLabels, Counter>,
}

impl Purger {
    /// A purger of `topic` whose thread calls `delete`. The thread ends
    /// once the purger is dropped and its purge in flight, if any, is done.
    pub(crate) fn new(
        topic: &str,
        mut delete: Delete,
        purges: Family<ResultLabels, Counter>,
    ) -> std::io::Result<Purger> {
        let (requests, work) = std::sync::mpsc::sync_channel::<Purgeable>(1);
        let (done, results) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("purge".to_owned())
            .spawn(move || {
                for upto in work {
                    let result = delete(&upto);
                    if done.send((upto, result)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Purger {
            topic: topic.to_owned(),
            requests,
            results,
            in_flight: false,
            purges,
        })
    }

    /// Reports the purge that finished since the last call, if any, and
    /// starts one of what `purgeable` holds unless one is still running.
    /// Never waits.
    pub(crate) fn purge(&mut self, purgeable: &Mutex<Purgeable>) {
        if self.in_flight {
            match self.results.try_recv() {
                Ok((upto, result)) => self.report(upto, result, purgeable),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => self.in_flight = false,
            }
        }
        self.start(purgeable);
    }

    /// At a graceful stop: waits up to `patience` for the purge in flight,
    /// then purges what is left and waits for that too.
    pub(crate) fn finish(&mut self, purgeable: &Mutex<Purgeable>, patience: Duration) {
        for _ in 0..2 {
            if self.in_flight {
                match self.results.recv_timeout(patience) {
                    Ok((upto, result)) => self.report(upto, result, purgeable),
                    Err(_) => return,
                }
            }
            self.start(purgeable);
        }
    }

    fn start(&mut self, purgeable: &Mutex<Purgeable>) {
        let upto = std::mem::take(&mut *lock(purgeable));
        if upto.is_empty() {
            return;
        }
        match self.requests.try_send(upto) {
            Ok(()) => self.in_flight = true,
            // The thread is gone (it cannot be busy: nothing is in
            // flight). The offsets stay for a purger of the next run.
            Err(TrySendError::Full(upto) | TrySendError::Disconnected(upto)) => {
                put_back(purgeable, upto);
            }
        }
    }

    fn report(
        &mut self,
        upto: Purgeable,
        result: Result<(), String>,
        purgeable: &Mutex<Purgeable>,
    ) {
        self.in_flight = false;
        let topic = &self.topic;
        let result = match result {
            Ok(()) => {
                debug!(topic, partitions = upto.len(), "repartition topic purged");
                "purged"
            }
            Err(error) => {
                warn!(topic, %error, "cannot purge the repartition topic; will retry");
                put_back(purgeable, upto);
                "failed"
            }
        };
        self.purges.get_or_create(&ResultLabels { result }).inc();
    }
}

/// Puts the offsets of a purge that did not happen back, unless a later
/// commit of the partition, which covers them, is already there.
fn put_back(purgeable: &Mutex<Purgeable>, upto: Purgeable) {
    let mut purgeable = lock(purgeable);
    for (partition, offset) in upto {
        purgeable.entry(partition).or_insert(offset);
    }
}

/// The purge of `topic` with librdkafka's DeleteRecords, each waiting at
/// most `timeout`.
pub(crate) fn delete_records(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Delete, SetupError> {
    let mut client: AdminClient<DefaultClientContext> = client_config(kafka, Role::Admin, &[])
        .create()
        .map_err(SetupError::Client)?;
    let mut runtime = None;
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    // Whether the last purge failed. librdkafka's admin client keeps a
    // partition's old leader in its metadata cache for up to
    // `topic.metadata.refresh.interval.ms` (5 minutes), and until then
    // every purge failed with "Not leader for partition" (seen for 4
    // minutes after a broker was killed); a fresh client looks the leaders
    // up again.
    let mut stale = false;
    Ok(Box::new(move |upto: &Purgeable| {
        if stale {
            client = client_config(&kafka, Role::Admin, &[])
                .create()
                .map_err(|e| e.to_string())?;
        }
        let mut offsets = TopicPartitionList::with_capacity(upto.len());
        for (partition, offset) in upto {
            // Cannot fail for a non-negative offset.
            let _ = offsets.add_partition_offset(&topic, *partition, Offset::Offset(*offset));
        }
        let options = AdminOptions::new()
            .request_timeout(Some(timeout))
            .operation_timeout(Some(timeout));
        // Made on the purge's thread, where it runs; a failure to make it
        // fails this purge, not the run.
        let runtime = match &mut runtime {
            Some(runtime) => runtime,
            None => runtime.insert(
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| format!("cannot start the purge's runtime: {e}"))?,
            ),
        };
        let failed = match runtime.block_on(client.delete_records(&offsets, &options)) {
            Ok(list) => list.elements().iter().find_map(|tp| {
                tp.error()
                    .err()
                    .map(|e| format!("partition {}: {e}", tp.partition()))
            }),
            Err(e) => Some(e.to_string()),
        };
        stale = failed.is_some();
        failed.map_or(Ok(()), Err)
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, sync_channel};

    use super::*;

    /// A delete that reports each purge it is asked for and then blocks
    /// until the test answers it.
    fn gated() -> (Delete, Receiver<Purgeable>, SyncSender<Result<(), String>>) {
        let (asked, asks) = sync_channel(8);
        let (answer, answers) = sync_channel::<Result<(), String>>(8);
        let answers = Mutex::new(answers);
        let delete: Delete = Box::new(move |upto: &Purgeable| {
            let _ = asked.send(upto.clone());
            lock(&answers)
                .recv()
                .unwrap_or_else(|_| Err("test over".into()))
        });
        (delete, asks, answer)
    }

    fn count(purges: &Family<ResultLabels, Counter>, result: &'static str) -> u64 {
        purges.get_or_create(&ResultLabels { result }).get()
    }

    #[test]
    fn a_purge_waiting_on_the_broker_never_holds_up_the_loop() {
        let (delete, asks, answer) = gated();
        let purges = Family::default();
        let mut purger = Purger::new("t", delete, purges.clone()).expect("thread");
        let purgeable = Mutex::new(BTreeMap::from([(0, 10), (1, 20)]));

        purger.purge(&purgeable);
        assert_eq!(
            asks.recv().expect("asked"),
            BTreeMap::from([(0, 10), (1, 20)])
        );
        // The purge is still waiting; later commits only accumulate.
        lock(&purgeable).insert(0, 15);
        purger.purge(&purgeable);
        purger.purge(&purgeable);
        assert_eq!(*lock(&purgeable), BTreeMap::from([(0, 15)]));
        assert!(asks.try_recv().is_err(), "a second purge started");

        // It fails: its offsets come back, except where a later commit is.
        answer.send(Err("leader gone".into())).expect("answer");
        while count(&purges, "failed") == 0 {
            purger.purge(&purgeable);
            std::thread::yield_now();
        }
        // The failure was reported and the next purge started at once,
        // with the put-back partition 1 and the later commit of 0.
        assert_eq!(
            asks.recv().expect("asked"),
            BTreeMap::from([(0, 15), (1, 20)])
        );
        answer.send(Ok(())).expect("answer");
        purger.finish(&purgeable, Duration::from_secs(30));
        assert_eq!(count(&purges, "purged"), 1);
        assert!(lock(&purgeable).is_empty());
    }

    #[test]
    fn a_graceful_stop_purges_what_was_committed_last() {
        let (delete, asks, answer) = gated();
        let purges = Family::default();
        let mut purger = Purger::new("t", delete, purges.clone()).expect("thread");
        let purgeable = Mutex::new(BTreeMap::from([(0, 10)]));
        purger.purge(&purgeable);
        assert_eq!(asks.recv().expect("asked"), BTreeMap::from([(0, 10)]));
        lock(&purgeable).insert(0, 30);
        answer.send(Ok(())).expect("answer");
        answer.send(Ok(())).expect("answer");
        purger.finish(&purgeable, Duration::from_secs(30));
        assert_eq!(asks.recv().expect("asked"), BTreeMap::from([(0, 30)]));
        assert_eq!(count(&purges, "purged"), 2);
    }
}
