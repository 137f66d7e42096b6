//! decode: bytes → [`RawLead`], from JSON or from Avro.
//!
//! JSON: Microsoft's lead payload with or without the `event_id` /
//! `received_at` envelope, with field names in any case (`UserDetails` and
//! `userDetails` both occur), numbers where strings were expected (phones),
//! and any optional field missing, null or empty. Avro: a datum of
//! `schemas/raw-lead.avsc`, without framing. Rejects, with a precise class,
//! what cannot be a lead: bytes that do not parse, a parsed value that is not
//! a lead, an absent email, an unparsable `received_at`, and records over the
//! size limit. Never panics on input.

use std::fmt;
use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::RawLead;
use crate::error::ErrorClass;

/// How the records of a topic are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    #[default]
    Json,
    /// A bare Avro datum (no container, no registry framing).
    Avro,
}

/// The raw-lead schema, for Avro input.
pub const RAW_LEAD_SCHEMA: &str = include_str!("../../schemas/raw-lead.avsc");

/// The parsed raw-lead schema. It is compiled in and checked by a unit
/// test; readers borrow it for the life of the process.
static RAW_LEAD: LazyLock<Option<apache_avro::Schema>> =
    LazyLock::new(|| apache_avro::Schema::parse_str(RAW_LEAD_SCHEMA).ok());

/// The raw-lead schema, parsed once.
pub fn raw_lead_schema() -> Option<&'static apache_avro::Schema> {
    RAW_LEAD.as_ref()
}

/// Decodes raw leads of one format.
pub struct Decoder {
    max_record_bytes: usize,
    /// `None` for JSON.
    avro: Option<GenericDatumReader<'static>>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("avro", &self.avro.is_some())
            .field("max_record_bytes", &self.max_record_bytes)
            .finish()
    }
}

impl Decoder {
    pub fn new(format: Format, max_record_bytes: usize) -> Decoder {
        let avro = match format {
            Format::Json => None,
            Format::Avro => {
                // A corrupt length prefix must not make the decoder allocate
                // more than a record can hold. The setting is process-wide
                // and takes the first value set.
                apache_avro::util::max_allocation_bytes(max_record_bytes.max(1024));
                raw_lead_schema()
                    .and_then(|schema| GenericDatumReader::builder(schema).build().ok())
            }
        };
        Decoder {
            max_record_bytes,
            avro,
        }
    }

    /// Decodes one record. `record_timestamp_ms` is the event time used
    /// when the lead carries no `received_at`.
    pub fn decode(
        &self,
        bytes: Option<&[u8]>,
        record_timestamp_ms: Option<i64>,
    ) -> Result<RawLead, DecodeError> {
        let bytes = bytes.ok_or(DecodeError::EmptyRecord)?;
        if bytes.len() > self.max_record_bytes {
            return Err(DecodeError::Oversized {
                size: bytes.len(),
                limit: self.max_record_bytes,
            });
        }
        let wire = match &self.avro {
            None => parse_json(bytes)?,
            Some(reader) => parse_avro(bytes, reader)?,
        };
        finish(wire, record_timestamp_ms)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record has no value")]
    EmptyRecord,
    #[error("record is {size} bytes, over the {limit}-byte limit")]
    Oversized { size: usize, limit: usize },
    #[error("not valid JSON: {0}")]
    JsonSyntax(String),
    #[error("JSON is not a lead: {0}")]
    JsonShape(String),
    #[error("not a raw-lead Avro datum: {0}")]
    AvroDecode(String),
    #[error("lead has no email address")]
    MissingEmail,
    #[error("received_at {0:?} is not an RFC 3339 timestamp")]
    InvalidTimestamp(String),
    #[error("lead has neither received_at nor a record timestamp")]
    MissingEventTime,
}

impl ErrorClass for DecodeError {
    fn class(&self) -> &'static str {
        match self {
            DecodeError::EmptyRecord => "empty_record",
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::JsonSyntax(_) => "json_syntax",
            DecodeError::JsonShape(_) => "json_shape",
            DecodeError::AvroDecode(_) => "avro_decode",
            DecodeError::MissingEmail => "missing_email",
            DecodeError::InvalidTimestamp(_) => "invalid_timestamp",
            DecodeError::MissingEventTime => "missing_event_time",
        }
    }
}

/// Decodes one JSON lead; see [`Decoder::decode`].
pub fn decode_json(
    bytes: Option<&[u8]>,
    record_timestamp_ms: Option<i64>,
    max_record_bytes: usize,
) -> Result<RawLead, DecodeError> {
    Decoder::new(Format::Json, max_record_bytes).decode(bytes, record_timestamp_ms)
}

