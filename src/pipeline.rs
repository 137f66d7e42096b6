//! The stages composed: one input record in, exactly one [`Outcome`] out.
//!
//! decode → (test lead? drop) → enrich → dedupe (duplicate? drop) → score →
//! route. This is the whole of leadflow's record logic, with no Kafka in
//! it: the runtime, the generator's expectations and future offline tools
//! all call [`Pipeline::process`], so they cannot disagree. A [`Tally`]
//! counts outcomes so that every input is accounted for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::domain::{DedupeKey, Lead, RawLead, Score, SuppressionReason};
use crate::error::{Failure, Stage};
use crate::stages::StageClock;
use crate::stages::decode::{Decoder, Format, WriterAnswer};
use crate::stages::dedupe::{Change, Deduper};
use crate::stages::enrich::{Identity, enrich_identified, identify};
use crate::stages::route::{Destination, Route, RouteSet, RoutingTable, route};
use crate::stages::score::{ScoringRules, score};

/// Where a record came from. Used to derive an id for leads that arrive
/// without the `event_id` envelope, so the id is stable across reprocessing.
#[derive(Debug, Clone, Copy)]
pub struct SourcePosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// One input record, as the stages see it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub value: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
    /// Where the lead entered leadflow.
    pub source: SourcePosition<'a>,
    /// Which partition's dedupe state the lead belongs to: the partition
    /// of the (re-keyed) topic it is processed from.
    pub shard: i32,
}

/// What re-keying makes of a raw record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rekeyed {
    /// Forward to the repartition topic under this key.
    Forward(DedupeKey),
    /// Dealt with already: a test lead or a failure, never forwarded.
    Done(Outcome),
    /// Its key's partition is processed here: it ran in full, on that
    /// partition's dedupe state, without the hop.
    Processed(Outcome),
}

/// What became of one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Scored and routed to campaigns or to suppression.
    Routed {
        destination: Destination,
        lead: Box<Lead>,
        score: Score,
    },
    /// A repeat within the dedupe window: dropped and counted.
    Duplicate { first_seen_ms: i64 },
    /// A Microsoft test lead: dropped and counted.
    TestLead,
    /// A stage failed: the record goes to the dead-letter topic.
    Failed(Failure),
}

/// Where an outcome sends its record: the one mapping from outcome to
/// topics, which the engine's writer, the tallies, the metrics and
/// `leadflow validate` all go by.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// These campaign routes, each with its index in the routing table.
    Campaigns(CampaignRoutes<'a>),
    /// The suppressed topic, for this reason.
    Suppressed(SuppressionReason),
    /// The dead-letter topic, for this failure.
    DeadLetter(&'a Failure),
    /// Nowhere: a duplicate, dropped and counted.
    Duplicate,
    /// Nowhere: a Microsoft test lead, dropped and counted.
    TestLead,
}

/// The campaign routes a lead feeds, in table order.
#[derive(Debug, Clone, Copy)]
pub struct CampaignRoutes<'a> {
    set: RouteSet,
    routes: &'a [Route],
}

impl<'a> CampaignRoutes<'a> {
    pub fn iter(self) -> impl Iterator<Item = (usize, &'a Route)> {
        self.set
            .iter()
            .filter_map(move |i| Some((i, self.routes.get(i)?)))
    }
}

impl Place<'_> {
    /// Where a routed lead goes.
    pub fn of(destination: Destination, routing: &RoutingTable) -> Place<'_> {
        match destination {
            Destination::Campaigns(set) => Place::Campaigns(CampaignRoutes {
                set,
                routes: routing.routes(),
            }),
            Destination::Suppressed(reason) => Place::Suppressed(reason),
        }
    }

    /// The topics its records go to, given the suppressed and dead-letter
    /// topics' names.
    pub fn topics<'t>(self, suppressed: &'t str, dead_letter: &'t str) -> Vec<&'t str>
    where
        Self: 't,
    {
        match self {
            Place::Campaigns(routes) => routes.iter().map(|(_, r)| r.topic.as_str()).collect(),
            Place::Suppressed(_) => vec![suppressed],
            Place::DeadLetter(_) => vec![dead_letter],
            Place::Duplicate | Place::TestLead => Vec::new(),
        }
    }
}

