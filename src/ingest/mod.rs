//! `leadflow ingest`: the front doors that bring Microsoft's leads into the
//! input topic. Whatever the door, a lead is written as `leadflow produce`
//! writes one: Microsoft's JSON shape inside the envelope (`event_id`,
//! `received_at`), keyed by person and offer. This module turns a posted
//! body into that record, or into the reason it is not a lead, with no I/O;
//! [`http`] serves it.

pub mod http;
mod limit;
pub mod table;

use serde_json::{Map, Value};

use crate::catalog::Catalog;
use crate::domain::rfc3339;
use crate::error::ErrorClass;
use crate::stages::decode::{DecodeError, Decoder, Format};
use crate::stages::enrich::identify;

/// A lead ready for the input topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: String,
    /// The hex of the person-and-offer key, or for a lead whose offer or
    /// source cannot be made out (which `run` dead-letters), its event id.
    pub key: String,
    pub value: Vec<u8>,
}

/// Why a body is not a lead; the sender is told, with a 400.
#[derive(Debug, thiserror::Error)]
#[error("not a lead: {0}")]
pub struct NotALead(pub DecodeError);

impl ErrorClass for NotALead {
    fn class(&self) -> &'static str {
        self.0.class()
    }
}

/// Wraps posted leads in the envelope, checking each the way `run`'s
/// decode stage will: by decoding the record it will read.
#[derive(Debug)]
pub struct Envelope {
    decoder: Decoder,
    catalog: Catalog,
}

impl Envelope {
    /// `max_record_bytes`: `pipeline.max_record_bytes`, the most `run`
    /// takes. `catalog` finds the offer of leads that name it only by title.
    pub fn new(max_record_bytes: usize, catalog: Catalog) -> Envelope {
        Envelope {
            decoder: Decoder::new(Format::Json, max_record_bytes),
            catalog,
        }
    }

