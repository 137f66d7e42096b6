//! encode: a routed lead → the bytes of a campaign-lead record, as JSON or
//! as an Avro datum of `schemas/campaign-lead.avsc`. Both carry the same
//! fields; a unit test keeps the schema and the JSON in step.

use std::sync::{Arc, LazyLock};

#[cfg(test)]
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
            Format::Json => {
                let mut object = JsonObject::new(out);
                record.write(&mut object);
                object.close();
            }
            Format::Avro => record.write(&mut AvroDatum(out)),
            Format::ConfluentAvro => {
                write_confluent_header(self.schema_id, out);
                record.write(&mut AvroDatum(out));
            }
        }
    }
}

/// The campaign-lead record written to campaign and suppressed topics.
/// The field order is the schema's: Avro writes fields by position. Its
/// serde form is the tests' oracle for the hand-written encodings.
#[derive(Debug)]
#[cfg_attr(test, derive(Serialize))]
struct CampaignLead<'a> {
    event_id: Option<&'a str>,
    event_time_ms: i64,
    storefront: &'static str,
    campaign: Option<&'a str>,
    suppressed: Option<&'static str>,
    source_tag: &'static str,
    action_code: &'a str,
    #[cfg_attr(test, serde(serialize_with = "action_codes"))]
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
    #[cfg_attr(test, serde(serialize_with = "texts"))]
    reasons: &'a [Arc<str>],
    rules_version: &'a str,
    #[cfg_attr(test, serde(serialize_with = "hex_key"))]
    dedupe_key: HexKey,
    listing: &'static str,
    offer_type: &'a str,
    publisher: &'a str,
}

#[cfg(test)]
fn action_codes<S: Serializer>(codes: &&[ActionCode], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(codes.iter().map(ActionCode::code))
}

#[cfg(test)]
fn texts<S: Serializer>(texts: &&[Arc<str>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(texts.iter().map(|t| &**t))
}

#[cfg(test)]
fn hex_key<S: Serializer>(key: &HexKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(key.as_str())
}

/// How a record format writes the fields of a campaign lead, in the
/// schema's order.
///
/// Both formats are written by hand rather than through serde: apache-avro's
/// serde serializer cost 4 µs per lead resolving each field and union by
/// name at run time, and serde_json's escaped every field name of every
/// record (7% of the whole process's CPU). The schema is fixed at compile
/// time, so its field order and names are too; the unit tests compare every
/// byte with apache-avro's and serde_json's own encodings of the same records.
///
/// `name` is the field's name as a JSON key, quoted and with its colon (see
/// `key!`); Avro has no use for it.
trait Fields {
    fn string(&mut self, name: &'static str, s: &str);
    fn optional(&mut self, name: &'static str, s: Option<&str>);
    /// Avro's `int` and `long` alike.
    fn long(&mut self, name: &'static str, n: i64);
    fn boolean(&mut self, name: &'static str, b: bool);
    fn strings<'s>(&mut self, name: &'static str, items: impl ExactSizeIterator<Item = &'s str>);
}

/// Avro's binary encoding: values only, by position.
struct AvroDatum<'a>(&'a mut Vec<u8>);

impl AvroDatum<'_> {
    /// Zig-zag, then 7 bits a byte, low first.
    fn zigzag(&mut self, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            self.0.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
    }

    fn text(&mut self, s: &str) {
        self.zigzag(s.len() as i64);
        self.0.extend_from_slice(s.as_bytes());
    }
}

impl Fields for AvroDatum<'_> {
    fn string(&mut self, _: &'static str, s: &str) {
        self.text(s);
    }

    /// `["null", "string"]`: the branch index, then the string.
    fn optional(&mut self, _: &'static str, s: Option<&str>) {
        match s {
            None => self.zigzag(0),
            Some(s) => {
                self.zigzag(1);
                self.text(s);
            }
        }
    }

    fn long(&mut self, _: &'static str, n: i64) {
        self.zigzag(n);
    }

    fn boolean(&mut self, _: &'static str, b: bool) {
        self.0.push(u8::from(b));
    }

    /// An array of strings in one block (count, items, then the 0 that ends it).
    fn strings<'s>(&mut self, _: &'static str, items: impl ExactSizeIterator<Item = &'s str>) {
        if items.len() > 0 {
            self.zigzag(items.len() as i64);
            for item in items {
                self.text(item);
            }
        }
        self.zigzag(0);
    }
}

/// A compact JSON object, as serde_json writes it: field names as given
/// (the schema's, which need no escaping), strings escaped as serde_json
/// escapes them.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    opened: bool,
}

