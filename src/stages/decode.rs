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

use std::collections::HashMap;
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
    /// An Avro datum in the Confluent wire format: magic byte 0 and the
    /// writer schema's registry id before it.
    ConfluentAvro,
}

/// The magic byte that starts a Confluent-framed record.
pub const CONFLUENT_MAGIC: u8 = 0;

/// The writer schema's registry id of a Confluent-framed record, and the
/// datum after it.
pub fn confluent_frame(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match bytes {
        [CONFLUENT_MAGIC, a, b, c, d, body @ ..] => {
            Ok((u32::from_be_bytes([*a, *b, *c, *d]), body))
        }
        [CONFLUENT_MAGIC, ..] => Err(DecodeError::SchemaFrame(bytes.len())),
        [magic, ..] => Err(DecodeError::SchemaMagicByte(*magic)),
        [] => Err(DecodeError::SchemaFrame(0)),
    }
}

/// The Confluent frame's header for schema `id`, before a datum.
pub fn write_confluent_header(id: u32, out: &mut Vec<u8>) {
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
}

/// The schema registry's answer for one writer schema id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterAnswer<'a> {
    /// An Avro schema, as text.
    Avro(&'a str),
    /// A schema of another type (`PROTOBUF`, `JSON`).
    Other(&'a str),
    /// No schema has this id.
    Unknown,
    /// The registry was not asked: the process is over its lookup budget
    /// (a flood of new ids, say).
    NotAsked,
}

/// What the decoder knows of one writer schema id.
enum WriterSchema {
    /// Decodes with this reader; `resolve` when the writer schema differs
    /// from the raw-lead schema, so values are resolved to it.
    Avro {
        reader: GenericDatumReader<'static>,
        resolve: bool,
    },
    /// The registry has no schema under this id.
    Unknown,
    /// The registry was not asked about this id (see [`WriterAnswer::NotAsked`]).
    NotAsked,
    /// The registry's schema cannot be read as a raw lead: why.
    Unusable(String),
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
    let value = read_datum(bytes, datum_reader).map_err(DecodeError::AvroDecode)?;
    wire_lead(value)
}

/// One whole datum: bytes left after it are an error too.
fn read_datum(
    bytes: &[u8],
    datum_reader: &GenericDatumReader<'_>,
) -> Result<apache_avro::types::Value, String> {
    let mut reader = WholeDatum(bytes);
    let value = datum_reader
        .read_value(&mut reader)
        .map_err(|e| e.to_string())?;
    if !reader.0.is_empty() {
        return Err(format!("{} bytes after the datum", reader.0.len()));
    }
    Ok(value)
}

/// The datum's bytes, read so that running out is an error. apache-avro
/// reads a union at the end of its input as null (and a string there as
/// empty) rather than fail, so a truncated record decoded "successfully"
/// with its last fields missing; a read past the end here fails instead.
struct WholeDatum<'a>(&'a [u8]);

impl std::io::Read for WholeDatum<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() && !buf.is_empty() {
            return Err(std::io::Error::other("the datum ends early"));
        }
        self.0.read(buf)
    }
}

fn parse_confluent(
    bytes: &[u8],
    writers: &HashMap<u32, WriterSchema>,
) -> Result<WireLead, DecodeError> {
    let (id, body) = confluent_frame(bytes)?;
    let (reader, resolve) = match writers.get(&id) {
        Some(WriterSchema::Avro { reader, resolve }) => (reader, *resolve),
        Some(WriterSchema::Unusable(reason)) => {
            return Err(DecodeError::SchemaUnusable {
                id,
                reason: reason.clone(),
            });
        }
        // The runner asks the registry before decoding; an id it could not
        // learn is as unknown as one the registry denies.
        Some(WriterSchema::Unknown) | None => return Err(DecodeError::SchemaUnknownId(id)),
        Some(WriterSchema::NotAsked) => return Err(DecodeError::SchemaNotAsked(id)),
    };
    let value =
        read_datum(body, reader).map_err(|reason| DecodeError::SchemaBody { id, reason })?;
    let value = match (resolve, raw_lead_schema()) {
        (true, Some(raw_lead)) => {
            value
                .resolve(raw_lead)
                .map_err(|e| DecodeError::SchemaIncompatible {
                    id,
                    reason: e.to_string(),
                })?
        }
        _ => value,
    };
    wire_lead(value)
}

