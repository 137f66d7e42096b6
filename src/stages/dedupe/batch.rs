//! The changelog's batch records: the changes one transaction made to one
//! partition's state, in their order, in one record. Written one record a
//! change, the changelog cost about 1.2 µs of librdkafka's work a change,
//! as much as a campaign record, and a lead makes one change; a batch of
//! hundreds costs about as much as one.
//!
//! Compaction cannot keep a changelog of batches down to the live keys,
//! since a batch holds many. Retention does instead (`kafka::topics`): a
//! key expires a window after its latest event time, by processing time,
//! and that event time is at most `max_future_ms` past the time its latest
//! change was written, so a batch older than the window, that margin and
//! a day holds no live key's latest change.
//!
//! The key is the tag `b` and 16 bytes unique to the batch (a random number
//! drawn once a process, and a count), so that no two batches ever share a
//! key. The value is a format byte (1), then each change: `1`, the 17-byte
//! changelog key and the 16-byte value; or `0` and the key, for a key
//! forgotten. Records of one change each, the format before, are still
//! read.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{CHANGELOG_KEY_BYTES, CHANGELOG_VALUE_BYTES, Change};

/// The first key byte of a batch record.
pub const TAG_BATCH: u8 = b'b';
const FORMAT: u8 = 1;
const PUT: u8 = 1;
const FORGET: u8 = 0;
/// The most bytes a batch record's value holds: half of Kafka's stock
/// limit on a record, so that a topic leadflow did not create takes it.
pub const BATCH_MAX_BYTES: usize = 512 * 1024;

/// A batch record for one partition of the changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    pub partition: i32,
    pub key: [u8; CHANGELOG_KEY_BYTES],
    pub value: Vec<u8>,
}

/// Packs changes into batch records, each with a key of its own.
#[derive(Debug)]
pub struct Batcher {
    process: u64,
    count: AtomicU64,
}

impl Default for Batcher {
    fn default() -> Batcher {
        use std::hash::BuildHasher;
        // std seeds each RandomState from the system's randomness.
        let process = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Batcher::with_process(process)
    }
}

impl Batcher {
    fn with_process(process: u64) -> Batcher {
        Batcher {
            process,
            count: AtomicU64::new(0),
        }
    }

    /// `changes` as batch records: per partition in the order given, each
    /// value at most [`BATCH_MAX_BYTES`]. Records of one partition come in
    /// the order they must be written.
    pub fn pack(&self, changes: impl Iterator<Item = Change>) -> Vec<BatchRecord> {
        let mut open: Vec<BatchRecord> = Vec::new();
        let mut full = Vec::new();
        for change in changes {
            let len = 1 + CHANGELOG_KEY_BYTES + change.value.map_or(0, |v| v.len());
            let at = match open.iter().position(|r| r.partition == change.partition) {
                Some(at) => at,
                None => {
                    open.push(self.record(change.partition));
                    open.len() - 1
                }
            };
            if open[at].value.len() + len > BATCH_MAX_BYTES {
                let next = self.record(change.partition);
                full.push(std::mem::replace(&mut open[at], next));
            }
            let value = &mut open[at].value;
            match change.value {
                Some(bytes) => {
                    value.push(PUT);
                    value.extend_from_slice(&change.key);
                    value.extend_from_slice(&bytes);
                }
                None => {
                    value.push(FORGET);
                    value.extend_from_slice(&change.key);
                }
            }
        }
        full.extend(open);
        full
    }

    fn record(&self, partition: i32) -> BatchRecord {
        let count = self.count.fetch_add(1, Ordering::Relaxed);
        let mut key = [0; CHANGELOG_KEY_BYTES];
        key[0] = TAG_BATCH;
        key[1..9].copy_from_slice(&self.process.to_be_bytes());
        key[9..].copy_from_slice(&count.to_be_bytes());
        BatchRecord {
            partition,
            key,
            value: vec![FORMAT],
        }
    }
}

/// A change read from a batch: the changelog key, and the value (`None`
/// for a key forgotten).
pub type Entry<'a> = (&'a [u8], Option<&'a [u8]>);

