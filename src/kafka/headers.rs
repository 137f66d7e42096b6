//! Record headers leadflow writes. Dead letters keep the original headers
//! and add `leadflow.error.*` and `leadflow.source.*`, after Kafka Connect's
//! `__connect.errors.*` and Kafka Streams' KIP-1034, so operators know the
//! pattern. Every output carries its source position and pipeline version,
//! which is what lets a checker tie each output to exactly one input.

use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::error::Failure;
use crate::pipeline::SourcePosition;

pub const ERROR_STAGE: &str = "leadflow.error.stage";
pub const ERROR_CLASS: &str = "leadflow.error.class";
pub const ERROR_MESSAGE: &str = "leadflow.error.message";
/// On a dead letter that does not carry the whole input: what was cut,
/// `value:BYTES` (the value, cut to `pipeline.max_record_bytes`) and/or
/// `key+headers:BYTES` (the input's key and headers, dropped), comma-separated.
pub const ERROR_TRUNCATED: &str = "leadflow.error.truncated";
/// On a dead letter about a Confluent-framed record's schema: the writer
/// schema's registry id.
pub const SCHEMA_ID: &str = "leadflow.schema.id";
pub const SOURCE_TOPIC: &str = "leadflow.source.topic";
pub const SOURCE_PARTITION: &str = "leadflow.source.partition";
pub const SOURCE_OFFSET: &str = "leadflow.source.offset";
/// On every output: the input record's timestamp, in milliseconds since the
/// Unix epoch. The output itself is stamped when written (see
/// `kafka::copy_of`), so this is what tells when the lead entered.
pub const SOURCE_TIMESTAMP: &str = "leadflow.source.timestamp";
/// The input record's key, on records in the repartition topic only.
pub const SOURCE_KEY: &str = "leadflow.source.key";
const SOURCE_PREFIX: &str = "leadflow.source.";
pub const PIPELINE_VERSION: &str = "leadflow.pipeline.version";
pub const SUPPRESSED_REASON: &str = "leadflow.suppressed.reason";
pub const STOREFRONT: &str = "leadflow.storefront";
pub const GRADE: &str = "leadflow.grade";
pub const RULES_VERSION: &str = "leadflow.rules.version";

fn add(headers: OwnedHeaders, key: &str, value: &str) -> OwnedHeaders {
    headers.insert(Header {
        key,
        value: Some(value),
    })
}

/// What a campaign or suppressed record says about itself in headers, so
/// consumers can filter without decoding the value.
#[derive(Debug, Clone, Copy)]
pub struct LeadHeaders<'a> {
    pub storefront: &'a str,
    pub grade: &'a str,
    pub rules_version: &'a str,
    pub suppressed_reason: Option<&'a str>,
}

