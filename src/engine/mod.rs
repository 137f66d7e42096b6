//! The processing loop, exactly-once (the default) or at-least-once.
//!
//! Records are read in batches. Each record's outputs (campaign,
//! suppressed or dead-letter record, and the dedupe changelog records of
//! its state changes) are produced as it is processed, and the batch ends
//! with a commit ([`crate::kafka::txn`]): under exactly-once one
//! transaction that holds the outputs and the consumed offsets; under
//! at-least-once a flush and then an offset commit. A batch that must be
//! aborted is rolled back (dedupe state to the last commit) and read again.
//! The `transactional.id` is `GROUP-INSTANCE`, stable across restarts, so a
//! restarted instance fences its predecessor.
//!
//! Unless `pipeline.repartition` is off, raw leads are first re-keyed: each
//! is decoded and identified, and forwarded unchanged to the repartition
//! topic, to the partition its person-and-offer key hashes to. The same
//! loop reads that topic back and runs the whole pipeline there, so all
//! leads that dedupe compares share a partition, whichever process reads
//! them. Both hops commit in the loop's transactions.
//!
//! Dedupe state is kept per processed partition. When a partition is
//! assigned, it is paused, its state is restored from the changelog
//! (read_committed, to its end) between two batches, and it is resumed.
//! When one is revoked, the open batch is committed and its state dropped.
//!
//! The modules, in the order a record meets them: `setup` (clients and
//! checks), `events` (consumer callbacks → typed events), `life` (the batch
//! loop), `step` (one record: plan, write, count), `plan` (what to do with a
//! record, without Kafka), `sink` (the producer as `step`'s writer), `batch` (the loop's bookkeeping, without Kafka),
//! `restore` (changelog → dedupe state), `topology` (hops, topics,
//! `partition_for`), `schemas` (the registry), `second_hop` (the
//! repartition topic's own queues), `local` (which re-keyed leads skip the
//! hop: those whose repartition partition is held here and caught up).

mod batch;
mod events;
mod life;
mod local;
mod plan;
mod restore;
mod schemas;
mod second_hop;
mod setup;
mod sink;
mod step;
pub mod topology;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use tracing::warn;

use crate::config::Config;
use crate::health::{Observed, Phase};
use crate::kafka::SetupError;
use crate::kafka::txn::{TxnError, is_fence};
use crate::pipeline::{Pipeline, PipelineSettings, Tally};
use crate::reload::ReloadSlot;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::error::ConfigError),
    #[error(transparent)]
    Txn(#[from] TxnError),
    #[error("cannot write to {topic:?}: {source}")]
    Produce { topic: String, source: KafkaError },
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: KafkaError,
    },
    #[error("cannot start transactions as {id:?}: {source}")]
    InitTransactions { id: String, source: KafkaError },
    /// Seeking or asking the consumer for its assignment failed.
    #[error("consumer failed: {0}")]
    Consumer(KafkaError),
    #[error("cannot restore dedupe state from {topic:?}: {reason}")]
    Restore { topic: String, reason: String },
    /// The registry could not be asked, so records that need a writer
    /// schema wait: the batch is processed again once it answers.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("schema registry refused {file} under subject {subject:?}: {reason}")]
    SchemaRefused {
        subject: String,
        file: &'static str,
        reason: String,
    },
}

impl From<crate::kafka::Wedged> for RunError {
    fn from(wedged: crate::kafka::Wedged) -> Self {
        RunError::Txn(TxnError::Wedged(wedged))
    }
}

impl RunError {
    /// Whether another producer with this `transactional.id` took over.
    pub fn is_fenced(&self) -> bool {
        match self {
            RunError::Txn(e) => e.is_fenced(),
            RunError::InitTransactions { source, .. } => is_fence(source),
            _ => false,
        }
    }
}

/// How `leadflow run` ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop once every assigned partition has been read to its end and
    /// committed, instead of waiting for more records.
    pub until_drained: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, for the log.
    pub http_address: Option<std::net::SocketAddr>,
    /// Copy input records unchanged to the first route's topic instead of
    /// processing them: the benchmarks' baseline, the same loop, clients
    /// and transactions with no stage in between.
    pub passthrough: bool,
    /// Running on librdkafka's mock cluster, which cannot describe topic
    /// configurations or delete records: the start-up check of topic
    /// configurations and the repartition purge are skipped.
    pub mock_cluster: bool,
}

