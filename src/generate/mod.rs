//! A generator of realistic raw leads, for tests, demos and benchmarks.
//!
//! It covers every JSON shape in the domain notes (combined, split and bare
//! `LeadSource`, `userDetails` spelled in lower case, alpha-2 and alpha-3
//! countries, with and without the envelope), both storefronts, every action
//! code, test leads, do-not-contact leads, malformed records and duplicates
//! (exact repeats and repeats that differ only in email spelling). Each
//! generated record says where leadflow must put it, so a run can be checked
//! against it. The same seed gives the same records, byte for byte.

mod catalog;
mod faulty;

use std::collections::VecDeque;

use serde_json::{Map, Value, json};

use crate::catalog::Listing;
use crate::domain::rfc3339;
use crate::domain::{ActionCode, DedupeKey, Offer, Storefront};
use crate::pipeline::Tally;
use crate::stages::decode::Format;
use crate::stages::enrich::normalize_email;
use crate::stages::route::default_routes;

pub use catalog::catalog;
use catalog::{COMPANIES, COUNTRIES, FIRST_NAMES, LAST_NAMES, OFFERS, TITLES};
pub use faulty::HOSTILE_CLASSES;

/// Where leadflow must put a generated record, with the default routing
/// table and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The default campaign of the storefront, from a listing of this kind.
    Campaign(Storefront, Listing),
    /// Suppressed with this reason, from a listing of this kind.
    Suppressed(&'static str, Listing),
    Duplicate,
    TestLead,
    /// Dead-lettered with this error class.
    DeadLetter(&'static str),
}

/// One generated record.
#[derive(Debug, Clone)]
pub struct GeneratedLead {
    /// The person-and-offer key in hex, so that every lead dedupe compares
    /// this one with shares its partition (see `pipeline.repartition`).
    pub key: String,
    pub value: Vec<u8>,
    /// Record timestamp: the lead's event time.
    pub timestamp_ms: i64,
    pub expected: Expected,
}

#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    pub seed: u64,
    /// Share of records that repeat an earlier lead.
    pub duplicate_ratio: f64,
    /// Share of records that are not processable.
    pub malformed_ratio: f64,
    /// Share of records that are do-not-contact leads.
    pub dnc_ratio: f64,
    /// Share of records that are Microsoft test leads.
    pub test_lead_ratio: f64,
    /// Share of records that are hostile (JSON only): just over and just
    /// under `max_record_bytes`, dated in 9999 or half a year ahead, with a
    /// huge `LeadSource`, a garbage action code, an overlong email, or
    /// control and bidirectional characters in names.
    pub hostile_ratio: f64,
    /// The input size limit the hostile records are sized against (the
    /// `pipeline.max_record_bytes` of the run they are for).
    pub max_record_bytes: usize,
    /// Event time of the first lead; later ones are about a second apart.
    pub start_time_ms: i64,
    /// Encoding of the records: JSON, or raw-lead Avro datums, bare or
    /// Confluent-framed.
    pub format: Format,
    /// For `confluent-avro`: the registry id of the raw-lead schema.
    pub schema_id: u32,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        GeneratorOptions {
            seed: 42,
            duplicate_ratio: 0.10,
            malformed_ratio: 0.02,
            dnc_ratio: 0.01,
            test_lead_ratio: 0.005,
            hostile_ratio: 0.0,
            max_record_bytes: 983_040,
            start_time_ms: recent_start_ms(),
            format: Format::Json,
            schema_id: 0,
        }
    }
}

/// Midnight (UTC) 30 days ago: generated leads are a month old, as a
/// backlog of real leads would be, well inside the dedupe window (which
/// expires by processing time) and far from any retention limit. A seed
/// reproduces the same bytes on the same day; tests that need more set
/// `start_time_ms` themselves.
pub fn recent_start_ms() -> i64 {
    const DAY_MS: i64 = 86_400_000;
    let now = crate::metrics::now_ms();
    now - now.rem_euclid(DAY_MS) - 30 * DAY_MS
}

/// Everything needed to write a lead again as a duplicate.
#[derive(Debug, Clone)]
struct Person {
    first: &'static str,
    last: &'static str,
    email: String,
    phone: Option<String>,
    country: (&'static str, &'static str),
    company: Option<&'static str>,
    title: &'static str,
    offer: usize,
    action: ActionCode,
}

