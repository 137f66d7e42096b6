//! Skipping the repartition hop where it changes nothing: an input record
//! whose partition key maps to a repartition partition this process holds
//! (assigned, restored, caught up) is processed here, on that partition's
//! dedupe state, instead of being forwarded and read back. The hop costs a
//! produced and a consumed record and a second decode per lead; with one
//! process holding every partition, every lead skips it.
//!
//! The outcome is the one the hop would give, provided no record of the
//! same input partition and key is still waiting in the repartition topic
//! when a later one skips the hop (the later one would be processed
//! first). So a repartition partition is *local* only once it is caught
//! up: between batches (no transaction of this process open), its end is
//! taken, the input is paused (nothing more is forwarded), and the
//! partition is read to that end. The end is the read_committed one, or
//! past it the last record this process forwarded there (behind another
//! process's open transaction the read_committed end stops short of it);
//! it covers everything forwarded from the input partitions held now, by
//! this process or by whoever held them before (a revoke commits first).
//! While a catch-up is due, input records wait rather than being
//! forwarded to a partition held here. A newly assigned input partition
//! may have forwarded records its previous owner left, so every partition
//! goes back to forwarding and catches up again. A catch-up that does not
//! finish within [`CATCH_UP_LIMIT`] (an open transaction of a crashed
//! process holds the end back) gives up, resumes the input and is tried
//! again after a backoff.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::topology::{Topology, partition_for};

/// The longest the input stays paused for a catch-up.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(5);
/// The longest wait before another catch-up after one gave up.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Its records come through the hop.
    Forwarding,
    /// Being read up to this offset, with the input paused.
    CatchingUp { to: i64, since: Instant },
    /// Leads whose key maps here are processed without the hop.
    Local,
}

/// Which repartition partitions are local, for a repartition topic of
/// `partitions` partitions.
#[derive(Debug)]
pub struct LocalHop {
    partitions: i32,
    standing: BTreeMap<i32, Standing>,
    not_before: Option<Instant>,
    backoff: Duration,
    /// The input was paused for a catch-up and is to be resumed.
    pub input_paused: bool,
    /// A catch-up is due between the next batches: till then no input
    /// record is read, since forwarding one to a partition held here
    /// would put it behind any other process's open transaction there.
    pending: bool,
}

impl LocalHop {
    pub fn new(partitions: i32) -> LocalHop {
        LocalHop {
            partitions,
            standing: BTreeMap::new(),
            not_before: None,
            backoff: Duration::ZERO,
            input_paused: false,
            pending: false,
        }
    }

    /// The hop's shortcut for a run, if `shortcut` is on and the run has
    /// a repartition hop (and is not a pass-through).
    pub fn for_run(shortcut: bool, topology: &Topology) -> Option<LocalHop> {
        match (&topology.repartition, &topology.passthrough) {
            (Some((_, partitions)), None) if shortcut => Some(LocalHop::new(*partitions)),
            _ => None,
        }
    }

    /// The dedupe shard for a partition key, if its partition is local.
    pub fn shard(&self, key: u128) -> Option<i32> {
        let partition = partition_for(key, self.partitions);
        (self.standing.get(&partition) == Some(&Standing::Local)).then_some(partition)
    }

    /// Input partitions were assigned: what their previous owner forwarded
    /// may still be unread, so every partition catches up again.
    pub fn input_assigned(&mut self, now: Instant) {
        for standing in self.standing.values_mut() {
            *standing = Standing::Forwarding;
        }
        self.pending = !self.standing.is_empty() && !self.backing_off(now);
    }

    /// Repartition partitions whose state is restored.
    pub fn restored(&mut self, partitions: &[i32], now: Instant) {
        for partition in partitions {
            self.standing.insert(*partition, Standing::Forwarding);
        }
        self.pending |= !partitions.is_empty() && !self.backing_off(now);
    }

    /// Whether input records wait for the catch-up due between the next
    /// batches (the batch ends before the first one).
    pub fn holds_input(&self) -> bool {
        self.pending
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.not_before.is_some_and(|t| now < t)
    }

    /// A repartition partition revoked or lost.
    pub fn dropped(&mut self, partition: i32) {
        self.standing.remove(&partition);
    }

    /// Whether the input must stay paused: a catch-up is under way.
    pub fn catching_up(&self) -> bool {
        self.standing
            .values()
            .any(|s| matches!(s, Standing::CatchingUp { .. }))
    }

