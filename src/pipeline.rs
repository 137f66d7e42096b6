//! The stages composed: one input record in, exactly one [`Outcome`] out.
//!
//! decode → (test lead? drop) → enrich → dedupe (duplicate? drop) → score →
//! route. This is the whole of leadflow's record logic, with no Kafka in
//! it: the runtime, the generator's expectations and future offline tools
//! all call [`Pipeline::process`], so they cannot disagree. A [`Tally`]
//! counts outcomes so that every input is accounted for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{Campaign, Lead, Score};
use crate::error::{Failure, Stage};
use crate::stages::decode::decode_json;
use crate::stages::dedupe::{Deduper, Verdict};
use crate::stages::enrich::{Reference, enrich};
use crate::stages::route::{Destination, route};
use crate::stages::score::score;

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
    pub source: SourcePosition<'a>,
}

/// What became of one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Scored and routed to a campaign or to suppression.
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

/// Settings the stages need, taken from configuration once.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub reference: Reference,
    pub dedupe_window_ms: i64,
    pub max_record_bytes: usize,
}

/// The stages and their state.
#[derive(Debug)]
pub struct Pipeline {
    reference: Reference,
    deduper: Deduper,
    max_record_bytes: usize,
}

impl Pipeline {
    pub fn new(settings: PipelineSettings) -> Pipeline {
        Pipeline {
            reference: settings.reference,
            deduper: Deduper::new(settings.dedupe_window_ms),
            max_record_bytes: settings.max_record_bytes,
        }
    }

    pub fn process(&mut self, input: Input<'_>) -> Outcome {
        let mut raw = match decode_json(input.value, input.timestamp_ms, self.max_record_bytes) {
            Ok(raw) => raw,
            Err(e) => return Outcome::Failed(Failure::new(Stage::Decode, &e)),
        };
        if raw.is_test_lead() {
            return Outcome::TestLead;
        }
        if raw.event_id.is_none() {
            let SourcePosition {
                topic,
                partition,
                offset,
            } = input.source;
            raw.event_id = Some(format!("{topic}/{partition}/{offset}"));
        }
        let lead = match enrich(raw, &self.reference) {
            Ok(lead) => lead,
            Err(e) => return Outcome::Failed(Failure::new(Stage::Enrich, &e)),
        };
        if let Verdict::Duplicate { first_seen_ms } =
            self.deduper.observe(lead.dedupe_key, lead.event_time_ms)
        {
            return Outcome::Duplicate { first_seen_ms };
        }
        let score = score(&lead);
        let destination = route(&lead);
        Outcome::Routed {
            destination,
            lead: Box::new(lead),
            score,
        }
    }

    /// Keys held by the dedupe state.
    pub fn dedupe_keys(&self) -> usize {
        self.deduper.len()
    }
}

/// The campaign-lead record written to campaign and suppressed topics.
#[derive(Debug, Serialize)]
struct CampaignLead<'a> {
    event_id: Option<&'a str>,
    event_time_ms: i64,
    storefront: &'static str,
    campaign: Option<&'static str>,
    suppressed: Option<&'static str>,
    source_tag: &'static str,
    action_code: &'a str,
    publisher_id: &'a str,
    offer_id: &'a str,
    offer_title: Option<&'a str>,
    email: &'a str,
    email_domain: &'a str,
    first_name: Option<&'a str>,
    last_name: Option<&'a str>,
    phone: Option<&'a str>,
    country: Option<&'a str>,
    company: Option<&'a str>,
    title: Option<&'a str>,
    description: Option<&'a str>,
    score: i32,
    grade: &'static str,
    reasons: &'a [&'static str],
    rules_version: &'static str,
    dedupe_key: String,
}