/// The generator: an endless iterator of records.
pub struct Generator {
    rng: fastrand::Rng,
    options: GeneratorOptions,
    count: u64,
    /// The most recent new persons, oldest first: duplicates repeat one of
    /// them.
    history: VecDeque<Person>,
    expected: Tally,
}

/// How many of the most recent new persons duplicates may repeat. It bounds
/// the generator's memory on long runs, and how far back a repeat reaches:
/// a run with a dedupe memory budget of more keys than this forgets none
/// that is repeated. (A random slot replaced instead of the oldest let a
/// few persons live on for hundreds of thousands of leads, and the soak's
/// budget had rightly forgotten them by the time they came back.)
pub const HISTORY: usize = 50_000;

impl Generator {
    pub fn new(options: GeneratorOptions) -> Generator {
        Generator {
            rng: fastrand::Rng::with_seed(options.seed),
            options,
            count: 0,
            history: VecDeque::new(),
            expected: Tally::default(),
        }
    }

    /// What leadflow must report after processing everything generated so far.
    pub fn expected(&self) -> &Tally {
        &self.expected
    }

    fn tally(&mut self, expected: &Expected) {
        let t = &mut self.expected;
        t.inputs += 1;
        match expected {
            Expected::Campaign(storefront, listing) => {
                *t.listings.entry(listing.as_str().to_owned()).or_default() += 1;
                t.routed += 1;
                for route in default_routes()
                    .iter()
                    .filter(|r| r.storefront == *storefront)
                {
                    *t.campaigns.entry(route.campaign.clone()).or_default() += 1;
                }
            }
            Expected::Suppressed(reason, listing) => {
                *t.listings.entry(listing.as_str().to_owned()).or_default() += 1;
                *t.suppressed.entry((*reason).to_owned()).or_default() += 1
            }
            Expected::Duplicate => t.duplicates += 1,
            Expected::TestLead => t.test_leads += 1,
            Expected::DeadLetter(class) => {
                *t.dead_letter.entry((*class).to_owned()).or_default() += 1
            }
        }
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.usize(..items.len())]
    }

    fn event_id(&mut self) -> String {
        let (a, b) = (self.rng.u64(..), self.rng.u64(..));
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    fn new_person(&mut self, n: u64, dnc: bool) -> Person {
        let first = self.pick(FIRST_NAMES);
        let last = self.pick(LAST_NAMES);
        let offer = self.rng.usize(..OFFERS.len());
        let storefront = OFFERS[offer].storefront;
        let consulting =
            OFFERS[offer].offer_type == Some(crate::catalog::OfferType::ConsultingService);
        let roll = self.rng.u8(..100);
        let (email, company, edu) = match roll {
            0..15 => (
                format!(
                    "{}.{}{n}@gmail.com",
                    first.to_lowercase(),
                    last.to_lowercase()
                ),
                None,
                false,
            ),
            15..20 => (
                format!("{}{n}@outlook.com", first.to_lowercase()),
                None,
                false,
            ),
            20..25 => (format!("s{n}@stateu.edu"), None, true),
            25..27 => (
                format!("{}{n}@mailinator.com", first.to_lowercase()),
                None,
                false,
            ),
            _ => {
                let (company, domain) = self.pick(COMPANIES);
                (
                    format!(
                        "{}.{}{n}@{domain}",
                        first.to_lowercase(),
                        last.to_lowercase()
                    ),
                    Some(company),
                    false,
                )
            }
        };
        let action = if dnc {
            ActionCode::DoNotContact
        } else {
            let roll = self.rng.u8(..100);
            match (storefront, roll) {
                // A consulting service's only lead is "Contact me".
                _ if consulting => ActionCode::PartnerLedTrial,
                (Storefront::AppSource, 0..50) => ActionCode::PartnerLedTrial,
                (Storefront::AppSource, 50..90) => ActionCode::Install,
                (Storefront::AzureMarketplace, 0..50) => ActionCode::Install,
                (Storefront::AzureMarketplace, 50..85) => ActionCode::Create,
                (_, 0..95) => ActionCode::StartTestDrive,
                _ => ActionCode::Other("Subscribe".into()),
            }
        };
        // Microsoft sends no personal data for .edu addresses.
        let phone =
            (!edu && self.rng.bool()).then(|| format!("1425555{:04}", self.rng.u16(..10_000)));
        Person {
            first: if edu { "" } else { first },
            last: if edu { "" } else { last },
            email,
            phone,
            country: self.pick(COUNTRIES),
            company,
            title: if edu { "" } else { self.pick(TITLES) },
            offer,
            action,
        }
    }

    /// The same identity spelled differently, as people and forms do.
    fn respell(&mut self, email: &str) -> String {
        let Some((local, domain)) = email.split_once('@') else {
            return email.to_owned();
        };
        match (domain, self.rng.u8(..4)) {
            (_, 0) => email.to_owned(),
            (_, 1) => format!(" {} ", email.to_uppercase()),
            ("gmail.com", 2) => {
                let mut dotted = String::new();
                for (i, c) in local.chars().filter(|c| *c != '.').enumerate() {
                    if i > 0 && i % 3 == 0 {
                        dotted.push('.');
                    }
                    dotted.push(c);
                }
                format!("{dotted}@googlemail.com")
            }
            ("gmail.com" | "outlook.com", _) => format!("{local}+promo@{domain}"),
            _ => email.to_owned(),
        }
    }

    /// Renders a person's lead in one of the documented shapes.
    fn render(
        &mut self,
        person: &Person,
        email: &str,
        time_ms: i64,
        test_marker: Option<&str>,
    ) -> Vec<u8> {
        let generated = &OFFERS[person.offer];
        let mut lead = Map::new();
        if self.rng.u8(..100) >= 5 {
            lead.insert("event_id".into(), Value::String(self.event_id()));
            lead.insert("received_at".into(), Value::String(rfc3339(time_ms)));
        }
        let (country2, country3) = person.country;
        let marked = |value: &str| test_marker.map_or_else(|| value.to_owned(), str::to_owned);
        let details = json!({
            "FirstName": marked(person.first),
            "LastName": marked(person.last),
            "Email": email,
            "Phone": person.phone.clone().unwrap_or_default(),
            "Country": if self.rng.bool() { country2 } else { country3 },
            "Company": marked(person.company.unwrap_or_default()),
            "Title": marked(person.title),
        });
        let details_key = if self.rng.u8(..10) == 0 {
            "userDetails"
        } else {
            "UserDetails"
        };
        lead.insert(details_key.into(), details);
        self.lead_source(&mut lead, person);
        lead.insert(
            "OfferTitle".into(),
            Value::String(generated.title.to_owned()),
        );
        let description = match (&person.action, test_marker) {
            (_, Some(marker)) => marker.to_owned(),
            (ActionCode::PartnerLedTrial, _) => "Looking for a demo for our team".to_owned(),
            _ => String::new(),
        };
        lead.insert("Description".into(), Value::String(description));
        serde_json::to_vec(&Value::Object(lead)).unwrap_or_default()
    }

    /// `LeadSource` and `ActionCode` in one of the documented shapes.
    fn lead_source(&mut self, lead: &mut Map<String, Value>, person: &Person) {
        let generated = &OFFERS[person.offer];
        let (offer, storefront) = (generated.id, generated.storefront);
        // Only a catalogued offer can be found by title or give a test
        // drive its storefront.
        let catalogued = generated.offer_type.is_some();
        let code = person.action.code().to_owned();
        let tag = match (&person.action, storefront, self.rng.u8(..10)) {
            (ActionCode::StartTestDrive, _, 0..5) if catalogued => "TestDrive",
            (ActionCode::Create, Storefront::AzureMarketplace, _) => "AzurePortal",
            (_, Storefront::AzureMarketplace, _) => "AzureMarketplace",
            (_, Storefront::AppSource, 0..5) => "SPZA",
            (_, Storefront::AppSource, _) => "AppSource",
        };
        match (self.rng.u8(..10), catalogued) {
            // Combined, with the action repeated in its own field.
            (0..4, _) => {
                lead.insert(
                    "LeadSource".into(),
                    Value::String(format!("{tag}-{code}|{offer}")),
                );
                lead.insert("ActionCode".into(), Value::String(code));
            }
            // Combined only.
            (4..7, _) | (_, false) => {
                lead.insert(
                    "LeadSource".into(),
                    Value::String(format!("{tag}-{code}|{offer}")),
                );
            }
            // Split: the bare tag, the action separate, the offer by title.
            _ => {
                let tag = if tag == "TestDrive" {
                    "AzureMarketplace"
                } else {
                    tag
                };
                let tag = if storefront == Storefront::AppSource {
                    "AppSource"
                } else {
                    tag
                };
                lead.insert("LeadSource".into(), Value::String(tag.to_owned()));
                lead.insert("ActionCode".into(), Value::String(code));
            }
        }
    }

    fn key_of(person: &Person) -> String {
        let offer = Offer::parse(OFFERS[person.offer].id);
        match (normalize_email(&person.email), offer) {
            (Ok(email), Some(offer)) => DedupeKey::person_offer(&email, &offer).to_hex(),
            _ => person.email.clone(),
        }
    }

    /// A new person's lead, kept for later repeats: where it must end.
    fn remembered(&mut self, person: Person, value: Vec<u8>, time_ms: i64) -> GeneratedLead {
        let offer = &OFFERS[person.offer];
        let listing = Listing::of(offer.offer_type.as_ref());
        let expected = if person.action == ActionCode::DoNotContact {
            Expected::Suppressed("do_not_contact", listing)
        } else if person.email.ends_with("@mailinator.com") {
            Expected::Suppressed("disposable_email", listing)
        } else {
            Expected::Campaign(offer.storefront, listing)
        };
        let key = Self::key_of(&person);
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(person);
        GeneratedLead {
            key,
            value,
            timestamp_ms: time_ms,
            expected,
        }
    }
}

