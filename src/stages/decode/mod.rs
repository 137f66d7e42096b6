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
//!
//! Confluent-framed Avro (`confluent-avro`): a magic byte 0, the writer
//! schema's 4-byte big-endian registry id, then the datum. The decoder
//! reads it with writer schemas it has been given (the runner fetches
//! them from the registry: no I/O here), resolving each to the raw-lead
//! schema, and classes every way a record can fail as `schema_*`.

mod avro;
mod json;

use std::collections::HashMap;

use apache_avro::reader::datum::GenericDatumReader;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::RawLead;
use crate::error::ErrorClass;

pub use avro::{
    CONFLUENT_MAGIC, RAW_LEAD_SCHEMA, WriterAnswer, confluent_frame, raw_lead_schema,
    write_confluent_header,
};
use avro::{WriterSchema, parse_avro, parse_confluent, writer_schema};
use json::parse_json;

/// How the records of a topic are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    #[default]
    Json,
    /// A bare Avro datum (no container, no registry framing).
    Avro,
    /// An Avro datum in the Confluent wire format: magic byte 0 and the
    /// writer schema's registry id before it.
    ConfluentAvro,
}

/// Decodes raw leads of one format.
pub struct Decoder {
    max_record_bytes: usize,
    /// `None` for JSON.
    avro: Option<GenericDatumReader<'static>>,
    /// For `confluent-avro`: the writer schemas by registry id.
    writers: Option<HashMap<u32, WriterSchema>>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("avro", &self.avro.is_some())
            .field("writer_schemas", &self.writers.as_ref().map(HashMap::len))
            .field("max_record_bytes", &self.max_record_bytes)
            .finish()
    }
}

impl Decoder {
    pub fn new(format: Format, max_record_bytes: usize) -> Decoder {
        if format != Format::Json {
            // A corrupt length prefix must not make the decoder allocate
            // more than a record can hold. The setting is process-wide and
            // takes the first value set.
            apache_avro::util::max_allocation_bytes(max_record_bytes.max(1024));
        }
        let avro = match format {
            Format::Json | Format::ConfluentAvro => None,
            Format::Avro => raw_lead_schema()
                .and_then(|schema| GenericDatumReader::builder(schema).build().ok()),
        };
        Decoder {
            max_record_bytes,
            avro,
            writers: (format == Format::ConfluentAvro).then(HashMap::new),
        }
    }

    /// The writer schema id a record needs before it can be decoded: a
    /// Confluent-framed record whose id the decoder has not been given.
    pub fn missing_writer_schema(&self, bytes: Option<&[u8]>) -> Option<u32> {
        let writers = self.writers.as_ref()?;
        let (id, _) = confluent_frame(bytes?).ok()?;
        (!writers.contains_key(&id)).then_some(id)
    }

    /// Gives the decoder the registry's answer for writer schema `id`. A
    /// schema is parsed once and kept for the life of the process, like
    /// the registry's ids, which never change meaning.
    pub fn add_writer_schema(&mut self, id: u32, answer: WriterAnswer<'_>) {
        let Some(writers) = self.writers.as_mut() else {
            return;
        };
        let known = match answer {
            WriterAnswer::Avro(text) => writer_schema(text),
            WriterAnswer::Other(schema_type) => {
                WriterSchema::Unusable(format!("a {schema_type} schema, not Avro"))
            }
            WriterAnswer::Unknown => WriterSchema::Unknown,
            WriterAnswer::NotAsked => WriterSchema::NotAsked,
        };
        writers.insert(id, known);
    }

