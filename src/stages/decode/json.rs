//! JSON leads: Microsoft's payload shapes read into a [`WireLead`], field
//! names in any case, text fields as strings, numbers or null.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::{DecodeError, TopField, WireLead, top_field, user_field};

/// JSON is UTF-8 (RFC 8259), so the whole record is checked once, and
/// serde_json reads it as text without checking each string again. A record
/// that is not UTF-8 anywhere, even in a field leadflow ignores, is refused.
pub(super) fn parse_json(bytes: &[u8]) -> Result<WireLead, DecodeError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| DecodeError::JsonSyntax(format!("not UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::JsonShape(e.to_string()),
        _ => DecodeError::JsonSyntax(e.to_string()),
    })
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
