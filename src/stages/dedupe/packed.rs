//! How dedupe state is packed in memory: keys aligned to 4 bytes, event
//! times in two 4-byte halves or whole seconds, so that an entry takes 28
//! bytes; and how a key is hashed into its table.

use std::collections::HashMap;

use crate::domain::DedupeKey;

/// A [`DedupeKey`] as the tables hold it: the same 16 bytes, aligned to 4
/// rather than the 16 of a `u128`, so that entries pack without padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MapKey(pub(super) [u32; 4]);

impl std::hash::Hash for MapKey {
    /// The key is an XXH3 hash already: one word of it is all a table
    /// needs, mixed with the table's random seed (the text hashed comes
    /// from outside, so a fixed function would let crafted emails collide).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64((u64::from(self.0[2]) << 32) | u64::from(self.0[3]));
    }
}

pub(super) type KeyMap = HashMap<MapKey, Seen, foldhash::fast::RandomState>;

impl From<DedupeKey> for MapKey {
    fn from(key: DedupeKey) -> MapKey {
        let k = key.0;
        MapKey([
            (k >> 96) as u32,
            (k >> 64) as u32,
            (k >> 32) as u32,
            k as u32,
        ])
    }
}

impl From<MapKey> for DedupeKey {
    fn from(MapKey(parts): MapKey) -> DedupeKey {
        DedupeKey(
            parts
                .iter()
                .fold(0u128, |k, part| (k << 32) | u128::from(*part)),
        )
    }
}

/// Milliseconds since the Unix epoch in two 4-byte halves, for the same
/// packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Millis([u32; 2]);

impl Millis {
    pub(super) fn new(ms: i64) -> Millis {
        Millis([(ms >> 32) as u32, ms as u32])
    }

    pub(super) fn get(self) -> i64 {
        (i64::from(self.0[0] as i32) << 32) | i64::from(self.0[1])
    }
}

/// A latest event time in whole seconds since the Unix epoch, rounded up,
/// which is all that expiry over a window of days needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Seconds(pub(super) u32);

impl Seconds {
    pub(super) fn from_ms(ms: i64) -> Seconds {
        Seconds(
            u32::try_from(ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) > 0))
                .unwrap_or(if ms < 0 { 0 } else { u32::MAX }),
        )
    }

    pub(super) fn ms(self) -> i64 {
        i64::from(self.0) * 1000
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    /// Event time of the occurrence that was let through.
    pub(super) emitted: Millis,
    /// Latest event time of any occurrence, for expiry.
    pub(super) last_seen: Seconds,
}
