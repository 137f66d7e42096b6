//! Records leadflow must not take as they are: malformed ones and hostile
//! ones it must dead-letter, and hostile-looking ones it must still accept.

use serde_json::{Map, Value, json};

use super::catalog::OFFERS;
use super::{Expected, GeneratedLead, Generator, Person};
use crate::domain::rfc3339;

/// The dead-letter classes of hostile records ([`GeneratorOptions::hostile_ratio`](super::GeneratorOptions::hostile_ratio)).
pub const HOSTILE_CLASSES: [&str; 4] = [
    "oversized",
    "future_event_time",
    "field_too_long",
    "invalid_action",
];

/// `lead` serialized with a `Padding` field (which leadflow ignores) that
/// brings it to `size` bytes.
fn padded(lead: &Map<String, Value>, size: usize) -> Vec<u8> {
    let mut lead = lead.clone();
    lead.insert("Padding".into(), Value::String(String::new()));
    let base = serde_json::to_vec(&Value::Object(lead.clone())).unwrap_or_default();
    lead.insert(
        "Padding".into(),
        Value::String("p".repeat(size.saturating_sub(base.len()))),
    );
    serde_json::to_vec(&Value::Object(lead)).unwrap_or_default()
}

/// Sets a field of the lead's `UserDetails`, whatever the case of its name.
fn set_user_field(lead: &mut Map<String, Value>, field: &str, value: &str) {
    let name = lead
        .keys()
        .find(|k| k.eq_ignore_ascii_case("UserDetails"))
        .cloned()
        .unwrap_or_else(|| "UserDetails".into());
    let mut details = match lead.remove(&name) {
        Some(Value::Object(details)) => details,
        _ => Map::new(),
    };
    details.insert(field.into(), Value::String(value.into()));
    lead.insert(name, Value::Object(details));
}

impl Generator {
    /// A new person's lead as a JSON object, for hostile edits.
    fn editable(&mut self, n: u64, time_ms: i64) -> (Person, Map<String, Value>) {
        let person = self.new_person(n, false);
        let value = self.render(&person, &person.email.clone(), time_ms, None);
        let lead = match serde_json::from_slice(&value) {
            Ok(Value::Object(lead)) => lead,
            _ => Map::new(),
        };
        (person, lead)
    }

    /// A hostile record leadflow must dead-letter, and its class.
    pub(super) fn hostile(&mut self, n: u64, time_ms: i64) -> GeneratedLead {
        let limit = self.options.max_record_bytes;
        let (_, mut lead) = self.editable(n, time_ms);
        let text = |s: String| Value::String(s);
        let class = match self.rng.u8(..6) {
            0 => {
                let size = limit + 1 + self.rng.usize(..1_000);
                return GeneratedLead {
                    key: self.event_id(),
                    value: padded(&lead, size),
                    timestamp_ms: time_ms,
                    expected: Expected::DeadLetter("oversized"),
                };
            }
            1 => {
                lead.insert("received_at".into(), text("9999-12-31T23:59:59Z".into()));
                "future_event_time"
            }
            2 => {
                let ahead = crate::metrics::now_ms() + 181 * 86_400_000;
                lead.insert("received_at".into(), text(rfc3339(ahead)));
                "future_event_time"
            }
            3 => {
                let huge = "x".repeat((limit / 2).min(520_000));
                lead.insert("LeadSource".into(), text(format!("SPZA-PLT|{huge}")));
                "field_too_long"
            }
            4 => {
                let garbage: String = (0..(limit / 4).min(100_000))
                    .map(|_| self.rng.alphanumeric())
                    .collect();
                lead.insert("ActionCode".into(), text(format!("{garbage} !")));
                "invalid_action"
            }
            _ => {
                let email = format!("{}@fabrikam.com", "a".repeat(400));
                set_user_field(&mut lead, "Email", &email);
                "field_too_long"
            }
        };
        GeneratedLead {
            key: self.event_id(),
            value: serde_json::to_vec(&Value::Object(lead)).unwrap_or_default(),
            timestamp_ms: time_ms,
            expected: Expected::DeadLetter(class),
        }
    }

    /// A hostile-looking record that is a lead all the same: just under the
    /// size limit, or with control and bidirectional characters in names.
    pub(super) fn hostile_but_valid(&mut self, n: u64, time_ms: i64) -> GeneratedLead {
        let limit = self.options.max_record_bytes;
        let (person, mut lead) = self.editable(n, time_ms);
        let value = if self.rng.bool() {
            padded(&lead, limit - self.rng.usize(..100))
        } else {
            set_user_field(&mut lead, "FirstName", "\u{202E}An\u{0007}a");
            set_user_field(&mut lead, "Company", "Fab\u{0000}rikam\u{2066}");
            serde_json::to_vec(&Value::Object(lead)).unwrap_or_default()
        };
        self.remembered(person, value, time_ms)
    }

    pub(super) fn malformed(&mut self, n: u64, time_ms: i64) -> (Vec<u8>, &'static str) {
        let mut person = self.new_person(n, false);
        match self.rng.u8(..5) {
            0 => {
                let mut value = self.render(&person, &person.email.clone(), time_ms, None);
                value.truncate(value.len() / 2);
                (value, "json_syntax")
            }
            1 => (self.render(&person, "", time_ms, None), "missing_email"),
            2 => {
                person.email = format!("{}.at.nowhere{n}", person.first.to_lowercase());
                let email = person.email.clone();
                (self.render(&person, &email, time_ms, None), "invalid_email")
            }
            3 => {
                let value = json!({
                    "event_id": self.event_id(),
                    "UserDetails": {"Email": person.email},
                    "LeadSource": format!("Bing-INS|{}", OFFERS[person.offer].id),
                });
                (
                    serde_json::to_vec(&value).unwrap_or_default(),
                    "unknown_source",
                )
            }
            _ => (br#"["not","a","lead"]"#.to_vec(), "json_shape"),
        }
    }
}
