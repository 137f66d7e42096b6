//! How far the table reader has got, as it is kept in Kafka: the latest
//! entity `Timestamp` written, and the entities written within the overlap
//! before it. Each query asks again from `watermark − overlap`, so an
//! entity that became visible late is still found; the recent set tells
//! it from one already written. The position is written in the same
//! transaction as the leads it covers, so after any crash the position
//! read back and the leads in the input topic agree: nothing is lost and
//! nothing written twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::entity::TableLead;

/// Most recent entities a position remembers; past it the oldest are
/// forgotten (a table never takes leads that fast).
const MAX_RECENT: usize = 100_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The largest `Timestamp` (ms) of an entity written.
    pub watermark_ms: i64,
    /// Entities written whose `Timestamp` is within the overlap before the
    /// watermark, `PartitionKey` and `RowKey` joined by a `/`, escaped.
    pub recent: BTreeMap<String, i64>,
}

impl Position {
    /// Where the next query starts.
    pub fn query_from(&self, overlap_ms: i64) -> i64 {
        self.watermark_ms.saturating_sub(overlap_ms)
    }

    /// Whether `lead` is yet to be written.
    pub fn is_new(&self, lead: &TableLead) -> bool {
        !self.recent.contains_key(&key_of(lead))
    }

    /// The position once `written` are written.
    pub fn after(&self, written: &[TableLead], overlap_ms: i64) -> Position {
        let mut next = self.clone();
        for lead in written {
            next.watermark_ms = next.watermark_ms.max(lead.timestamp_ms);
            next.recent.insert(key_of(lead), lead.timestamp_ms);
        }
        let from = next.query_from(overlap_ms);
        next.recent.retain(|_, at| *at >= from);
        while next.recent.len() > MAX_RECENT {
            let oldest = next
                .recent
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(key, _)| key.clone());
            match oldest {
                Some(key) => next.recent.remove(&key),
                None => break,
            };
        }
        next
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Strings and numbers only: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Option<Position> {
        serde_json::from_slice(bytes).ok()
    }
}

/// An entity's identity: its keys, with `/` and `\` escaped so that no two
/// pairs join alike.
fn key_of(lead: &TableLead) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('/', "\\/");
    format!("{}/{}", escape(&lead.partition_key), escape(&lead.row_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(partition: &str, row: &str, at: i64) -> TableLead {
        TableLead {
            partition_key: partition.into(),
            row_key: row.into(),
            timestamp_ms: at,
            lead: serde_json::Map::new(),
        }
    }

    #[test]
    fn a_written_entity_is_not_new_again_within_the_overlap() {
        let start = Position::default();
        let first = [lead("p", "1", 1_000), lead("p", "2", 5_000)];
        assert!(first.iter().all(|l| start.is_new(l)));
        let position = start.after(&first, 10_000);
        assert_eq!(position.watermark_ms, 5_000);
        assert_eq!(position.query_from(10_000), -5_000);
        assert!(!position.is_new(&first[0]) && !position.is_new(&first[1]));
        // One that became visible late, older than the watermark: new.
        assert!(position.is_new(&lead("p", "0", 4_000)));
    }

    #[test]
    fn entities_older_than_the_overlap_are_forgotten() {
        let position = Position::default().after(&[lead("p", "1", 1_000)], 10_000);
        let later = position.after(&[lead("p", "2", 20_000)], 10_000);
        assert_eq!(later.recent.len(), 1, "{later:?}");
        assert_eq!(later.query_from(10_000), 10_000);
    }

    #[test]
    fn keys_that_join_alike_stay_apart() {
        let position = Position::default().after(&[lead("a/b", "c", 1)], 10);
        assert!(position.is_new(&lead("a", "b/c", 1)));
    }

    #[test]
    fn reads_back_what_it_writes() {
        let position = Position::default().after(&[lead("p", "1", 7)], 10);
        assert_eq!(Position::from_json(&position.to_json()), Some(position));
        assert_eq!(Position::from_json(b"not json"), None);
    }
}
