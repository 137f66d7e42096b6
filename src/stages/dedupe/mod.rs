//! dedupe: drops exact repeats of a lead within a window of event time.
//!
//! Two leads are the same when their [`DedupeKey`] (normalized email, offer,
//! action) is equal and their event times lie within the window of the
//! occurrence that was let through, in either direction, so late repeats are
//! caught too. A repeat after the window is a new lead and restarts it. A
//! new action by the same person for the same offer has another key, so it
//! is a new lead, and it learns which other actions that person took on that
//! offer: the keys of the other actions are looked up (every unknown action
//! code also leaves a key of its own, [`OTHER_ACTIONS`], to be found by).
//! Checking and recording are separate steps, so that a lead which fails a
//! later stage leaves no trace.
//!
//! State is kept per input partition (a *shard*), because a partition is
//! the unit that moves between processes. Every change since the last
//! [`Deduper::commit`] is journaled, so that an aborted transaction can
//! [`Deduper::rollback`] the state to match what was committed, and so that
//! each change can be written to a changelog ([`Deduper::take_changes`]):
//! a key's new value, or a tombstone when it was forgotten. Replaying a
//! changelog into [`Deduper::restore`] rebuilds a shard.
//!
//! A change: the key is a tag byte (`s` for a dedupe key, `o` for the key
//! an unknown action code leaves) and the 128-bit key, big-endian; the
//! value is 16 bytes, the event time let through and the latest event time
//! seen, big-endian, or none for a key forgotten. One change per lead let
//! through (two for an unknown action code). The changelog holds them in
//! batch records, one a partition a transaction ([`batch`]); versions
//! before 2026-12-05 wrote a record a change, with the change's key and
//! value as the record's, and a restore reads both. Versions before
//! 2026-12 also kept a table of each person's actions per offer, written
//! as `a` changes: a restore skips them, and forgets them a hundred at a
//! time with the changes that follow.
//!
//! In memory an entry is packed to 4-byte alignment, and the latest event
//! time (used only for expiry, over a window of days) is kept in whole
//! seconds: a dedupe key costs 28 bytes of table entry (29 with its
//! control byte), about 49 bytes a key at 10 million keys. The changelog
//! keeps its format; latest times in it are whole seconds, in
//! milliseconds.
//!
//! Memory is bounded by `max_keys`: past it, the keys least recently seen
//! (about 1% of them) are forgotten, with tombstones, and counted in
//! [`Deduper::evicted`]. A repeat of a forgotten lead is let through again.

use std::collections::HashMap;

use crate::domain::{ActionCode, ActionSet, DedupeKey, Lead};

mod batch;
mod packed;
use crate::error::ErrorClass;
pub use batch::{BATCH_MAX_BYTES, BatchRecord, Batcher};
use packed::{KeyMap, MapKey, Millis, Seconds, Seen};

/// The most one dedupe key costs in memory: its entry (with a control
/// byte), in a table that may be just past a resize (half full) and is at
/// most 7/8 full. Sizes the memory budget.
pub const MAX_BYTES_PER_KEY: usize = 2 * (SEEN_ENTRY * 8 / 7 + 1);
const SEEN_ENTRY: usize = std::mem::size_of::<(MapKey, Seen)>() + 1;

/// The action code whose key every unknown action code also leaves, so
/// that a person's later actions learn of it. Begins with a NUL, which no
/// code Microsoft sends does.
pub const OTHER_ACTIONS: &str = "\u{0}other";

/// Bytes in a changelog key.
pub const CHANGELOG_KEY_BYTES: usize = 17;
/// Bytes in a changelog value.
pub const CHANGELOG_VALUE_BYTES: usize = 16;
const TAG_SEEN: u8 = b's';
const TAG_OTHERS: u8 = b'o'; // keys unknown action codes leave
const TAG_LEGACY_ACTIONS: u8 = b'a'; // versions before 2026-12
/// Actions records of earlier versions held to tombstone, at most (a
/// restore finds at most this many more, 32 bytes each), and tombstoned
/// with one call's changes, at most: an upgrade does not burst into one
/// huge transaction. Those of an aborted batch wait for a later restore.
const LEGACY_HELD: usize = 100_000;
const LEGACY_PER_CALL: usize = 100;

/// The two tables of a shard: dedupe keys, and the keys unknown action
/// codes leave for a person's later actions to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Seen,
    Others,
}

impl Table {
    fn tag(self) -> u8 {
        match self {
            Table::Seen => TAG_SEEN,
            Table::Others => TAG_OTHERS,
        }
    }
}

