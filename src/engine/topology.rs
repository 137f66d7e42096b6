//! Where the loop's records come from and go to: its two hops, the topics
//! of each, and the repartition topic's partition for a dedupe key.
//!
//! [`partition_for`] is a compatibility contract: dedupe state already
//! written to a changelog is found again only if every version of leadflow
//! puts a key on the same partition. Its golden values are pinned below.

/// Which of the loop's two input topics a partition belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hop {
    /// The raw input topic.
    Input,
    /// The repartition topic, read back after re-keying.
    Repartition,
}

/// A consumed partition: its hop and number.
pub type Part = (Hop, i32);

/// The loop's fixed surroundings, named once at start.
#[derive(Debug, Clone)]
pub struct Topology {
    pub input: String,
    /// The repartition topic and its partition count, unless the hop is off.
    pub repartition: Option<(String, i32)>,
    pub changelog: String,
    pub suppressed: String,
    pub dead_letter: String,
    /// Where records go unchanged, in pass-through mode.
    pub passthrough: Option<String>,
    /// Under at-least-once, a batch's dedupe state changes are written
    /// only once its outputs are acknowledged. Written beside them, a
    /// changelog record could be acknowledged before its lead's output, and
    /// after a crash the restarted run would drop the lead as a repeat of
    /// one never written: lost. (Under exactly-once the transaction makes
    /// both visible together, or neither.)
    pub changes_after_outputs: bool,
}

impl Topology {
    /// The hop a consumed topic belongs to; `None` for any other topic.
    pub fn hop(&self, topic: &str) -> Option<Hop> {
        if topic == self.input {
            Some(Hop::Input)
        } else if self.repartition_topic() == Some(topic) {
            Some(Hop::Repartition)
        } else {
            None
        }
    }

    /// The topic a hop reads.
    pub fn topic(&self, hop: Hop) -> &str {
        match (hop, self.repartition_topic()) {
            (Hop::Repartition, Some(topic)) => topic,
            _ => &self.input,
        }
    }

    pub fn repartition_topic(&self) -> Option<&str> {
        self.repartition.as_ref().map(|(name, _)| name.as_str())
    }

    /// The topic whose partitions carry dedupe state.
    pub fn processed_topic(&self) -> &str {
        self.repartition_topic().unwrap_or(&self.input)
    }

    /// Whether dedupe runs on this hop's records (and keeps state per its
    /// partitions): the repartition topic's, or the input's without one.
    pub fn is_processed(&self, hop: Hop) -> bool {
        hop == Hop::Repartition || self.repartition.is_none()
    }

    /// The topics the loop subscribes to.
    pub fn subscriptions(&self) -> Vec<&str> {
        std::iter::once(self.input.as_str())
            .chain(self.repartition_topic())
            .collect()
    }
}

/// The repartition topic's partition for a key: leadflow's own hash, so
/// that co-partitioning does not depend on a client's partitioner.
pub fn partition_for(key: u128, partitions: i32) -> i32 {
    let partitions = u128::from(partitions.max(1).unsigned_abs());
    i32::try_from(key % partitions).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ActionCode, DedupeKey, Offer};

    fn topology(repartition: bool) -> Topology {
        Topology {
            input: "raw".into(),
            repartition: repartition.then(|| ("raw-repartition".to_owned(), 12)),
            changelog: "changelog".into(),
            suppressed: "suppressed".into(),
            dead_letter: "dlq".into(),
            passthrough: None,
            changes_after_outputs: false,
        }
    }

    /// Changelogs already written hold these keys on these partitions: a
    /// change to the hash or to `partition_for` strands that state, so
    /// these values must never change. The keys are XXH3-128 of
    /// `email\npublisher.offer[\nACTION]`, as any XXH3 implementation
    /// computes them (Python's `xxhash` gives the same).
    #[test]
    fn dedupe_keys_and_their_partitions_are_pinned() {
        let offer = Offer {
            publisher_id: "contoso".into(),
            offer_id: "contoso-crm".into(),
        };
        let key = DedupeKey::new("jane@fabrikam.com", &offer, &ActionCode::PartnerLedTrial);
        let person = DedupeKey::person_offer("jane@fabrikam.com", &offer);
        let golden = [
            (key, "57c58e75d8eeeddb848c0d571425387f", [0, 7, 45]),
            (person, "078aaf1cf48b50d5adfc4a116e0dc1fb", [0, 7, 37]),
        ];
        for (key, hex, partitions) in golden {
            assert_eq!(key.to_hex(), hex);
            for (count, expected) in [1, 12, 50].into_iter().zip(partitions) {
                assert_eq!(partition_for(key.0, count), expected, "{hex} of {count}");
            }
        }
    }

    #[test]
    fn partition_for_stays_in_range_whatever_the_count() {
        for key in [0, 1, u128::MAX, u128::MAX / 3] {
            for count in [i32::MIN, -1, 0, 1, 7, i32::MAX] {
                let partition = partition_for(key, count);
                assert!((0..count.max(1)).contains(&partition), "{key} of {count}");
            }
        }
    }

    #[test]
    fn hops_name_their_topics() {
        let split = topology(true);
        assert_eq!(split.hop("raw"), Some(Hop::Input));
        assert_eq!(split.hop("raw-repartition"), Some(Hop::Repartition));
        assert_eq!(split.hop("other"), None);
        assert_eq!(split.topic(Hop::Repartition), "raw-repartition");
        assert_eq!(split.processed_topic(), "raw-repartition");
        assert!(!split.is_processed(Hop::Input));
        assert_eq!(split.subscriptions(), ["raw", "raw-repartition"]);
        let single = topology(false);
        assert_eq!(single.hop("raw-repartition"), None);
        assert_eq!(single.processed_topic(), "raw");
        assert!(single.is_processed(Hop::Input));
        assert_eq!(single.subscriptions(), ["raw"]);
    }
}
