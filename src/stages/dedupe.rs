//! dedupe: drops exact repeats of a lead within a window of event time.
//!
//! Two leads are the same when their [`DedupeKey`] (normalized email, offer,
//! action) is equal and their event times lie within the window of the
//! occurrence that was let through, in either direction, so late repeats are
//! caught too. A repeat after the window is a new lead and restarts it. A
//! new action by the same person for the same offer has another key, so it
//! is a new lead, and it learns which other actions that person took on that
//! offer. Checking and recording are separate steps, so that a lead which
//! fails a later stage leaves no trace.
//!
//! State is kept per input partition (a *shard*), because a partition is
//! the unit that moves between processes. Every change since the last
//! [`Deduper::commit`] is journaled, so that an aborted transaction can
//! [`Deduper::rollback`] the state to match what was committed, and so that
//! each change can be written to a changelog ([`Deduper::take_changes`]):
//! a key's new value, or a tombstone when it was forgotten. Replaying a
//! changelog into [`Deduper::restore`] rebuilds a shard.
//!
//! Changelog records: the key is a tag byte (`s` for a dedupe key, `a` for
//! a person's actions on an offer) and the 128-bit key, big-endian; the
//! value is 16 bytes: for `s` the event time let through and the latest
//! event time seen, for `a` the latest event time and the action bits, all
//! big-endian.
//!
//! In memory an entry is packed to 4-byte alignment, and the latest event
//! times (used only for expiry, over a window of days) are kept in whole
//! seconds: a dedupe key costs 28 + 24 bytes of table entries instead of
//! 32 + 32, which keeps 10 million keys under 1 GiB. The changelog keeps
//! its format; latest times in it are whole seconds, in milliseconds.
//!
//! Memory is bounded by `max_keys`: past it, the keys least recently seen
//! (about 1% of them) are forgotten, with tombstones, and counted in
//! [`Deduper::evicted`]. A repeat of a forgotten lead is let through again.

use std::collections::HashMap;

use crate::domain::{ActionSet, DedupeKey, Lead};
use crate::error::ErrorClass;

/// The most one dedupe key costs in memory: its entry and its share of a
/// person's actions entry (each with a control byte), in tables that may be
/// just past a resize (half full) and are at most 7/8 full. Sizes the
/// memory budget.
pub const MAX_BYTES_PER_KEY: usize = 2 * ((SEEN_ENTRY + ACTIONS_ENTRY) * 8 / 7 + 1);
const SEEN_ENTRY: usize = std::mem::size_of::<(MapKey, Seen)>() + 1;
const ACTIONS_ENTRY: usize = std::mem::size_of::<(MapKey, Actions)>() + 1;

/// Bytes in a changelog key.
pub const CHANGELOG_KEY_BYTES: usize = 17;
/// Bytes in a changelog value.
pub const CHANGELOG_VALUE_BYTES: usize = 16;
const TAG_SEEN: u8 = b's';
const TAG_ACTIONS: u8 = b'a';

/// A [`DedupeKey`] as the tables hold it: the same 16 bytes, aligned to 4
/// rather than the 16 of a `u128`, so that entries pack without padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MapKey([u32; 4]);

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
struct Millis([u32; 2]);

impl Millis {
    fn new(ms: i64) -> Millis {
        Millis([(ms >> 32) as u32, ms as u32])
    }

    fn get(self) -> i64 {
        (i64::from(self.0[0] as i32) << 32) | i64::from(self.0[1])
    }
}

/// A latest event time in whole seconds since the Unix epoch, rounded up,
/// which is all that expiry over a window of days needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Seconds(u32);

impl Seconds {
    fn from_ms(ms: i64) -> Seconds {
        Seconds(
            u32::try_from(ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) > 0))
                .unwrap_or(if ms < 0 { 0 } else { u32::MAX }),
        )
    }

    fn ms(self) -> i64 {
        i64::from(self.0) * 1000
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// Event time of the occurrence that was let through.
    emitted: Millis,
    /// Latest event time of any occurrence, for expiry.
    last_seen: Seconds,
}

/// A person's actions let through on an offer, and the latest event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Actions {
    set: ActionSet,
    last: Seconds,
}

/// The value a key held before a change, to put back on rollback.
#[derive(Debug, Clone, Copy)]
enum Undo {
    Seen(DedupeKey, Option<Seen>),
    Actions(DedupeKey, Option<Actions>),
}