impl Iterator for Generator {
    type Item = GeneratedLead;

    fn next(&mut self) -> Option<GeneratedLead> {
        let n = self.count;
        self.count += 1;
        let time_ms = self.options.start_time_ms + (n as i64) * 1_000 + self.rng.i64(0..1_000);
        let o = &self.options;
        let (dup, bad, dnc, test) = (
            o.duplicate_ratio,
            o.malformed_ratio,
            o.dnc_ratio,
            o.test_lead_ratio,
        );
        // Hostile records are JSON: an Avro datum has no room for most.
        let hostile = match o.format {
            Format::Json => o.hostile_ratio,
            _ => 0.0,
        };
        let bad = bad + hostile;
        let roll = self.rng.f64();
        let lead = if roll < dup && !self.history.is_empty() {
            let person = self.history[self.rng.usize(..self.history.len())].clone();
            let email = self.respell(&person.email);
            let value = self.render(&person, &email, time_ms, None);
            GeneratedLead {
                key: Self::key_of(&person),
                value,
                timestamp_ms: time_ms,
                expected: Expected::Duplicate,
            }
        } else if roll < dup + hostile * 0.5 {
            self.hostile(n, time_ms)
        } else if roll < dup + hostile {
            self.hostile_but_valid(n, time_ms)
        } else if roll < dup + bad {
            let (value, class) = self.malformed(n, time_ms);
            let key = self.event_id();
            GeneratedLead {
                key,
                value,
                timestamp_ms: time_ms,
                expected: Expected::DeadLetter(class),
            }
        } else if roll < dup + bad + test {
            let person = self.new_person(n, false);
            let marker = format!("MSFT_TEST_{}", 636_573_304_831_318_844_u64 + n);
            let email = format!("{marker}@test.com");
            let value = self.render(&person, &email, time_ms, Some(&marker));
            GeneratedLead {
                key: marker,
                value,
                timestamp_ms: time_ms,
                expected: Expected::TestLead,
            }
        } else {
            let is_dnc = roll < dup + bad + test + dnc;
            let person = self.new_person(n, is_dnc);
            let email = person.email.clone();
            let value = self.render(&person, &email, time_ms, None);
            self.remembered(person, value, time_ms)
        };
        let lead = match self.options.format {
            Format::Json => lead,
            Format::Avro => as_avro(lead),
            Format::ConfluentAvro => as_confluent(lead, self.options.schema_id),
        };
        self.tally(&lead.expected);
        Some(lead)
    }
}