fn parse_json(bytes: &[u8]) -> Result<WireLead, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::JsonShape(e.to_string()),
        _ => DecodeError::JsonSyntax(e.to_string()),
    })
}

fn parse_avro(
    bytes: &[u8],
    datum_reader: &GenericDatumReader<'_>,
) -> Result<WireLead, DecodeError> {
    use apache_avro::types::Value;
    let mut reader = bytes;
    let value = datum_reader
        .read_value(&mut reader)
        .map_err(|e| DecodeError::AvroDecode(e.to_string()))?;
    if !reader.is_empty() {
        return Err(DecodeError::AvroDecode(format!(
            "{} bytes after the datum",
            reader.len()
        )));
    }
    let Value::Record(fields) = value else {
        return Err(DecodeError::AvroDecode("not a record".into()));
    };
    let mut lead = WireLead::default();
    for (name, value) in fields {
        match top_field(&name) {
            TopField::EventId => lead.event_id = avro_text(value),
            TopField::ReceivedAt => lead.received_at = avro_text(value),
            TopField::LeadSource => lead.lead_source = avro_text(value),
            TopField::ActionCode => lead.action_code = avro_text(value),
            TopField::OfferTitle => lead.offer_title = avro_text(value),
            TopField::Description => lead.description = avro_text(value),
            TopField::UserDetails => {
                let Value::Record(details) = value else {
                    continue;
                };
                for (name, value) in details {
                    if let Some(slot) = lead.user_slot(user_field(&name)) {
                        *slot = avro_text(value);
                    }
                }
            }
            TopField::Other => {}
        }
    }
    Ok(lead)
}

/// A text field of an Avro datum: trimmed, empty meaning absent.
fn avro_text(value: apache_avro::types::Value) -> Option<String> {
    use apache_avro::types::Value;
    match value {
        Value::Union(_, inner) => avro_text(*inner),
        Value::String(s) => {
            let trimmed = s.trim();
            (!trimmed.is_empty()).then(|| trimmed.to_owned())
        }
        _ => None,
    }
}

/// Checks what every lead needs and builds the [`RawLead`].
fn finish(wire: WireLead, record_timestamp_ms: Option<i64>) -> Result<RawLead, DecodeError> {
    let event_time_ms = match wire.received_at {
        Some(text) => parse_rfc3339_ms(&text).ok_or(DecodeError::InvalidTimestamp(text))?,
        None => record_timestamp_ms.ok_or(DecodeError::MissingEventTime)?,
    };
    let email = wire.email.ok_or(DecodeError::MissingEmail)?;
    Ok(RawLead {
        event_id: wire.event_id,
        event_time_ms,
        first_name: wire.first_name,
        last_name: wire.last_name,
        email,
        phone: wire.phone,
        country: wire.country,
        company: wire.company,
        title: wire.title,
        lead_source: wire.lead_source,
        action_code: wire.action_code,
        offer_title: wire.offer_title,
        description: wire.description,
    })
}

/// Parses an RFC 3339 timestamp to milliseconds since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The payload as read, before the required fields are checked.
#[derive(Default)]
struct WireLead {
    event_id: Option<String>,
    received_at: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    country: Option<String>,
    company: Option<String>,
    title: Option<String>,
    lead_source: Option<String>,
    action_code: Option<String>,
    offer_title: Option<String>,
    description: Option<String>,
}

impl WireLead {
    /// Where a `UserDetails` field goes; `None` for fields leadflow ignores.
    fn user_slot(&mut self, field: UserField) -> Option<&mut Option<String>> {
        Some(match field {
            UserField::FirstName => &mut self.first_name,
            UserField::LastName => &mut self.last_name,
            UserField::Email => &mut self.email,
            UserField::Phone => &mut self.phone,
            UserField::Country => &mut self.country,
            UserField::Company => &mut self.company,
            UserField::Title => &mut self.title,
            UserField::Other => return None,
        })
    }
}

/// Field names are matched case-insensitively, so they are resolved by hand
/// rather than with `#[derive(Deserialize)]`, which matches exactly.
enum TopField {
    EventId,
    ReceivedAt,
    UserDetails,
    LeadSource,
    ActionCode,
    OfferTitle,
    Description,
    Other,
}

enum UserField {
    FirstName,
    LastName,
    Email,
    Phone,
    Country,
    Company,
    Title,
    Other,
}

