//! Carries plans out: each [`Plan`] becomes producer records, encoded per
//! output topic (one encoder per route, in table order, and one for the
//! suppressed topic), with leadflow's headers.
//!
//! A record the broker (or the client) refuses for good comes back as a
//! [`Failure`], for the engine to dead-letter; anything else that fails to
//! be produced is a [`RunError`].

use std::cell::RefCell;
use std::collections::HashMap;

use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::BaseRecord;

use super::RunError;
use super::events::RunContext;
use super::plan::rejected;
use super::step::Writer;
use super::topology::Topology;
use crate::config::Config;
use crate::domain::{HexKey, Lead, Score};
use crate::error::Failure;
use crate::kafka::{KEPT_KEY_AND_HEADERS, LeadProducer, copy_of, headers, lock, refusal, send};
use crate::metrics::Batch;
use crate::pipeline::{Pipeline, Place, SourcePosition};
use crate::stages::decode::Format;
use crate::stages::dedupe::{Batcher, Change};
use crate::stages::encode::Encoder;
use crate::stages::route::{Destination, Route};

/// The encoder for one output topic. A `confluent-avro` topic frames
/// records with the id its schema was registered under at start. Reloads
/// that route to a `confluent-avro` topic without one are refused
/// ([`Sink::check_schema_ids`]), so the fallback 0 (which no registry
/// assigns) never frames a record.
fn encoder_for(schema_ids: &HashMap<String, u32>, topic: &str, format: Format) -> Encoder {
    match format {
        Format::ConfluentAvro => Encoder::confluent(schema_ids.get(topic).copied().unwrap_or(0)),
        other => Encoder::new(other),
    }
}

pub struct Sink<'a> {
    producer: &'a LeadProducer,
    topology: &'a Topology,
    /// The open transaction's dedupe changes, which its commit writes.
    staged: &'a StagedChanges,
    output_format: Format,
    max_record_bytes: usize,
    routes: Vec<Encoder>,
    suppressed: Encoder,
    /// Registry ids of the campaign-lead schema by `confluent-avro` topic.
    schema_ids: HashMap<String, u32>,
    /// One buffer for every encoded lead: librdkafka copies the bytes.
    payload: RefCell<Vec<u8>>,
}

fn produce_error(topic: &str) -> impl FnOnce(KafkaError) -> RunError + '_ {
    move |source| RunError::Produce {
        topic: topic.to_owned(),
        source,
    }
}

impl<'a> Sink<'a> {
    pub fn new(
        producer: &'a LeadProducer,
        (config, context): (&Config, &'a RunContext),
        schema_ids: HashMap<String, u32>,
    ) -> Sink<'a> {
        let topology = &context.topology;
        let output_format = config.topics.output_format;
        let suppressed = encoder_for(&schema_ids, &topology.suppressed, output_format);
        let mut sink = Sink {
            producer,
            topology,
            staged: &context.changes,
            output_format,
            max_record_bytes: config.pipeline.max_record_bytes,
            routes: Vec::new(),
            suppressed,
            schema_ids,
            payload: RefCell::new(Vec::with_capacity(1024)),
        };
        sink.set_routes(&config.routes);
        sink
    }

    /// Refuses routes to `confluent-avro` topics whose schema leadflow
    /// did not register at start: the registry is asked only then.
    pub fn check_schema_ids(&self, routes: &[Route]) -> Result<(), String> {
        let missing: Vec<&str> = routes
            .iter()
            .filter(|r| r.format.unwrap_or(self.output_format) == Format::ConfluentAvro)
            .map(|r| r.topic.as_str())
            .filter(|topic| !self.schema_ids.contains_key(*topic))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "confluent-avro topics {missing:?} have no schema registered by this process; restart leadflow to register them"
            ))
        }
    }

    /// Stages dedupe state changes for the changelog: the transaction's
    /// commit writes them ([`StagedChanges`]).
    pub fn stage_changes(&self, changes: &mut dyn Iterator<Item = Change>) {
        self.staged.stage(changes);
    }

    /// One encoder per route, in table order.
    pub fn set_routes(&mut self, routes: &[Route]) {
        self.routes = routes
            .iter()
            .map(|route| {
                let format = route.format.unwrap_or(self.output_format);
                encoder_for(&self.schema_ids, &route.topic, format)
            })
            .collect();
    }
}