    /// The record for a posted body, received at `now_ms`. A body the
    /// decode stage would dead-letter (not JSON, not an object, no email,
    /// a field over its limit) is refused, so the sender learns it now. A
    /// lead `run` would dead-letter later (an unknown source, say) is
    /// accepted: it is Microsoft's to send, and the dead-letter topic
    /// keeps it for a look.
    pub fn wrap(&self, body: &[u8], now_ms: i64) -> Result<Accepted, NotALead> {
        let lead = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(lead)) => lead,
            Ok(_) => {
                let shape = DecodeError::JsonShape("a lead is a JSON object".into());
                return Err(NotALead(shape));
            }
            Err(e) => return Err(NotALead(DecodeError::JsonSyntax(e.to_string()))),
        };
        // A sender's own id (a client retrying, say) is kept, so its
        // retries are one event; the decode stage holds it to its limit.
        let event_id = match lead.get("event_id") {
            Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
            _ => uuid::Uuid::now_v7().to_string(),
        };
        let (accepted, decoded) = self.enveloped(lead, event_id, now_ms);
        decoded.map(|()| accepted).map_err(NotALead)
    }

    /// The record for `lead`, whatever it holds: with `event_id` and
    /// `received_at` set, and keyed by person and offer where those can be
    /// made out (else by the event id; `run` dead-letters what is not a
    /// lead, with its fields kept).
    pub fn seal(
        &self,
        lead: Map<String, Value>,
        event_id: String,
        received_at_ms: i64,
    ) -> Accepted {
        self.enveloped(lead, event_id, received_at_ms).0
    }

    /// The record, and whether `run`'s decode stage takes it: decoded once,
    /// as `run` will read it, which also gives the key.
    fn enveloped(
        &self,
        mut lead: Map<String, Value>,
        event_id: String,
        received_at_ms: i64,
    ) -> (Accepted, Result<(), DecodeError>) {
        lead.insert("event_id".into(), Value::String(event_id.clone()));
        lead.insert("received_at".into(), Value::String(rfc3339(received_at_ms)));
        // Strings and JSON values only: serializing cannot fail.
        let value = serde_json::to_vec(&Value::Object(lead)).unwrap_or_default();
        let decoded = self.decoder.decode(Some(&value), Some(received_at_ms));
        let key = decoded
            .as_ref()
            .ok()
            .and_then(|raw| identify(raw, &self.catalog).ok())
            .map_or_else(|| event_id.clone(), |id| id.partition_key().to_hex());
        let accepted = Accepted {
            event_id,
            key,
            value,
        };
        (accepted, decoded.map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DedupeKey, Offer};

    const NOW_MS: i64 = 1_764_000_000_000;

    fn envelope() -> Envelope {
        let config = crate::testkit::generated_config(Format::Json);
        Envelope::new(65_536, config.catalog().expect("catalog"))
    }

    fn lead(extra: &str) -> String {
        format!(
            r#"{{"UserDetails":{{"Email":"Ana.Silva@Fabrikam.com"}},"LeadSource":"SPZA-PLT|contoso.sales-insights"{extra}}}"#
        )
    }

    #[test]
    fn wraps_a_lead_in_the_envelope_keyed_by_person_and_offer() {
        let accepted = envelope()
            .wrap(lead("").as_bytes(), NOW_MS)
            .expect("a lead");
        let value: Value = serde_json::from_slice(&accepted.value).expect("JSON");
        assert_eq!(value["event_id"], accepted.event_id.as_str());
        assert_eq!(value["received_at"], rfc3339(NOW_MS));
        assert_eq!(value["UserDetails"]["Email"], "Ana.Silva@Fabrikam.com");
        let offer = Offer::parse("contoso.sales-insights").expect("offer");
        let key = DedupeKey::person_offer("ana.silva@fabrikam.com", &offer).to_hex();
        assert_eq!(accepted.key, key, "as `leadflow produce` keys it");
        assert_eq!(
            uuid::Uuid::parse_str(&accepted.event_id).map(|u| u.get_version_num()),
            Ok(7)
        );
    }

    #[test]
    fn keeps_a_senders_event_id_and_replaces_its_received_at() {
        let body = lead(r#","event_id":"retry-1","received_at":"2020-01-01T00:00:00Z""#);
        let accepted = envelope().wrap(body.as_bytes(), NOW_MS).expect("a lead");
        assert_eq!(accepted.event_id, "retry-1");
        let value: Value = serde_json::from_slice(&accepted.value).expect("JSON");
        assert_eq!(value["received_at"], rfc3339(NOW_MS));
        let long = lead(&format!(r#","event_id":"{}""#, "x".repeat(200)));
        let refused = envelope()
            .wrap(long.as_bytes(), NOW_MS)
            .expect_err("too long");
        assert_eq!(refused.class(), "field_too_long");
    }

    #[test]
    fn refuses_what_is_not_a_lead_and_says_why() {
        let refused = |body: &str| {
            let error = envelope()
                .wrap(body.as_bytes(), NOW_MS)
                .expect_err("refused");
            (error.class(), error.to_string())
        };
        assert_eq!(refused("{\"UserDetails\":").0, "json_syntax");
        assert_eq!(refused("[1, 2]").0, "json_shape");
        let (class, why) = refused(r#"{"LeadSource":"SPZA-PLT|contoso.x"}"#);
        assert_eq!(class, "missing_email");
        assert!(why.contains("no email"), "{why}");
    }

    #[test]
    fn accepts_what_run_dead_letters_later_keyed_by_its_event_id() {
        let body = r#"{"event_id":"e1","UserDetails":{"Email":"kim@contoso.com"},"LeadSource":"Bing-INS|contoso.x"}"#;
        let accepted = envelope().wrap(body.as_bytes(), NOW_MS).expect("accepted");
        assert_eq!(accepted.key, "e1");
    }

    /// Partner Center's test lead, sent when a publisher saves the
    /// endpoint, must be taken (and `run` drops it as a test lead).
    #[test]
    fn takes_partner_centers_test_lead() {
        let body = r#"{"UserDetails":{"FirstName":"MSFT_TEST_636573304831318844","LastName":"MSFT_TEST_636573304831318844","Email":"MSFT_TEST_636573304831318844@test.com","Phone":"1234567890","Country":"US","Company":"MSFT_TEST_636573304831318844","Title":"MSFT_TEST_636573304831318844"},"LeadSource":"AzureMarketplace","ActionCode":"INS","OfferTitle":"Contoso Test","Description":"MSFT_TEST_636573304831318844"}"#;
        let accepted = envelope().wrap(body.as_bytes(), NOW_MS).expect("accepted");
        assert!(!accepted.event_id.is_empty());
    }
}
