//! `leadflow tail`: reads a topic leadflow writes (or reads) and turns
//! each record into something a person or a script can read: its position,
//! key and headers (the dead-letter headers included), and its value
//! decoded as the topic's format says (JSON, or an Avro datum of the
//! campaign-lead or raw-lead schema), else shown as text.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::{Logged, Role, SetupError, check_topics, client_config, headers};
use crate::config::Config;
use crate::stages::decode::{Format, raw_lead_schema};
use crate::stages::encode::campaign_lead_schema;

#[derive(Debug, Clone, Copy, Default)]
pub struct TailOptions {
    /// Start at the oldest record rather than at the end.
    pub from_beginning: bool,
    /// Stop after this many records.
    pub max: Option<u64>,
    /// Stop once every partition is read to its end.
    pub exit_at_end: bool,
    /// Read only positions and when each record's lead entered leadflow
    /// (its `leadflow.source.timestamp` header, else its own timestamp):
    /// no other header, no value. For timing arrivals without the reader's
    /// decoding taking CPU from what is timed.
    pub positions_only: bool,
}

/// One record, readable.
#[derive(Debug, Clone, Serialize)]
pub struct TailRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// The decoded value; a string when it is neither JSON nor the
    /// topic's Avro schema (a malformed record in the dead-letter topic).
    pub value: serde_json::Value,
    /// How the value was read: `json`, `avro`, `text` or `null`.
    pub decoded_as: &'static str,
}

/// What a topic's values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    /// Campaign leads, as leadflow writes them.
    CampaignLead(Format),
    /// Raw leads as producers wrote them (the input and dead letters).
    RawLead(Format),
}

fn content_of(config: &Config, topic: &str) -> Content {
    if let Some(route) = config.routes.iter().find(|r| r.topic == topic) {
        return Content::CampaignLead(route.format.unwrap_or(config.topics.output_format));
    }
    if topic == config.topics.suppressed {
        return Content::CampaignLead(config.topics.output_format);
    }
    Content::RawLead(config.topics.input_format)
}

/// Reads `topic` with `read_committed` and hands each record to `sink`
/// until `options` says stop.
pub fn tail(
    config: &Config,
    topic: &str,
    options: TailOptions,
    mut sink: impl FnMut(TailRecord) -> std::io::Result<()>,
) -> Result<u64, TailError> {
    let kafka = &config.kafka;
    let consumer: BaseConsumer<Logged> = client_config(
        kafka,
        Role::Consumer,
        &[("isolation.level", "read_committed")],
    )
    .set("group.id", format!("{}-tail", kafka.group_id))
    .set("enable.auto.commit", "false")
    .set("enable.partition.eof", "true")
    .create_with_context(Logged)
    .map_err(SetupError::Client)?;
    let partitions = check_topics(consumer.client(), kafka, &[topic])?[0];
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
        assignment
            .add_partition_offset(topic, partition, start)
            .map_err(TailError::Kafka)?;
    }
    consumer.assign(&assignment).map_err(TailError::Kafka)?;
    let content = content_of(config, topic);
    let mut at_end = BTreeSet::new();
    let mut seen = 0;
    while options.max.is_none_or(|max| seen < max) {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                at_end.remove(&message.partition());
                seen += 1;
                let record = match options.positions_only {
                    true => position(&message),
                    false => readable(&message, content),
                };
                sink(record).map_err(TailError::Output)?;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
                if options.exit_at_end && at_end.len() == partitions {
                    break;
                }
            }
            Some(Err(e)) => return Err(TailError::Kafka(e)),
        }
    }
    Ok(seen)
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot read: {0}")]
    Kafka(KafkaError),
    #[error("cannot write: {0}")]
    Output(std::io::Error),
}

/// A record's position and timestamp only.
fn position(message: &BorrowedMessage<'_>) -> TailRecord {
    TailRecord {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message
            .headers()
            .and_then(|h| headers::get(h, headers::SOURCE_TIMESTAMP)?.parse().ok())
            .or(message.timestamp().to_millis()),
        key: None,
        headers: BTreeMap::new(),
        value: serde_json::Value::Null,
        decoded_as: "not read",
    }
}

fn readable(message: &BorrowedMessage<'_>, content: Content) -> TailRecord {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let (value, decoded_as) = match message.payload() {
        None => (serde_json::Value::Null, "null"),
        Some(bytes) => decode_value(bytes, content),
    };
    TailRecord {
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        value,
        decoded_as,
        ..position(message)
    }
}

/// The value as JSON, or via the topic's Avro schema, or as text.
fn decode_value(bytes: &[u8], content: Content) -> (serde_json::Value, &'static str) {
    let (format, schema) = match content {
        Content::CampaignLead(format) => (format, campaign_lead_schema()),
        Content::RawLead(format) => (format, raw_lead_schema()),
    };
    // Confluent-framed records are read with leadflow's own schema, which
    // is what leadflow writes; a record another writer schema wrote shows
    // as bytes.
    let (datum, label) = match format {
        Format::ConfluentAvro => match crate::stages::decode::confluent_frame(bytes) {
            Ok((_, body)) => (Some(body), "confluent-avro"),
            Err(_) => (None, ""),
        },
        Format::Avro => (Some(bytes), "avro"),
        Format::Json => (None, ""),
    };
    if let Some(mut datum) = datum
        && let Some(schema) = schema
        && let Ok(reader) = GenericDatumReader::builder(schema).build()
        && let Ok(value) = reader.read_value(&mut datum)
        && let Ok(json) = serde_json::Value::try_from(value)
    {
        return (json, label);
    }
    match serde_json::from_slice(bytes) {
        Ok(json) => (json, "json"),
        Err(_) => (
            serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()),
            "text",
        ),
    }
}

/// A record for a person: position, key, headers, then the value.
pub fn describe(record: &TailRecord) -> String {
    let mut out = format!(
        "--- {} [{}] @{}",
        record.topic, record.partition, record.offset
    );
    if let Some(ts) = record.timestamp_ms {
        out.push_str(&format!("  timestamp {ts}"));
    }
    if let Some(key) = &record.key {
        out.push_str(&format!("  key {key}"));
    }
    out.push('\n');
    for (key, value) in &record.headers {
        out.push_str(&format!("  {key}: {value}\n"));
    }
    let value = match &record.value {
        serde_json::Value::String(text) if record.decoded_as == "text" => text.clone(),
        json => serde_json::to_string_pretty(json).unwrap_or_default(),
    };
    out.push_str(&value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_as_json_avro_or_text() {
        let json = br#"{"event_id":"e1"}"#;
        let (value, how) = decode_value(json, Content::RawLead(Format::Json));
        assert_eq!((value["event_id"].as_str(), how), (Some("e1"), "json"));
        let (value, how) = decode_value(b"not json \xff", Content::RawLead(Format::Json));
        assert_eq!(how, "text");
        assert!(value.as_str().is_some_and(|t| t.starts_with("not json")));
        // An Avro topic's malformed record falls back to text too.
        let (_, how) = decode_value(b"\x02", Content::CampaignLead(Format::Avro));
        assert_eq!(how, "text");
    }

    #[test]
    fn the_topic_says_what_its_values_are() {
        let mut config = Config::default();
        config.topics.output_format = Format::Avro;
        assert_eq!(
            content_of(&config, "campaign.appsource.nurture"),
            Content::CampaignLead(Format::Avro)
        );
        assert_eq!(
            content_of(&config, "leads.suppressed"),
            Content::CampaignLead(Format::Avro)
        );
        assert_eq!(
            content_of(&config, "leads.dlq"),
            Content::RawLead(Format::Json)
        );
    }
}