impl Outcome {
    /// Where this outcome sends its record.
    pub fn place<'a>(&'a self, routing: &'a RoutingTable) -> Place<'a> {
        match self {
            Outcome::Routed { destination, .. } => Place::of(*destination, routing),
            Outcome::Duplicate { .. } => Place::Duplicate,
            Outcome::TestLead => Place::TestLead,
            Outcome::Failed(failure) => Place::DeadLetter(failure),
        }
    }
}

/// A lead dated further ahead of processing time than `dedupe.max_future_ms`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "event time {event_time_ms} ms is {} s ahead of processing time {now_ms} ms (at most {} s allowed)",
    (event_time_ms.saturating_sub(*now_ms)) / 1000,
    max_future_ms / 1000
)]
pub struct FutureEventTime {
    pub event_time_ms: i64,
    pub now_ms: i64,
    pub max_future_ms: i64,
}

impl crate::error::ErrorClass for FutureEventTime {
    fn class(&self) -> &'static str {
        "future_event_time"
    }
}

/// Settings the stages need, taken from configuration once.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub input_format: Format,
    pub catalog: Catalog,
    pub rules: ScoringRules,
    pub routing: RoutingTable,
    pub dedupe_window_ms: i64,
    /// Most dedupe keys held before the least recently seen are evicted.
    pub dedupe_max_keys: usize,
    /// How far ahead of processing time an event time may be.
    pub max_future_ms: i64,
    pub max_record_bytes: usize,
}

impl PipelineSettings {
    /// Everything from a validated configuration.
    pub fn from_config(
        config: &crate::config::Config,
    ) -> Result<PipelineSettings, crate::error::ConfigError> {
        Ok(PipelineSettings {
            input_format: config.topics.input_format,
            catalog: config.catalog()?,
            rules: config.scoring_rules()?,
            routing: config.routing_table(),
            dedupe_window_ms: config.dedupe_window_ms(),
            dedupe_max_keys: config.dedupe_max_keys(),
            max_future_ms: i64::try_from(config.dedupe.max_future_ms).unwrap_or(i64::MAX),
            max_record_bytes: config.pipeline.max_record_bytes,
        })
    }
}

/// The stages and their state.
#[derive(Debug)]
pub struct Pipeline {
    decoder: Decoder,
    catalog: Catalog,
    rules: ScoringRules,
    routing: RoutingTable,
    deduper: Deduper,
    version: String,
    /// Processing time, as the runtime last told it (see
    /// [`Pipeline::set_now`]): what event times are checked against.
    now_ms: i64,
    max_future_ms: i64,
}

impl Pipeline {
    pub fn new(settings: PipelineSettings) -> Pipeline {
        crate::reference::warm_up();
        let version = format!(
            "{} rules/{}",
            crate::LEADFLOW_VERSION,
            settings.rules.version()
        );
        Pipeline {
            decoder: Decoder::new(settings.input_format, settings.max_record_bytes),
            catalog: settings.catalog,
            rules: settings.rules,
            routing: settings.routing,
            deduper: Deduper::new(settings.dedupe_window_ms, settings.dedupe_max_keys),
            version,
            now_ms: crate::metrics::now_ms(),
            max_future_ms: settings.max_future_ms,
        }
    }

    /// The first half of processing when the input is not keyed by lead:
    /// decode and identify, to find the key to re-partition by. Touches no
    /// state; [`Pipeline::process`] runs in full on the forwarded record.
    pub fn rekey(&mut self, input: Input<'_>) -> Rekeyed {
        self.rekey_clocked(input, |_| None, &mut ())
    }