    /// Forgets what the decoder knows of writer schema `id`, so that the
    /// registry is asked again the next time a record names it (unknown
    /// ids are kept only for a while, and only so many).
    pub fn forget_writer_schema(&mut self, id: u32) {
        if let Some(writers) = self.writers.as_mut() {
            writers.remove(&id);
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
        let wire = match (&self.avro, &self.writers) {
            (Some(reader), _) => parse_avro(bytes, reader)?,
            (None, Some(writers)) => parse_confluent(bytes, writers)?,
            (None, None) => parse_json(bytes)?,
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
    #[error("record starts with byte {0}, not the Confluent wire format's magic byte 0")]
    SchemaMagicByte(u8),
    #[error("record is {0} bytes, too short for the Confluent wire format's 5-byte header")]
    SchemaFrame(usize),
    #[error("the schema registry has no schema with id {0}")]
    SchemaUnknownId(u32),
    #[error(
        "schema id {0} was not looked up: more new schema ids than the registry lookup budget allows"
    )]
    SchemaNotAsked(u32),
    #[error("schema id {id} cannot be read as a raw lead: {reason}")]
    SchemaUnusable { id: u32, reason: String },
    #[error("datum does not decode with its writer schema (id {id}): {reason}")]
    SchemaBody { id: u32, reason: String },
    #[error("writer schema id {id} does not resolve to the raw-lead schema: {reason}")]
    SchemaIncompatible { id: u32, reason: String },
    #[error("ActionCode is not a short word of letters and digits ({len} bytes)")]
    InvalidAction { len: usize },
    #[error("{field} is {len} bytes, over its {limit}-byte limit")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
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
            DecodeError::SchemaMagicByte(_) => "schema_magic_byte",
            DecodeError::SchemaFrame(_) => "schema_frame",
            DecodeError::SchemaUnknownId(_) | DecodeError::SchemaNotAsked(_) => "schema_unknown_id",
            DecodeError::SchemaUnusable { .. } => "schema_unusable",
            DecodeError::SchemaBody { .. } => "schema_body",
            DecodeError::SchemaIncompatible { .. } => "schema_incompatible",
            DecodeError::InvalidAction { .. } => "invalid_action",
            DecodeError::FieldTooLong { .. } => "field_too_long",
        }
    }

    fn schema_id(&self) -> Option<u32> {
        match self {
            DecodeError::SchemaUnknownId(id)
            | DecodeError::SchemaNotAsked(id)
            | DecodeError::SchemaUnusable { id, .. }
            | DecodeError::SchemaBody { id, .. }
            | DecodeError::SchemaIncompatible { id, .. } => Some(*id),
            _ => None,
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

/// Checks what every lead needs and builds the [`RawLead`].
fn finish(wire: WireLead, record_timestamp_ms: Option<i64>) -> Result<RawLead, DecodeError> {
    let event_time_ms = match wire.received_at {
        Some(text) => parse_rfc3339_ms(&text).ok_or(DecodeError::InvalidTimestamp(text))?,
        None => record_timestamp_ms.ok_or(DecodeError::MissingEventTime)?,
    };
    let email = wire.email.ok_or(DecodeError::MissingEmail)?;
    // Fields that identify a lead are refused when too long: cutting them
    // would make a different lead (and dedupe key) of it.
    let identity = [
        ("email", Some(&email), limits::EMAIL),
        ("event_id", wire.event_id.as_ref(), limits::EVENT_ID),
        ("LeadSource", wire.lead_source.as_ref(), limits::LEAD_SOURCE),
    ];
    for (field, value, limit) in identity {
        if let Some(len) = value.map(String::len).filter(|len| *len > limit) {
            return Err(DecodeError::FieldTooLong { field, len, limit });
        }
    }
    if let Some(action) = &wire.action_code
        && !is_action_word(action)
    {
        return Err(DecodeError::InvalidAction { len: action.len() });
    }
    Ok(RawLead {
        event_id: wire.event_id,
        event_time_ms,
        first_name: clean(wire.first_name, limits::NAME),
        last_name: clean(wire.last_name, limits::NAME),
        email,
        phone: clean(wire.phone, limits::PHONE),
        country: clean(wire.country, limits::COUNTRY),
        company: clean(wire.company, limits::NAME),
        title: clean(wire.title, limits::NAME),
        lead_source: wire.lead_source,
        action_code: wire.action_code,
        offer_title: clean(wire.offer_title, limits::NAME),
        description: clean(wire.description, limits::DESCRIPTION),
    })
}

/// The longest text leadflow takes in each field, in bytes of UTF-8.
/// Identity fields over their limit make a dead letter (`field_too_long`);
/// descriptive fields are cut to it, on a character boundary.
pub mod limits {
    /// RFC 5321 allows 64 + 1 + 255.
    pub const EMAIL: usize = 320;
    pub const EVENT_ID: usize = 128;
    pub const LEAD_SOURCE: usize = 256;
    /// An action code: a short word (`INS`, `StartTestDrive`).
    pub const ACTION_CODE: usize = 32;
    /// First and last name, company, title and offer title.
    pub const NAME: usize = 256;
    pub const PHONE: usize = 64;
    pub const COUNTRY: usize = 64;
    pub const DESCRIPTION: usize = 4_096;
}

/// Action codes are an open enumeration of short words; anything else is
/// not an action, and would otherwise become part of the dedupe key.
fn is_action_word(action: &str) -> bool {
    action.len() <= limits::ACTION_CODE
        && action
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A descriptive field made safe for campaign tools: control characters
/// and bidirectional formatting (which can make `U+202E` render a name
/// backwards) removed, cut to `limit` bytes. Empty after that means absent.
fn clean(value: Option<String>, limit: usize) -> Option<String> {
    let mut value = value?;
    // Only control bytes and non-ASCII text can hold an unsafe character;
    // most fields are plain ASCII, and the byte test is the cheap one.
    let suspect = value.bytes().any(|b| !(0x20..0x7f).contains(&b));
    if suspect && value.chars().any(unsafe_char) {
        value = value
            .chars()
            .map(|c| if c == '\n' || c == '\t' { ' ' } else { c })
            .filter(|c| !unsafe_char(*c))
            .collect::<String>()
            .trim()
            .to_owned();
    }
    if value.len() > limit {
        let mut end = limit;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    (!value.is_empty()).then_some(value)
}

/// Control characters and Unicode's bidirectional formatting characters.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
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
        // Not UTF-8 in a field leadflow ignores, and in one it reads.
        for bad in [
            &b"{\"Ignored\":\"\xff\",\"UserDetails\":{\"Email\":\"a@b.c\"}}"[..],
            &b"{\"UserDetails\":{\"Email\":\"a@b.c\",\"Company\":\"F\xc3\"}}"[..],
        ] {
            assert_eq!(
                decode_json(Some(bad), Some(1), LIMIT).map_err(|e| e.class()),
                Err("json_syntax")
            );
        }
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
        for line in include_str!("../../../tests/data/raw-leads.jsonl").lines() {
            let from_json = decode(line);
            let datum = crate::generate::to_raw_avro(line.as_bytes()).expect("a lead object");
            let from_avro = avro.decode(Some(&datum), Some(1_700_000_000_000));
            assert_eq!(from_avro, from_json, "{line}");
        }
    }

    #[test]
    fn decodes_every_shared_example_without_panicking() {
        let examples = include_str!("../../../tests/data/raw-leads.jsonl");
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

    fn with_fields(details: &str, top: &str) -> String {
        format!(
            r#"{{"UserDetails":{{"Email":"ana@fabrikam.com"{details}}},"LeadSource":"SPZA-PLT|contoso.si"{top}}}"#
        )
    }

    #[test]
    fn an_action_code_that_is_not_a_short_word_is_invalid_action() {
        let class = |action: &str| {
            let json = with_fields(
                "",
                &format!(r#","ActionCode":{}"#, serde_json::json!(action)),
            );
            decode(&json).map(|l| l.action_code).map_err(|e| e.class())
        };
        for ok in [
            "INS",
            "StartTestDrive",
            "Create",
            "Contact_Me-2",
            &"A".repeat(32),
        ] {
            assert_eq!(class(ok), Ok(Some(ok.to_owned())), "{ok}");
        }
        for bad in [
            "get it now",
            "INS;DROP",
            "é",
            &"A".repeat(33),
            &"x".repeat(2_000),
        ] {
            assert_eq!(class(bad), Err("invalid_action"), "{bad:.40}");
        }
    }

    #[test]
    fn identity_fields_over_their_limit_are_dead_letters() {
        let at_limit = "s".repeat(limits::LEAD_SOURCE - "SPZA-PLT|".len());
        let json = |source: &str| {
            format!(
                r#"{{"UserDetails":{{"Email":"ana@fabrikam.com"}},"LeadSource":"SPZA-PLT|{source}"}}"#
            )
        };
        assert!(decode(&json(&at_limit)).is_ok());
        let over = decode(&json(&format!("{at_limit}s"))).expect_err("one byte over");
        assert_eq!(over.class(), "field_too_long");
        let huge = decode(&json(&"s".repeat(60_000))).expect_err("60 KB");
        assert_eq!(huge.class(), "field_too_long");
        assert!(
            huge.to_string().len() < 100,
            "the message does not echo it: {huge}"
        );
        let local = "a".repeat(limits::EMAIL - "@fabrikam.com".len() + 1);
        let long_email = format!(
            r#"{{"UserDetails":{{"Email":"{local}@fabrikam.com"}},"LeadSource":"SPZA-PLT|x"}}"#
        );
        assert_eq!(
            decode(&long_email).map_err(|e| e.class()).err(),
            Some("field_too_long")
        );
        let id = format!(
            r#"{{"event_id":"{}","UserDetails":{{"Email":"a@b.com"}}}}"#,
            "e".repeat(129)
        );
        assert_eq!(
            decode(&id).map_err(|e| e.class()).err(),
            Some("field_too_long")
        );
    }

    #[test]
    fn descriptive_fields_lose_control_and_bidi_characters_and_are_cut() {
        let details = r#","FirstName":"An\u0000a\u202E","LastName":"\u2066Sil\u0007va\u2069","Company":"Fab\u200Frikam","Title":"\u202E\u202C""#;
        let top = format!(
            r#","Description":"line one\nline\ttwo\u001b[31m","OfferTitle":"{}""#,
            "€".repeat(200)
        );
        let lead = decode(&with_fields(details, &top)).expect("a lead");
        assert_eq!(lead.first_name.as_deref(), Some("Ana"));
        assert_eq!(lead.last_name.as_deref(), Some("Silva"));
        assert_eq!(lead.company.as_deref(), Some("Fabrikam"));
        assert_eq!(lead.title, None, "nothing left is absent");
        assert_eq!(lead.description.as_deref(), Some("line one line two[31m"));
        let title = lead.offer_title.expect("offer title");
        assert_eq!(title.len(), 255, "cut on a character boundary below 256");
        let long = with_fields("", &format!(r#","Description":"{}""#, "d".repeat(10_000)));
        let lead = decode(&long).expect("a lead");
        assert_eq!(lead.description.map(|d| d.len()), Some(limits::DESCRIPTION));
    }
}