fn top_field(name: &str) -> TopField {
    let is = |candidate: &str| name.eq_ignore_ascii_case(candidate);
    if is("event_id") || is("eventId") {
        TopField::EventId
    } else if is("received_at") || is("receivedAt") {
        TopField::ReceivedAt
    } else if is("UserDetails") {
        TopField::UserDetails
    } else if is("LeadSource") {
        TopField::LeadSource
    } else if is("ActionCode") {
        TopField::ActionCode
    } else if is("OfferTitle") {
        TopField::OfferTitle
    } else if is("Description") {
        TopField::Description
    } else {
        TopField::Other
    }
}

fn user_field(name: &str) -> UserField {
    let is = |candidate: &str| name.eq_ignore_ascii_case(candidate);
    if is("FirstName") {
        UserField::FirstName
    } else if is("LastName") {
        UserField::LastName
    } else if is("Email") {
        UserField::Email
    } else if is("Phone") {
        UserField::Phone
    } else if is("Country") {
        UserField::Country
    } else if is("Company") {
        UserField::Company
    } else if is("Title") {
        UserField::Title
    } else {
        UserField::Other
    }
}

/// A map key resolved through a function, without allocating for it.
struct FieldName<F>(fn(&str) -> F);

impl<'de, F> DeserializeSeed<'de> for FieldName<F> {
    type Value = F;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<F, D::Error> {
        d.deserialize_str(self)
    }
}

impl<F> Visitor<'_> for FieldName<F> {
    type Value = F;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<F, E> {
        Ok((self.0)(v))
    }
}

/// A text field: a string (trimmed; empty means absent), a number (phones are
/// sometimes sent as numbers) or null.
struct Text(Option<String>);