/// Encodes a routed lead as JSON (the campaign-lead shape in `schemas/`).
pub fn encode_json(lead: &Lead, score: &Score, destination: Destination) -> Vec<u8> {
    let (campaign, suppressed) = match destination {
        Destination::Campaign(c) => (Some(c.as_str()), None),
        Destination::Suppressed(reason) => (None, Some(reason.as_str())),
    };
    let record = CampaignLead {
        event_id: lead.event_id.as_deref(),
        event_time_ms: lead.event_time_ms,
        storefront: lead.storefront.as_str(),
        campaign,
        suppressed,
        source_tag: lead.source_tag.as_str(),
        action_code: lead.action.code(),
        publisher_id: &lead.offer.publisher_id,
        offer_id: &lead.offer.offer_id,
        offer_title: lead.offer_title.as_deref(),
        email: &lead.email,
        email_domain: &lead.email_domain,
        first_name: lead.first_name.as_deref(),
        last_name: lead.last_name.as_deref(),
        phone: lead.phone.as_deref(),
        country: lead.country.as_deref(),
        company: lead.company.as_deref(),
        title: lead.title.as_deref(),
        description: lead.description.as_deref(),
        score: score.points,
        grade: score.grade.as_str(),
        reasons: &score.reasons,
        rules_version: score.rules_version,
        dedupe_key: lead.dedupe_key.to_hex(),
    };
    // Serializing this struct of strings and numbers cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Counts of outcomes. Every input lands in exactly one bucket, so
/// `inputs == nurture + demand_gen + suppressed + dead_letter + duplicates + test_leads`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub inputs: u64,
    pub nurture: u64,
    pub demand_gen: u64,
    pub suppressed: u64,
    pub duplicates: u64,
    pub test_leads: u64,
    /// Dead letters by error class.
    pub dead_letter: BTreeMap<String, u64>,
}

impl Tally {
    pub fn record(&mut self, outcome: &Outcome) {
        self.inputs += 1;
        match outcome {
            Outcome::Routed { destination, .. } => match destination {
                Destination::Campaign(Campaign::Nurture) => self.nurture += 1,
                Destination::Campaign(Campaign::DemandGeneration) => self.demand_gen += 1,
                Destination::Suppressed(_) => self.suppressed += 1,
            },
            Outcome::Duplicate { .. } => self.duplicates += 1,
            Outcome::TestLead => self.test_leads += 1,
            Outcome::Failed(failure) => {
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

    /// True when every input is accounted for by exactly one bucket.
    pub fn balances(&self) -> bool {
        self.inputs
            == self.nurture
                + self.demand_gen
                + self.suppressed
                + self.duplicates
                + self.test_leads
                + self.dead_letters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::SuppressionReason;

    fn pipeline() -> Pipeline {
        let text = r#"
            [[catalog]]
            offer = "contoso.contoso-gateway-byol"
            title = "Contoso Gateway (BYOL)"
            storefront = "azure-marketplace"
        "#;
        let config: Config = toml::from_str(text).expect("config");
        Pipeline::new(PipelineSettings {
            reference: config.reference("test").expect("catalog"),
            dedupe_window_ms: config.dedupe_window_ms(),
            max_record_bytes: 64 * 1024,
        })
    }

    fn input(value: &str, offset: i64) -> Input<'_> {
        Input {
            value: Some(value.as_bytes()),
            timestamp_ms: Some(1_741_000_000_000),
            source: SourcePosition {
                topic: "leads.raw",
                partition: 0,
                offset,
            },
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
        let json = serde_json::from_slice(&encode_json(&lead, &score, destination)).expect("json");
        (destination, lead, score, json)
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
                tally.record(&outcome);
                match outcome {
                    Outcome::Routed { destination, .. } => match destination {
                        Destination::Campaign(c) => c.as_str().to_owned(),
                        Destination::Suppressed(r) => r.as_str().to_owned(),
                    },
                    Outcome::Duplicate { .. } => "duplicate".into(),
                    Outcome::TestLead => "test".into(),
                    Outcome::Failed(f) => format!("{}:{}", f.stage, f.class),
                }
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
                "nurture",              // disposable address, policy comes later
                "decode:missing_email", // Sam, empty email
                "duplicate",            // Ana again, spelled differently
                "demand-gen",           // no envelope
            ]
        );
        assert!(tally.balances());
        assert_eq!(tally.duplicates, 2);
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
            r#"{"event_id":"e9","LeadSource":"SPZA-DNC|contoso.si","UserDetails":{"Email":"O@T.com","Title":"CIO"}}"#,
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
        assert_eq!(json["reasons"][0], "title:c-level");
        assert_eq!(json["dedupe_key"], lead.dedupe_key.to_hex());
    }
}
