//! encode: a routed lead → the bytes of a campaign-lead record, as JSON or
//! as an Avro datum of `schemas/campaign-lead.avsc`. Both carry the same
//! fields; a unit test keeps the schema and the JSON in step.

use std::sync::{Arc, LazyLock};

use serde::{Serialize, Serializer};

use crate::catalog::UNKNOWN;
use crate::domain::{ActionCode, HexKey, Lead, Score};
use crate::stages::decode::{Format, write_confluent_header};
use crate::stages::route::Destination;

/// The campaign-lead schema, for Avro output.
pub const CAMPAIGN_LEAD_SCHEMA: &str = include_str!("../../schemas/campaign-lead.avsc");

static CAMPAIGN_LEAD: LazyLock<Option<apache_avro::Schema>> =
    LazyLock::new(|| apache_avro::Schema::parse_str(CAMPAIGN_LEAD_SCHEMA).ok());

/// The compiled campaign-lead schema, for readers of campaign records.
pub fn campaign_lead_schema() -> Option<&'static apache_avro::Schema> {
    CAMPAIGN_LEAD.as_ref()
}

/// Encodes campaign leads in one format.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    format: Format,
    /// The registry id of `schemas/campaign-lead.avsc` under the topic's
    /// subject, framed before each `confluent-avro` datum.
    schema_id: u32,
}

impl Encoder {
    /// An encoder for `json` or `avro`; for `confluent-avro` see
    /// [`Encoder::confluent`].
    pub fn new(format: Format) -> Encoder {
        Encoder {
            format,
            schema_id: 0,
        }
    }

    /// An encoder for `confluent-avro`, framing each datum with the id the
    /// registry gave the campaign-lead schema under the topic's subject.
    pub fn confluent(schema_id: u32) -> Encoder {
        Encoder {
            format: Format::ConfluentAvro,
            schema_id,
        }
    }

    /// Encodes a routed lead for one campaign or, with `campaign` `None`,
    /// as suppressed, replacing what `out` held. Cannot fail: every value
    /// the record holds has a place in both formats.
    pub fn encode(
        &self,
        lead: &Lead,
        score: &Score,
        destination: Destination,
        campaign: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        let record = CampaignLead::new(lead, score, destination, campaign);
        match self.format {
            // Serializing strings and numbers into memory cannot fail.
            Format::Json => {
                let _ = serde_json::to_writer(&mut *out, &record);
            }
            Format::Avro => record.write_avro(&mut AvroDatum(out)),
            Format::ConfluentAvro => {
                write_confluent_header(self.schema_id, out);
                record.write_avro(&mut AvroDatum(out));
            }
        }
    }
}

/// The campaign-lead record written to campaign and suppressed topics.
/// The field order is the schema's: Avro writes fields by position.
#[derive(Debug, Serialize)]
struct CampaignLead<'a> {
    event_id: Option<&'a str>,
    event_time_ms: i64,
    storefront: &'static str,
    campaign: Option<&'a str>,
    suppressed: Option<&'static str>,
    source_tag: &'static str,
    action_code: &'a str,
    #[serde(serialize_with = "action_codes")]
    earlier_actions: &'a [ActionCode],
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
    #[serde(serialize_with = "texts")]
    reasons: &'a [Arc<str>],
    rules_version: &'a str,
    #[serde(serialize_with = "hex_key")]
    dedupe_key: HexKey,
    listing: &'static str,
    offer_type: &'a str,
    publisher: &'a str,
}

fn action_codes<S: Serializer>(codes: &&[ActionCode], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(codes.iter().map(ActionCode::code))
}

fn texts<S: Serializer>(texts: &&[Arc<str>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(texts.iter().map(|t| &**t))
}

fn hex_key<S: Serializer>(key: &HexKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(key.as_str())
}

/// Avro's binary encoding of the values a campaign lead holds.
///
/// Written here rather than through apache-avro's serde serializer, which
/// cost 4 µs per lead (twice the whole stage budget) resolving each field
/// and union by name at run time. The schema is fixed at compile time, so
/// its field order is fixed too; the unit tests compare every byte with
/// apache-avro's own encoding of the same records.
struct AvroDatum<'a>(&'a mut Vec<u8>);

