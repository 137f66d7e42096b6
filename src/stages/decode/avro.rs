//! Avro datums, bare or Confluent-framed: the raw-lead schema, the wire
//! frame, the registry's writer schemas, and reading one datum into a
//! [`WireLead`] by field name.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;

use super::{DecodeError, TopField, WireLead, top_field, user_field};

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
pub(super) enum WriterSchema {
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
pub const RAW_LEAD_SCHEMA: &str = include_str!("../../../schemas/raw-lead.avsc");

/// The parsed raw-lead schema. It is compiled in and checked by a unit
/// test; readers borrow it for the life of the process.
static RAW_LEAD: LazyLock<Option<apache_avro::Schema>> =
    LazyLock::new(|| apache_avro::Schema::parse_str(RAW_LEAD_SCHEMA).ok());

/// The raw-lead schema, parsed once.
pub fn raw_lead_schema() -> Option<&'static apache_avro::Schema> {
    RAW_LEAD.as_ref()
}

pub(super) fn parse_avro(
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

pub(super) fn parse_confluent(
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
pub(super) fn writer_schema(text: &str) -> WriterSchema {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use crate::stages::decode::{Decoder, Format};

    const LIMIT: usize = 64 * 1024;

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
}