/// The same record for an Avro topic. What is not a JSON object is written
/// as it is and fails Avro decoding instead of JSON parsing.
fn as_avro(mut lead: GeneratedLead) -> GeneratedLead {
    match to_raw_avro(&lead.value) {
        Some(datum) => lead.value = datum,
        None => {
            if let Expected::DeadLetter(class) = &mut lead.expected {
                *class = "avro_decode";
            }
        }
    }
    lead
}

/// The same record in the Confluent wire format, as a producer with
/// Confluent's Avro serializer would write it. What is not a JSON object
/// is written as it is and fails at the frame.
fn as_confluent(mut lead: GeneratedLead, schema_id: u32) -> GeneratedLead {
    use crate::error::ErrorClass;
    match to_raw_avro(&lead.value) {
        Some(datum) => {
            let mut framed = Vec::with_capacity(datum.len() + 5);
            crate::stages::decode::write_confluent_header(schema_id, &mut framed);
            framed.extend_from_slice(&datum);
            lead.value = framed;
        }
        None => {
            if let Expected::DeadLetter(class) = &mut lead.expected
                && let Err(e) = crate::stages::decode::confluent_frame(&lead.value)
            {
                *class = e.class();
            }
        }
    }
    lead
}

/// Re-encodes a JSON lead as a raw-lead Avro datum, as an Avro producer
/// would write it. `None` when the bytes are not a JSON object (a malformed
/// record, which is then written as it is).
pub fn to_raw_avro(json: &[u8]) -> Option<Vec<u8>> {
    use apache_avro::types::Value as Avro;
    let lead: Map<String, Value> = serde_json::from_slice(json).ok()?;
    let field = |object: &Map<String, Value>, name: &str| -> Avro {
        let text = object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        match text {
            Some(s) => Avro::Union(1, Box::new(Avro::String(s))),
            None => Avro::Union(0, Box::new(Avro::Null)),
        }
    };
    let empty = Map::new();
    let details = lead
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("UserDetails"))
        .and_then(|(_, v)| v.as_object())
        .unwrap_or(&empty);
    let user = [
        "FirstName",
        "LastName",
        "Email",
        "Phone",
        "Country",
        "Company",
        "Title",
    ]
    .iter()
    .map(|name| ((*name).to_owned(), field(details, name)))
    .collect();
    let record = Avro::Record(vec![
        ("event_id".into(), field(&lead, "event_id")),
        ("received_at".into(), field(&lead, "received_at")),
        ("UserDetails".into(), Avro::Record(user)),
        ("LeadSource".into(), field(&lead, "LeadSource")),
        ("ActionCode".into(), field(&lead, "ActionCode")),
        ("OfferTitle".into(), field(&lead, "OfferTitle")),
        ("Description".into(), field(&lead, "Description")),
    ]);
    let schema = crate::stages::decode::raw_lead_schema()?;
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .ok()?;
    writer.write_value_to_vec(record).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Outcome, Pipeline};
    use crate::stages::route::Destination;
    use std::collections::HashMap;

    fn pipeline(input_format: Format) -> Pipeline {
        crate::testkit::pipeline(&crate::testkit::generated_config(input_format))
    }

    /// Runs `count` generated leads through a pipeline, checks each lands
    /// where the generator says, and returns the pipeline's tally.
    fn run_generated(generator: &mut Generator, count: usize) -> Tally {
        let mut pipeline = pipeline(generator.options.format);
        let mut tally = Tally::default();
        for (offset, lead) in generator.by_ref().take(count).enumerate() {
            let input = crate::testkit::input(&lead.value, lead.timestamp_ms, offset as i64);
            let outcome = pipeline.process(input);
            assert!(
                outcome_matches(&outcome, &lead.expected),
                "record {offset}: expected {:?}, got {outcome:?}: {}",
                lead.expected,
                String::from_utf8_lossy(&lead.value)
            );
            tally.record(&outcome, pipeline.routing());
        }
        tally
    }

    fn outcome_matches(outcome: &Outcome, expected: &Expected) -> bool {
        match (outcome, expected) {
            (
                Outcome::Routed {
                    destination: Destination::Campaigns(_),
                    lead,
                    ..
                },
                Expected::Campaign(e, listing),
            ) => lead.storefront == *e && lead.listing() == *listing,
            (
                Outcome::Routed {
                    destination: Destination::Suppressed(r),
                    lead,
                    ..
                },
                Expected::Suppressed(e, listing),
            ) => r.as_str() == *e && lead.listing() == *listing,
            (Outcome::Duplicate { .. }, Expected::Duplicate)
            | (Outcome::TestLead, Expected::TestLead) => true,
            (Outcome::Failed(f), Expected::DeadLetter(class)) => f.class == *class,
            _ => false,
        }
    }

    #[test]
    fn the_pipeline_puts_every_generated_lead_where_the_generator_says() {
        let mut generator = Generator::new(GeneratorOptions {
            duplicate_ratio: 0.2,
            malformed_ratio: 0.05,
            dnc_ratio: 0.05,
            test_lead_ratio: 0.05,
            ..GeneratorOptions::default()
        });
        let tally = run_generated(&mut generator, 20_000);
        assert_eq!(&tally, generator.expected());
        // Every kind of record occurred.
        let t = generator.expected();
        assert!(t.campaigns.len() == 2 && t.suppressed.len() == 2);
        assert!(t.duplicates > 0 && t.test_leads > 0);
        for listing in Listing::ALL {
            assert!(
                t.listings.contains_key(listing.as_str()),
                "{listing} never generated"
            );
        }
        for class in [
            "json_syntax",
            "json_shape",
            "missing_email",
            "invalid_email",
            "unknown_source",
        ] {
            assert!(t.dead_letter.contains_key(class), "{class} never generated");
        }
    }

    #[test]
    fn duplicates_repeat_only_the_most_recent_new_persons() {
        let mut generator = Generator::new(GeneratorOptions {
            duplicate_ratio: 0.5,
            ..GeneratorOptions::default()
        });
        // The index among new persons of each person's first lead.
        let mut first: HashMap<String, usize> = HashMap::new();
        let mut farthest = 0;
        for lead in generator.by_ref().take(3 * HISTORY) {
            match lead.expected {
                Expected::Duplicate => {
                    let at = first[&lead.key];
                    let back = first.len() - at;
                    assert!(back <= HISTORY, "a duplicate of the person {back} back");
                    farthest = farthest.max(back);
                }
                Expected::Campaign(..) | Expected::Suppressed(..) => {
                    let index = first.len();
                    first.entry(lead.key).or_insert(index);
                }
                Expected::DeadLetter(_) | Expected::TestLead => {}
            }
        }
        assert!(first.len() > HISTORY, "{} new persons", first.len());
        assert!(
            farthest > HISTORY * 9 / 10,
            "farthest repeat {farthest} back"
        );
    }

    #[test]
    fn hostile_records_land_where_the_generator_says() {
        let mut generator = Generator::new(GeneratorOptions {
            hostile_ratio: 0.3,
            ..GeneratorOptions::default()
        });
        let tally = run_generated(&mut generator, 400);
        assert_eq!(&tally, generator.expected());
        for class in HOSTILE_CLASSES {
            assert!(
                tally.dead_letter.contains_key(class),
                "{class} never generated"
            );
        }
    }

    #[test]
    fn avro_records_land_where_the_generator_says_too() {
        let mut generator = Generator::new(GeneratorOptions {
            format: Format::Avro,
            malformed_ratio: 0.1,
            ..GeneratorOptions::default()
        });
        let tally = run_generated(&mut generator, 3_000);
        assert_eq!(&tally, generator.expected());
        assert!(tally.dead_letter.contains_key("avro_decode"));
    }

    #[test]
    fn the_same_seed_gives_the_same_records() {
        let a: Vec<Vec<u8>> = Generator::new(GeneratorOptions::default())
            .take(500)
            .map(|l| l.value)
            .collect();
        let b: Vec<Vec<u8>> = Generator::new(GeneratorOptions::default())
            .take(500)
            .map(|l| l.value)
            .collect();
        let c: Vec<Vec<u8>> = Generator::new(GeneratorOptions {
            seed: 7,
            ..GeneratorOptions::default()
        })
        .take(500)
        .map(|l| l.value)
        .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn covers_every_documented_shape_and_action() {
        let values: Vec<String> = Generator::new(GeneratorOptions::default())
            .take(5_000)
            .map(|l| String::from_utf8_lossy(&l.value).into_owned())
            .collect();
        let any = |needle: &str| values.iter().any(|v| v.contains(needle));
        for needle in [
            "\"userDetails\"",
            "\"UserDetails\"",
            "SPZA-",
            "AppSource-",
            "AzurePortal-Create|",
            "TestDrive-StartTestDrive|",
            "\"LeadSource\":\"AzureMarketplace\"",
            "-INS|",
            "-PLT|",
            "-DNC|",
            "-Subscribe|",
            "@stateu.edu",
            "\"Country\":\"USA\"",
            "\"Country\":\"US\"",
            "MSFT_TEST_",
        ] {
            assert!(any(needle), "no generated lead contains {needle}");
        }
        assert!(
            values.iter().any(|v| !v.contains("event_id")),
            "no lead without envelope"
        );
    }
}