impl<'a> JsonObject<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        JsonObject { out, opened: false }
    }

    fn name(&mut self, name: &'static str) {
        self.out.push(if self.opened { b',' } else { b'{' });
        self.opened = true;
        self.out.extend_from_slice(name.as_bytes());
    }

    fn close(self) {
        if !self.opened {
            self.out.push(b'{');
        }
        self.out.push(b'}');
    }

    /// serde_json's escapes: the two-character ones where JSON has them,
    /// `\u00xx` for the other control characters, everything else as is.
    fn text(&mut self, s: &str) {
        let bytes = s.as_bytes();
        self.out.reserve(bytes.len() + 2);
        self.out.push(b'"');
        // Nearly all text needs no escape. Checked 16 bytes at a time without
        // an early exit, the test compiles to vector instructions.
        let plain = bytes
            .chunks(16)
            .all(|chunk| chunk.iter().fold(true, |plain, &b| plain & !escaped(b)));
        if plain {
            self.out.extend_from_slice(bytes);
        } else {
            self.escape(bytes);
        }
        self.out.push(b'"');
    }

    fn escape(&mut self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let short = match b {
                b'"' => b'"',
                b'\\' => b'\\',
                b'\n' => b'n',
                b'\r' => b'r',
                b'\t' => b't',
                0x08 => b'b',
                0x0c => b'f',
                0..=0x1f => b'u',
                _ => continue,
            };
            self.out.extend_from_slice(&bytes[start..i]);
            start = i + 1;
            self.out.push(b'\\');
            self.out.push(short);
            if short == b'u' {
                self.out.extend_from_slice(b"00");
                self.out.push(HEX[usize::from(b >> 4)]);
                self.out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        self.out.extend_from_slice(&bytes[start..]);
    }
}

