//! encode: a routed lead → the bytes of a campaign-lead record, as JSON or
//! as an Avro datum of `schemas/campaign-lead.avsc`. Both carry the same
//! fields; a unit test keeps the schema and the JSON in step.

use std::sync::LazyLock;

use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;

use crate::domain::{ActionCode, Lead, Score};
use crate::error::ErrorClass;
use crate::stages::decode::Format;
use crate::stages::route::Destination;

/// The campaign-lead schema, for Avro output.
pub const CAMPAIGN_LEAD_SCHEMA: &str = include_str!("../../schemas/campaign-lead.avsc");

static CAMPAIGN_LEAD: LazyLock<Option<apache_avro::Schema>> =
    LazyLock::new(|| apache_avro::Schema::parse_str(CAMPAIGN_LEAD_SCHEMA).ok());

/// The compiled campaign-lead schema, for readers of campaign records.
pub fn campaign_lead_schema() -> Option<&'static apache_avro::Schema> {
    CAMPAIGN_LEAD.as_ref()
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode the campaign lead as Avro: {0}")]
    Avro(String),
}

impl ErrorClass for EncodeError {
    fn class(&self) -> &'static str {
        match self {
            EncodeError::Avro(_) => "avro_encode",
        }
    }
}

/// Encodes campaign leads in one format.
pub struct Encoder {
    /// `None` for JSON.
    avro: Option<GenericDatumWriter<'static>>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("avro", &self.avro.is_some())
            .finish()
    }
}

impl Encoder {
    pub fn new(format: Format) -> Encoder {
        let avro = match format {
            Format::Json => None,
            // The schema is compiled in and checked by a unit test.
            Format::Avro => CAMPAIGN_LEAD
                .as_ref()
                .and_then(|schema| GenericDatumWriter::builder(schema).build().ok()),
        };
        Encoder { avro }
    }

    /// Encodes a routed lead for one campaign or, with `campaign` `None`,
    /// as suppressed.
    pub fn encode(
        &self,
        lead: &Lead,
        score: &Score,
        destination: Destination,
        campaign: Option<&str>,
    ) -> Result<Vec<u8>, EncodeError> {
        let record = CampaignLead::new(lead, score, destination, campaign);
        match &self.avro {
            // Serializing this struct of strings and numbers cannot fail.
            None => Ok(serde_json::to_vec(&record).unwrap_or_default()),
            Some(writer) => writer
                .write_ser_to_vec(&record)
                .map_err(|e| EncodeError::Avro(e.to_string())),
        }
    }
}

/// The campaign-lead record written to campaign and suppressed topics.
#[derive(Debug, Serialize)]
struct CampaignLead<'a> {
    event_id: Option<&'a str>,
    event_time_ms: i64,
    storefront: &'static str,
    campaign: Option<&'a str>,
    suppressed: Option<&'static str>,
    source_tag: &'static str,
    action_code: &'a str,
    earlier_actions: Vec<&'a str>,
    publisher_id: &'a str,
    offer_id: &'a str,
    offer_title: Option<&'a str>,
    email: &'a str,
    email_domain: &'a str,
    registrable_domain: &'a str,
    email_class: &'static str,
    first_name: Option<&'a str>,
    last_name: Option<&'a str>,
    phone: Option<&'a str>,
    phone_e164: Option<&'a str>,
    country: Option<&'a str>,
    country_name: Option<&'static str>,
    region: Option<&'static str>,
    company: Option<&'a str>,
    title: Option<&'a str>,
    seniority: Option<&'static str>,
    completeness: u8,
    description: Option<&'a str>,
    score: u8,
    behaviour: i32,
    fit: i32,
    grade: &'static str,
    mql: bool,
    reasons: Vec<&'a str>,
    rules_version: &'a str,
    dedupe_key: String,
}

impl<'a> CampaignLead<'a> {
    fn new(
        lead: &'a Lead,
        score: &'a Score,
        destination: Destination,
        campaign: Option<&'a str>,
    ) -> Self {
        let suppressed = match destination {
            Destination::Campaigns(_) => None,
            Destination::Suppressed(reason) => Some(reason.as_str()),
        };
        let country = lead.country;
        CampaignLead {
            event_id: lead.event_id.as_deref(),
            event_time_ms: lead.event_time_ms,
            storefront: lead.storefront.as_str(),
            campaign,
            suppressed,
            source_tag: lead.source_tag.as_str(),
            action_code: lead.action.code(),
            earlier_actions: lead.earlier_actions.iter().map(ActionCode::code).collect(),
            publisher_id: &lead.offer.publisher_id,
            offer_id: &lead.offer.offer_id,
            offer_title: lead.offer_title.as_deref(),
            email: &lead.email,
            email_domain: &lead.email_domain,
            registrable_domain: &lead.registrable_domain,
            email_class: lead.email_class.as_str(),
            first_name: lead.first_name.as_deref(),
            last_name: lead.last_name.as_deref(),
            phone: lead.phone.as_deref(),
            phone_e164: lead.phone_e164.as_deref(),
            country: country
                .map(|c| c.alpha2.as_str())
                .or(lead.country_code.as_deref()),
            country_name: country.map(|c| c.name),
            region: country.and_then(|c| c.region.as_deref()),
            company: lead.company.as_deref(),
            title: lead.title.as_deref(),
            seniority: lead.seniority.map(|s| s.as_str()),
            completeness: lead.completeness,
            description: lead.description.as_deref(),
            score: score.points,
            behaviour: score.behaviour,
            fit: score.fit,
            grade: score.grade.as_str(),
            mql: score.mql,
            reasons: score.reasons.iter().map(|r| &**r).collect(),
            rules_version: &score.rules_version,
            dedupe_key: lead.dedupe_key.to_hex(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Storefront, fixtures};
    use crate::stages::route::RoutingTable;
    use crate::stages::score::{ScoringRules, score};

    #[test]
    fn avro_and_json_records_carry_the_same_fields_and_values() {
        let mut lead = fixtures::lead(Storefront::AppSource, ActionCode::PartnerLedTrial);
        lead.country = crate::reference::country("PT");
        lead.title = Some("CIO".into());
        lead.earlier_actions = vec![ActionCode::Install];
        let score = score(&lead, &ScoringRules::default_rules());
        let destination =
            crate::stages::route::route(&lead, &score, &RoutingTable::default()).expect("routed");

        let json = Encoder::new(Format::Json)
            .encode(&lead, &score, destination, Some("nurture"))
            .expect("json");
        let json: serde_json::Value = serde_json::from_slice(&json).expect("valid json");

        let avro = Encoder::new(Format::Avro)
            .encode(&lead, &score, destination, Some("nurture"))
            .expect("avro");
        let schema = apache_avro::Schema::parse_str(CAMPAIGN_LEAD_SCHEMA).expect("schema");
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .expect("reader");
        let value = reader
            .read_value(&mut avro.as_slice())
            .expect("a campaign-lead datum");
        let from_avro = serde_json::Value::try_from(value).expect("as json");

        assert_eq!(from_avro, json);
        assert_eq!(json["campaign"], "nurture");
        assert_eq!(json["earlier_actions"][0], "INS");
        assert_eq!(json["country_name"], "Portugal");
    }
}
