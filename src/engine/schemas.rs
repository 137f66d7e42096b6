//! The schema registry as the loop uses it: leadflow's output schemas
//! registered (or found) at start, and the writer schemas that
//! `confluent-avro` input names, looked up on a budget.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::RunError;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::registry::{Registration, RegistryClient};
use crate::stages::decode::WriterAnswer;

/// Connects to the schema registry when a topic is `confluent-avro`, and
/// registers leadflow's output schemas under their subjects (or, without
/// `auto_register`, finds them there): the id to frame each output
/// topic's records with.
pub fn schema_registry(
    config: &Config,
) -> Result<(Option<RegistryClient>, HashMap<String, u32>), RunError> {
    let schemas = crate::registry::topic_schemas(config);
    let uses_registry = !schemas.is_empty();
    if !uses_registry {
        return Ok((None, HashMap::new()));
    }
    let client = RegistryClient::new(&config.schema_registry)?;
    let mut ids = HashMap::new();
    for topic in schemas {
        // The input's schema is the reader's; producers register theirs.
        if topic.topic == config.topics.input
            && topic.schema == crate::stages::decode::RAW_LEAD_SCHEMA
        {
            continue;
        }
        let refused = |reason: String| RunError::SchemaRefused {
            subject: topic.subject.clone(),
            file: topic.file,
            reason,
        };
        let id = if config.schema_registry.auto_register {
            match client.register(&topic.subject, topic.schema)? {
                Registration::Registered(id) => id,
                Registration::Incompatible(reason) => return Err(refused(reason)),
            }
        } else {
            client
                .lookup(&topic.subject, topic.schema)?
                .ok_or_else(|| {
                    refused("not registered, and schema_registry.auto_register is false".into())
                })?
        };
        info!(subject = %topic.subject, id, topic = %topic.topic, "output schema registered");
        ids.insert(topic.topic, id);
    }
    Ok((Some(client), ids))
}

/// Asks the registry for the writer schema a Confluent-framed record
/// names, the first time one does. An id the registry does not know is
/// an answer (the record becomes a dead letter); a registry that cannot
/// answer fails the batch, which runs again from the last commit once it
/// does, so that no good record is dead-lettered for the registry's sake.
pub fn learn_writer_schema(
    pipeline: &mut Pipeline,
    (registry, lookups): (&RegistryClient, &mut SchemaLookups),
    value: Option<&[u8]>,
    metrics: &crate::metrics::Metrics,
) -> Result<Option<u32>, RunError> {
    let Some(id) = pipeline.missing_writer_schema(value) else {
        return Ok(None);
    };
    if !lookups.may_ask() {
        // Not asked: this record is a dead letter, and the id is asked
        // about again for the next record that names it, budget allowing.
        metrics.schema_looked_up("skipped");
        pipeline.add_writer_schema(id, WriterAnswer::NotAsked);
        return Ok(Some(id));
    }
    let answer = registry.schema_by_id(id).inspect_err(|error| {
        metrics.schema_looked_up("failed");
        warn!(%error, schema_id = id, "cannot look up a writer schema; the batch waits for the registry");
    })?;
    match answer {
        Some(schema) if schema.schema_type.eq_ignore_ascii_case("AVRO") => {
            metrics.schema_looked_up("found");
            pipeline.add_writer_schema(id, WriterAnswer::Avro(&schema.schema));
        }
        Some(schema) => {
            metrics.schema_looked_up("found");
            pipeline.add_writer_schema(id, WriterAnswer::Other(&schema.schema_type));
        }
        None => {
            metrics.schema_looked_up("unknown");
            pipeline.add_writer_schema(id, WriterAnswer::Unknown);
            lookups.remember_unknown(id, pipeline);
        }
    }
    Ok(None)
}

/// Bounds what writer schema ids from input can cost: registry lookups
/// are a token bucket ([`LOOKUP_BURST`], then [`LOOKUPS_PER_SECOND`]; a
/// record whose id is not asked about for lack of budget is a dead letter,
/// and the id is asked about for the next one), and ids the registry does
/// not know are remembered for [`UNKNOWN_TTL`] and at most [`MAX_UNKNOWN`]
/// of them, then asked about again. Schemas the registry knows are few and
/// kept for good.
pub struct SchemaLookups {
    tokens: f64,
    refilled: Instant,
    unknown: std::collections::VecDeque<(u32, Instant)>,
}

const LOOKUP_BURST: f64 = 50.0;
const LOOKUPS_PER_SECOND: f64 = 1.0;
const MAX_UNKNOWN: usize = 1_000;
const UNKNOWN_TTL: Duration = Duration::from_secs(300);

impl SchemaLookups {
    pub fn new() -> SchemaLookups {
        SchemaLookups {
            tokens: LOOKUP_BURST,
            refilled: Instant::now(),
            unknown: std::collections::VecDeque::new(),
        }
    }

    /// Whether the budget has a lookup left (taking none).
    pub fn can_ask(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * LOOKUPS_PER_SECOND;
        self.tokens = (self.tokens + earned).min(LOOKUP_BURST);
        self.refilled = now;
        self.tokens >= 1.0
    }

    /// Takes a lookup from the budget, if one is left.
    pub fn may_ask(&mut self) -> bool {
        if self.can_ask() {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Remembers an unknown id, forgetting the oldest past the limit.
    pub fn remember_unknown(&mut self, id: u32, pipeline: &mut Pipeline) {
        self.unknown.push_back((id, Instant::now()));
        while self.unknown.len() > MAX_UNKNOWN {
            if let Some((old, _)) = self.unknown.pop_front() {
                pipeline.forget_writer_schema(old);
            }
        }
    }

    /// Forgets unknown ids remembered longer than [`UNKNOWN_TTL`].
    pub fn expire(&mut self, pipeline: &mut Pipeline) {
        while let Some((id, _)) = self
            .unknown
            .front()
            .filter(|(_, at)| at.elapsed() >= UNKNOWN_TTL)
            .copied()
        {
            self.unknown.pop_front();
            pipeline.forget_writer_schema(id);
        }
    }
}
