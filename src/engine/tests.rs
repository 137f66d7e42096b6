//! The engine's decisions without a broker: a fake record source (the
//! shared example leads, as records of chosen partitions and offsets, and
//! the consumer events a test chooses) and a fake sink (a [`Writer`] that
//! records what would have been written, and refuses what a test says).
//! These drive the same code the run loop does: [`Stepper::step`] for each
//! record, and [`Progress`] for events, commits and aborts.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::RunError;
use super::batch::{Meter, OpenBatch, Progress, Reaction};
use super::events::Event;
use super::local::LocalHop;
use super::plan::{RecordView, rejected};
use super::step::{Stepper, Writer};
use super::topology::{Hop, Part, Topology, partition_for};
use crate::domain::{HexKey, Lead, Score};
use crate::error::Failure;
use crate::metrics::{Batch, Metrics};
use crate::pipeline::{Pipeline, Place, SourcePosition, Tally};
use crate::stages::dedupe::Change;
use crate::stages::route::Destination;
use crate::testkit;

const SUPPRESSED: &str = "suppressed";
const DEAD_LETTER: &str = "dlq";
const CHANGELOG: &str = "changelog";

/// One record the fake sink was asked to write: topic, partition if
/// chosen, and key.
type Written = (String, Option<i32>, Option<String>);

/// What the fake sink was asked to write, in order.
#[derive(Default)]
struct FakeSink {
    written: RefCell<Vec<Written>>,
    /// Records to this topic are refused for good (too large, say).
    refuse: Option<String>,
}

impl FakeSink {
    fn write(&self, topic: &str, partition: Option<i32>, key: Option<String>) {
        self.written
            .borrow_mut()
            .push((topic.to_owned(), partition, key));
    }

    fn to(&self, topic: &str) -> usize {
        self.written
            .borrow()
            .iter()
            .filter(|(t, ..)| t == topic)
            .count()
    }
}

impl Writer<()> for FakeSink {
    fn copy(&self, topic: &str, _: &(), batch: &mut Batch) -> Result<(), RunError> {
        self.write(topic, None, None);
        batch.produced(topic);
        Ok(())
    }