/// A writer schema from the registry, ready to decode with.
fn writer_schema(text: &str) -> WriterSchema {
    let schema = match apache_avro::Schema::parse_str(text) {
        Ok(schema) => schema,
        Err(e) => return WriterSchema::Unusable(format!("not an Avro schema: {e}")),
    };
    let resolve = raw_lead_schema()
        .is_none_or(|raw_lead| raw_lead.canonical_form() != schema.canonical_form());
    // Registry ids are few and never change meaning, so each schema lives
    // as long as the process, which lets the reader borrow it.
    let schema: &'static apache_avro::Schema = Box::leak(Box::new(schema));
    match GenericDatumReader::builder(schema).build() {
        Ok(reader) => WriterSchema::Avro { reader, resolve },
        Err(e) => WriterSchema::Unusable(e.to_string()),
    }
}

/// The raw-lead fields of an Avro record value, by name, so that a
/// writer's extra fields are ignored.
fn wire_lead(value: apache_avro::types::Value) -> Result<WireLead, DecodeError> {
    use apache_avro::types::Value;
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
    if value.chars().any(unsafe_char) {
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

    /// A raw lead as Confluent's serializer writes it under writer schema
    /// `id`: the raw-lead schema itself (v1), or v2 with one more optional
    /// field, whose value is set.
    fn confluent_lead(id: u32, v2: bool) -> (Vec<u8>, Option<String>) {
        use apache_avro::types::Value;
        let json = br#"{"event_id":"e1","received_at":"2025-03-04T10:15:02Z",
            "UserDetails":{"FirstName":"Ana","Email":"ana@fabrikam.com","Country":"PT"},
            "LeadSource":"SPZA-PLT|contoso.sales-insights","ActionCode":"PLT"}"#;
        let datum = crate::generate::to_raw_avro(json).expect("a lead");
        let v1 = raw_lead_schema().expect("schema");
        let mut framed = Vec::new();
        write_confluent_header(id, &mut framed);
        if !v2 {
            framed.extend_from_slice(&datum);
            return (framed, None);
        }
        let mut schema: serde_json::Value =
            serde_json::from_str(RAW_LEAD_SCHEMA).expect("schema json");
        if let Some(fields) = schema["fields"].as_array_mut() {
            fields.push(serde_json::json!(
                {"name": "campaign_hint", "type": ["null", "string"], "default": null}
            ));
        }
        let text = schema.to_string();
        let v2_schema = apache_avro::Schema::parse_str(&text).expect("v2");
        let reader = GenericDatumReader::builder(v1).build().expect("reader");
        let Ok(Value::Record(mut fields)) = reader.read_value(&mut &datum[..]) else {
            panic!("v1 datum");
        };
        fields.push((
            "campaign_hint".into(),
            Value::Union(1, Box::new(Value::String("spring".into()))),
        ));
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(&v2_schema)
            .build()
            .and_then(|writer| writer.write_value_to_vec(Value::Record(fields)))
            .expect("v2 datum");
        framed.extend_from_slice(&body);
        (framed, Some(text))
    }

    fn confluent_decoder() -> Decoder {
        Decoder::new(Format::ConfluentAvro, LIMIT)
    }

    #[test]
    fn confluent_records_decode_with_their_writer_schema_v1_and_v2() {
        let mut decoder = confluent_decoder();
        let (v1, _) = confluent_lead(7, false);
        let (v2, v2_schema) = confluent_lead(8, true);
        assert_eq!(decoder.missing_writer_schema(Some(&v1)), Some(7));
        decoder.add_writer_schema(7, WriterAnswer::Avro(RAW_LEAD_SCHEMA));
        decoder.add_writer_schema(8, WriterAnswer::Avro(v2_schema.as_deref().unwrap_or("")));
        assert_eq!(decoder.missing_writer_schema(Some(&v1)), None);
        assert_eq!(decoder.missing_writer_schema(Some(&v2)), None);
        for bytes in [v1, v2] {
            let lead = decoder.decode(Some(&bytes), None).expect("decodes");
            assert_eq!(lead.email, "ana@fabrikam.com");
            assert_eq!(lead.event_id.as_deref(), Some("e1"));
            assert_eq!(lead.country.as_deref(), Some("PT"));
            assert_eq!(lead.action_code.as_deref(), Some("PLT"));
        }
    }

    #[test]
    fn confluent_failures_are_schema_classes_with_the_schema_id() {
        let mut decoder = confluent_decoder();
        let (v1, _) = confluent_lead(7, false);
        let class = |d: &Decoder, bytes: &[u8]| {
            d.decode(Some(bytes), Some(1))
                .err()
                .map(|e| (e.class(), e.schema_id()))
        };
        // Not framed at all, or too short for the header.
        assert_eq!(
            class(&decoder, b"{\"a\":1}"),
            Some(("schema_magic_byte", None))
        );
        assert_eq!(class(&decoder, &[0, 0, 7]), Some(("schema_frame", None)));
        // An id the registry has not been asked about, or denies.
        assert_eq!(class(&decoder, &v1), Some(("schema_unknown_id", Some(7))));
        decoder.add_writer_schema(7, WriterAnswer::Unknown);
        assert_eq!(class(&decoder, &v1), Some(("schema_unknown_id", Some(7))));
        // A truncated body, cut anywhere (apache-avro alone reads a union
        // at the end of its input as null), or one with bytes after it.
        decoder.add_writer_schema(9, WriterAnswer::Avro(RAW_LEAD_SCHEMA));
        let mut with_id_9 = v1.clone();
        with_id_9[4] = 9;
        assert!(decoder.decode(Some(&with_id_9), None).is_ok());
        for cut in 6..with_id_9.len() {
            assert_eq!(
                class(&decoder, &with_id_9[..cut]),
                Some(("schema_body", Some(9))),
                "cut at {cut}"
            );
        }
        with_id_9.push(0);
        assert_eq!(class(&decoder, &with_id_9), Some(("schema_body", Some(9))));
        // Bare Avro is read the same way.
        let bare = Decoder::new(Format::Avro, LIMIT);
        let datum = &v1[5..];
        assert!(bare.decode(Some(datum), None).is_ok());
        for cut in 1..datum.len() {
            let error = bare.decode(Some(&datum[..cut]), Some(1)).err();
            assert_eq!(
                error.as_ref().map(ErrorClass::class),
                Some("avro_decode"),
                "cut at {cut}"
            );
        }
        // A schema that is not Avro, or no schema at all.
        decoder.add_writer_schema(10, WriterAnswer::Other("PROTOBUF"));
        decoder.add_writer_schema(11, WriterAnswer::Avro("{not a schema"));
        for id in [10u32, 11] {
            let mut other = v1.clone();
            other[1..5].copy_from_slice(&id.to_be_bytes());
            assert_eq!(class(&decoder, &other), Some(("schema_unusable", Some(id))));
        }
        // A writer schema that does not resolve to the raw lead: the
        // user's details written as a plain string.
        let writer = r#"{"type":"record","name":"RawLead","namespace":"dev.leadflow",
            "fields":[{"name":"UserDetails","type":"string"}]}"#;
        decoder.add_writer_schema(12, WriterAnswer::Avro(writer));
        let mut record = Vec::new();
        write_confluent_header(12, &mut record);
        record.extend_from_slice(&[6, b'a', b'n', b'a']);
        assert_eq!(
            class(&decoder, &record),
            Some(("schema_incompatible", Some(12)))
        );
    }

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