/// Headers of a campaign or suppressed record.
pub fn output(
    source: (SourcePosition<'_>, Option<i64>),
    pipeline_version: &str,
    lead: LeadHeaders<'_>,
) -> OwnedHeaders {
    let headers = provenance(OwnedHeaders::new_with_capacity(9), source, pipeline_version);
    let headers = add(headers, STOREFRONT, lead.storefront);
    let headers = add(headers, GRADE, lead.grade);
    let headers = add(headers, RULES_VERSION, lead.rules_version);
    match lead.suppressed_reason {
        Some(reason) => add(headers, SUPPRESSED_REASON, reason),
        None => headers,
    }
}

/// Headers of a dead letter: the original ones, then why and whence.
pub fn dead_letter<H: Headers>(
    original: Option<&H>,
    source: (SourcePosition<'_>, Option<i64>),
    pipeline_version: &str,
    (failure, truncated): (&Failure, Option<&str>),
) -> OwnedHeaders {
    let headers = without_source(original, 9);
    let headers = match truncated {
        Some(what) => add(headers, ERROR_TRUNCATED, what),
        None => headers,
    };
    let headers = add(headers, ERROR_STAGE, failure.stage.as_str());
    let headers = add(headers, ERROR_CLASS, failure.class);
    let headers = add(headers, ERROR_MESSAGE, &failure.message);
    let headers = match failure.schema_id {
        Some(id) => add(headers, SCHEMA_ID, &id.to_string()),
        None => headers,
    };
    provenance(headers, source, pipeline_version)
}

/// Headers of a raw lead forwarded to the repartition topic: the original
/// ones, then where it entered leadflow and under which key, so that
/// outputs and dead letters can name the input record.
pub fn forwarded<H: Headers>(
    original: Option<&H>,
    source: SourcePosition<'_>,
    key: Option<&[u8]>,
) -> OwnedHeaders {
    let headers = without_source(original, 4);
    let headers = add(headers, SOURCE_TOPIC, source.topic);
    let headers = add(headers, SOURCE_PARTITION, &source.partition.to_string());
    let headers = add(headers, SOURCE_OFFSET, &source.offset.to_string());
    match key {
        Some(key) => headers.insert(Header {
            key: SOURCE_KEY,
            value: Some(key),
        }),
        None => headers,
    }
}

/// Where a forwarded record entered leadflow, and its original key.
pub fn source_of<H: Headers>(headers: &H) -> Option<(SourcePosition<'_>, Option<&[u8]>)> {
    let position = SourcePosition {
        topic: get(headers, SOURCE_TOPIC)?,
        partition: get(headers, SOURCE_PARTITION)?.parse().ok()?,
        offset: get(headers, SOURCE_OFFSET)?.parse().ok()?,
    };
    let key = headers
        .iter()
        .filter(|h| h.key == SOURCE_KEY)
        .last()
        .and_then(|h| h.value);
    Some((position, key))
}

/// The original headers less any `leadflow.source.*`, which leadflow
/// writes afresh, with room for `extra` more.
fn without_source<H: Headers>(original: Option<&H>, extra: usize) -> OwnedHeaders {
    let count = original.map_or(0, Headers::count);
    let mut headers = OwnedHeaders::new_with_capacity(count + extra);
    for header in original.into_iter().flat_map(Headers::iter) {
        if !header.key.starts_with(SOURCE_PREFIX) {
            headers = headers.insert(header);
        }
    }
    headers
}

fn provenance(
    headers: OwnedHeaders,
    (source, timestamp_ms): (SourcePosition<'_>, Option<i64>),
    pipeline_version: &str,
) -> OwnedHeaders {
    // Numbers through a stack buffer: three allocations a record otherwise.
    let mut number = itoa::Buffer::new();
    let headers = match timestamp_ms {
        Some(ts) => add(headers, SOURCE_TIMESTAMP, number.format(ts)),
        None => headers,
    };
    let headers = add(headers, SOURCE_TOPIC, source.topic);
    let headers = add(headers, SOURCE_PARTITION, number.format(source.partition));
    let headers = add(headers, SOURCE_OFFSET, number.format(source.offset));
    add(headers, PIPELINE_VERSION, pipeline_version)
}

/// The value of the last header named `key`, as UTF-8.
pub fn get<'a, H: Headers>(headers: &'a H, key: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter(|h| h.key == key)
        .last()
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Stage;

    #[test]
    fn dead_letters_keep_original_headers_and_say_why_and_whence() {
        let original = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("00-abc-01"),
        });
        let failure = Failure {
            stage: Stage::Decode,
            class: "json_syntax",
            message: "not valid JSON: EOF".into(),
            schema_id: None,
        };
        let source = SourcePosition {
            topic: "leads.raw",
            partition: 3,
            offset: 42,
        };
        let headers = dead_letter(
            Some(&original),
            (source, Some(1_741_000_000_000)),
            "leadflow/test rules/r1",
            (&failure, None),
        );
        assert_eq!(get(&headers, SCHEMA_ID), None);
        assert_eq!(get(&headers, "traceparent"), Some("00-abc-01"));
        assert_eq!(get(&headers, ERROR_STAGE), Some("decode"));
        assert_eq!(get(&headers, ERROR_CLASS), Some("json_syntax"));
        assert_eq!(get(&headers, ERROR_MESSAGE), Some("not valid JSON: EOF"));
        assert_eq!(get(&headers, SOURCE_TOPIC), Some("leads.raw"));
        assert_eq!(get(&headers, SOURCE_PARTITION), Some("3"));
        assert_eq!(get(&headers, SOURCE_OFFSET), Some("42"));
        assert_eq!(get(&headers, SOURCE_TIMESTAMP), Some("1741000000000"));
        assert_eq!(
            get(&headers, PIPELINE_VERSION),
            Some("leadflow/test rules/r1")
        );
        assert_eq!(headers.count(), 9);
    }

    #[test]
    fn suppressed_records_say_why() {
        let source = SourcePosition {
            topic: "t",
            partition: 0,
            offset: 1,
        };
        let lead = LeadHeaders {
            storefront: "appsource",
            grade: "B",
            rules_version: "r1",
            suppressed_reason: Some("do_not_contact"),
        };
        let headers = output((source, None), "v", lead);
        assert_eq!(get(&headers, SUPPRESSED_REASON), Some("do_not_contact"));
        assert_eq!(get(&headers, STOREFRONT), Some("appsource"));
        assert_eq!(get(&headers, GRADE), Some("B"));
        assert_eq!(get(&headers, RULES_VERSION), Some("r1"));
        let campaign = LeadHeaders {
            suppressed_reason: None,
            ..lead
        };
        assert_eq!(
            get(&output((source, None), "v", campaign), SUPPRESSED_REASON),
            None
        );
    }

    #[test]
    fn forwarded_records_carry_their_source_through_to_dead_letters() {
        let original = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some("00-abc-01"),
            })
            .insert(Header {
                key: SOURCE_OFFSET,
                value: Some("stale"),
            });
        let raw = SourcePosition {
            topic: "leads.raw",
            partition: 2,
            offset: 7,
        };
        let headers = forwarded(Some(&original), raw, Some(b"k1".as_slice()));
        let (source, key) = source_of(&headers).expect("source headers");
        assert_eq!(
            (source.topic, source.partition, source.offset),
            ("leads.raw", 2, 7)
        );
        assert_eq!(key, Some(b"k1".as_slice()));
        assert_eq!(headers.count(), 5);
        let failure = Failure {
            stage: Stage::Produce,
            class: "produce_rejected",
            message: "too large".into(),
            schema_id: Some(7),
        };
        let dead = dead_letter(
            Some(&headers),
            (source, None),
            "v",
            (&failure, Some("value:2000000")),
        );
        assert_eq!(get(&dead, "traceparent"), Some("00-abc-01"));
        assert_eq!(get(&dead, SOURCE_OFFSET), Some("7"));
        assert_eq!(dead.iter().filter(|h| h.key == SOURCE_OFFSET).count(), 1);
        assert_eq!(dead.iter().filter(|h| h.key == SOURCE_KEY).count(), 0);
        assert_eq!(get(&dead, SCHEMA_ID), Some("7"));
        assert_eq!(get(&dead, ERROR_TRUNCATED), Some("value:2000000"));
    }
}