/// What the loop shares with the rest of the process.
#[derive(Debug, Clone, Copy)]
pub struct Controls<'a> {
    /// Set to stop: the loop finishes and commits its batch, and returns.
    pub shutdown: &'a AtomicBool,
    /// Metrics and health the loop reports to.
    pub observed: &'a Observed,
    /// New rules and routes, applied between transactions.
    pub reloads: &'a ReloadSlot,
}

/// Runs the pipeline until `shutdown` is set (or the input is drained, with
/// [`RunOptions::until_drained`]) and returns what it committed.
///
/// A failure at start-up (bad configuration, unreachable broker, missing
/// topic) ends the run at once. Once it has run, a failure (the broker gone
/// for longer than the delivery timeout, say) restarts the pipeline in this
/// process from the last commit, with the same recovery as a crash (fencing
/// the old transaction, restoring state), after a backoff of 1 s doubling
/// to 30 s. Being fenced, by another process with this `transactional.id`,
/// is final: that process has taken over. A restart keeps the rules and
/// routes of the last reload.
pub fn run(
    config: &Config,
    options: RunOptions,
    controls: Controls<'_>,
) -> Result<Tally, RunError> {
    let Controls {
        shutdown, observed, ..
    } = controls;
    let mut config = config.clone();
    let mut tally = Tally::default();
    let mut started = false;
    let mut backoff = Duration::from_secs(1);
    loop {
        let attempt = Instant::now();
        let mut reloaded = None;
        let outcome = run_once(
            &config,
            (options, controls),
            &mut tally,
            (&mut started, &mut reloaded),
        );
        if let Some(new) = reloaded {
            config.routes = new.routes;
            config.policy = new.policy;
            config.scoring = new.scoring;
        }
        observed.health.set_phase(Phase::Stopping);
        let error = match outcome {
            Ok(()) => return Ok(tally),
            Err(e) => e,
        };
        if !started || error.is_fenced() || shutdown.load(Ordering::Relaxed) {
            return Err(error);
        }
        observed.metrics.pipeline_restarts.inc();
        if attempt.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        warn!(%error, backoff_ms = backoff.as_millis() as u64, "pipeline failed; restarting from the last commit");
        let wake = Instant::now() + backoff;
        while Instant::now() < wake && !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One life of the pipeline: set up, consume until told to stop or a
/// failure. `started` turns true once set-up is done; `reloaded` holds the
/// last configuration whose rules and routes were applied.
fn run_once(
    config: &Config,
    (options, controls): (RunOptions, Controls<'_>),
    tally: &mut Tally,
    (started, reloaded): (&mut bool, &mut Option<Config>),
) -> Result<(), RunError> {
    let observed = controls.observed;
    observed.health.set_phase(Phase::Starting);
    // Reference data and rules first: a bad rules file fails before any I/O.
    let pipeline = Pipeline::new(PipelineSettings::from_config(config)?);
    pipeline.catalog().warn_about_mistakes();
    observed.metrics.set_rules_version(pipeline.rules_version());
    let setup::Clients {
        producer,
        consumer,
        restorer,
        registry,
        schema_ids,
        purger,
    } = setup::connect(config, options, observed)?;
    // Dropped before the consumer: on any early return, the consumer's
    // closing revoke then commits nothing.
    let failure_guard = events::FailureGuard::new(consumer.context());
    observed.health.set_phase(Phase::Joining);
    *started = true;
    let mut io = life::Io {
        consumer: &consumer,
        restorer: &restorer,
        producer: &producer,
        registry: registry.as_ref(),
        second_hop: second_hop::SecondHop::new(),
    };
    let sink = sink::Sink::new(&producer, (config, consumer.context()), schema_ids);
    let mut work = life::Work::new(
        (config, options, controls),
        (pipeline, sink, purger),
        reloaded,
    );
    let result = work.run(&mut io);
    tally.merge(std::mem::take(&mut work.progress.tally));
    result?;
    failure_guard.succeed();
    Ok(())
}