    /// [`Pipeline::rekey`], telling `clock` as each stage ends. `local`
    /// names the dedupe shard of a partition key whose repartition
    /// partition this process holds: such a lead is processed in full here
    /// (decoded once), as if it had been forwarded and read back.
    pub fn rekey_clocked(
        &mut self,
        input: Input<'_>,
        local: impl FnOnce(DedupeKey) -> Option<i32>,
        clock: &mut impl StageClock,
    ) -> Rekeyed {
        let decoded = self.decoder.decode(input.value, input.timestamp_ms);
        clock.lap(Stage::Decode);
        let raw = match decoded {
            Ok(raw) => raw,
            Err(e) => return Rekeyed::Done(Outcome::Failed(Failure::new(Stage::Decode, &e))),
        };
        if raw.is_test_lead() {
            return Rekeyed::Done(Outcome::TestLead);
        }
        let identity = match identify(&raw, &self.catalog) {
            Ok(identity) => identity,
            Err(e) => {
                clock.lap(Stage::Enrich);
                return Rekeyed::Done(Outcome::Failed(Failure::new(Stage::Enrich, &e)));
            }
        };
        let key = identity.partition_key();
        match local(key) {
            Some(shard) => {
                Rekeyed::Processed(self.finish(raw, (identity, key), (input.source, shard), clock))
            }
            None => {
                clock.lap(Stage::Enrich);
                Rekeyed::Forward(key)
            }
        }
    }

    pub fn process(&mut self, input: Input<'_>) -> Outcome {
        self.process_clocked(input, &mut ())
    }

    /// [`Pipeline::process`], telling `clock` as each stage ends.
    pub fn process_clocked(&mut self, input: Input<'_>, clock: &mut impl StageClock) -> Outcome {
        let decoded = self.decoder.decode(input.value, input.timestamp_ms);
        clock.lap(Stage::Decode);
        let raw = match decoded {
            Ok(raw) => raw,
            Err(e) => return Outcome::Failed(Failure::new(Stage::Decode, &e)),
        };
        if raw.is_test_lead() {
            return Outcome::TestLead;
        }
        match identify(&raw, &self.catalog) {
            Ok(identity) => {
                let key = identity.partition_key();
                self.finish(raw, (identity, key), (input.source, input.shard), clock)
            }
            Err(e) => {
                clock.lap(Stage::Enrich);
                Outcome::Failed(Failure::new(Stage::Enrich, &e))
            }
        }
    }