    /// Between batches: the partitions whose end to take to start a
    /// catch-up, unless one is under way or the last gave up too recently.
    pub fn to_measure(&self, now: Instant) -> Vec<i32> {
        if self.catching_up() || self.backing_off(now) {
            return Vec::new();
        }
        self.standing
            .iter()
            .filter(|(_, s)| **s == Standing::Forwarding)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The ends taken for [`LocalHop::to_measure`]'s partitions, with the
    /// input paused from now on if any is not read to its end yet.
    pub fn measured(&mut self, ends: &[(i32, i64)], now: Instant) {
        self.pending = false;
        for (partition, end) in ends {
            if let Some(standing) = self.standing.get_mut(partition) {
                *standing = Standing::CatchingUp {
                    to: *end,
                    since: now,
                };
            }
        }
    }

    /// Between batches, with each partition's position (the next offset
    /// to read, as far as known): partitions read to their end become
    /// local. Returns whether the input may be resumed.
    pub fn advance(&mut self, position: impl Fn(i32) -> Option<i64>, now: Instant) -> bool {
        let mut gave_up = false;
        for (partition, standing) in &mut self.standing {
            let Standing::CatchingUp { to, since } = *standing else {
                continue;
            };
            if position(*partition).is_some_and(|at| at >= to) {
                *standing = Standing::Local;
            } else if now.duration_since(since) >= CATCH_UP_LIMIT {
                *standing = Standing::Forwarding;
                gave_up = true;
            }
        }
        if gave_up {
            // Any partition still catching up gives up too: the input
            // waits for none of them.
            for standing in self.standing.values_mut() {
                if matches!(standing, Standing::CatchingUp { .. }) {
                    *standing = Standing::Forwarding;
                }
            }
            self.backoff = (self.backoff * 2).clamp(CATCH_UP_LIMIT, MAX_BACKOFF);
            self.not_before = Some(now + self.backoff);
            // Backing off, no catch-up is due: input records take the hop.
            self.pending = false;
        } else if !self.catching_up() && self.standing.values().all(|s| *s == Standing::Local) {
            self.backoff = Duration::ZERO;
        }
        !self.catching_up()
    }

    /// Local partitions, for the gauge.
    pub fn local(&self) -> usize {
        self.standing
            .values()
            .filter(|s| **s == Standing::Local)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key that maps to `partition` of 4.
    fn key(partition: i32) -> u128 {
        400 + partition as u128
    }

    #[test]
    fn a_partition_is_local_only_once_restored_and_read_to_the_end_taken() {
        let now = Instant::now();
        let mut hop = LocalHop::new(4);
        assert_eq!(hop.shard(key(1)), None, "not assigned");
        hop.restored(&[1, 2], now);
        assert_eq!(hop.shard(key(1)), None, "restored, not caught up");
        assert_eq!(hop.to_measure(now), [1, 2]);
        hop.measured(&[(1, 10), (2, 0)], now);
        assert!(hop.catching_up());
        // Partition 2 had nothing to read; 1 is at 7 of 10.
        let resume = hop.advance(|p| Some(if p == 1 { 7 } else { 0 }), now);
        assert!(!resume, "the input stays paused while 1 catches up");
        assert_eq!(hop.shard(key(2)), Some(2));
        assert_eq!(hop.shard(key(1)), None);
        assert!(hop.to_measure(now).is_empty(), "one at a time");
        assert!(hop.advance(|_| Some(10), now));
        assert_eq!(hop.shard(key(1)), Some(1));
        assert_eq!(hop.shard(key(3)), None, "never assigned");
        assert_eq!(hop.local(), 2);
    }

    #[test]
    fn an_input_assignment_sends_every_partition_back_to_forwarding() {
        let now = Instant::now();
        let mut hop = LocalHop::new(4);
        hop.restored(&[0, 1], now);
        hop.measured(&[(0, 0), (1, 0)], now);
        assert!(hop.advance(|_| Some(0), now));
        assert_eq!(hop.local(), 2);
        assert!(!hop.holds_input());
        hop.input_assigned(now);
        assert!(hop.holds_input(), "till the catch-up");
        assert_eq!(hop.shard(key(0)), None);
        assert_eq!(hop.to_measure(now), [0, 1]);
        hop.dropped(0);
        assert_eq!(hop.to_measure(now), [1]);
    }

    #[test]
    fn a_catch_up_that_takes_too_long_gives_up_and_backs_off() {
        let start = Instant::now();
        let mut hop = LocalHop::new(4);
        hop.restored(&[0, 1], start);
        hop.measured(&[(0, 5), (1, 5)], start);
        // Partition 0 never gets there (a crashed owner's transaction).
        assert!(!hop.advance(|p| (p == 1).then_some(3), start));
        // Another is restored meanwhile: its catch-up waits for this one.
        hop.restored(&[2], start);
        assert!(hop.holds_input());
        let late = start + CATCH_UP_LIMIT;
        assert!(hop.advance(|p| (p == 1).then_some(3), late), "resumed");
        assert!(!hop.holds_input(), "backing off, the input flows");
        assert_eq!(hop.local(), 0);
        assert!(hop.to_measure(late).is_empty());
        // Backing off, the input is not held: leads take the hop.
        hop.input_assigned(late);
        assert!(!hop.holds_input());
        let later = late + CATCH_UP_LIMIT;
        assert_eq!(hop.to_measure(later), [0, 1, 2]);
        // A second give-up waits twice as long.
        hop.measured(&[(0, 5), (1, 5), (2, 5)], later);
        let given_up = later + CATCH_UP_LIMIT;
        assert!(hop.advance(|_| None, given_up));
        assert!(hop.to_measure(given_up + CATCH_UP_LIMIT).is_empty());
        assert_eq!(hop.to_measure(given_up + CATCH_UP_LIMIT * 2), [0, 1, 2]);
    }
}
