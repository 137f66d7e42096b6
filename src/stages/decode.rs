//! decode: bytes → [`RawLead`].
//!
//! Accepts Microsoft's lead payload with or without the `event_id` /
//! `received_at` envelope, with field names in any case (`UserDetails` and
//! `userDetails` both occur), numbers where strings were expected (phones),
//! and any optional field missing, null or empty. Rejects, with a precise
//! class, what cannot be a lead: bytes that are not JSON, JSON that is not a
//! lead object, an absent email, an unparsable `received_at`, and records over
//! the size limit. Never panics on input.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::RawLead;
use crate::error::ErrorClass;

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
            DecodeError::MissingEmail => "missing_email",
            DecodeError::InvalidTimestamp(_) => "invalid_timestamp",
            DecodeError::MissingEventTime => "missing_event_time",
        }
    }
}

/// Decodes one JSON lead. `record_timestamp_ms` is the event time used when
/// the lead carries no `received_at` envelope.
pub fn decode_json(
    bytes: Option<&[u8]>,
    record_timestamp_ms: Option<i64>,
    max_record_bytes: usize,
) -> Result<RawLead, DecodeError> {
    let bytes = bytes.ok_or(DecodeError::EmptyRecord)?;
    if bytes.len() > max_record_bytes {
        return Err(DecodeError::Oversized {
            size: bytes.len(),
            limit: max_record_bytes,
        });
    }
    let wire: WireLead = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::JsonShape(e.to_string()),
        _ => DecodeError::JsonSyntax(e.to_string()),
    })?;
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
            let slot = match field {
                UserField::FirstName => &mut lead.first_name,
                UserField::LastName => &mut lead.last_name,
                UserField::Email => &mut lead.email,
                UserField::Phone => &mut lead.phone,
                UserField::Country => &mut lead.country,
                UserField::Company => &mut lead.company,
                UserField::Title => &mut lead.title,
                UserField::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value::<Text>()?.0;
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
