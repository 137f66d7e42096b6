//! What one batch did, counted on the loop's thread without touching the
//! registry, and added to the metrics only when the batch commits (an
//! aborted batch is forgotten); and the stage clock that samples timings.

use std::time::{Duration, Instant};

use crate::domain::{Grade, Storefront};
use crate::error::Stage;
use crate::stages::StageClock;

use super::LeadOutcome;

/// What a batch did, kept until it commits (and then added to the
/// metrics) or aborts (and then forgotten). Topics are named by the
/// caller's slot strings, cloned only at commit.
#[derive(Debug, Default)]
pub struct Batch {
    pub(super) consumed: Vec<(String, u64)>,
    pub(super) produced: Vec<(String, u64)>,
    pub(super) outcomes: [u64; 5],
    pub(super) dead_letters: std::collections::BTreeMap<(Stage, &'static str), u64>,
    pub(super) dedupe_hits: u64,
    pub(super) dedupe_misses: u64,
    pub(super) skipped_hop: u64,
    pub(super) scores: Vec<(u8, Grade)>,
    /// Leads whose offer the catalog does not list: AppSource, Azure Marketplace.
    pub(super) uncatalogued: [u64; 2],
    pub(super) timestamps: Vec<i64>,
}

fn bump(counts: &mut Vec<(String, u64)>, topic: &str) {
    // A handful of topics: a scan beats hashing.
    match counts.iter_mut().find(|(t, _)| t == topic) {
        Some((_, n)) => *n += 1,
        None => counts.push((topic.to_owned(), 1)),
    }
}

impl Batch {
    pub fn consumed(&mut self, topic: &str) {
        bump(&mut self.consumed, topic);
    }

    pub fn produced(&mut self, topic: &str) {
        bump(&mut self.produced, topic);
    }

    /// An input's outcome. `checked_by_dedupe` says whether dedupe saw it
    /// (a miss unless it is a duplicate).
    pub fn outcome(&mut self, outcome: LeadOutcome, checked_by_dedupe: bool) {
        if let Some(n) = self.outcomes.get_mut(outcome as usize) {
            *n += 1;
        }
        match outcome {
            LeadOutcome::Duplicate => self.dedupe_hits += 1,
            _ if checked_by_dedupe => self.dedupe_misses += 1,
            _ => {}
        }
    }

    /// An input lead processed without the repartition hop.
    pub fn skipped_hop(&mut self) {
        self.skipped_hop += 1;
    }

    pub fn dead_letter(&mut self, stage: Stage, class: &'static str) {
        *self.dead_letters.entry((stage, class)).or_default() += 1;
    }

    pub fn scored(&mut self, points: u8, grade: Grade) {
        self.scores.push((points, grade));
    }

    /// A routed lead whose offer the catalog does not list.
    pub fn uncatalogued(&mut self, storefront: Storefront) {
        self.uncatalogued[match storefront {
            Storefront::AppSource => 0,
            Storefront::AzureMarketplace => 1,
        }] += 1;
    }

    /// An output whose input record had this timestamp, for end-to-end latency.
    pub fn output_of(&mut self, timestamp_ms: Option<i64>) {
        if let Some(ts) = timestamp_ms {
            self.timestamps.push(ts);
        }
    }

    /// Forgets everything: the batch was aborted.
    pub fn clear(&mut self) {
        self.consumed.clear();
        self.produced.clear();
        self.outcomes = [0; 5];
        self.dead_letters.clear();
        self.dedupe_hits = 0;
        self.dedupe_misses = 0;
        self.skipped_hop = 0;
        self.scores.clear();
        self.uncatalogued = [0; 2];
        self.timestamps.clear();
    }
}

/// Time spent per stage on one lead, filled by
/// [`crate::stages::StageClock`] laps.
#[derive(Debug, Clone, Default)]
pub struct StageLaps {
    spent: [Option<Duration>; 6],
}

impl StageLaps {
    pub fn add(&mut self, stage: Stage, duration: Duration) {
        let slot = &mut self.spent[stage as usize];
        *slot = Some(slot.unwrap_or_default() + duration);
    }

    pub fn iter(&self) -> impl Iterator<Item = (Stage, Duration)> + '_ {
        Stage::ALL
            .iter()
            .zip(&self.spent)
            .filter_map(|(stage, spent)| Some((*stage, (*spent)?)))
    }
}

/// A [`StageClock`] that measures: each lap is the time since the last.
#[derive(Debug)]
pub struct Stopwatch {
    last: Instant,
    pub laps: StageLaps,
}

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch {
            last: Instant::now(),
            laps: StageLaps::default(),
        }
    }
}

impl StageClock for Stopwatch {
    fn lap(&mut self, stage: Stage) {
        let now = Instant::now();
        self.laps.add(stage, now - self.last);
        self.last = now;
    }
}