/// The bytes JSON text must escape.
fn escaped(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

impl Fields for JsonObject<'_> {
    fn string(&mut self, name: &'static str, s: &str) {
        self.name(name);
        self.text(s);
    }

    fn optional(&mut self, name: &'static str, s: Option<&str>) {
        match s {
            Some(s) => self.string(name, s),
            None => {
                self.name(name);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    fn long(&mut self, name: &'static str, n: i64) {
        self.name(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    fn boolean(&mut self, name: &'static str, b: bool) {
        self.name(name);
        self.out
            .extend_from_slice(if b { b"true" } else { b"false" });
    }

    fn strings<'s>(&mut self, name: &'static str, items: impl ExactSizeIterator<Item = &'s str>) {
        self.name(name);
        self.out.push(b'[');
        for (i, item) in items.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.text(item);
        }
        self.out.push(b']');
    }
}

/// A field's name as a JSON key: quoted, with its colon.
macro_rules! key {
    ($name:literal) => {
        concat!("\"", $name, "\":")
    };
}

impl CampaignLead<'_> {
    /// Every field, in the schema's order, with the schema's names.
    fn write(&self, out: &mut impl Fields) {
        out.optional(key!("event_id"), self.event_id);
        out.long(key!("event_time_ms"), self.event_time_ms);
        out.string(key!("storefront"), self.storefront);
        out.optional(key!("campaign"), self.campaign);
        out.optional(key!("suppressed"), self.suppressed);
        out.string(key!("source_tag"), self.source_tag);
        out.string(key!("action_code"), self.action_code);
        let earlier = self.earlier_actions.iter().map(ActionCode::code);
        out.strings(key!("earlier_actions"), earlier);
        out.string(key!("publisher_id"), self.publisher_id);
        out.string(key!("offer_id"), self.offer_id);
        out.optional(key!("offer_title"), self.offer_title);
        out.string(key!("email"), self.email);
        out.string(key!("email_domain"), self.email_domain);
        out.string(key!("registrable_domain"), self.registrable_domain);
        out.string(key!("email_class"), self.email_class);
        out.optional(key!("first_name"), self.first_name);
        out.optional(key!("last_name"), self.last_name);
        out.optional(key!("phone"), self.phone);
        out.optional(key!("phone_e164"), self.phone_e164);
        out.optional(key!("country"), self.country);
        out.optional(key!("country_name"), self.country_name);
        out.optional(key!("region"), self.region);
        out.optional(key!("company"), self.company);
        out.optional(key!("title"), self.title);
        out.optional(key!("seniority"), self.seniority);
        out.long(key!("completeness"), i64::from(self.completeness));
        out.optional(key!("description"), self.description);
        out.long(key!("score"), i64::from(self.score));
        out.long(key!("behaviour"), i64::from(self.behaviour));
        out.long(key!("fit"), i64::from(self.fit));
        out.string(key!("grade"), self.grade);
        out.boolean(key!("mql"), self.mql);
        out.strings(key!("reasons"), self.reasons.iter().map(|r| &**r));
        out.string(key!("rules_version"), self.rules_version);
        out.string(key!("dedupe_key"), self.dedupe_key.as_str());
        out.string(key!("listing"), self.listing);
        out.string(key!("offer_type"), self.offer_type);
        out.string(key!("publisher"), self.publisher);
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

    /// Records over absent and present optionals, empty and full arrays,
    /// small, large and negative numbers, and text that needs escaping in
    /// JSON.
    fn cases() -> Vec<(Lead, Score, Destination, Option<&'static str>)> {
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
        let mut escaped = full.clone();
        escaped.description = Some(
            "q\" b\\ s/ nl\n t\t cr\r bs\u{8} ff\u{c} nul\u{0} us\u{1f} del\u{7f} é 😀 \u{2028}"
                .into(),
        );
        escaped.company = Some("\"".into());
        escaped.first_name = Some("\u{1}".into());
        escaped.event_time_ms = i64::MIN;
        let rules = ScoringRules::default_rules();
        let mut negative = score(&full, &rules);
        negative.behaviour = -40;
        negative.fit = i32::from(i16::MIN);
        negative.mql = true;
        negative.reasons.clear();
        let (bare_score, full_score, escaped_score) = (
            score(&bare, &rules),
            score(&full, &rules),
            score(&escaped, &rules),
        );
        use crate::domain::SuppressionReason::{DisposableEmail, DoNotContact};
        vec![
            (
                bare,
                bare_score,
                Destination::Suppressed(DoNotContact),
                None,
            ),
            (
                full.clone(),
                full_score,
                Destination::Suppressed(DisposableEmail),
                None,
            ),
            (
                full,
                negative,
                Destination::Campaigns(Default::default()),
                Some("demand-gen"),
            ),
            (
                escaped,
                escaped_score,
                Destination::Campaigns(Default::default()),
                Some("n\"x"),
            ),
        ]
    }

    /// Every byte of the hand-written Avro encoding equals apache-avro's
    /// encoding of the same record.
    #[test]
    fn avro_bytes_equal_apache_avros_own_encoding() {
        let schema = campaign_lead_schema().expect("schema");
        let oracle = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .expect("writer");
        let mut ours = Vec::new();
        for (lead, score, destination, campaign) in cases() {
            Encoder::new(Format::Avro).encode(&lead, &score, destination, campaign, &mut ours);
            let record = CampaignLead::new(&lead, &score, destination, campaign);
            let theirs = oracle
                .write_ser_to_vec(&record)
                .expect("apache-avro encodes it");
            assert_eq!(ours, theirs, "{record:?}");
        }
    }

    /// Every byte of the hand-written JSON equals serde_json's encoding of
    /// the same record, escapes included.
    #[test]
    fn json_bytes_equal_serde_jsons_own_encoding() {
        let mut ours = Vec::new();
        for (lead, score, destination, campaign) in cases() {
            Encoder::new(Format::Json).encode(&lead, &score, destination, campaign, &mut ours);
            let record = CampaignLead::new(&lead, &score, destination, campaign);
            let theirs = serde_json::to_vec(&record).expect("serde_json encodes it");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }
}