/// The changes a batch record's value holds, in order; `None` if it is not
/// one leadflow wrote (checked whole, before any is applied).
pub fn entries(value: &[u8]) -> Option<Vec<Entry<'_>>> {
    let (&FORMAT, mut rest) = value.split_first()? else {
        return None;
    };
    let mut entries = Vec::with_capacity(rest.len() / (1 + CHANGELOG_KEY_BYTES));
    while let Some((&op, after)) = rest.split_first() {
        let (key, after) = after.split_at_checked(CHANGELOG_KEY_BYTES)?;
        rest = match op {
            PUT => {
                let (bytes, after) = after.split_at_checked(CHANGELOG_VALUE_BYTES)?;
                entries.push((key, Some(bytes)));
                after
            }
            FORGET => {
                entries.push((key, None));
                after
            }
            _ => return None,
        };
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(partition: i32, n: u8, value: Option<u8>) -> Change {
        Change {
            partition,
            key: [n; CHANGELOG_KEY_BYTES],
            value: value.map(|v| [v; CHANGELOG_VALUE_BYTES]),
        }
    }

    #[test]
    fn changes_pack_per_partition_in_order_and_read_back() {
        let changes = vec![
            change(0, b's', Some(1)),
            change(1, b'o', Some(2)),
            change(0, b's', None),
            change(0, b't', Some(3)),
        ];
        let records = Batcher::with_process(7).pack(changes.clone().into_iter());
        assert_eq!(records.len(), 2);
        for record in &records {
            let read: Vec<Change> = entries(&record.value)
                .expect("a batch")
                .into_iter()
                .map(|(key, value)| Change {
                    partition: record.partition,
                    key: key.try_into().expect("17 bytes"),
                    value: value.map(|v| v.try_into().expect("16 bytes")),
                })
                .collect();
            let sent: Vec<Change> = changes
                .iter()
                .filter(|c| c.partition == record.partition)
                .cloned()
                .collect();
            assert_eq!(read, sent);
        }
    }

    #[test]
    fn every_batch_has_a_key_of_its_own() {
        let one = Batcher::with_process(7);
        let two = Batcher::default();
        let mut keys: Vec<[u8; CHANGELOG_KEY_BYTES]> = Vec::new();
        for batcher in [&one, &one, &two, &two] {
            for record in batcher.pack([change(0, b's', Some(1))].into_iter()) {
                assert_eq!(record.key[0], TAG_BATCH);
                keys.push(record.key);
            }
        }
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn a_batch_past_its_limit_continues_in_the_next_record_in_order() {
        let per_put = 1 + CHANGELOG_KEY_BYTES + CHANGELOG_VALUE_BYTES;
        let count = BATCH_MAX_BYTES / per_put + 10;
        let changes = (0..count).map(|i| Change {
            partition: 3,
            key: [(i % 251) as u8; CHANGELOG_KEY_BYTES],
            value: Some([(i % 7) as u8; CHANGELOG_VALUE_BYTES]),
        });
        let records = Batcher::with_process(7).pack(changes.clone());
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.value.len() <= BATCH_MAX_BYTES));
        let read: Vec<(Vec<u8>, Option<Vec<u8>>)> = records
            .iter()
            .flat_map(|r| entries(&r.value).expect("a batch"))
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        let sent: Vec<(Vec<u8>, Option<Vec<u8>>)> = changes
            .map(|c| (c.key.to_vec(), c.value.map(|v| v.to_vec())))
            .collect();
        assert_eq!(read, sent);
    }

    #[test]
    fn values_leadflow_did_not_write_are_refused_whole() {
        let good = Batcher::with_process(7)
            .pack([change(0, b's', Some(1))].into_iter())
            .remove(0)
            .value;
        assert_eq!(entries(&good).map(|e| e.len()), Some(1));
        assert_eq!(entries(&good[..good.len() - 1]), None);
        assert_eq!(entries(&[]), None);
        assert_eq!(entries(&[2]), None);
        let mut unknown = good.clone();
        unknown[1] = 9;
        assert_eq!(entries(&unknown), None);
        assert_eq!(entries(&[FORMAT]).map(|e| e.len()), Some(0));
    }
}