    fn forward(
        &self,
        _: &(),
        (topic, key, partition): (&str, HexKey, i32),
        _: (SourcePosition<'_>, Option<&[u8]>),
        _: &mut Batch,
    ) -> Result<Result<(), Failure>, RunError> {
        self.write(topic, Some(partition), Some(key.as_str().to_owned()));
        Ok(Ok(()))
    }

    fn lead(
        &self,
        pipeline: &Pipeline,
        _: (SourcePosition<'_>, Option<i64>),
        (destination, lead, _): (Destination, &Lead, &Score),
        _: &mut Batch,
    ) -> Result<Result<(), Failure>, RunError> {
        let topics = Place::of(destination, pipeline.routing()).topics(SUPPRESSED, DEAD_LETTER);
        if let Some(refused) = topics.iter().find(|t| self.refuse.as_deref() == Some(**t)) {
            return Ok(Err(rejected(refused, "MessageSizeTooLarge")));
        }
        for topic in topics {
            self.write(topic, None, Some(lead.dedupe_key.to_hex()));
        }
        Ok(Ok(()))
    }

    fn dead_letter(
        &self,
        _: (&(), SourcePosition<'_>, Option<&[u8]>),
        _: &Pipeline,
        failure: &Failure,
        _: &mut Batch,
    ) -> Result<(), RunError> {
        self.write(DEAD_LETTER, None, Some(failure.class.to_owned()));
        Ok(())
    }

    fn changes(
        &self,
        changes: &mut dyn Iterator<Item = Change>,
        _: &mut Batch,
    ) -> Result<(), RunError> {
        for change in changes {
            self.write(CHANGELOG, Some(change.partition), None);
        }
        Ok(())
    }
}

/// The loop's state around a fake source and sink.
struct Engine {
    topology: Topology,
    pipeline: Pipeline,
    meter: Meter,
    metrics: Metrics,
    progress: Progress,
    batch: OpenBatch,
    sink: FakeSink,
}

impl Engine {
    /// The quickstart pipeline; `repartition`: the repartition topic's
    /// partition count, or no re-keying hop.
    fn new(repartition: Option<i32>) -> Engine {
        let config = testkit::quickstart_config();
        Engine {
            topology: Topology {
                input: testkit::TOPIC.into(),
                repartition: repartition.map(|count| ("repartition".to_owned(), count)),
                changelog: CHANGELOG.into(),
                suppressed: SUPPRESSED.into(),
                dead_letter: DEAD_LETTER.into(),
                passthrough: None,
                changes_after_outputs: false,
            },
            pipeline: testkit::pipeline(&config),
            meter: Meter::default(),
            metrics: Metrics::new(),
            progress: Progress::default(),
            batch: OpenBatch::default(),
            sink: FakeSink::default(),
        }
    }

    /// Assigns processed partitions and restores them (empty changelog).
    fn assign(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.pipeline.dedupe().add_partition(*partition);
        }
    }

    /// Reads the `n`th example lead (from 1) as the record at `part`/`offset`.
    fn read(&mut self, n: usize, part: Part, offset: i64) -> Result<(), RunError> {
        let value = example(n);
        assert!(
            self.progress.may_process(&self.topology, part),
            "{part:?} awaits its restore"
        );
        self.batch.read(part, offset);
        let poison = self.progress.poison(part, offset);
        let record = RecordView {
            hop: part.0,
            partition: part.1,
            value: Some(value),
            timestamp_ms: Some(testkit::EXAMPLE_TIMESTAMP_MS),
            source: SourcePosition {
                topic: testkit::TOPIC,
                partition: part.1,
                offset,
            },
            original_key: None,
        };
        let mut stepper = Stepper {
            topology: &self.topology,
            pipeline: &mut self.pipeline,
            meter: &mut self.meter,
            metrics: &self.metrics,
            local: self.progress.local.as_ref(),
        };
        stepper.step((&record, &()), poison, &self.sink, &mut self.batch)
    }

    fn event(&mut self, event: Event) -> Reaction {
        self.progress.apply(
            event,
            (&self.topology, &mut self.pipeline),
            (&mut self.batch, &mut self.meter, &self.metrics),
        )
    }

    fn commit(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let reached = batch.read_to.clone();
        self.progress.committed(
            batch,
            (&mut self.pipeline, &mut self.meter, &self.metrics),
            (&reached, |_| true),
        );
    }

    /// The open batch aborted: what the loop would rewind to.
    fn abort(&mut self) -> BTreeMap<Part, i64> {
        self.progress.aborted(&mut self.pipeline, &mut self.meter);
        std::mem::take(&mut self.batch).start
    }
}

static EXAMPLES: LazyLock<String> = LazyLock::new(testkit::example_leads);

fn example(n: usize) -> &'static [u8] {
    EXAMPLES
        .lines()
        .nth(n - 1)
        .expect("an example lead")
        .as_bytes()
}

const P0: Part = (Hop::Input, 0);
const P1: Part = (Hop::Input, 1);

#[test]
fn a_batch_with_each_outcome_writes_each_where_it_belongs() {
    let mut engine = Engine::new(None);
    engine.assign(&[0]);
    for n in 1..=12 {
        engine.read(n, P0, n as i64).expect("processed");
    }
    engine.commit();
    let tally = &engine.progress.tally;
    // Examples 4 and 11 repeat earlier leads, 7 is Microsoft's test lead,
    // and 10 has no email (see tests/snapshots).
    assert_eq!(tally.inputs, 12);
    assert_eq!(tally.duplicates, 2);
    assert_eq!(tally.test_leads, 1);
    assert_eq!(
        tally.dead_letter,
        BTreeMap::from([("missing_email".into(), 1)])
    );
    assert_eq!(tally.routed + tally.suppressed_total(), 8);
    let sink = &engine.sink;
    assert_eq!(sink.to(DEAD_LETTER), 1);
    assert_eq!(sink.to(SUPPRESSED) as u64, tally.suppressed_total());
    let campaigns: u64 = tally.campaigns.values().sum();
    let written = sink.written.borrow().len();
    let changelog = sink.to(CHANGELOG);
    assert_eq!(
        written,
        campaigns as usize + sink.to(SUPPRESSED) + 1 + changelog
    );
    // Every lead dedupe let through changed its state.
    assert!(changelog >= 8, "{changelog} changelog records");
    assert!(!engine.pipeline.dedupe().is_empty());
}

#[test]
fn the_input_hop_forwards_to_the_partition_of_the_person_and_offer() {
    let mut engine = Engine::new(Some(12));
    for n in 1..=12 {
        engine.read(n, P0, n as i64).expect("re-keyed");
    }
    engine.commit();
    let tally = &engine.progress.tally;
    // Test leads and undecodable ones are settled on the input hop.
    assert_eq!(tally.repartitioned, 10);
    assert_eq!(tally.test_leads, 1);
    assert_eq!(tally.dead_letters(), 1);
    let written = engine.sink.written.borrow();
    let forwarded: Vec<_> = written
        .iter()
        .filter(|(t, ..)| t == "repartition")
        .collect();
    assert_eq!(forwarded.len(), 10);
    for (_, partition, key) in forwarded {
        let key = u128::from_str_radix(key.as_deref().expect("keyed"), 16).expect("hex");
        assert_eq!(*partition, Some(partition_for(key, 12)));
    }
    // Nothing is decided about a lead before its second hop.
    assert_eq!(engine.sink.to(CHANGELOG), 0);
    assert_eq!(engine.pipeline.dedupe().len(), 0);
}

/// An engine with a repartition topic of 12 partitions whose `local`
/// ones are held here, restored and caught up.
fn with_local(local: &[i32]) -> Engine {
    let mut engine = Engine::new(Some(12));
    engine.assign(local);
    let mut hop = LocalHop::new(12);
    let now = std::time::Instant::now();
    hop.restored(local, now);
    let ends: Vec<(i32, i64)> = local.iter().map(|p| (*p, 0)).collect();
    hop.measured(&ends, now);
    assert!(hop.advance(|_| Some(0), now));
    engine.progress.local = Some(hop);
    engine
}

#[test]
fn leads_whose_partition_is_held_here_skip_the_hop_with_the_same_outcome() {
    let mut direct = Engine::new(None);
    direct.assign(&[0]);
    let mut local = with_local(&(0..12).collect::<Vec<_>>());
    for n in 1..=12 {
        direct.read(n, P0, n as i64).expect("processed");
        local.read(n, P0, n as i64).expect("processed");
    }
    direct.commit();
    local.commit();
    assert_eq!(local.progress.tally.repartitioned, 0);
    assert_eq!(local.progress.tally, direct.progress.tally);
    assert_eq!(local.sink.to("repartition"), 0);
    let campaigns = testkit::quickstart_config().routes;
    let topics = campaigns.iter().map(|route| route.topic.as_str());
    for topic in topics.chain([CHANGELOG, SUPPRESSED, DEAD_LETTER]) {
        assert_eq!(local.sink.to(topic), direct.sink.to(topic), "{topic}");
    }
    // Each lead's state is on its key's partition, as the hop puts it.
    let changes: Vec<_> = local
        .sink
        .written
        .borrow()
        .iter()
        .filter(|(t, ..)| t == CHANGELOG)
        .map(|(_, partition, _)| *partition)
        .collect();
    assert!(changes.iter().any(|p| *p != Some(0)), "{changes:?}");
    // All but the test lead and the undecodable one, settled before re-keying.
    assert_eq!(local.metrics.repartition_skipped.get(), 10);
}

#[test]
fn leads_whose_partition_is_not_held_here_still_take_the_hop() {
    let mut all = with_local(&(0..12).collect::<Vec<_>>());
    let mut some = with_local(&[0, 1, 2, 3, 4, 5]);
    for n in 1..=12 {
        all.read(n, P0, n as i64).expect("processed");
        some.read(n, P0, n as i64).expect("processed");
    }
    let forwarded: Vec<_> = some
        .sink
        .written
        .borrow()
        .iter()
        .filter(|(t, ..)| t == "repartition")
        .map(|(_, partition, _)| partition.expect("to a partition"))
        .collect();
    assert!(!forwarded.is_empty());
    assert!(forwarded.iter().all(|p| *p >= 6), "{forwarded:?}");
    some.commit();
    all.commit();
    let tally = &some.progress.tally;
    assert_eq!(tally.repartitioned, forwarded.len() as u64);
    assert_eq!(tally.inputs, all.progress.tally.inputs);
    assert!(tally.routed < all.progress.tally.routed);
}

#[test]
fn a_revoke_mid_batch_keeps_what_it_committed_and_drops_the_partition() {
    let mut engine = Engine::new(None);
    engine.assign(&[0, 1]);
    engine.read(1, P0, 10).expect("processed");
    engine.read(2, P1, 20).expect("processed");
    let keys = engine.pipeline.dedupe().len();
    let reaction = engine.event(Event::Revoked {
        parts: vec![P1],
        committed: true,
    });
    assert!(matches!(reaction, Reaction::Continue));
    // The callback committed both records: counted, and never rewound to.
    assert_eq!(engine.progress.tally.inputs, 2);
    assert!(engine.batch.start.is_empty());
    // Partition 1's state went with it; partition 0's stays.
    assert!(engine.pipeline.dedupe().len() < keys);
    engine.read(1, P0, 11).expect("processed");
    engine.commit();
    assert_eq!(engine.progress.tally.duplicates, 1);
}

#[test]
fn a_lost_partition_rolls_the_batch_back_and_rewinds_what_is_left() {
    let mut engine = Engine::new(None);
    engine.assign(&[0, 1]);
    engine.read(1, P0, 10).expect("processed");
    engine.read(2, P1, 20).expect("processed");
    let reaction = engine.event(Event::Lost { parts: vec![P1] });
    let Reaction::Rewind(start) = reaction else {
        panic!("a lost partition aborts the batch: {reaction:?}");
    };
    // Both partitions go back to the batch's start; the loop seeks those
    // still assigned.
    assert_eq!(start, BTreeMap::from([(P0, 10), (P1, 20)]));
    assert_eq!(engine.progress.tally, Tally::default());
    assert_eq!(engine.batch.tally, Tally::default());
    // The rolled-back lead is new again, not a duplicate of itself.
    engine.read(1, P0, 10).expect("processed");
    engine.commit();
    assert_eq!(engine.progress.tally.duplicates, 0);
    assert_eq!(
        engine.progress.tally.routed + engine.progress.tally.suppressed_total(),
        1
    );
}

#[test]
fn an_abort_rewinds_to_the_batch_start_and_forgets_its_state() {
    let mut engine = Engine::new(None);
    engine.assign(&[0]);
    engine.read(1, P0, 10).expect("processed");
    engine.commit();
    engine.read(2, P0, 11).expect("processed");
    engine.read(3, P0, 12).expect("processed");
    assert_eq!(engine.abort(), BTreeMap::from([(P0, 11)]));
    // Read again: the same outcomes, not duplicates; the committed lead
    // stays seen.
    engine.read(2, P0, 11).expect("processed");
    engine.read(3, P0, 12).expect("processed");
    engine.read(1, P0, 13).expect("processed");
    engine.commit();
    assert_eq!(engine.progress.tally.inputs, 4);
    assert_eq!(engine.progress.tally.duplicates, 1);
}

#[test]
fn a_refused_lead_is_found_and_dead_lettered_and_not_remembered() {
    let mut engine = Engine::new(None);
    engine.assign(&[0]);
    let campaign = testkit::quickstart_config().routes[0].topic.clone();
    engine.sink.refuse = Some(campaign.clone());
    // Refused at once by the client: a dead letter, and dedupe forgets it.
    engine.read(1, P0, 10).expect("processed");
    engine.commit();
    let refusals = engine.sink.to(DEAD_LETTER);
    engine.sink.refuse = None;
    engine.read(1, P0, 11).expect("processed");
    engine.commit();
    assert_eq!(
        engine.progress.tally.duplicates, 0,
        "the refused lead was remembered"
    );
    assert_eq!(refusals + engine.sink.to(&campaign), 2);

    // Refused by the broker after the batch was written: the batch of
    // three is read again one record at a time, and the record found
    // refused is a dead letter the next time it is read.
    engine.read(2, P0, 12).expect("processed");
    engine.read(3, P0, 13).expect("processed");
    engine.read(5, P0, 14).expect("processed");
    let batch = std::mem::take(&mut engine.batch);
    engine
        .progress
        .aborted(&mut engine.pipeline, &mut engine.meter);
    let failure = rejected(&campaign, "MessageSizeTooLarge");
    engine.progress.refused(&batch, failure.clone());
    assert_eq!(engine.progress.batch_limit(500), 1);
    let single = OpenBatch {
        records: 1,
        start: BTreeMap::from([(P0, 13)]),
        read_to: BTreeMap::from([(P0, 14)]),
        ..OpenBatch::default()
    };
    engine.progress.refused(&single, failure);
    assert!(engine.progress.poison(P0, 12).is_none());
    let poison = engine.progress.poison(P0, 13).expect("found refused");
    assert_eq!(poison.class, "produce_rejected");
    assert!(
        engine.progress.poison(P0, 13).is_none(),
        "dead-lettered once"
    );
    // Past the failed batch's end, batches are whole again.
    let reached = BTreeMap::from([(P0, 15)]);
    engine.progress.committed(
        OpenBatch::default(),
        (&mut engine.pipeline, &mut engine.meter, &engine.metrics),
        (&reached, |_| true),
    );
    assert_eq!(engine.progress.batch_limit(500), 500);
}

#[test]
fn a_reload_between_batches_routes_anew_and_keeps_dedupe_state() {
    let mut engine = Engine::new(None);
    engine.assign(&[0]);
    engine.read(1, P0, 10).expect("processed");
    engine.commit();
    let mut config = testkit::quickstart_config();
    for route in &mut config.routes {
        route.topic = format!("{}.v2", route.topic);
    }
    let rules = config.scoring_rules().expect("rules");
    engine.pipeline.set_rules(
        rules,
        config.routing_table(),
        config.catalog().expect("catalog"),
    );
    engine.read(2, P0, 11).expect("processed");
    // A repeat of a lead seen before the reload is still a repeat.
    engine.read(1, P0, 12).expect("processed");
    engine.commit();
    assert_eq!(engine.progress.tally.duplicates, 1);
    let written = engine.sink.written.borrow();
    let last_lead = written
        .iter()
        .rev()
        .find(|(t, ..)| t != CHANGELOG)
        .expect("a lead written");
    assert!(
        last_lead.0.ends_with(".v2") || last_lead.0 == SUPPRESSED,
        "{last_lead:?}"
    );
}

#[test]
fn the_restore_gate_holds_records_of_partitions_not_yet_restored() {
    let mut engine = Engine::new(Some(4));
    let reaction = engine.event(Event::Assigned {
        to_restore: vec![2],
        input: false,
    });
    assert!(matches!(reaction, Reaction::Continue));
    // The repartition topic's partition 2 carries state; the input's does not.
    assert!(
        !engine
            .progress
            .may_process(&engine.topology, (Hop::Repartition, 2))
    );
    assert!(
        engine
            .progress
            .may_process(&engine.topology, (Hop::Input, 2))
    );
    assert!(
        engine
            .progress
            .may_process(&engine.topology, (Hop::Repartition, 1))
    );
    // Revoked before it was restored: nothing to restore any more.
    engine.event(Event::Revoked {
        parts: vec![(Hop::Repartition, 2)],
        committed: true,
    });
    assert!(engine.progress.to_restore.is_empty());
    // Without a repartition topic, the input's partitions carry the state.
    let mut single = Engine::new(None);
    single.event(Event::Assigned {
        to_restore: vec![0],
        input: true,
    });
    assert!(!single.progress.may_process(&single.topology, P0));
}

#[test]
fn a_failure_in_a_callback_ends_the_life() {
    let mut engine = Engine::new(None);
    let error = RunError::Restore {
        topic: "t".into(),
        reason: "cannot pause".into(),
    };
    assert!(matches!(
        engine.event(Event::Failed(error)),
        Reaction::Fail(_)
    ));
}