impl<'m> Writer<BorrowedMessage<'m>> for Sink<'_> {
    fn copy(
        &self,
        topic: &str,
        message: &BorrowedMessage<'m>,
        batch: &mut Batch,
    ) -> Result<(), RunError> {
        send(self.producer, copy_of(topic, message, message.key()))
            .map_err(produce_error(topic))?;
        batch.produced(topic);
        Ok(())
    }

    /// Forwards a record unchanged to its repartition partition, naming
    /// its input record in headers. A refusal (too large with its headers,
    /// say) is `Ok(Err(..))`: a dead letter, which always fits, rather than
    /// a pipeline stopped for good.
    fn forward(
        &self,
        message: &BorrowedMessage<'m>,
        (topic, key, partition): (&str, HexKey, i32),
        (source, original_key): (SourcePosition<'_>, Option<&[u8]>),
        batch: &mut Batch,
    ) -> Result<Result<(), Failure>, RunError> {
        let mut record = copy_of(topic, message, Some(key.as_str().as_bytes()))
            .partition(partition)
            .headers(headers::forwarded(message.headers(), source, original_key));
        // The record timestamp is the event time of a lead without
        // `received_at`, so the hop keeps it (see `topics::create`).
        if let Some(ts) = message.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        match send(self.producer, record) {
            Ok(()) => {
                batch.produced(topic);
                Ok(Ok(()))
            }
            Err(error) => match refusal(&error) {
                Some(code) => Ok(Err(rejected(topic, code))),
                None => Err(produce_error(topic)(error)),
            },
        }
    }

    /// Produces a dead letter: the input record's key, value and headers,
    /// with headers saying why and whence (its timestamp among them).
    fn dead_letter(
        &self,
        (message, source, key): (&BorrowedMessage<'m>, SourcePosition<'_>, Option<&[u8]>),
        pipeline: &Pipeline,
        failure: &Failure,
        batch: &mut Batch,
    ) -> Result<(), RunError> {
        let dlq = self.topology.dead_letter.as_str();
        // A dead letter always fits (see `kafka::RECORD_HEADROOM`): the
        // value is cut to the input limit, and a key and headers larger
        // than leadflow keeps are dropped; the dead letter says which.
        let limit = self.max_record_bytes;
        let value = message.payload().unwrap_or_default();
        // Each header also costs its encoding (lengths, varints): counted
        // generously, so that many tiny headers cannot slip past.
        let extra = key.map_or(0, <[u8]>::len)
            + message.headers().map_or(0, |h| {
                h.iter()
                    .map(|h| 16 + h.key.len() + h.value.map_or(0, <[u8]>::len))
                    .sum()
            });
        let keep_extra = extra <= KEPT_KEY_AND_HEADERS;
        let mut cut = Vec::new();
        if value.len() > limit {
            cut.push(format!("value:{}", value.len()));
        }
        if !keep_extra {
            cut.push(format!("key+headers:{extra}"));
        }
        let truncated = (!cut.is_empty()).then(|| cut.join(","));
        let timestamp_ms = message.timestamp().to_millis();
        let mut record =
            copy_of(dlq, message, key.filter(|_| keep_extra)).headers(headers::dead_letter(
                message.headers().filter(|_| keep_extra),
                (source, timestamp_ms),
                pipeline.version(),
                (failure, truncated.as_deref()),
            ));
        if let Some(kept) = value.get(..limit).filter(|_| value.len() > limit) {
            record = record.payload(kept);
        }
        match send(self.producer, record) {
            Ok(()) => {}
            // Refused all the same (too large after all): the source
            // position and the reason alone, which always fit.
            Err(error) if refusal(&error).is_some() => {
                let minimal = BaseRecord::<[u8], [u8]>::to(dlq).headers(headers::dead_letter(
                    None::<&rdkafka::message::OwnedHeaders>,
                    (source, timestamp_ms),
                    pipeline.version(),
                    (
                        failure,
                        Some(&format!("value:{},key+headers:{extra}", value.len())),
                    ),
                ));
                send(self.producer, minimal).map_err(produce_error(dlq))?;
            }
            Err(source) => return Err(produce_error(dlq)(source)),
        }
        batch.produced(dlq);
        batch.output_of(timestamp_ms);
        Ok(())
    }

    fn changes(
        &self,
        changes: &mut dyn Iterator<Item = Change>,
        _: &mut Batch,
    ) -> Result<(), RunError> {
        self.stage_changes(changes);
        Ok(())
    }

    /// Produces a routed lead to each of its campaign topics, or to the
    /// suppressed topic. A lead whose record the client refuses for good
    /// (too large, say) fails at the produce stage (`Ok(Err(..))`).
    fn lead(
        &self,
        pipeline: &Pipeline,
        (source, timestamp_ms): (SourcePosition<'_>, Option<i64>),
        (destination, lead, score): (Destination, &Lead, &Score),
        batch: &mut Batch,
    ) -> Result<Result<(), Failure>, RunError> {
        let key = lead.dedupe_key.hex();
        let mut lead_headers = headers::LeadHeaders {
            storefront: lead.storefront.as_str(),
            grade: score.grade.as_str(),
            rules_version: &score.rules_version,
            suppressed_reason: None,
        };
        let targets: Vec<(&str, Option<&str>, &Encoder)> =
            match Place::of(destination, pipeline.routing()) {
                Place::Campaigns(routes) => routes
                    .iter()
                    .filter_map(|(i, route)| Some((route, self.routes.get(i)?)))
                    .map(|(route, encoder)| {
                        (route.topic.as_str(), Some(route.campaign.as_str()), encoder)
                    })
                    .collect(),
                Place::Suppressed(reason) => {
                    lead_headers.suppressed_reason = Some(reason.as_str());
                    vec![(self.topology.suppressed.as_str(), None, &self.suppressed)]
                }
                // A routed lead has a campaign or the suppressed topic.
                Place::DeadLetter(_) | Place::Duplicate | Place::TestLead => Vec::new(),
            };
        let mut payload = self.payload.borrow_mut();
        for (topic, campaign, encoder) in targets {
            encoder.encode(lead, score, destination, campaign, &mut payload);
            // Stamped when written (see `copy_of`); the event time is in the value.
            let record = BaseRecord::to(topic)
                .key(key.as_str().as_bytes())
                .payload(payload.as_slice())
                .headers(headers::output(
                    (source, timestamp_ms),
                    pipeline.version(),
                    lead_headers,
                ));
            if let Err(error) = send(self.producer, record) {
                // Campaign records are bounded (`kafka::LEAD_RECORD_MAX`) and
                // the limits are checked at start, so a lead is refused here
                // before any of its records is written, or not at all; a
                // broker's refusal aborts the whole transaction.
                return match refusal(&error) {
                    Some(code) => Ok(Err(rejected(topic, code))),
                    None => Err(produce_error(topic)(error)),
                };
            }
            batch.produced(topic);
            #[cfg(feature = "kafka-tests")]
            if crate::failpoint::fires("between-routes", lead.event_id.as_deref()) {
                return Err(produce_error(topic)(KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::Fail,
                )));
            }
        }
        batch.output_of(timestamp_ms);
        Ok(Ok(()))
    }
}