/// One state change, as a changelog record for the shard's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub partition: i32,
    pub key: [u8; CHANGELOG_KEY_BYTES],
    /// `None` is a tombstone: the key was forgotten.
    pub value: Option<[u8; CHANGELOG_VALUE_BYTES]>,
}

/// A changelog record that leadflow did not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "changelog record with a {key_len}-byte key and a {value_len}-byte value is not leadflow dedupe state"
)]
pub struct ChangelogError {
    key_len: usize,
    value_len: usize,
}

impl ErrorClass for ChangelogError {
    fn class(&self) -> &'static str {
        "changelog_corrupt"
    }
}

/// A point in the journal to roll back to ([`Deduper::savepoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Savepoint(usize);

#[derive(Debug, Default)]
struct Shard {
    seen: HashMap<MapKey, Seen>,
    /// (email, offer) → actions let through, and the latest event time.
    actions: HashMap<MapKey, Actions>,
}

/// Dedupe state for the partitions this process owns.
#[derive(Debug)]
pub struct Deduper {
    window_ms: i64,
    max_keys: usize,
    shards: HashMap<i32, Shard>,
    /// Changes since the last commit, oldest first.
    journal: Vec<(i32, Undo)>,
    /// Journal entries already handed out by `take_changes`.
    taken: usize,
    evicted: u64,
}

impl Deduper {
    /// State for a window of `window_ms` event time holding at most
    /// `max_keys` dedupe keys.
    pub fn new(window_ms: i64, max_keys: usize) -> Deduper {
        Deduper {
            window_ms,
            max_keys: max_keys.max(1),
            shards: HashMap::new(),
            journal: Vec::new(),
            taken: 0,
            evicted: 0,
        }
    }

    /// Makes the changes so far permanent: a later rollback stops here.
    pub fn commit(&mut self) {
        self.journal.clear();
        self.taken = 0;
    }

    /// Undoes every change since the last commit.
    pub fn rollback(&mut self) {
        self.rollback_to(Savepoint(0));
        self.taken = 0;
    }

    /// Where the journal stands now, for [`Deduper::rollback_to`].
    pub fn savepoint(&self) -> Savepoint {
        Savepoint(self.journal.len())
    }

    /// Undoes every change since `savepoint` (a lead recorded as let
    /// through whose outputs were then refused, say), as if it had never
    /// been seen. Changes not yet taken for the changelog are never written.
    pub fn rollback_to(&mut self, savepoint: Savepoint) {
        self.taken = self.taken.min(savepoint.0);
        while self.journal.len() > savepoint.0 {
            let Some((partition, undo)) = self.journal.pop() else {
                break;
            };
            // A shard dropped since (its partition was revoked) stays dropped.
            let Some(shard) = self.shards.get_mut(&partition) else {
                continue;
            };
            match undo {
                Undo::Seen(key, Some(before)) => {
                    shard.seen.insert(key.into(), before);
                }
                Undo::Seen(key, None) => {
                    shard.seen.remove(&key.into());
                }
                Undo::Actions(key, Some(before)) => {
                    shard.actions.insert(key.into(), before);
                }
                Undo::Actions(key, None) => {
                    shard.actions.remove(&key.into());
                }
            }
        }
    }

    /// [`Deduper::rollback_to`] for changes that may already be in the
    /// changelog (at-least-once writes them outside a transaction, so a
    /// refused lead's state can be there though the lead is not): the keys
    /// they touched are changes again, so that the next
    /// [`Deduper::take_changes`] writes each one's value from before them,
    /// or a tombstone where there was none.
    pub fn revert_to(&mut self, savepoint: Savepoint) {
        let undone: Vec<(i32, Undo)> = self.journal.get(savepoint.0..).unwrap_or_default().to_vec();
        self.rollback_to(savepoint);
        for (partition, undo) in undone {
            let Some(shard) = self.shards.get(&partition) else {
                continue;
            };
            // Rolled back, the key already holds its value from before: a
            // later rollback of this entry leaves it so.
            let now = match undo {
                Undo::Seen(key, _) => Undo::Seen(key, shard.seen.get(&key.into()).copied()),
                Undo::Actions(key, _) => {
                    Undo::Actions(key, shard.actions.get(&key.into()).copied())
                }
            };
            self.journal.push((partition, now));
        }
    }

