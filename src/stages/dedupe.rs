//! dedupe: drops exact repeats of a lead within a window of event time.
//!
//! Two leads are the same when their [`DedupeKey`] (normalized email, offer,
//! action) is equal and their event times lie within the window of the
//! occurrence that was let through, in either direction, so late repeats are
//! caught too. A repeat after the window is a new lead and restarts it. A
//! new action by the same person for the same offer has another key, so it
//! is a new lead, and it learns which other actions that person took on that
//! offer. Checking and recording are separate steps, so that a lead which
//! fails a later stage leaves no trace. Every change since the last
//! [`Deduper::commit`] is journaled, so that an aborted transaction can
//! [`Deduper::rollback`] the state to match what was committed. State lives
//! in memory only: it is lost on restart (durable state comes with the
//! changelog).

use std::collections::HashMap;

use crate::domain::{ActionSet, DedupeKey, Lead};

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Event time of the occurrence that was let through.
    emitted_ms: i64,
    /// Latest event time of any occurrence, for expiry.
    last_seen_ms: i64,
}

/// The value a key held before a change, to put back on rollback.
#[derive(Debug)]
enum Undo {
    Seen(DedupeKey, Option<Seen>),
    Actions(DedupeKey, Option<(ActionSet, i64)>),
}

/// In-memory dedupe state.
#[derive(Debug)]
pub struct Deduper {
    window_ms: i64,
    seen: HashMap<DedupeKey, Seen>,
    /// (email, offer) → actions let through, and the latest event time.
    actions: HashMap<DedupeKey, (ActionSet, i64)>,
    /// Changes since the last commit, oldest first.
    journal: Vec<Undo>,
}

impl Deduper {
    pub fn new(window_ms: i64) -> Deduper {
        Deduper {
            window_ms,
            seen: HashMap::new(),
            actions: HashMap::new(),
            journal: Vec::new(),
        }
    }

    /// Makes the changes so far permanent: a later rollback stops here.
    pub fn commit(&mut self) {
        self.journal.clear();
    }

    /// Undoes every change since the last commit.
    pub fn rollback(&mut self) {
        while let Some(undo) = self.journal.pop() {
            match undo {
                Undo::Seen(key, Some(before)) => {
                    self.seen.insert(key, before);
                }
                Undo::Seen(key, None) => {
                    self.seen.remove(&key);
                }
                Undo::Actions(key, Some(before)) => {
                    self.actions.insert(key, before);
                }
                Undo::Actions(key, None) => {
                    self.actions.remove(&key);
                }
            }
        }
    }

    /// If `lead` repeats one let through within the window, notes the repeat
    /// and returns the event time of the one let through.
    pub fn duplicate_of(&mut self, lead: &Lead) -> Option<i64> {
        let seen = self.seen.get_mut(&lead.dedupe_key)?;
        if lead.event_time_ms.abs_diff(seen.emitted_ms) >= self.window_ms.unsigned_abs() {
            return None;
        }
        self.journal.push(Undo::Seen(lead.dedupe_key, Some(*seen)));
        seen.last_seen_ms = seen.last_seen_ms.max(lead.event_time_ms);
        Some(seen.emitted_ms)
    }

    /// Records `lead` as let through and returns the person's other actions
    /// on the same offer.
    pub fn record(&mut self, lead: &Lead) -> ActionSet {
        let before = self.seen.insert(
            lead.dedupe_key,
            Seen {
                emitted_ms: lead.event_time_ms,
                last_seen_ms: lead.event_time_ms,
            },
        );
        self.journal.push(Undo::Seen(lead.dedupe_key, before));
        let before = self.actions.get(&lead.person_offer_key).copied();
        self.journal
            .push(Undo::Actions(lead.person_offer_key, before));
        let entry = self
            .actions
            .entry(lead.person_offer_key)
            .or_insert((ActionSet::default(), lead.event_time_ms));
        let earlier = entry.0.without(&lead.action);
        entry.0 = entry.0.with(&lead.action);
        entry.1 = entry.1.max(lead.event_time_ms);
        earlier
    }

    /// Forgets keys whose last occurrence is a full window older than
    /// `now_ms` (event time), and returns how many were forgotten. Commits
    /// first: expiry is not journaled.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        self.commit();
        let before = self.seen.len();
        let window = self.window_ms;
        self.seen
            .retain(|_, seen| now_ms.saturating_sub(seen.last_seen_ms) < window);
        self.actions
            .retain(|_, (_, last_seen_ms)| now_ms.saturating_sub(*last_seen_ms) < window);
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
    use crate::domain::{ActionCode, Storefront, fixtures};

    const DAY: i64 = 86_400_000;

    fn lead_at(action: ActionCode, event_time_ms: i64) -> Lead {
        let mut lead = fixtures::lead(Storefront::AppSource, action);
        lead.event_time_ms = event_time_ms;
        lead
    }

    /// Checks and, when new, records: what the pipeline does.
    fn observe(dedupe: &mut Deduper, lead: &Lead) -> Option<i64> {
        let duplicate = dedupe.duplicate_of(lead);
        if duplicate.is_none() {
            dedupe.record(lead);
        }
        duplicate
    }

    #[test]
    fn repeats_within_the_window_are_duplicates() {
        let mut dedupe = Deduper::new(180 * DAY);
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
        let mut dedupe = Deduper::new(10 * DAY);
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
        let mut dedupe = Deduper::new(10 * DAY);
        let lead = lead_at(ActionCode::Install, 0);
        assert_eq!(dedupe.duplicate_of(&lead), None);
        assert_eq!(dedupe.duplicate_of(&lead), None);
        assert!(dedupe.is_empty());
    }

    #[test]
    fn a_new_action_by_the_same_person_carries_the_earlier_ones() {
        let mut dedupe = Deduper::new(180 * DAY);
        let contact = lead_at(ActionCode::PartnerLedTrial, 0);
        let install = lead_at(ActionCode::Install, DAY);
        assert_ne!(contact.dedupe_key, install.dedupe_key);
        assert_eq!(contact.person_offer_key, install.person_offer_key);
        assert_eq!(dedupe.record(&contact).to_vec(), vec![]);
        assert_eq!(dedupe.duplicate_of(&install), None);
        assert_eq!(
            dedupe.record(&install).to_vec(),
            vec![ActionCode::PartnerLedTrial]
        );
        assert_eq!(dedupe.duplicate_of(&install), Some(DAY));
    }

    #[test]
    fn rollback_restores_the_last_committed_state() {
        let mut dedupe = Deduper::new(10 * DAY);
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
        assert_eq!(dedupe.duplicate_of(&install), None);
        assert_eq!(
            dedupe.record(&install).to_vec(),
            vec![ActionCode::PartnerLedTrial]
        );
        // The repeat's last-seen time was rolled back too: expiry at day 10
        // forgets the contact, which was last seen at day 0.
        dedupe.commit();
        assert_eq!(dedupe.expire(10 * DAY), 1);
    }

    #[test]
    fn expiry_forgets_keys_idle_for_a_window() {
        let mut dedupe = Deduper::new(10 * DAY);
        observe(&mut dedupe, &lead_at(ActionCode::Install, 0));
        observe(&mut dedupe, &lead_at(ActionCode::Create, 5 * DAY));
        assert_eq!(dedupe.expire(12 * DAY), 1);
        assert_eq!(dedupe.len(), 1);
        assert_eq!(
            observe(&mut dedupe, &lead_at(ActionCode::Install, 12 * DAY)),
            None
        );
    }
}