impl<'de> de::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = Text;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a number or null")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
        let v = v.trim();
        Ok(Text((!v.is_empty()).then(|| v.to_owned())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
        Ok(Text(Some(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
        Ok(Text(Some(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
        Ok(Text(Some(v.to_string())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
        Ok(Text(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Text, E> {
        Ok(Text(None))
    }
}

impl<'de> de::Deserialize<'de> for WireLead {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WireLead, D::Error> {
        d.deserialize_map(LeadVisitor)
    }
}

struct LeadVisitor;

impl<'de> Visitor<'de> for LeadVisitor {
    type Value = WireLead;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a lead object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireLead, A::Error> {
        let mut lead = WireLead::default();
        while let Some(field) = map.next_key_seed(FieldName(top_field))? {
            match field {
                TopField::EventId => lead.event_id = map.next_value::<Text>()?.0,
                TopField::ReceivedAt => lead.received_at = map.next_value::<Text>()?.0,
                TopField::UserDetails => map.next_value_seed(UserDetails(&mut lead))?,
                TopField::LeadSource => lead.lead_source = map.next_value::<Text>()?.0,
                TopField::ActionCode => lead.action_code = map.next_value::<Text>()?.0,
                TopField::OfferTitle => lead.offer_title = map.next_value::<Text>()?.0,
                TopField::Description => lead.description = map.next_value::<Text>()?.0,
                TopField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(lead)
    }
}

/// Fills the contact fields of a lead from its `UserDetails` object (or null).
struct UserDetails<'a>(&'a mut WireLead);

impl<'de> DeserializeSeed<'de> for UserDetails<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UserDetails<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a UserDetails object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let lead = self.0;
        while let Some(field) = map.next_key_seed(FieldName(user_field))? {
            match lead.user_slot(field) {
                Some(slot) => *slot = map.next_value::<Text>()?.0,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 64 * 1024;

    fn decode(json: &str) -> Result<RawLead, DecodeError> {
        decode_json(Some(json.as_bytes()), Some(1_700_000_000_000), LIMIT)
    }

    #[test]
    fn decodes_the_enveloped_combined_form() {
        let lead = decode(
            r#"{"event_id":"e1","received_at":"2025-03-04T10:15:02Z",
            "UserDetails":{"FirstName":"Ana","LastName":"Silva","Email":"ana@fabrikam.com",
            "Phone":"351912345678","Country":"PT","Company":"Fabrikam","Title":"Head of Sales Ops"},
            "LeadSource":"SPZA-PLT|contoso.sales-insights","ActionCode":"PLT",
            "OfferTitle":"Contoso Sales Insights","Description":"Need forecasting"}"#,
        )
        .expect("valid lead");
        assert_eq!(lead.event_id.as_deref(), Some("e1"));
        assert_eq!(lead.event_time_ms, 1_741_083_302_000);
        assert_eq!(lead.email, "ana@fabrikam.com");
        assert_eq!(lead.first_name.as_deref(), Some("Ana"));
        assert_eq!(lead.phone.as_deref(), Some("351912345678"));
        assert_eq!(
            lead.lead_source.as_deref(),
            Some("SPZA-PLT|contoso.sales-insights")
        );
        assert_eq!(lead.action_code.as_deref(), Some("PLT"));
        assert_eq!(lead.description.as_deref(), Some("Need forecasting"));
    }

    #[test]
    fn field_names_are_case_insensitive_and_empty_means_absent() {
        let lead = decode(
            r#"{"userDetails":{"firstname":"","EMAIL":" Lee@x.com ","phone":16175555555,"Company":null},
            "leadsource":"AzureMarketplace","Extra":{"nested":[1,2]}}"#,
        )
        .expect("valid lead");
        assert_eq!(lead.email, "Lee@x.com");
        assert_eq!(lead.first_name, None);
        assert_eq!(lead.company, None);
        assert_eq!(lead.phone.as_deref(), Some("16175555555"));
        assert_eq!(lead.lead_source.as_deref(), Some("AzureMarketplace"));
        // No envelope: the record timestamp is the event time.
        assert_eq!(lead.event_time_ms, 1_700_000_000_000);
        assert_eq!(lead.event_id, None);
    }

    #[test]
    fn classifies_what_is_not_a_lead() {
        let class = |json: &str| decode(json).map(|_| ()).map_err(|e| e.class());
        assert_eq!(
            class(r#"{"UserDetails":{"Email":"a@b.c""#),
            Err("json_syntax")
        );
        assert_eq!(class("\u{0}garbage"), Err("json_syntax"));
        assert_eq!(class(r#"["a@b.c"]"#), Err("json_shape"));
        assert_eq!(
            class(r#"{"UserDetails":{"Email":["a@b.c"]}}"#),
            Err("json_shape")
        );
        assert_eq!(
            class(r#"{"UserDetails":{"Email":""}}"#),
            Err("missing_email")
        );
        assert_eq!(class(r#"{"LeadSource":"SPZA"}"#), Err("missing_email"));
        assert_eq!(
            class(r#"{"received_at":"yesterday","UserDetails":{"Email":"a@b.c"}}"#),
            Err("invalid_timestamp")
        );
        assert_eq!(
            decode_json(None, None, LIMIT).map_err(|e| e.class()),
            Err("empty_record")
        );
        assert_eq!(
            decode_json(Some(&[0xff, 0xfe]), None, LIMIT).map_err(|e| e.class()),
            Err("json_syntax")
        );
        let big = format!(r#"{{"Description":"{}"}}"#, "x".repeat(100));
        assert_eq!(
            decode_json(Some(big.as_bytes()), None, 64).map_err(|e| e.class()),
            Err("oversized")
        );
        assert_eq!(
            decode_json(Some(br#"{"UserDetails":{"Email":"a@b.c"}}"#), None, LIMIT)
                .map_err(|e| e.class()),
            Err("missing_event_time")
        );
    }

    #[test]
    fn avro_and_json_decode_to_the_same_lead() {
        let avro = Decoder::new(Format::Avro, LIMIT);
        for line in include_str!("../../tests/data/raw-leads.jsonl").lines() {
            let from_json = decode(line);
            let datum = crate::generate::to_raw_avro(line.as_bytes()).expect("a lead object");
            let from_avro = avro.decode(Some(&datum), Some(1_700_000_000_000));
            assert_eq!(from_avro, from_json, "{line}");
        }
    }

    #[test]
    fn classifies_what_is_not_an_avro_lead() {
        let avro = Decoder::new(Format::Avro, LIMIT);
        let class = |bytes: &[u8]| {
            avro.decode(Some(bytes), Some(0))
                .map(|_| ())
                .map_err(|e| e.class())
        };
        assert_eq!(class(b"{\"UserDetails\":{}}"), Err("avro_decode"));
        assert_eq!(class(&[0xff; 16]), Err("avro_decode"));
        let to_avro =
            |json: &str| crate::generate::to_raw_avro(json.as_bytes()).expect("a lead object");
        let mut trailing = to_avro(r#"{"UserDetails":{"Email":"a@b.c"}}"#);
        assert_eq!(class(&trailing), Ok(()));
        trailing.push(0);
        assert_eq!(class(&trailing), Err("avro_decode"));
        assert_eq!(
            class(&to_avro(r#"{"UserDetails":{}}"#)),
            Err("missing_email")
        );
    }

    #[test]
    fn decodes_every_shared_example_without_panicking() {
        let examples = include_str!("../../tests/data/raw-leads.jsonl");
        let decoded: Vec<_> = examples.lines().map(decode).collect();
        assert_eq!(decoded.len(), 12);
        // Only the example with an empty email is undecodable.
        let failures: Vec<_> = decoded
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(|e| e.class())
            .collect();
        assert_eq!(failures, vec!["missing_email"]);
    }
}