    /// The changes since the last call (or commit), as changelog records
    /// carrying each key's current value. Lazy, so the per-lead path
    /// allocates nothing for them.
    pub fn take_changes(&mut self) -> impl Iterator<Item = Change> + '_ {
        let start = std::mem::replace(&mut self.taken, self.journal.len());
        let shards = &self.shards;
        self.journal[start..].iter().map(move |(partition, undo)| {
            let shard = shards.get(partition);
            let (key, value) = match undo {
                Undo::Seen(key, _) => (
                    changelog_key(TAG_SEEN, *key),
                    shard
                        .and_then(|s| s.seen.get(&MapKey::from(*key)))
                        .map(|seen| {
                            value_bytes(seen.emitted.get(), seen.last_seen.ms().to_be_bytes())
                        }),
                ),
                Undo::Actions(key, _) => (
                    changelog_key(TAG_ACTIONS, *key),
                    shard
                        .and_then(|s| s.actions.get(&MapKey::from(*key)))
                        .map(|actions| {
                            let mut bits = [0; 8];
                            bits[0] = actions.set.0;
                            value_bytes(actions.last.ms(), bits)
                        }),
                ),
            };
            Change {
                partition: *partition,
                key,
                value,
            }
        })
    }

    /// Applies one changelog record to a partition's shard, unjournaled:
    /// restoring rebuilds committed state.
    pub fn restore(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), ChangelogError> {
        let corrupt = || ChangelogError {
            key_len: key.len(),
            value_len: value.map_or(0, <[u8]>::len),
        };
        let (tag, hash) = match key {
            [tag, rest @ ..] => (
                *tag,
                MapKey::from(DedupeKey(u128::from_be_bytes(
                    rest.try_into().map_err(|_| corrupt())?,
                ))),
            ),
            [] => return Err(corrupt()),
        };
        let value = match value {
            None => None,
            Some(bytes) => {
                let bytes: [u8; CHANGELOG_VALUE_BYTES] = bytes.try_into().map_err(|_| corrupt())?;
                let (first, second) = bytes.split_at(8);
                let first = i64::from_be_bytes(first.try_into().map_err(|_| corrupt())?);
                let second: [u8; 8] = second.try_into().map_err(|_| corrupt())?;
                Some((first, second))
            }
        };
        let shard = self.shards.entry(partition).or_default();
        match (tag, value) {
            (TAG_SEEN, Some((emitted_ms, last))) => {
                let last_seen_ms = i64::from_be_bytes(last);
                shard.seen.insert(
                    hash,
                    Seen {
                        emitted: Millis::new(emitted_ms),
                        last_seen: Seconds::from_ms(last_seen_ms),
                    },
                );
            }
            (TAG_SEEN, None) => {
                shard.seen.remove(&hash);
            }
            (TAG_ACTIONS, Some((last, bits))) => {
                shard.actions.insert(
                    hash,
                    Actions {
                        set: ActionSet(bits[0]),
                        last: Seconds::from_ms(last),
                    },
                );
            }
            (TAG_ACTIONS, None) => {
                shard.actions.remove(&hash);
            }
            _ => return Err(corrupt()),
        }
        Ok(())
    }

    /// Forgets a partition's state, when another process takes it over.
    /// Returns how many dedupe keys it held.
    pub fn drop_partition(&mut self, partition: i32) -> usize {
        self.shards
            .remove(&partition)
            .map_or(0, |shard| shard.seen.len())
    }

    /// Starts a partition with empty state (before restoring it, say).
    pub fn add_partition(&mut self, partition: i32) {
        self.shards.entry(partition).or_default();
    }

    /// If `lead` repeats one let through within the window, notes the repeat
    /// and returns the event time of the one let through.
    pub fn duplicate_of(&mut self, partition: i32, lead: &Lead) -> Option<i64> {
        let seen = self
            .shards
            .get_mut(&partition)?
            .seen
            .get_mut(&lead.dedupe_key.into())?;
        let emitted_ms = seen.emitted.get();
        if lead.event_time_ms.abs_diff(emitted_ms) >= self.window_ms.unsigned_abs() {
            return None;
        }
        let last_seen = Seconds::from_ms(lead.event_time_ms);
        if last_seen > seen.last_seen {
            self.journal
                .push((partition, Undo::Seen(lead.dedupe_key, Some(*seen))));
            seen.last_seen = last_seen;
        }
        Some(emitted_ms)
    }

    /// Records `lead` as let through and returns the person's other actions
    /// on the same offer.
    pub fn record(&mut self, partition: i32, lead: &Lead) -> ActionSet {
        let shard = self.shards.entry(partition).or_default();
        let at = Seconds::from_ms(lead.event_time_ms);
        let before = shard.seen.insert(
            lead.dedupe_key.into(),
            Seen {
                emitted: Millis::new(lead.event_time_ms),
                last_seen: at,
            },
        );
        let new_key = before.is_none();
        self.journal
            .push((partition, Undo::Seen(lead.dedupe_key, before)));
        let key = MapKey::from(lead.person_offer_key);
        let before = shard.actions.get(&key).copied();
        self.journal
            .push((partition, Undo::Actions(lead.person_offer_key, before)));
        let entry = shard.actions.entry(key).or_insert(Actions {
            set: ActionSet::default(),
            last: at,
        });
        let earlier = entry.set.without(&lead.action);
        entry.set = entry.set.with(&lead.action);
        entry.last = entry.last.max(at);
        if new_key && self.len() > self.max_keys {
            self.evict_oldest();
        }
        earlier
    }

    /// Forgets keys whose last occurrence is a full window older than
    /// `now_ms` (event time), and returns how many dedupe keys were
    /// forgotten. Journaled like any change, so it yields tombstones.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let window = self.window_ms;
        self.forget(|last_seen_ms| now_ms.saturating_sub(last_seen_ms) >= window)
    }

    /// Forgets about 1% of the keys, those seen least recently. The cut-off
    /// comes from a sample, which keeps this O(keys) without sorting them.
    fn evict_oldest(&mut self) {
        const SAMPLE: usize = 4_096;
        let total = self.len();
        let stride = (total / SAMPLE).max(1);
        let mut sample: Vec<i64> = self
            .shards
            .values()
            .flat_map(|shard| shard.seen.values())
            .step_by(stride)
            .map(|seen| seen.last_seen.ms())
            .collect();
        let rank = sample.len() / 100;
        let Some((_, cutoff, _)) = (!sample.is_empty()).then(|| sample.select_nth_unstable(rank))
        else {
            return;
        };
        let cutoff = *cutoff;
        // Latest times are whole seconds, so the keys of the cut-off's
        // second go together: more than 1% when many share it.
        let evicted = self.forget(|last_seen_ms| last_seen_ms <= cutoff);
        self.evicted += evicted as u64;
    }

    /// Forgets every key (of either kind) whose latest event time `stale`
    /// says is stale, journaled. Returns how many dedupe keys went.
    fn forget(&mut self, stale: impl Fn(i64) -> bool) -> usize {
        let journal = &mut self.journal;
        let mut forgotten = 0;
        for (partition, shard) in &mut self.shards {
            shard.seen.retain(|key, seen| {
                let keep = !stale(seen.last_seen.ms());
                if !keep {
                    journal.push((*partition, Undo::Seen((*key).into(), Some(*seen))));
                    forgotten += 1;
                }
                keep
            });
            shard.actions.retain(|key, entry| {
                let keep = !stale(entry.last.ms());
                if !keep {
                    journal.push((*partition, Undo::Actions((*key).into(), Some(*entry))));
                }
                keep
            });
        }
        forgotten
    }

    /// Dedupe keys held, over all partitions.
    pub fn len(&self) -> usize {
        self.shards.values().map(|shard| shard.seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory the tables hold: every bucket (filled or not) with its
    /// control byte. Exact while keys are only added; after keys are
    /// forgotten it is a lower bound, since `capacity()` then leaves out the
    /// slots that removals mark but do not free.
    pub fn bytes(&self) -> usize {
        self.shards
            .values()
            .map(|shard| {
                buckets(shard.seen.capacity()) * SEEN_ENTRY
                    + buckets(shard.actions.capacity()) * ACTIONS_ENTRY
            })
            .sum()
    }

    /// Dedupe keys forgotten to stay within the memory budget, ever.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// The buckets behind a std `HashMap` of this capacity: a power of two,
/// filled to at most 7/8 once past 8.
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        1..8 => (capacity + 1).next_power_of_two(),
        _ => (capacity * 8 / 7).next_power_of_two(),
    }
}

