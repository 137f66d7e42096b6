//! `leadflow demo`: the whole pipeline with no broker to install. It starts
//! librdkafka's in-process mock cluster, creates the topics, produces
//! generated leads (duplicates, do-not-contact, test leads, malformed
//! records) and runs the same processing loop as `leadflow run` until the
//! input is drained, then reads every topic back and checks that each
//! lead is accounted for.
//!
//! The mock cluster does not implement transactions faithfully, so the demo
//! runs at-least-once. It keeps only 5 MB (and 100,000 records) per
//! partition, dropping the oldest beyond that, so the demo sizes the
//! partition count to the leads and checks afterwards that no partition
//! lost its start. The generator keys leads by person and offer, so the
//! demo skips the repartition hop (`pipeline.repartition = false`). With
//! no catalog configured, it uses the generator's offers.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::{Config, ProcessingGuarantee};
use crate::engine::{Controls, RunError, RunOptions, run};
use crate::generate::GeneratorOptions;
use crate::health::Observed;
use crate::kafka::SetupError;
use crate::kafka::produce::{ProduceError, ProduceOptions, produce};
use crate::kafka::topics;
use crate::pipeline::Tally;
use crate::reload::ReloadSlot;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the mock cluster: {0}")]
    Mock(rdkafka::error::KafkaError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot write the demo's catalog to {path}: {source}")]
    Catalog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Bytes a generated lead may take in the mock's log, in its largest
/// topic, with room to spare.
const BYTES_PER_LEAD: u64 = 1_500;
/// What the demo lets a partition hold: well under the mock's 5 MB.
const BYTES_PER_PARTITION: u64 = 2 << 20;
/// The mock keeps at most this many records per partition.
const RECORDS_PER_PARTITION: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub leads: u64,
    pub seed: u64,
}

/// Partitions per topic for `leads` leads, so that no partition outgrows
/// what the mock keeps.
pub fn partitions_for(leads: u64) -> i32 {
    let by_bytes = (leads * BYTES_PER_LEAD).div_ceil(BYTES_PER_PARTITION);
    let by_records = (leads * 2).div_ceil(RECORDS_PER_PARTITION);
    i32::try_from(by_bytes.max(by_records).max(4)).unwrap_or(i32::MAX)
}

/// A mock cluster with leadflow's topics, and the configuration that
/// points at it.
pub struct Demo {
    // Dropping it stops the cluster: it lives as long as the demo.
    _cluster: MockCluster<'static, DefaultProducerContext>,
    pub config: Config,
    pub partitions: i32,
    options: DemoOptions,
    /// The generator's catalog, written for the run when none is
    /// configured; removed with the demo.
    catalog_file: Option<std::path::PathBuf>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(path) = &self.catalog_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the demo found: the generator's expectation, what the run
/// committed, and the records each topic holds.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub expected: Tally,
    pub tally: Tally,
    /// (topic, records) for every topic, input first.
    pub topics: Vec<(String, u64)>,
    /// Partitions whose oldest records the mock dropped.
    pub truncated: Vec<String>,
    pub wall: Duration,
}

impl DemoReport {
    /// Everything adds up: the run committed what the generator expects,
    /// every input is in one bucket, and each topic holds what the run
    /// says it wrote.
    pub fn problems(&self, config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.tally.balances() {
            problems.push(format!("the tally does not balance: {:?}", self.tally));
        }
        if self.tally != self.expected {
            problems.push(format!(
                "the run committed {:?}, the generator expects {:?}",
                self.tally, self.expected
            ));
        }
        for partition in &self.truncated {
            problems.push(format!("the mock cluster dropped records of {partition}"));
        }
        let held = |topic: &str| {
            self.topics
                .iter()
                .find(|(t, _)| t == topic)
                .map_or(0, |(_, n)| *n)
        };
        let mut checks = vec![
            (config.topics.input.clone(), self.tally.inputs),
            (
                config.topics.suppressed.clone(),
                self.tally.suppressed_total(),
            ),
            (config.topics.dead_letter.clone(), self.tally.dead_letters()),
        ];
        for route in &config.routes {
            let written = self.tally.campaigns.get(&route.campaign).copied();
            checks.push((route.topic.clone(), written.unwrap_or(0)));
        }
        for (topic, expected) in checks {
            if held(&topic) != expected {
                problems.push(format!(
                    "{topic} holds {} records, the run wrote {expected}",
                    held(&topic)
                ));
            }
        }
        problems
    }
}

