//! dedupe: drops exact repeats of a lead within a window of event time.
//!
//! Two leads are the same when their [`DedupeKey`] (normalized email, offer,
//! action) is equal and their event times lie within the window of the
//! occurrence that was let through. A new action by the same person for the
//! same offer has another key, so it is a new lead. State lives in memory
//! only: it is lost on restart (durable state comes with the changelog).

use std::collections::HashMap;

use crate::domain::DedupeKey;

/// The verdict on one lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First occurrence within the window: let it through.
    New,
    /// Repeat of the lead let through at `first_seen_ms` (event time).
    Duplicate { first_seen_ms: i64 },
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Event time of the occurrence that was let through.
    emitted_ms: i64,
    /// Latest event time of any occurrence, for expiry.
    last_seen_ms: i64,
}

/// In-memory dedupe state.
#[derive(Debug)]
pub struct Deduper {
    window_ms: i64,
    seen: HashMap<DedupeKey, Seen>,
}

impl Deduper {
    pub fn new(window_ms: i64) -> Deduper {
        Deduper {
            window_ms,
            seen: HashMap::new(),
        }
    }

    /// Records an occurrence of `key` at `event_time_ms` and says whether it
    /// is new. The window is measured from the occurrence that was let
    /// through, in either direction, so late (out-of-order) repeats are
    /// caught too; a repeat after the window is a new lead and restarts it.
    pub fn observe(&mut self, key: DedupeKey, event_time_ms: i64) -> Verdict {
        match self.seen.get_mut(&key) {
            Some(seen)
                if event_time_ms.abs_diff(seen.emitted_ms) < self.window_ms.unsigned_abs() =>
            {
                seen.last_seen_ms = seen.last_seen_ms.max(event_time_ms);
                Verdict::Duplicate {
                    first_seen_ms: seen.emitted_ms,
                }
            }
            _ => {
                self.seen.insert(
                    key,
                    Seen {
                        emitted_ms: event_time_ms,
                        last_seen_ms: event_time_ms,
                    },
                );
                Verdict::New
            }
        }
    }

    /// Forgets keys whose last occurrence is a full window older than
    /// `now_ms` (event time), and returns how many were forgotten.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.seen.len();
        let window = self.window_ms;
        self.seen
            .retain(|_, seen| now_ms.saturating_sub(seen.last_seen_ms) < window);
        before - self.seen.len()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn repeats_within_the_window_are_duplicates() {
        let mut dedupe = Deduper::new(180 * DAY);
        let key = DedupeKey(7);
        assert_eq!(dedupe.observe(key, 1_000), Verdict::New);
        assert_eq!(
            dedupe.observe(key, 1_000 + 179 * DAY),
            Verdict::Duplicate {
                first_seen_ms: 1_000
            }
        );
        // Out of order: earlier than the one let through, still within the window.
        assert_eq!(
            dedupe.observe(key, 500),
            Verdict::Duplicate {
                first_seen_ms: 1_000
            }
        );
        assert_eq!(dedupe.observe(DedupeKey(8), 1_000), Verdict::New);
    }

    #[test]
    fn a_repeat_after_the_window_is_a_new_lead_and_restarts_it() {
        let mut dedupe = Deduper::new(10 * DAY);
        let key = DedupeKey(1);
        assert_eq!(dedupe.observe(key, 0), Verdict::New);
        assert_eq!(dedupe.observe(key, 10 * DAY), Verdict::New);
        assert_eq!(
            dedupe.observe(key, 15 * DAY),
            Verdict::Duplicate {
                first_seen_ms: 10 * DAY
            }
        );
    }

    #[test]
    fn expiry_forgets_keys_idle_for_a_window() {
        let mut dedupe = Deduper::new(10 * DAY);
        dedupe.observe(DedupeKey(1), 0);
        dedupe.observe(DedupeKey(2), 5 * DAY);
        assert_eq!(dedupe.expire(12 * DAY), 1);
        assert_eq!(dedupe.len(), 1);
        assert_eq!(dedupe.observe(DedupeKey(1), 12 * DAY), Verdict::New);
    }
}