/// The value a key held before a change, to put back on rollback.
#[derive(Debug, Clone, Copy)]
struct Undo {
    table: Table,
    key: DedupeKey,
    before: Option<Seen>,
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
    seen: KeyMap,
    /// Keyed by (email, offer, [`OTHER_ACTIONS`]); rare, so a table of its
    /// own, which keeps every key in `seen` one an output carries.
    others: KeyMap,
}

impl Shard {
    fn table(&mut self, table: Table) -> &mut KeyMap {
        match table {
            Table::Seen => &mut self.seen,
            Table::Others => &mut self.others,
        }
    }

    fn get(&self, table: Table, key: DedupeKey) -> Option<Seen> {
        match table {
            Table::Seen => self.seen.get(&key.into()).copied(),
            Table::Others => self.others.get(&key.into()).copied(),
        }
    }
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
    /// Actions records of earlier versions found by restores, to tombstone.
    legacy: Vec<(i32, DedupeKey)>,
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
            legacy: Vec::new(),
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
            let Undo { table, key, before } = undo;
            match before {
                Some(before) => shard.table(table).insert(key.into(), before),
                None => shard.table(table).remove(&key.into()),
            };
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
            let now = Undo {
                before: shard.get(undo.table, undo.key),
                ..undo
            };
            self.journal.push((partition, now));
        }
    }

    /// The changes since the last call (or commit), as changelog records
    /// carrying each key's current value, then tombstones for the actions
    /// records of earlier versions that restores found. Lazy, so the
    /// per-lead path allocates nothing for them.
    pub fn take_changes(&mut self) -> impl Iterator<Item = Change> + '_ {
        let start = std::mem::replace(&mut self.taken, self.journal.len());
        let shards = &self.shards;
        let changes = self.journal[start..].iter().map(move |(partition, undo)| {
            let value = shards
                .get(partition)
                .and_then(|s| s.get(undo.table, undo.key))
                .map(|seen| value_bytes(seen.emitted.get(), seen.last_seen.ms()));
            Change {
                partition: *partition,
                key: changelog_key(undo.table.tag(), undo.key),
                value,
            }
        });
        let from = self.legacy.len().saturating_sub(LEGACY_PER_CALL);
        let legacy = self.legacy.drain(from..).map(|(partition, key)| Change {
            partition,
            key: changelog_key(TAG_LEGACY_ACTIONS, key),
            value: None,
        });
        changes.chain(legacy)
    }

    /// Applies one changelog record to a partition's shard, unjournaled:
    /// restoring rebuilds committed state. Returns how many changes it
    /// held: one, or a batch's.
    pub fn restore(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<u64, ChangelogError> {
        if key.first() != Some(&batch::TAG_BATCH) {
            return self.restore_change(partition, key, value).map(|()| 1);
        }
        let corrupt = ChangelogError {
            key_len: key.len(),
            value_len: value.map_or(0, <[u8]>::len),
        };
        let entries = value.and_then(batch::entries).ok_or(corrupt)?;
        for (key, value) in &entries {
            self.restore_change(partition, key, *value)?;
        }
        Ok(entries.len() as u64)
    }

    /// Applies one change, as a record of its own or from a batch.
    fn restore_change(
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
                let second = i64::from_be_bytes(second.try_into().map_err(|_| corrupt())?);
                Some((first, second))
            }
        };
        let shard = self.shards.entry(partition).or_default();
        let table = match tag {
            TAG_SEEN => Some(Table::Seen),
            TAG_OTHERS => Some(Table::Others),
            _ => None,
        };
        match (table, tag, value) {
            (Some(table), _, Some((emitted_ms, last_seen_ms))) => {
                shard.table(table).insert(
                    hash,
                    Seen {
                        emitted: Millis::new(emitted_ms),
                        last_seen: Seconds::from_ms(last_seen_ms),
                    },
                );
            }
            (Some(table), _, None) => {
                shard.table(table).remove(&hash);
            }
            (None, TAG_LEGACY_ACTIONS, Some(_)) if self.legacy.len() < LEGACY_HELD => {
                self.legacy.push((partition, hash.into()));
            }
            // Past the limit, tombstoned after a later restore; or one of
            // the tombstones, read back before compaction.
            (None, TAG_LEGACY_ACTIONS, _) => {}
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
            self.journal.push((
                partition,
                Undo {
                    table: Table::Seen,
                    key: lead.dedupe_key,
                    before: Some(*seen),
                },
            ));
            seen.last_seen = last_seen;
        }
        Some(emitted_ms)
    }

    /// Records `lead` as let through and returns the person's other actions
    /// on the same offer: those whose keys are held.
    pub fn record(&mut self, partition: i32, lead: &Lead) -> ActionSet {
        let shard = self.shards.entry(partition).or_default();
        // An unknown code's own kind is not an earlier action of it.
        let own = match &lead.action {
            ActionCode::Other(_) => OTHER_ACTIONS,
            known => known.code(),
        };
        let probed = PROBED.into_iter().filter(|code| *code != own);
        let earlier = DedupeKey::with_codes(&lead.email, &lead.offer, probed)
            .filter(|(code, key)| shard.get(table_of(code), *key).is_some())
            .fold(ActionSet::default(), |set, (code, _)| {
                set.with(&ActionCode::parse(code))
            });
        let seen = Seen {
            emitted: Millis::new(lead.event_time_ms),
            last_seen: Seconds::from_ms(lead.event_time_ms),
        };
        let other = matches!(lead.action, ActionCode::Other(_)).then(|| {
            let marker = std::iter::once(OTHER_ACTIONS);
            DedupeKey::with_codes(&lead.email, &lead.offer, marker).map(|(_, key)| key)
        });
        let keys = std::iter::once((Table::Seen, lead.dedupe_key))
            .chain(other.into_iter().flatten().map(|key| (Table::Others, key)));
        let mut new_key = false;
        for (table, key) in keys {
            let before = shard.table(table).insert(key.into(), seen);
            new_key |= table == Table::Seen && before.is_none();
            self.journal.push((partition, Undo { table, key, before }));
        }
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

    /// Forgets every key (of either table) whose latest event time `stale`
    /// says is stale, journaled. Returns how many dedupe keys went.
    fn forget(&mut self, stale: impl Fn(i64) -> bool) -> usize {
        let journal = &mut self.journal;
        let mut forgotten = 0;
        for (partition, shard) in &mut self.shards {
            for table in [Table::Seen, Table::Others] {
                shard.table(table).retain(|key, seen| {
                    let keep = !stale(seen.last_seen.ms());
                    if !keep {
                        let before = Some(*seen);
                        let key = (*key).into();
                        journal.push((*partition, Undo { table, key, before }));
                        forgotten += usize::from(table == Table::Seen);
                    }
                    keep
                });
            }
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
                (buckets(shard.seen.capacity()) + buckets(shard.others.capacity())) * SEEN_ENTRY
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

fn value_bytes(first: i64, second: i64) -> [u8; CHANGELOG_VALUE_BYTES] {
    let mut bytes = [0; CHANGELOG_VALUE_BYTES];
    bytes[..8].copy_from_slice(&first.to_be_bytes());
    bytes[8..].copy_from_slice(&second.to_be_bytes());
    bytes
}

/// The codes whose keys are looked up for a person's other actions: the
/// known ones and the key every unknown one leaves.
const PROBED: [&str; 6] = [
    "INS",
    "PLT",
    "DNC",
    "Create",
    "StartTestDrive",
    OTHER_ACTIONS,
];

/// The table a probed code's key is in.
fn table_of(code: &str) -> Table {
    match code {
        OTHER_ACTIONS => Table::Others,
        _ => Table::Seen,
    }
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
    fn entries_pack_into_28_bytes_and_round_trip() {
        assert_eq!(SEEN_ENTRY, 29);
        assert_eq!(MAX_BYTES_PER_KEY, 68);
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

    /// Restores `records` (batches) into `dedupe`, as a restore would.
    fn restore_batches(dedupe: &mut Deduper, records: Vec<BatchRecord>) -> u64 {
        records
            .iter()
            .map(|r| {
                dedupe
                    .restore(r.partition, &r.key, Some(&r.value))
                    .expect("own batch")
            })
            .sum()
    }

    #[test]
    fn batches_restore_what_records_of_one_change_do_and_follow_them() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        let contact = lead_at(ActionCode::PartnerLedTrial, 0);
        let install = lead_at(ActionCode::Install, DAY);
        dedupe.record(3, &contact);
        dedupe.record(7, &install);
        let written: Vec<Change> = dedupe.take_changes().collect();
        dedupe.commit();
        assert_eq!(dedupe.expire(11 * DAY), 2);
        let forgotten: Vec<Change> = dedupe.take_changes().collect();

        let mut batched = Deduper::new(10 * DAY, usize::MAX);
        let records = Batcher::default().pack(written.clone().into_iter());
        assert_eq!(records.len(), 2, "one batch a partition");
        assert_eq!(restore_batches(&mut batched, records), written.len() as u64);
        let single = replay(&written, 10 * DAY);
        assert_eq!(
            (batched.len(), batched.bytes()),
            (single.len(), single.bytes())
        );
        assert_eq!(batched.duplicate_of(3, &contact), Some(0));
        assert_eq!(batched.duplicate_of(7, &contact), None);

        // A changelog an older leadflow wrote, one change a record, then
        // batches: the batches' tombstones forget what the records held.
        let mut upgraded = replay(&written, 10 * DAY);
        let tombstones = Batcher::default().pack(forgotten.clone().into_iter());
        assert_eq!(
            restore_batches(&mut upgraded, tombstones),
            forgotten.len() as u64
        );
        assert_eq!(upgraded.len(), 0);
    }

    #[test]
    fn a_batch_leadflow_did_not_write_is_refused_whole() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        let mut key = [0; CHANGELOG_KEY_BYTES];
        key[0] = b'b';
        assert!(dedupe.restore(0, &key, None).is_err());
        assert!(dedupe.restore(0, &key, Some(&[1, 1, 2])).is_err());
        assert_eq!(dedupe.len(), 0);
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
        // A new action of the same person and offer, and a repeat of the
        // kept one, which moves its latest time.
        let refused = lead_at(ActionCode::Create, 2_000);
        deduper.record(0, &refused);
        assert!(
            deduper
                .duplicate_of(0, &lead_at(ActionCode::Install, 3_000))
                .is_some()
        );
        let written: Vec<Change> = deduper.take_changes().collect();
        assert_eq!(written.len(), 2, "{written:?}");
        deduper.revert_to(savepoint);
        let reverted: Vec<Change> = deduper.take_changes().collect();
        // The refused lead's key is a tombstone; the kept one's is back to
        // what it was.
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
    fn unknown_action_codes_are_earlier_actions_of_later_known_ones() {
        let mut dedupe = Deduper::new(180 * DAY, usize::MAX);
        let odd = lead_at(ActionCode::Other("Webinar".into()), 0);
        assert_eq!(dedupe.record(0, &odd).to_vec(), vec![]);
        // Its own key, and the one every unknown code leaves, on its own.
        assert_eq!(dedupe.len(), 1);
        let written: Vec<Change> = dedupe.take_changes().collect();
        let tags: Vec<u8> = written.iter().map(|c| c.key[0]).collect();
        assert_eq!(tags, [b's', b'o']);
        let mut restored = replay(&written, 180 * DAY);
        let other = lead_at(ActionCode::Other("Event".into()), DAY);
        assert_eq!(dedupe.duplicate_of(0, &other), None, "another code");
        assert_eq!(
            dedupe.record(0, &other).to_vec(),
            vec![],
            "not its own kind"
        );
        let install = lead_at(ActionCode::Install, 2 * DAY);
        let earlier = dedupe.record(0, &install);
        assert_eq!(earlier.to_vec(), vec![ActionCode::Other("Other".into())]);
        assert_eq!(restored.record(0, &install), earlier, "restored alike");
        let contact = lead_at(ActionCode::PartnerLedTrial, 3 * DAY);
        assert_eq!(
            dedupe.record(0, &contact).to_vec(),
            vec![ActionCode::Install, ActionCode::Other("Other".into())]
        );
    }

    #[test]
    fn an_earlier_action_is_forgotten_with_its_own_key() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        dedupe.record(0, &lead_at(ActionCode::PartnerLedTrial, 0));
        dedupe.record(0, &lead_at(ActionCode::Create, 8 * DAY));
        assert_eq!(dedupe.expire(11 * DAY), 1);
        let install = lead_at(ActionCode::Install, 12 * DAY);
        assert_eq!(
            dedupe.record(0, &install).to_vec(),
            vec![ActionCode::Create]
        );
    }

    #[test]
    fn actions_records_of_earlier_versions_are_skipped_and_tombstoned() {
        let mut dedupe = Deduper::new(10 * DAY, usize::MAX);
        let mut legacy = [0; CHANGELOG_KEY_BYTES];
        legacy[0] = b'a';
        legacy[16] = 7;
        let mut value = [0; CHANGELOG_VALUE_BYTES];
        value[8] = 0b11;
        dedupe
            .restore(2, &legacy, Some(&value))
            .expect("an actions record");
        dedupe
            .restore(2, &legacy, None)
            .expect("its tombstone, read back");
        assert!(dedupe.is_empty());
        let changes: Vec<Change> = dedupe.take_changes().collect();
        assert_eq!(
            changes,
            vec![Change {
                partition: 2,
                key: legacy,
                value: None
            }]
        );
        assert_eq!(dedupe.take_changes().count(), 0, "tombstoned once");
        // Many are tombstoned a hundred at a time.
        for n in 0..250_u8 {
            legacy[15] = n;
            dedupe
                .restore(0, &legacy, Some(&value))
                .expect("an actions record");
        }
        let counts: Vec<usize> = (0..4).map(|_| dedupe.take_changes().count()).collect();
        assert_eq!(counts, [100, 100, 50, 0]);
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