impl AvroDatum<'_> {
    /// `long` and `int`: zig-zag, then 7 bits a byte, low first.
    fn long(&mut self, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            self.0.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
    }

    fn string(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.0.extend_from_slice(s.as_bytes());
    }

    /// `["null", "string"]`: the branch index, then the string.
    fn optional(&mut self, s: Option<&str>) {
        match s {
            None => self.long(0),
            Some(s) => {
                self.long(1);
                self.string(s);
            }
        }
    }

    /// An array of strings in one block (count, items, then the 0 that ends it).
    fn strings<'s>(&mut self, items: impl ExactSizeIterator<Item = &'s str>) {
        if items.len() > 0 {
            self.long(items.len() as i64);
            for item in items {
                self.string(item);
            }
        }
        self.long(0);
    }

    fn boolean(&mut self, b: bool) {
        self.0.push(u8::from(b));
    }
}

impl CampaignLead<'_> {
    fn write_avro(&self, out: &mut AvroDatum<'_>) {
        out.optional(self.event_id);
        out.long(self.event_time_ms);
        out.string(self.storefront);
        out.optional(self.campaign);
        out.optional(self.suppressed);
        out.string(self.source_tag);
        out.string(self.action_code);
        out.strings(self.earlier_actions.iter().map(ActionCode::code));
        out.string(self.publisher_id);
        out.string(self.offer_id);
        out.optional(self.offer_title);
        out.string(self.email);
        out.string(self.email_domain);
        out.string(self.registrable_domain);
        out.string(self.email_class);
        out.optional(self.first_name);
        out.optional(self.last_name);
        out.optional(self.phone);
        out.optional(self.phone_e164);
        out.optional(self.country);
        out.optional(self.country_name);
        out.optional(self.region);
        out.optional(self.company);
        out.optional(self.title);
        out.optional(self.seniority);
        out.long(i64::from(self.completeness));
        out.optional(self.description);
        out.long(i64::from(self.score));
        out.long(i64::from(self.behaviour));
        out.long(i64::from(self.fit));
        out.string(self.grade);
        out.boolean(self.mql);
        out.strings(self.reasons.iter().map(|r| &**r));
        out.string(self.rules_version);
        out.string(self.dedupe_key.as_str());
        out.string(self.listing);
        out.string(self.offer_type);
        out.string(self.publisher);
    }
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
        let catalogued = lead.catalogued.as_deref();
        CampaignLead {
            event_id: lead.event_id.as_deref(),
            event_time_ms: lead.event_time_ms,
            storefront: lead.storefront.as_str(),
            campaign,
            suppressed,
            source_tag: lead.source_tag.as_str(),
            action_code: lead.action.code(),
            earlier_actions: &lead.earlier_actions,
            publisher_id: &lead.offer.publisher_id,
            offer_id: &lead.offer.offer_id,
            offer_title: Some(
                catalogued.map_or(lead.offer_title.as_deref().unwrap_or(UNKNOWN), |c| {
                    c.title.as_str()
                }),
            ),
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
            reasons: &score.reasons,
            rules_version: &score.rules_version,
            dedupe_key: lead.dedupe_key.hex(),
            listing: lead.listing().as_str(),
            offer_type: lead.offer_type(),
            publisher: lead.publisher(),
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

        let mut json = Vec::new();
        Encoder::new(Format::Json).encode(&lead, &score, destination, Some("nurture"), &mut json);
        let json: serde_json::Value = serde_json::from_slice(&json).expect("valid json");

        let mut avro = Vec::new();
        Encoder::new(Format::Avro).encode(&lead, &score, destination, Some("nurture"), &mut avro);
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

    fn catalogued() -> Arc<crate::catalog::CatalogOffer> {
        Arc::new(crate::catalog::CatalogOffer {
            offer: crate::domain::Offer::parse("fabrikam.workshop").expect("offer"),
            title: "Copilot Readiness: 2-Week Workshop".into(),
            storefront: Storefront::AppSource,
            offer_type: crate::catalog::OfferType::ConsultingService,
            publisher: "Fabrikam, Inc.".into(),
            listing: crate::catalog::Listing::ConsultingService,
        })
    }

    fn json_of(lead: &Lead) -> serde_json::Value {
        let score = score(lead, &ScoringRules::default_rules());
        let destination = Destination::Campaigns(Default::default());
        let mut json = Vec::new();
        Encoder::new(Format::Json).encode(lead, &score, destination, None, &mut json);
        serde_json::from_slice(&json).expect("valid json")
    }

    #[test]
    fn records_carry_the_catalogs_listing_type_publisher_and_title() {
        let mut lead = fixtures::lead(Storefront::AppSource, ActionCode::PartnerLedTrial);
        lead.offer_title = Some("Workshop as Microsoft spelt it".into());
        lead.catalogued = Some(catalogued());
        let json = json_of(&lead);
        assert_eq!(json["listing"], "consulting-service");
        assert_eq!(json["offer_type"], "consulting-service");
        assert_eq!(json["publisher"], "Fabrikam, Inc.");
        assert_eq!(json["offer_title"], "Copilot Readiness: 2-Week Workshop");

        // Not in the catalog: unknown, and the title as sent if any.
        lead.catalogued = None;
        let json = json_of(&lead);
        for field in ["listing", "offer_type", "publisher"] {
            assert_eq!(json[field], "unknown", "{field}");
        }
        assert_eq!(json["offer_title"], "Workshop as Microsoft spelt it");
        lead.offer_title = None;
        assert_eq!(json_of(&lead)["offer_title"], "unknown");
    }

    /// The schema only ever grows with defaults: readers of the new version
    /// read records of the first (BACKWARD), and readers of the first read
    /// the new ones (FORWARD), so consumers and producers upgrade in any
    /// order. The registry holds the same to its own check in
    /// tests/registry.rs.
    #[test]
    fn the_schema_is_compatible_both_ways_with_its_first_version() {
        use apache_avro::schema_compatibility::SchemaCompatibility;
        let first = include_str!("../../tests/data/campaign-lead.v1.avsc");
        let first = apache_avro::Schema::parse_str(first).expect("first version");
        let now = campaign_lead_schema().expect("schema");
        SchemaCompatibility::can_read(&first, now).expect("new reads old");
        SchemaCompatibility::can_read(now, &first).expect("old reads new");

        // And a record written today, read with the first version.
        let mut lead = fixtures::lead(Storefront::AppSource, ActionCode::Install);
        lead.catalogued = Some(catalogued());
        let score = score(&lead, &ScoringRules::default_rules());
        let mut avro = Vec::new();
        let destination = Destination::Campaigns(Default::default());
        Encoder::new(Format::Avro).encode(&lead, &score, destination, None, &mut avro);
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(now)
            .reader_schema(&first)
            .build()
            .expect("reader");
        let value = reader.read_value(&mut avro.as_slice()).expect("read as v1");
        let json = serde_json::Value::try_from(value).expect("as json");
        assert_eq!(json["offer_id"], lead.offer.offer_id.as_str());
        assert!(json.get("listing").is_none());
    }

    /// Every byte of the hand-written Avro encoding equals apache-avro's
    /// encoding of the same record, over absent and present optionals,
    /// empty and full arrays, and small, large and negative numbers.
    #[test]
    fn avro_bytes_equal_apache_avros_own_encoding() {
        let schema = campaign_lead_schema().expect("schema");
        let oracle = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .expect("writer");
        let bare = fixtures::lead(Storefront::AzureMarketplace, ActionCode::Install);
        let mut full = fixtures::lead(Storefront::AppSource, ActionCode::Other("Subscribe".into()));
        full.event_id = Some("leads.raw/3/12345".into());
        full.event_time_ms = 1_764_000_000_123;
        full.offer_title = Some("Contoso Gateway (BYOL) – ünïcode".into());
        full.first_name = Some("Ana".into());
        full.last_name = Some("Silva".into());
        full.phone = Some("351912345678".into());
        full.phone_e164 = Some("+351912345678".into());
        full.country = crate::reference::country("PT");
        full.company = Some("Fabrikam".into());
        full.title = Some("CIO".into());
        full.seniority = Some(crate::domain::Seniority::CLevel);
        full.completeness = 100;
        full.description = Some("x".repeat(300));
        full.earlier_actions = vec![ActionCode::Install, ActionCode::PartnerLedTrial];
        full.dedupe_key = crate::domain::DedupeKey(u128::MAX - 7);
        full.catalogued = Some(catalogued());
        let rules = ScoringRules::default_rules();
        let mut negative = score(&full, &rules);
        negative.behaviour = -40;
        negative.fit = i32::from(i16::MIN);
        negative.mql = true;
        negative.reasons.clear();
        let cases = [
            (
                &bare,
                score(&bare, &rules),
                Destination::Suppressed(crate::domain::SuppressionReason::DoNotContact),
                None,
            ),
            (
                &full,
                score(&full, &rules),
                Destination::Suppressed(crate::domain::SuppressionReason::DisposableEmail),
                None,
            ),
            (
                &full,
                negative,
                Destination::Campaigns(Default::default()),
                Some("demand-gen"),
            ),
        ];
        let mut ours = Vec::new();
        for (lead, score, destination, campaign) in cases {
            Encoder::new(Format::Avro).encode(lead, &score, destination, campaign, &mut ours);
            let record = CampaignLead::new(lead, &score, destination, campaign);
            let theirs = oracle
                .write_ser_to_vec(&record)
                .expect("apache-avro encodes it");
            assert_eq!(ours, theirs, "{record:?}");
        }
    }
}