    /// Enrich (from the identity), dedupe on `shard`, score and route.
    fn finish(
        &mut self,
        mut raw: RawLead,
        identified: (Identity, DedupeKey),
        (source, shard): (SourcePosition<'_>, i32),
        clock: &mut impl StageClock,
    ) -> Outcome {
        if raw.event_id.is_none() {
            let SourcePosition {
                topic,
                partition,
                offset,
            } = source;
            raw.event_id = Some(format!("{topic}/{partition}/{offset}"));
        }
        let mut lead = enrich_identified(raw, identified, &self.catalog);
        clock.lap(Stage::Enrich);
        if lead.event_time_ms.saturating_sub(self.now_ms) > self.max_future_ms {
            let error = FutureEventTime {
                event_time_ms: lead.event_time_ms,
                now_ms: self.now_ms,
                max_future_ms: self.max_future_ms,
            };
            return Outcome::Failed(Failure::new(Stage::Dedupe, &error));
        }
        let duplicate = self.deduper.duplicate_of(shard, &lead);
        clock.lap(Stage::Dedupe);
        if let Some(first_seen_ms) = duplicate {
            return Outcome::Duplicate { first_seen_ms };
        }
        let score = score(&lead, &self.rules);
        clock.lap(Stage::Score);
        let destination = route(&lead, &score, &self.routing);
        clock.lap(Stage::Route);
        let destination = match destination {
            Ok(destination) => destination,
            Err(e) => return Outcome::Failed(Failure::new(Stage::Route, &e)),
        };
        lead.earlier_actions = self.deduper.record(shard, &lead).to_vec();
        clock.lap(Stage::Dedupe);
        Outcome::Routed {
            destination,
            lead: Box::new(lead),
            score,
        }
    }

    /// The outputs of everything processed so far are committed: state
    /// changes up to here are permanent.
    pub fn commit_batch(&mut self) {
        self.deduper.commit();
    }

    /// The outputs since the last commit were aborted: forget their state
    /// changes, so that reprocessing the same records gives the same outcomes.
    pub fn rollback_batch(&mut self) {
        self.deduper.rollback();
    }

    /// Sets the processing time that event times are checked against and
    /// that dedupe expiry counts from. The runtime calls it once a batch.
    pub fn set_now(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// Forgets dedupe keys whose latest event time is a whole window before
    /// the processing time (see [`Pipeline::set_now`]). Returns how many
    /// were forgotten; their tombstones come with the next
    /// [`Pipeline::take_changes`].
    ///
    /// The clock is processing time, not the largest event time seen: that
    /// one record with a broken clock (dated 9999, or a year ahead) would
    /// move it, and expire, durably, every key of every partition. No record
    /// moves processing time. The price: a backfill of leads older than the
    /// window is deduplicated only between two expiry passes.
    pub fn expire_dedupe(&mut self) -> usize {
        self.deduper.expire(self.now_ms)
    }

    /// Dedupe state changes since the last call, for the changelog.
    pub fn take_changes(&mut self) -> impl Iterator<Item = Change> + '_ {
        self.deduper.take_changes()
    }

    /// The dedupe state, for restoring, revoking and reporting.
    pub fn dedupe(&mut self) -> &mut Deduper {
        &mut self.deduper
    }

    /// Keys held by the dedupe state.
    pub fn dedupe_keys(&self) -> usize {
        self.deduper.len()
    }

    pub fn routing(&self) -> &RoutingTable {
        &self.routing
    }

    /// Swaps the scoring rules, the routing table and the catalog, between
    /// two transactions (see [`crate::reload`]).
    pub fn set_rules(&mut self, rules: ScoringRules, routing: RoutingTable, catalog: Catalog) {
        self.version = format!("{} rules/{}", crate::LEADFLOW_VERSION, rules.version());
        self.rules = rules;
        self.routing = routing;
        self.catalog = catalog;
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The writer schema id a `confluent-avro` record needs before it can
    /// be decoded, if the decoder has not been given it yet.
    pub fn missing_writer_schema(&self, value: Option<&[u8]>) -> Option<u32> {
        self.decoder.missing_writer_schema(value)
    }

    /// Gives the decoder the registry's answer for writer schema `id`.
    pub fn add_writer_schema(&mut self, id: u32, answer: WriterAnswer<'_>) {
        self.decoder.add_writer_schema(id, answer);
    }

    /// See [`crate::stages::decode::Decoder::forget_writer_schema`].
    pub fn forget_writer_schema(&mut self, id: u32) {
        self.decoder.forget_writer_schema(id);
    }

    /// The scoring rules' version.
    pub fn rules_version(&self) -> &str {
        self.rules.version()
    }

    /// `leadflow/VERSION rules/RULES-VERSION`, for `leadflow.pipeline.version`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// Counts of outcomes. Every input lands in exactly one bucket, so
/// `inputs == routed + suppressed + dead letters + duplicates + test_leads`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub inputs: u64,
    /// Leads routed to at least one campaign.
    pub routed: u64,
    /// Records written per campaign name; a lead may feed several.
    pub campaigns: BTreeMap<String, u64>,
    /// Suppressed leads by reason.
    pub suppressed: BTreeMap<String, u64>,
    pub duplicates: u64,
    pub test_leads: u64,
    /// Dead letters by error class.
    pub dead_letter: BTreeMap<String, u64>,
    /// Leads routed or suppressed, by listing (`unknown`: not catalogued).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listings: BTreeMap<String, u64>,
    /// Inputs forwarded to the repartition topic: their outcome is counted
    /// when they are read back.
    #[serde(default)]
    pub repartitioned: u64,
    /// Offset resets on consumed topics: records were deleted before they
    /// were read, and are in no other count.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset_resets: u64,
    /// Records those resets skipped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_records: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Tally {
    /// Counts an input and its outcome; `routing` names the campaigns of
    /// routed leads.
    pub fn record(&mut self, outcome: &Outcome, routing: &RoutingTable) {
        self.inputs += 1;
        self.record_outcome(outcome, routing);
    }

    /// Counts an input forwarded to the repartition topic.
    pub fn record_forwarded(&mut self) {
        self.inputs += 1;
        self.repartitioned += 1;
    }

    /// Counts the outcome of a record read back from the repartition topic:
    /// its input was counted when it was forwarded.
    pub fn record_outcome(&mut self, outcome: &Outcome, routing: &RoutingTable) {
        if let Outcome::Routed { lead, .. } = outcome {
            let listing = lead.listing().as_str();
            match self.listings.get_mut(listing) {
                Some(n) => *n += 1,
                None => {
                    self.listings.insert(listing.to_owned(), 1);
                }
            }
        }
        match outcome.place(routing) {
            Place::Campaigns(routes) => {
                self.routed += 1;
                for (_, route) in routes.iter() {
                    *self.campaigns.entry(route.campaign.clone()).or_default() += 1;
                }
            }
            Place::Suppressed(reason) => {
                *self
                    .suppressed
                    .entry(reason.as_str().to_owned())
                    .or_default() += 1;
            }
            Place::Duplicate => self.duplicates += 1,
            Place::TestLead => self.test_leads += 1,
            Place::DeadLetter(failure) => {
                *self
                    .dead_letter
                    .entry(failure.class.to_owned())
                    .or_default() += 1;
            }
        }
    }

    pub fn dead_letters(&self) -> u64 {
        self.dead_letter.values().sum()
    }

    pub fn suppressed_total(&self) -> u64 {
        self.suppressed.values().sum()
    }

    /// Adds another tally's counts to this one.
    pub fn merge(&mut self, other: Tally) {
        // Every field by name, so that a new one cannot be forgotten here.
        let Tally {
            inputs,
            routed,
            campaigns,
            suppressed,
            duplicates,
            test_leads,
            dead_letter,
            listings,
            repartitioned,
            offset_resets,
            skipped_records,
        } = other;
        self.inputs += inputs;
        self.routed += routed;
        self.duplicates += duplicates;
        self.test_leads += test_leads;
        self.repartitioned += repartitioned;
        self.offset_resets += offset_resets;
        self.skipped_records += skipped_records;
        for (mine, theirs) in [
            (&mut self.campaigns, campaigns),
            (&mut self.suppressed, suppressed),
            (&mut self.dead_letter, dead_letter),
            (&mut self.listings, listings),
        ] {
            for (key, n) in theirs {
                *mine.entry(key).or_default() += n;
            }
        }
    }

    /// True when every input is accounted for by exactly one bucket.
    pub fn balances(&self) -> bool {
        self.inputs
            == self.routed
                + self.suppressed_total()
                + self.duplicates
                + self.test_leads
                + self.dead_letters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::{ActionCode, SuppressionReason};
    use crate::stages::encode::Encoder;

    fn pipeline() -> Pipeline {
        crate::testkit::pipeline(&crate::testkit::generated_config(Format::Json))
    }

    fn input(value: &str, offset: i64) -> Input<'_> {
        crate::testkit::input(value.as_bytes(), 1_741_000_000_000, offset)
    }

    /// Where an outcome sends a lead, in words.
    fn place(outcome: &Outcome, routing: &RoutingTable) -> String {
        match outcome.place(routing) {
            Place::Campaigns(routes) => routes
                .iter()
                .map(|(_, route)| route.campaign.clone())
                .collect::<Vec<_>>()
                .join("+"),
            Place::Suppressed(r) => r.as_str().to_owned(),
            Place::Duplicate => "duplicate".into(),
            Place::TestLead => "test".into(),
            Place::DeadLetter(f) => format!("{}:{}", f.stage, f.class),
        }
    }

    /// Processes one lead that must be routed; returns it and its JSON encoding.
    fn routed(value: &str, offset: i64) -> (Destination, Box<Lead>, Score, serde_json::Value) {
        let outcome = pipeline().process(input(value, offset));
        let Outcome::Routed {
            destination,
            lead,
            score,
        } = outcome
        else {
            panic!("expected a routed lead, got {outcome:?}");
        };
        let mut bytes = Vec::new();
        Encoder::new(Format::Json).encode(&lead, &score, destination, None, &mut bytes);
        let json = serde_json::from_slice(&bytes).expect("json");
        (destination, lead, score, json)
    }

    /// A reloaded catalog applies from the next lead: a new offer type
    /// gives a new listing, and a bare lead whose title left the catalog
    /// is a dead letter rather than a guess.
    #[test]
    fn a_reloaded_catalog_applies_to_the_next_lead() {
        let mut pipeline = pipeline();
        let bare = |email: &str| {
            format!(
                r#"{{"UserDetails":{{"Email":"{email}"}},"LeadSource":"AppSource","ActionCode":"INS","OfferTitle":"Contoso Sales Insights"}}"#
            )
        };
        let listing = |outcome: Outcome| match outcome {
            Outcome::Routed { lead, .. } => lead.listing().as_str().to_owned(),
            other => format!("{other:?}"),
        };
        assert_eq!(
            listing(pipeline.process(input(&bare("a@fabrikam.com"), 0))),
            "app"
        );

        let text = std::fs::read_to_string(crate::testkit::GENERATED_CATALOG).expect("catalog");
        let text = text.replacen("type = \"saas\"", "type = \"consulting-service\"", 1);
        let catalog = Catalog::parse(std::path::Path::new("catalog.toml"), &text).expect("catalog");
        let config = Config::default();
        let rules = config.scoring_rules().expect("rules");
        pipeline.set_rules(rules.clone(), config.routing_table(), catalog);
        let second = pipeline.process(input(&bare("b@fabrikam.com"), 1));
        assert_eq!(listing(second), "consulting-service");

        pipeline.set_rules(rules, config.routing_table(), Catalog::default());
        match pipeline.process(input(&bare("c@fabrikam.com"), 2)) {
            Outcome::Failed(failure) => assert_eq!(failure.class, "unknown_offer"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_shared_examples_land_where_the_domain_says() {
        let mut pipeline = pipeline();
        let mut tally = Tally::default();
        let examples = include_str!("../tests/data/raw-leads.jsonl");
        let outcomes: Vec<String> = examples
            .lines()
            .enumerate()
            .map(|(i, line)| {
                let outcome = pipeline.process(input(line, i as i64));
                tally.record(&outcome, pipeline.routing());
                place(&outcome, pipeline.routing())
            })
            .collect();
        assert_eq!(
            outcomes,
            vec![
                "nurture",              // Ana, Contact me on AppSource
                "demand-gen",           // Raj, portal Create
                "demand-gen",           // Lee, bare AzureMarketplace + ActionCode, offer by title
                "duplicate",            // Lee again: same gmail identity, offer and action
                "nurture",              // Mia, AppSource Get it now
                "do_not_contact",       // Omar, DNC
                "test",                 // MSFT_TEST
                "demand-gen",           // .edu test drive
                "disposable_email",     // mailinator.com: suppressed by default policy
                "decode:missing_email", // Sam, empty email
                "duplicate",            // Ana again, spelled differently
                "demand-gen",           // no envelope
            ]
        );
        assert!(tally.balances());
        assert_eq!(tally.duplicates, 2);
        assert_eq!(tally.routed, 6);
        assert_eq!(tally.campaigns.get("nurture"), Some(&2));
        assert_eq!(tally.suppressed.get("disposable_email"), Some(&1));
        assert_eq!(tally.dead_letter.get("missing_email"), Some(&1));
    }

    #[test]
    fn leads_without_an_envelope_get_an_id_from_their_source_position() {
        let (_, lead, _, _) = routed(
            r#"{"LeadSource":"AzurePortal-Create|contoso.gw","UserDetails":{"Email":"ops@litware.com"}}"#,
            42,
        );
        assert_eq!(lead.event_id.as_deref(), Some("leads.raw/0/42"));
        assert_eq!(lead.event_time_ms, 1_741_000_000_000);
    }

    #[test]
    fn a_lead_that_fails_routing_is_dead_lettered_and_not_remembered() {
        let config: Config = toml::from_str(
            "[[routes]]\ncampaign = \"nurture\"\nstorefront = \"appsource\"\ntopic = \"n\"\n",
        )
        .expect("config");
        let mut pipeline = crate::testkit::pipeline(&config);
        let azure = r#"{"LeadSource":"AzurePortal-Create|contoso.gw","UserDetails":{"Email":"ops@litware.com"}}"#;
        for offset in 0..2 {
            let outcome = pipeline.process(input(azure, offset));
            assert_eq!(place(&outcome, pipeline.routing()), "route:unroutable");
        }
        assert_eq!(pipeline.dedupe_keys(), 0);
    }

    #[test]
    fn the_avro_schemas_parse_and_match_the_json_records() {
        use apache_avro::Schema;
        let field_names = |text: &str| -> Vec<String> {
            match Schema::parse_str(text).expect("schema parses") {
                Schema::Record(record) => record.fields.iter().map(|f| f.name.clone()).collect(),
                other => panic!("not a record schema: {other:?}"),
            }
        };
        let raw = field_names(include_str!("../schemas/raw-lead.avsc"));
        assert!(raw.contains(&"UserDetails".to_owned()) && raw.contains(&"LeadSource".to_owned()));

        let (_, _, _, json) = routed(
            r#"{"LeadSource":"SPZA-PLT|contoso.si","UserDetails":{"Email":"a@b.com"}}"#,
            0,
        );
        let mut keys: Vec<String> = json.as_object().expect("object").keys().cloned().collect();
        let mut fields = field_names(include_str!("../schemas/campaign-lead.avsc"));
        fields.sort();
        keys.sort();
        assert_eq!(
            keys, fields,
            "campaign-lead.avsc and the JSON encoding disagree"
        );
    }

    #[test]
    fn encoded_campaign_leads_carry_score_grade_and_reasons() {
        let (destination, lead, score, json) = routed(
            r#"{"event_id":"e9","LeadSource":"SPZA-DNC|contoso.si","UserDetails":{"Email":"O@T.com","Title":"CIO","Country":"PRT"}}"#,
            0,
        );
        assert_eq!(
            destination,
            Destination::Suppressed(SuppressionReason::DoNotContact)
        );
        assert_eq!(json["event_id"], "e9");
        assert_eq!(json["email"], "o@t.com");
        assert_eq!(json["suppressed"], "do_not_contact");
        assert_eq!(json["campaign"], serde_json::Value::Null);
        assert_eq!(json["grade"], score.grade.as_str());
        assert_eq!(json["reasons"][0], "title C-level +25");
        assert_eq!(json["seniority"], "c-level");
        assert_eq!(json["country"], "PT");
        assert_eq!(json["country_name"], "Portugal");
        assert_eq!(json["region"], "Europe");
        assert_eq!(json["rules_version"], "default-2025.1");
        assert_eq!(json["dedupe_key"], lead.dedupe_key.to_hex());
    }

    /// A lead at `day` days after 2025-03-03 (at `extra_ms` more).
    fn lead_at(day: i64, extra_ms: i64, email: &str) -> String {
        let received = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(1_741_000_000_000 + day * 86_400_000 + extra_ms) * 1_000_000,
        )
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
        format!(
            r#"{{"received_at":"{received}","LeadSource":"SPZA-PLT|contoso.si","UserDetails":{{"Email":"{email}"}}}}"#
        )
    }

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn dedupe_state_expires_by_processing_time() {
        let mut pipeline = pipeline();
        pipeline.set_now(1_741_000_000_000 + 200 * DAY_MS);
        pipeline.process(input(&lead_at(0, 0, "old@contoso.com"), 0));
        pipeline.process(input(&lead_at(100, 0, "new@contoso.com"), 1));
        pipeline.process(input(&lead_at(199, 0, "newer@contoso.com"), 2));
        // 200 days on, the day-0 lead is past the 180-day window; day 100 is not.
        assert_eq!(pipeline.expire_dedupe(), 1);
        assert_eq!(pipeline.dedupe_keys(), 2);
        pipeline.set_now(1_741_000_000_000 + 281 * DAY_MS);
        assert_eq!(pipeline.expire_dedupe(), 1);
        assert_eq!(pipeline.dedupe_keys(), 1);
    }

    #[test]
    fn a_lead_dated_far_ahead_is_a_dead_letter_and_moves_no_clock() {
        let now = 1_741_000_000_000 + 10 * DAY_MS;
        let mut pipeline = pipeline();
        pipeline.set_now(now);
        let first = lead_at(10, -60_000, "first@contoso.com");
        assert!(matches!(
            pipeline.process(input(&first, 0)),
            Outcome::Routed { .. }
        ));
        pipeline.commit_batch();
        let _ = pipeline.take_changes().count();
        let far = r#"{"received_at":"9999-12-31T23:59:59Z","LeadSource":"SPZA-PLT|contoso.si","UserDetails":{"Email":"late@contoso.com"}}"#;
        for (offset, future) in [far.to_owned(), lead_at(10 + 181, 0, "year@contoso.com")]
            .iter()
            .enumerate()
        {
            match pipeline.process(input(future, 1 + offset as i64)) {
                Outcome::Failed(failure) => {
                    assert_eq!(failure.stage, Stage::Dedupe);
                    assert_eq!(failure.class, "future_event_time");
                }
                other => panic!("a lead dated ahead was {other:?}"),
            }
        }
        // Within the allowed hour ahead is a lead like any other.
        let soon = lead_at(10, 59 * 60_000, "soon@contoso.com");
        assert!(matches!(
            pipeline.process(input(&soon, 3)),
            Outcome::Routed { .. }
        ));
        assert_eq!(pipeline.expire_dedupe(), 0);
        assert!(
            pipeline.take_changes().all(|c| c.value.is_some()),
            "no tombstone for a live key"
        );
        assert!(matches!(
            pipeline.process(input(&first, 4)),
            Outcome::Duplicate { .. }
        ));
        assert_eq!(pipeline.dedupe_keys(), 2);
    }

    #[test]
    fn a_rolled_back_batch_replays_to_the_same_outcomes() {
        let mut pipeline = pipeline();
        let lines: Vec<&str> = include_str!("../tests/data/raw-leads.jsonl")
            .lines()
            .collect();
        let run = |pipeline: &mut Pipeline, range: std::ops::Range<usize>| -> Vec<String> {
            range
                .map(|i| {
                    place(
                        &pipeline.process(input(lines[i], i as i64)),
                        pipeline.routing(),
                    )
                })
                .collect()
        };
        let first = run(&mut pipeline, 0..4);
        pipeline.commit_batch();
        let aborted = run(&mut pipeline, 4..12);
        pipeline.rollback_batch();
        assert_eq!(run(&mut pipeline, 4..12), aborted);
        assert_eq!(first[3], "duplicate");
    }

    #[test]
    fn later_actions_carry_the_earlier_ones() {
        let mut pipeline = pipeline();
        let contact =
            r#"{"LeadSource":"SPZA-PLT|contoso.si","UserDetails":{"Email":"kim@contoso.com"}}"#;
        let install =
            r#"{"LeadSource":"SPZA-INS|contoso.si","UserDetails":{"Email":"Kim@Contoso.com"}}"#;
        pipeline.process(input(contact, 0));
        let Outcome::Routed { lead, .. } = pipeline.process(input(install, 1)) else {
            panic!("a new action is a new lead");
        };
        assert_eq!(lead.earlier_actions, vec![ActionCode::PartnerLedTrial]);
    }
}