fn changelog_key(tag: u8, key: DedupeKey) -> [u8; CHANGELOG_KEY_BYTES] {
    let mut bytes = [0; CHANGELOG_KEY_BYTES];
    bytes[0] = tag;
    bytes[1..].copy_from_slice(&key.0.to_be_bytes());
    bytes
}

fn value_bytes(first: i64, second: [u8; 8]) -> [u8; CHANGELOG_VALUE_BYTES] {
    let mut bytes = [0; CHANGELOG_VALUE_BYTES];
    bytes[..8].copy_from_slice(&first.to_be_bytes());
    bytes[8..].copy_from_slice(&second);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ActionCode, Storefront, fixtures};
    use crate::error::ErrorClass;

    const DAY: i64 = 86_400_000;

    fn lead_at(action: ActionCode, event_time_ms: i64) -> Lead {
        let mut lead = fixtures::lead(Storefront::AppSource, action);
        lead.event_time_ms = event_time_ms;
        lead
    }

    /// Checks and, when new, records: what the pipeline does.
    fn observe(dedupe: &mut Deduper, lead: &Lead) -> Option<i64> {
        let duplicate = dedupe.duplicate_of(0, lead);
        if duplicate.is_none() {
            dedupe.record(0, lead);
        }
        duplicate
    }

    #[test]
    fn entries_pack_into_28_and_24_bytes_and_round_trip() {
        assert_eq!(SEEN_ENTRY, 29);
        assert_eq!(ACTIONS_ENTRY, 25);
        for key in [0, 1, u128::MAX, u128::MAX / 3, 1 << 127] {
            assert_eq!(
                DedupeKey::from(MapKey::from(DedupeKey(key))),
                DedupeKey(key)
            );
        }
        for ms in [0, 1, -1, 1_764_000_000_123, i64::MIN, i64::MAX] {
            assert_eq!(Millis::new(ms).get(), ms);
        }
        // Rounded up, so that expiry never comes early.
        assert_eq!(Seconds::from_ms(1_001).ms(), 2_000);
        assert_eq!(Seconds::from_ms(2_000).ms(), 2_000);
        assert_eq!(Seconds::from_ms(-5), Seconds(0));
        assert_eq!(buckets(14), 16);
        assert_eq!(buckets(15), 32);
    }

    #[test]
    fn repeats_within_the_window_are_duplicates() {
        let mut dedupe = Deduper::new(180 * DAY, usize::MAX);
        assert_eq!(
            observe(&mut dedupe, &lead_at(ActionCode::Install, 1_000)),
            None
        );
        assert_eq!(
            observe(
                &mut dedupe,
                &lead_at(ActionCode::Install, 1_000 + 179 * DAY)
            ),
            Some(1_000)
        );
        // Out of order: earlier than the one let through, still within the window.
        assert_eq!(
            observe(&mut dedupe, &lead_at(ActionCode::Install, 500)),
            Some(1_000)
        );
        assert_eq!(
            observe(&mut dedupe, &lead_at(ActionCode::Create, 1_000)),
            None
        );
    }

    #[test]
    fn a_repeat_after_the_window_is_a_new_lead_and_restarts_it() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        assert_eq!(observe(&mut dedupe, &lead_at(ActionCode::Install, 0)), None);
        assert_eq!(
            observe(&mut dedupe, &lead_at(ActionCode::Install, 10 * DAY)),
            None
        );
        assert_eq!(
            observe(&mut dedupe, &lead_at(ActionCode::Install, 15 * DAY)),
            Some(10 * DAY)
        );
    }

    #[test]
    fn a_lead_that_is_checked_but_not_recorded_leaves_no_trace() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        let lead = lead_at(ActionCode::Install, 0);
        assert_eq!(dedupe.duplicate_of(0, &lead), None);
        assert_eq!(dedupe.duplicate_of(0, &lead), None);
        assert!(dedupe.is_empty());
    }

    #[test]
    fn a_new_action_by_the_same_person_carries_the_earlier_ones() {
        let mut dedupe = Deduper::new(180 * DAY, usize::MAX);
        let contact = lead_at(ActionCode::PartnerLedTrial, 0);
        let install = lead_at(ActionCode::Install, DAY);
        assert_ne!(contact.dedupe_key, install.dedupe_key);
        assert_eq!(contact.person_offer_key, install.person_offer_key);
        assert_eq!(dedupe.record(0, &contact).to_vec(), vec![]);
        assert_eq!(dedupe.duplicate_of(0, &install), None);
        assert_eq!(
            dedupe.record(0, &install).to_vec(),
            vec![ActionCode::PartnerLedTrial]
        );
        assert_eq!(dedupe.duplicate_of(0, &install), Some(DAY));
    }

    #[test]
    fn rollback_restores_the_last_committed_state() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        let contact = lead_at(ActionCode::PartnerLedTrial, 0);
        observe(&mut dedupe, &contact);
        dedupe.commit();
        // An aborted batch: a new lead, a repeat and a new action.
        let install = lead_at(ActionCode::Install, DAY);
        assert_eq!(observe(&mut dedupe, &install), None);
        assert_eq!(
            observe(&mut dedupe, &lead_at(ActionCode::PartnerLedTrial, 2 * DAY)),
            Some(0)
        );
        dedupe.rollback();
        assert_eq!(dedupe.len(), 1);
        // Replayed after the abort, everything happens as the first time.
        assert_eq!(dedupe.duplicate_of(0, &install), None);
        assert_eq!(
            dedupe.record(0, &install).to_vec(),
            vec![ActionCode::PartnerLedTrial]
        );
        // The repeat's last-seen time was rolled back too: expiry at day 10
        // forgets the contact, which was last seen at day 0.
        dedupe.commit();
        assert_eq!(dedupe.expire(10 * DAY), 1);
    }

    #[test]
    fn expiry_forgets_keys_idle_for_a_window() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        observe(&mut dedupe, &lead_at(ActionCode::Install, 0));
        observe(&mut dedupe, &lead_at(ActionCode::Create, 5 * DAY));
        assert_eq!(dedupe.expire(12 * DAY), 1);
        assert_eq!(dedupe.len(), 1);
        assert_eq!(
            observe(&mut dedupe, &lead_at(ActionCode::Install, 12 * DAY)),
            None
        );
    }

    /// Replays changes into a fresh deduper, as a restore would.
    fn replay(changes: &[Change], window_ms: i64) -> Deduper {
        let mut restored = Deduper::new(window_ms, usize::MAX);
        for change in changes {
            restored
                .restore(
                    change.partition,
                    &change.key,
                    change.value.as_ref().map(<[u8; 16]>::as_slice),
                )
                .expect("own changelog record");
        }
        restored
    }

    #[test]
    fn a_replayed_changelog_rebuilds_the_state_per_partition() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        let contact = lead_at(ActionCode::PartnerLedTrial, 0);
        let install = lead_at(ActionCode::Install, DAY);
        dedupe.record(3, &contact);
        dedupe.record(7, &install);
        assert_eq!(
            dedupe.duplicate_of(3, &lead_at(ActionCode::PartnerLedTrial, DAY)),
            Some(0)
        );
        let changes: Vec<Change> = dedupe.take_changes().collect();
        assert!(changes.iter().all(|c| c.partition == 3 || c.partition == 7));
        assert!(
            dedupe.take_changes().next().is_none(),
            "changes are handed out once"
        );

        let mut restored = replay(&changes, 10 * DAY);
        assert_eq!(restored.len(), 2);
        assert_eq!(restored.duplicate_of(3, &contact), Some(0));
        // State is per partition: partition 7 never saw the contact.
        assert_eq!(restored.duplicate_of(7, &contact), None);
        // The actions were restored too.
        let create = lead_at(ActionCode::Create, 2 * DAY);
        assert_eq!(
            restored.record(3, &create).to_vec(),
            vec![ActionCode::PartnerLedTrial]
        );
        // So was the repeat's last-seen time: the contact outlives day 10.
        assert_eq!(restored.expire(10 * DAY), 0);
        // Day 11 forgets the contact and the install, both last seen on day 1.
        assert_eq!(restored.expire(11 * DAY), 2);
        assert_eq!(restored.len(), 1);
    }

    #[test]
    fn expiry_and_eviction_write_tombstones() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        dedupe.record(0, &lead_at(ActionCode::Install, 0));
        dedupe.record(0, &lead_at(ActionCode::Create, 5 * DAY));
        let mut changes: Vec<Change> = dedupe.take_changes().collect();
        dedupe.commit();
        assert_eq!(dedupe.expire(12 * DAY), 1);
        let tombstones: Vec<Change> = dedupe.take_changes().collect();
        assert!(!tombstones.is_empty());
        assert!(tombstones.iter().all(|c| c.value.is_none()));
        changes.extend(tombstones);
        let restored = replay(&changes, 10 * DAY);
        assert_eq!(restored.len(), 1);
    }

    #[test]
    fn the_key_budget_evicts_the_least_recently_seen() {
        let mut dedupe = Deduper::new(1_000 * DAY, 500);
        let mut all = Vec::new();
        for i in 0..2_000 {
            let mut lead = lead_at(ActionCode::Install, i * 1_000);
            lead.dedupe_key = DedupeKey(i as u128);
            lead.person_offer_key = DedupeKey(i as u128);
            dedupe.record((i % 4) as i32, &lead);
            all.push(lead);
        }
        assert!(dedupe.len() <= 500, "{} keys held", dedupe.len());
        assert_eq!(dedupe.evicted(), 2_000 - dedupe.len() as u64);
        // The newest lead is remembered, the oldest forgotten.
        let newest = all.last().expect("leads");
        assert!(dedupe.duplicate_of(3, newest).is_some());
        assert_eq!(dedupe.duplicate_of(0, &all[0]), None);
        // The changelog agrees with memory.
        let changes: Vec<Change> = dedupe.take_changes().collect();
        let restored = replay(&changes, 1_000 * DAY);
        assert_eq!(restored.len(), dedupe.len());
    }

    #[test]
    fn a_dropped_partition_is_forgotten_and_stays_dropped_on_rollback() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        let lead = lead_at(ActionCode::Install, 0);
        dedupe.record(1, &lead);
        dedupe.record(2, &lead);
        assert_eq!(dedupe.drop_partition(1), 1);
        dedupe.rollback();
        assert!(dedupe.is_empty());
        assert_eq!(dedupe.duplicate_of(1, &lead), None);
    }

    #[test]
    fn foreign_changelog_records_are_refused() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        let err = dedupe
            .restore(0, b"not a key", Some(b"x"))
            .expect_err("refused");
        assert_eq!(err.class(), "changelog_corrupt");
        let mut key = [0; CHANGELOG_KEY_BYTES];
        key[0] = b'z';
        assert!(dedupe.restore(0, &key, None).is_err());
        key[0] = b's';
        assert!(dedupe.restore(0, &key, Some(&[0; 15])).is_err());
        assert!(dedupe.restore(0, &key, Some(&[0; 16])).is_ok());
    }

    #[test]
    fn reverting_writes_the_values_from_before_again() {
        let mut deduper = Deduper::new(180 * DAY, usize::MAX);
        let kept = lead_at(ActionCode::Install, 1_000);
        deduper.record(0, &kept);
        let before: Vec<Change> = deduper.take_changes().collect();
        deduper.commit();
        let savepoint = deduper.savepoint();
        // A new action of the same person and offer: a new dedupe key, and
        // the (email, offer) actions key changed.
        let refused = lead_at(ActionCode::Create, 2_000);
        deduper.record(0, &refused);
        let written: Vec<Change> = deduper.take_changes().collect();
        assert_eq!(written.len(), 2, "{written:?}");
        deduper.revert_to(savepoint);
        let reverted: Vec<Change> = deduper.take_changes().collect();
        // The refused lead's key is a tombstone; the actions key is back to
        // what the kept lead left.
        let by_key = |changes: &[Change], key: &[u8; CHANGELOG_KEY_BYTES]| {
            changes.iter().find(|c| c.key == *key).map(|c| c.value)
        };
        for change in &written {
            let expected = by_key(&before, &change.key).unwrap_or(None);
            assert_eq!(by_key(&reverted, &change.key), Some(expected));
        }
        assert_eq!(deduper.duplicate_of(0, &refused), None);
        assert!(deduper.duplicate_of(0, &kept).is_some());
        // Rolling back past the revert changes nothing more.
        deduper.rollback();
        assert!(deduper.duplicate_of(0, &kept).is_some());
    }

    #[test]
    fn rolling_back_to_a_savepoint_forgets_only_what_came_after() {
        let mut deduper = Deduper::new(180 * DAY, usize::MAX);
        let kept = lead_at(ActionCode::Install, 1_000);
        let refused = lead_at(ActionCode::Create, 1_000);
        deduper.record(0, &kept);
        let _ = deduper.take_changes().count();
        let savepoint = deduper.savepoint();
        deduper.record(0, &refused);
        deduper.rollback_to(savepoint);
        assert_eq!(deduper.take_changes().count(), 0, "nothing to write for it");
        assert_eq!(deduper.duplicate_of(0, &refused), None);
        assert!(deduper.duplicate_of(0, &kept).is_some());
        deduper.commit();
        assert!(deduper.duplicate_of(0, &kept).is_some());
    }
}