impl Demo {
    /// Starts the mock cluster and creates the topics.
    pub fn start(base: &Config, options: DemoOptions) -> Result<Demo, DemoError> {
        let cluster = MockCluster::new(1).map_err(DemoError::Mock)?;
        let mut config = base.clone();
        config.kafka.bootstrap_servers = cluster.bootstrap_servers();
        config.kafka.instance_id = Some("demo".into());
        config.pipeline.processing_guarantee = ProcessingGuarantee::AtLeastOnce;
        config.pipeline.repartition = false;
        let mut catalog_file = None;
        if config.catalog.file.is_none() {
            // The generated leads name these offers; without them, leads
            // that name an offer only by title would be dead letters.
            let path = std::env::temp_dir()
                .join(format!("leadflow-demo-{}-catalog.toml", std::process::id()));
            std::fs::write(&path, crate::generate::catalog().to_toml()).map_err(|source| {
                DemoError::Catalog {
                    path: path.clone(),
                    source,
                }
            })?;
            config.catalog.file = Some(path.clone());
            catalog_file = Some(path);
        }
        let partitions = partitions_for(options.leads);
        for topic in config.all_topics() {
            cluster
                .create_topic(&topic, partitions, 1)
                .map_err(DemoError::Mock)?;
        }
        Ok(Demo {
            _cluster: cluster,
            config,
            partitions,
            options,
            catalog_file,
        })
    }

    /// Produces the generated leads; returns what the run must reach.
    pub fn produce(&self) -> Result<Tally, DemoError> {
        let options = ProduceOptions {
            topic: self.config.topics.input.clone(),
            count: self.options.leads,
            rate: None,
            event_time_timestamps: false,
            generator: GeneratorOptions {
                seed: self.options.seed,
                format: self.config.topics.input_format,
                ..GeneratorOptions::default()
            },
        };
        Ok(produce(&self.config.kafka, &options)?)
    }

    /// Runs the pipeline until the input is drained.
    pub fn run(
        &self,
        observed: &Observed,
        shutdown: &AtomicBool,
        http_address: Option<std::net::SocketAddr>,
    ) -> Result<Tally, DemoError> {
        let reloads = ReloadSlot::default();
        let controls = Controls {
            shutdown,
            observed,
            reloads: &reloads,
        };
        let options = RunOptions {
            until_drained: true,
            http_address,
            passthrough: false,
            mock_cluster: true,
        };
        Ok(run(&self.config, options, controls)?)
    }

    /// Reads every topic back and puts the report together.
    pub fn report(
        &self,
        expected: Tally,
        tally: Tally,
        started: Instant,
    ) -> Result<DemoReport, DemoError> {
        let names = self.config.all_topics();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let counts = topics::counts(&self.config.kafka, &names)?;
        let truncated = self.truncated(&names)?;
        Ok(DemoReport {
            expected,
            tally,
            topics: names.iter().map(|n| (*n).to_owned()).zip(counts).collect(),
            truncated,
            wall: started.elapsed(),
        })
    }

    /// Partitions whose log no longer starts at offset 0.
    fn truncated(&self, names: &[&str]) -> Result<Vec<String>, DemoError> {
        let consumer: BaseConsumer =
            crate::kafka::client_config(&self.config.kafka, crate::kafka::Role::Consumer, &[])
                .create()
                .map_err(SetupError::Client)?;
        let timeout = Duration::from_millis(self.config.kafka.connect_timeout_ms);
        let mut truncated = Vec::new();
        for name in names {
            for partition in 0..self.partitions {
                let (low, _) = consumer
                    .fetch_watermarks(name, partition, timeout)
                    .map_err(|e| SetupError::BadTopic {
                        topic: (*name).to_owned(),
                        reason: e.to_string(),
                    })?;
                if low > 0 {
                    truncated.push(format!("{name}/{partition}"));
                }
            }
        }
        Ok(truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_keep_each_under_what_the_mock_holds() {
        for leads in [1, 1_000, 100_000, 1_000_000] {
            let partitions = u64::try_from(partitions_for(leads)).unwrap_or(0);
            assert!(partitions >= 4);
            assert!(leads * BYTES_PER_LEAD / partitions <= 5 << 20, "{leads}");
            assert!(leads / partitions < RECORDS_PER_PARTITION, "{leads}");
        }
    }
}