/// The dedupe state changes of the open transaction, written to the
/// changelog by its commit, whichever commits it (the batch's end, or a
/// revoke's callback): one batch record a partition, not a record a
/// change, which cost librdkafka as much as a campaign record.
#[derive(Debug, Default)]
pub struct StagedChanges {
    changes: std::sync::Mutex<Vec<Change>>,
    batcher: Batcher,
}

impl StagedChanges {
    pub fn stage(&self, changes: &mut dyn Iterator<Item = Change>) {
        lock(&self.changes).extend(changes);
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.changes).is_empty()
    }

    /// Forgets what is staged: the transaction aborted.
    pub fn clear(&self) {
        lock(&self.changes).clear();
    }

    /// Produces what is staged to `changelog`, in the open transaction
    /// under exactly-once; returns how many records that took.
    pub fn send(&self, producer: &LeadProducer, changelog: &str) -> Result<u64, RunError> {
        let changes = std::mem::take(&mut *lock(&self.changes));
        let mut records = 0;
        for packed in self.batcher.pack(changes.into_iter()) {
            let record = BaseRecord::<[u8], [u8]>::to(changelog)
                .key(packed.key.as_slice())
                .payload(packed.value.as_slice())
                .partition(packed.partition);
            send(producer, record).map_err(produce_error(changelog))?;
            records += 1;
        }
        Ok(records)
    }
}
