//! `leadflow produce`: writes generated leads to a topic, at a given rate,
//! and reports what leadflow must make of them (a [`Tally`]).

use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};

use super::{DeliveryTracker, LeadProducer, Role, SetupError, check_topics, client_config, send};
use crate::config::KafkaConfig;
use crate::generate::{Generator, GeneratorOptions};
use crate::pipeline::Tally;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot produce to {topic:?}: {source}")]
    Send {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("leads were not acknowledged: {0}")]
    Delivery(String),
}

#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub topic: String,
    pub count: u64,
    /// Leads per second; `None` for as fast as the broker takes them.
    pub rate: Option<f64>,
    pub generator: GeneratorOptions,
    /// Stamp records with each lead's event time rather than the time of
    /// producing (the default, as Microsoft's own delivery would: the event
    /// time stays in `received_at`). Leads without `received_at` take the
    /// record timestamp as their event time either way.
    pub event_time_timestamps: bool,
}

/// Produces `options.count` generated leads and returns the expected tally.
pub fn produce(kafka: &KafkaConfig, options: &ProduceOptions) -> Result<Tally, ProduceError> {
    // Java's default partitioner, so repeats of a lead meet in one partition
    // whichever client wrote them.
    let defaults = [
        ("enable.idempotence", "true"),
        ("linger.ms", "20"),
        ("partitioner", "murmur2_random"),
    ];
    let producer: LeadProducer = client_config(kafka, Role::Producer, &defaults)
        .create_with_context(DeliveryTracker::default())
        .map_err(SetupError::Client)?;
    check_topics(producer.client(), kafka, &[&options.topic])?;

    let started = Instant::now();
    let mut generator = Generator::new(options.generator.clone());
    for i in 0..options.count {
        if let Some(rate) = options.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let Some(lead) = generator.next() else { break };
        let mut record = BaseRecord::to(&options.topic)
            .key(lead.key.as_bytes())
            .payload(lead.value.as_slice());
        if options.event_time_timestamps {
            record = record.timestamp(lead.timestamp_ms);
        }
        send(&producer, record).map_err(|source| ProduceError::Send {
            topic: options.topic.clone(),
            source,
        })?;
        producer.poll(Duration::ZERO);
    }
    super::flush(&producer, Duration::from_secs(60))
        .map_err(|e| ProduceError::Delivery(e.to_string()))?;
    if let Some(failure) = producer.context().take() {
        return Err(ProduceError::Delivery(failure));
    }
    Ok(generator.expected().clone())
}
