//! One life of the pipeline: the batch loop over the clients that
//! `setup` made, until told to stop, drained, or failed.
//!
//! Each batch reads for `pipeline.commit_interval_ms` (longer when commits
//! are slow, see [`batch_window`]) or `pipeline.max_batch_records`, then
//! commits; between batches, newly assigned partitions are restored and
//! reloaded rules are applied, with no transaction open.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::Producer;
use tracing::{debug, info, warn};

use super::batch::{Meter, OpenBatch, Progress, Reaction};
use super::events::{Event, RunContext, report_offset_resets};
use super::local::LocalHop;
use super::plan::RecordView;
use super::restore::{catch_up, drained, restore_assigned, rewind};
use super::schemas::{SchemaLookups, learn_writer_schema};
use super::second_hop::SecondHop;
use super::sink::Sink;
use super::step::Stepper;
use super::topology::{Hop, Part, Topology};
use super::{Controls, RunError, RunOptions};
use crate::config::Config;
use crate::error::Failure;
use crate::health::Phase;
use crate::kafka::purge::Purger;
use crate::kafka::txn::TxnError;
use crate::kafka::{LeadProducer, Logged, flush, headers, lock};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, SourcePosition};
use crate::registry::RegistryClient;

/// How often committed records are deleted from the repartition topic
/// (Kafka Streams' `repartition.purge.interval.ms`).
const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a batch reads: `pipeline.commit_interval_ms`, or as long as
/// the last commit took when that was longer (so that commits cost at
/// most about half the time), but never more than a quarter of the
/// transaction timeout, which the batch and its commit must stay within.
pub fn batch_window(
    commit_interval: Duration,
    last_commit: Duration,
    txn_timeout: Duration,
) -> Duration {
    commit_interval.max(last_commit.min(txn_timeout / 4))
}

/// The clients a life reads and writes through.
pub struct Io<'a> {
    pub consumer: &'a Arc<BaseConsumer<RunContext>>,
    pub restorer: &'a BaseConsumer<Logged>,
    pub producer: &'a LeadProducer,
    pub registry: Option<&'a RegistryClient>,
    pub second_hop: SecondHop<RunContext>,
}

impl Io<'_> {
    fn context(&self) -> &RunContext {
        self.consumer.context()
    }

    fn topology(&self) -> &Topology {
        &self.consumer.context().topology
    }
}

/// Everything a life decides with.
pub struct Work<'a> {
    config: &'a Config,
    options: RunOptions,
    controls: Controls<'a>,
    pipeline: Pipeline,
    sink: Sink<'a>,
    purger: Option<Purger>,
    /// What carries over between batches; its tally is the life's.
    pub progress: Progress,
    meter: Meter,
    lookups: SchemaLookups,
    /// The last configuration whose rules and routes were applied.
    reloaded: &'a mut Option<Config>,
    last_report: Instant,
    last_purge: Instant,
    /// How long the last commit took: a batch reads for at least as long,
    /// so that slow commits (a cold or distant cluster) are spread over
    /// more records instead of leaving batches of a few.
    last_commit: Duration,
    batch_seq: u64,
    eviction_logged: bool,
}

impl<'a> Work<'a> {
    pub fn new(
        (config, options, controls): (&'a Config, RunOptions, Controls<'a>),
        (pipeline, sink, purger): (Pipeline, Sink<'a>, Option<Purger>),
        reloaded: &'a mut Option<Config>,
    ) -> Work<'a> {
        Work {
            config,
            options,
            controls,
            pipeline,
            sink,
            purger,
            progress: Progress::default(),
            meter: Meter::default(),
            lookups: SchemaLookups::new(),
            reloaded,
            last_report: Instant::now(),
            last_purge: Instant::now(),
            last_commit: Duration::ZERO,
            batch_seq: 0,
            eviction_logged: false,
        }
    }
}

impl Work<'_> {
    fn metrics(&self) -> &Metrics {
        &self.controls.observed.metrics
    }

    fn stopping(&self) -> bool {
        self.controls.shutdown.load(Ordering::Relaxed)
    }

    fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.config.pipeline.delivery_timeout_ms)
    }

    /// The batch loop; returns once stopped or drained, having committed.
    pub fn run(&mut self, io: &mut Io<'_>) -> Result<(), RunError> {
        let shortcut = self.config.pipeline.repartition_shortcut;
        self.progress.local = LocalHop::for_run(shortcut, io.topology());
        while !self.stopping() {
            self.between_batches(io)?;
            self.batch_seq += 1;
            // Every log line of the batch carries its number, and once it
            // commits, its record count and offsets.
            let span = tracing::info_span!(
                "batch",
                seq = self.batch_seq,
                records = tracing::field::Empty,
                offsets = tracing::field::Empty
            );
            let _entered = span.enter();
            let batch = self.read_batch(io)?;
            if batch.records > 0 && !span.is_disabled() {
                span.record("records", batch.records);
                span.record("offsets", offset_ranges(io.context(), &batch).as_str());
            }
            let records = batch.records;
            self.end_batch(io, batch)?;
            // Only a batch interval without a record says the input may be drained.
            let restoring = !self.progress.to_restore.is_empty();
            if self.options.until_drained
                && records == 0
                && drained((io.consumer, io.restorer), io.producer.context(), restoring)
            {
                info!("input drained");
                break;
            }
        }
        self.controls.observed.health.set_phase(Phase::Stopping);
        io.context().commit(io.consumer.as_ref())?;
        self.pipeline.commit_batch();
        let metrics = &self.controls.observed.metrics;
        self.meter.committed(metrics, &mut self.pipeline);
        if let Some(purger) = self.purger.as_mut() {
            let timeout = super::setup::purge_timeout(&self.config.kafka) * 2;
            purger.finish(&io.context().purgeable, timeout);
        }
        io.consumer.unsubscribe();
        info!(tally = ?self.progress.tally, "stopped");
        Ok(())
    }

    /// Restores newly assigned partitions, applies a reload, and expires
    /// what is due; no transaction is open here.
    fn between_batches(&mut self, io: &mut Io<'_>) -> Result<(), RunError> {
        let partitions: Vec<i32> = std::mem::take(&mut self.progress.to_restore)
            .into_iter()
            .collect();
        let timeout = self.delivery_timeout();
        restore_assigned(
            (io.consumer, &mut io.second_hop),
            io.restorer,
            &mut self.pipeline,
            &partitions,
            timeout,
        )?;
        if !partitions.is_empty() {
            self.controls.observed.health.set_phase(Phase::Running);
        }
        if let Some(local) = self.progress.local.as_mut() {
            local.restored(&partitions, Instant::now());
            catch_up((io.consumer, io.restorer), io.producer.context(), local)?;
        }
        if let Some(new) = self.controls.reloads.take() {
            self.reload(io, new);
        }
        self.meter.batch.clear();
        self.pipeline.set_now(crate::metrics::now_ms());
        self.lookups.expire(&mut self.pipeline);
        if self.last_report.elapsed() >= Duration::from_secs(10) {
            // Expiry writes tombstones, so it belongs to a transaction.
            io.context().txn.begin()?;
            let expired = self.pipeline.expire_dedupe();
            self.metrics().dedupe_expired.inc_by(expired as u64);
            self.stage_changes();
            self.last_report = Instant::now();
            info!(
                tally = ?self.progress.tally,
                dedupe_keys = self.pipeline.dedupe_keys(),
                expired,
                "progress"
            );
        }
        Ok(())
    }

    /// Swaps in the rules and routes of `new`, if its campaign topics exist
    /// and its rules are valid.
    fn reload(&mut self, io: &Io<'_>, new: Config) {
        let topics: Vec<&str> = new.routes.iter().map(|r| r.topic.as_str()).collect();
        let kafka = &self.config.kafka;
        let checked = crate::kafka::check_topics(io.consumer.client(), kafka, &topics)
            .map_err(|e| e.to_string())
            .and_then(|_| self.sink.check_schema_ids(&new.routes))
            .and_then(|_| new.scoring_rules().map_err(|e| e.to_string()))
            .and_then(|rules| Ok((rules, new.catalog().map_err(|e| e.to_string())?)));
        let metrics = &self.controls.observed.metrics;
        let (rules, catalog) = match checked {
            Ok(rules) => rules,
            Err(error) => {
                metrics.reloaded("refused");
                let rules_version = self.pipeline.rules_version();
                warn!(%error, rules_version, "reload refused; the rules in use stay");
                return;
            }
        };
        let current = self.reloaded.as_ref().unwrap_or(self.config);
        let restart = crate::reload::needs_restart(current, &new);
        if !restart.is_empty() {
            warn!(sections = ?restart, "reload: changes outside routes, policy, scoring and catalog wait for a restart");
        }
        let offers = catalog.len();
        catalog.warn_about_mistakes();
        self.pipeline.set_rules(rules, new.routing_table(), catalog);
        self.sink.set_routes(&new.routes);
        metrics.set_rules_version(self.pipeline.rules_version());
        metrics.reloaded("applied");
        info!(
            rules_version = self.pipeline.rules_version(),
            routes = new.routes.len(),
            offers,
            "rules reloaded"
        );
        *self.reloaded = Some(new);
    }

    /// Stages the dedupe state changes not yet staged, for the commit to
    /// write to the changelog.
    fn stage_changes(&mut self) {
        self.sink.stage_changes(&mut self.pipeline.take_changes());
    }

    /// Reads and processes records until the batch is full, its window
    /// ends, or something must happen between batches.
    fn read_batch(&mut self, io: &Io<'_>) -> Result<OpenBatch, RunError> {
        let window = batch_window(
            Duration::from_millis(self.config.pipeline.commit_interval_ms),
            self.last_commit,
            self.delivery_timeout(),
        );
        let deadline = Instant::now() + window;
        let limit = self
            .progress
            .batch_limit(self.config.pipeline.max_batch_records);
        let mut batch = OpenBatch::default();
        while batch.records < limit && !self.stopping() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let polled = io.second_hop.poll(io.consumer, deadline - now);
            self.take_events(io, &mut batch)?;
            let tally = &mut self.progress.tally;
            report_offset_resets(io.context(), io.restorer, tally);
            match polled {
                // With the second hop's own queues, a poll waits a moment
                // only, not to the batch's deadline.
                None if io.second_hop.is_split() && Instant::now() < deadline => {}
                None => break,
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                Some(Ok(message)) => {
                    if !self.on_record(io, &message, &mut batch)? {
                        break;
                    }
                }
            }
            if !self.progress.to_restore.is_empty() {
                // Restoring takes a while: commit first, so that no
                // transaction stays open across it.
                break;
            }
        }
        Ok(batch)
    }

    /// Acts on what the consumer's callbacks queued during the last poll.
    fn take_events(&mut self, io: &Io<'_>, batch: &mut OpenBatch) -> Result<(), RunError> {
        let mut assigned = false;
        for event in io.context().events() {
            if matches!(event, Event::Assigned { .. }) {
                assigned = true;
            }
            let metrics = &self.controls.observed.metrics;
            let reaction = self.progress.apply(
                event,
                (io.topology(), &mut self.pipeline),
                (batch, &mut self.meter, metrics),
            );
            match reaction {
                Reaction::Continue => {}
                Reaction::Rewind(start) => {
                    // A refused record aborted it: it fails again in a
                    // batch of the loop's own, which isolates it.
                    let _ = io.producer.context().take_rejection();
                    rewind(io.consumer, start)?;
                }
                Reaction::Fail(error) => return Err(error),
            }
        }
        if assigned {
            let health = &self.controls.observed.health;
            health.set_phase(match self.progress.to_restore.is_empty() {
                true => Phase::Running,
                false => Phase::Restoring,
            });
        }
        Ok(())
    }

    /// Processes one record; `false` ends the batch before or after it.
    fn on_record(
        &mut self,
        io: &Io<'_>,
        message: &BorrowedMessage<'_>,
        batch: &mut OpenBatch,
    ) -> Result<bool, RunError> {
        let context = io.context();
        let Some(hop) = context.topology.hop(message.topic()) else {
            return Ok(true);
        };
        let part = (hop, message.partition());
        if !self.progress.may_process(&context.topology, part) {
            // Not before its state is restored (or, for an input record,
            // before the catch-up due): read again after.
            seek_back(io.consumer, message)?;
            return Ok(false);
        }
        let mut not_asked = None;
        if let Some(registry) = io.registry
            && self
                .pipeline
                .missing_writer_schema(message.payload())
                .is_some()
        {
            if context.txn.is_open() && self.lookups.can_ask() {
                // Asking the registry may take its timeouts and retries,
                // longer than a transaction may stay open (the broker would
                // abort it and fence this producer): the batch ends before
                // this record, which the next one reads first. (Over the
                // lookup budget, nothing is asked.)
                seek_back(io.consumer, message)?;
                return Ok(false);
            }
            let metrics = &self.controls.observed.metrics;
            not_asked = learn_writer_schema(
                &mut self.pipeline,
                (registry, &mut self.lookups),
                message.payload(),
                metrics,
            )?;
        }
        batch.read(part, message.offset());
        context.txn.begin()?;
        let poison = self.progress.poison(part, message.offset());
        let handled = self.handle(io, message, part, poison, batch);
        if let Some(id) = not_asked {
            self.pipeline.forget_writer_schema(id);
        }
        match handled {
            Ok(()) => {}
            // The broker refused a record of this transaction, which now
            // only aborts: end the batch and find the record.
            Err(RunError::Produce {
                source:
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::State,
                    ),
                ..
            }) if context.txn.exactly_once() => {
                batch.refused = true;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        lock(&context.pending).insert(part, message.offset() + 1);
        Ok(true)
    }

    /// Plans one record and carries the plan out.
    fn handle(
        &mut self,
        io: &Io<'_>,
        message: &BorrowedMessage<'_>,
        (hop, partition): Part,
        poison: Option<Failure>,
        batch: &mut OpenBatch,
    ) -> Result<(), RunError> {
        self.meter.batch.consumed(message.topic());
        let own = SourcePosition {
            topic: message.topic(),
            partition,
            offset: message.offset(),
        };
        // Records read back from the repartition topic name the input record.
        // Only they are asked: librdkafka parses headers when first asked.
        let forwarded = (hop == Hop::Repartition).then(|| message.headers());
        let forwarded = forwarded.flatten().and_then(headers::source_of);
        let (source, original_key) = forwarded.unwrap_or((own, message.key()));
        let record = RecordView {
            hop,
            partition,
            value: message.payload(),
            timestamp_ms: message.timestamp().to_millis(),
            source,
            original_key,
        };
        let mut stepper = Stepper {
            topology: io.topology(),
            pipeline: &mut self.pipeline,
            meter: &mut self.meter,
            metrics: &self.controls.observed.metrics,
            local: self.progress.local.as_ref(),
        };
        stepper.step((&record, message), poison, &self.sink, batch)
    }

    /// Commits the batch (or aborts one a refusal ended), and reacts.
    fn end_batch(&mut self, io: &Io<'_>, batch: OpenBatch) -> Result<(), RunError> {
        let commit_started = Instant::now();
        let context = io.context();
        let topology = io.topology();
        if topology.changes_after_outputs && !batch.refused {
            flush(io.producer, self.delivery_timeout())
                .map_err(|e| TxnError::Delivery(e.to_string()))?;
            // A failed or refused output leaves the changes unwritten; the
            // commit reports it and the batch's state is rolled back.
            if !io.producer.context().failed() {
                self.stage_changes();
            }
        }
        if batch.refused {
            // The transaction can only abort: the batch is read again.
            context.abort()?;
            self.batch_refused(io, batch)?;
        } else {
            // What the commit reaches, before it clears what is pending.
            let reached = lock(&context.pending).clone();
            match context.commit(io.consumer.as_ref()) {
                Ok(_) => self.batch_committed(io, batch, &reached),
                Err(RunError::Txn(e)) if e.is_retry() => self.batch_refused(io, batch)?,
                Err(e) => return Err(e),
            }
        }
        self.last_commit = commit_started.elapsed();
        io.producer.poll(Duration::ZERO);
        if !self.eviction_logged && self.pipeline.dedupe().evicted() > 0 {
            self.eviction_logged = true;
            warn!(
                budget_mib = self.config.dedupe.memory_budget_mib,
                "dedupe state reached its memory budget: the least recently seen keys are being forgotten"
            );
        }
        Ok(())
    }

    fn batch_committed(
        &mut self,
        io: &Io<'_>,
        batch: OpenBatch,
        reached: &std::collections::BTreeMap<Part, i64>,
    ) {
        if batch.records > 0 {
            debug!("batch committed");
        }
        if let Some(purger) = self
            .purger
            .as_mut()
            .filter(|_| self.last_purge.elapsed() >= PURGE_INTERVAL)
        {
            purger.purge(&io.context().purgeable);
            self.last_purge = Instant::now();
        }
        let assigned = io.consumer.assignment().unwrap_or_default();
        let topology = io.topology();
        let still_assigned = |(hop, partition): Part| {
            assigned
                .find_partition(topology.topic(hop), partition)
                .is_some()
        };
        let metrics = &self.controls.observed.metrics;
        self.progress.committed(
            batch,
            (&mut self.pipeline, &mut self.meter, metrics),
            (reached, still_assigned),
        );
    }

    /// Nothing of the batch is visible (under at-least-once, some of it
    /// may be): forget its state changes and read its records again.
    fn batch_refused(&mut self, io: &Io<'_>, batch: OpenBatch) -> Result<(), RunError> {
        self.progress.aborted(&mut self.pipeline, &mut self.meter);
        if let Some((topic, code)) = io.producer.context().take_rejection() {
            // Where leadflow puts what it cannot deliver, and its state,
            // refusing: no record is at fault, so no record is dead-lettered
            // for it; the pipeline restarts (backoff).
            let topology = io.topology();
            if topic == topology.dead_letter || topic == topology.changelog {
                let refusal = format!("{topic} refused a record for good: {code}");
                return Err(TxnError::Delivery(refusal).into());
            }
            self.metrics()
                .produce_rejections
                .get_or_create(&crate::metrics::RejectionLabels {
                    topic: topic.clone(),
                    error: format!("{code:?}"),
                })
                .inc();
            let wait = self
                .progress
                .refused(&batch, super::plan::rejected(&topic, code));
            let wake = Instant::now() + wait;
            while Instant::now() < wake && !self.stopping() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        rewind(io.consumer, batch.start)
    }
}

/// Seeks a record's partition back to it, for the next batch to read first.
fn seek_back(
    consumer: &BaseConsumer<RunContext>,
    message: &BorrowedMessage<'_>,
) -> Result<(), RunError> {
    consumer
        .seek(
            message.topic(),
            message.partition(),
            Offset::Offset(message.offset()),
            Duration::from_secs(10),
        )
        .map_err(RunError::Consumer)
}

/// `topic/partition:first-last` for each partition a batch read, for its
/// log span.
fn offset_ranges(context: &RunContext, batch: &OpenBatch) -> String {
    let pending = lock(&context.pending);
    let ranges: Vec<String> = batch
        .start
        .iter()
        .map(|(part, first)| {
            let last = pending.get(part).map_or(*first, |next| next - 1);
            format!(
                "{}/{}:{first}-{last}",
                context.topology.topic(part.0),
                part.1
            )
        })
        .collect();
    ranges.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reads_at_least_as_long_as_the_last_commit_took() {
        let ms = Duration::from_millis;
        let timeout = ms(10_000);
        // Fast commits: the configured interval.
        assert_eq!(batch_window(ms(100), ms(20), timeout), ms(100));
        // A commit slower than the interval: as long as it took.
        assert_eq!(batch_window(ms(50), ms(900), timeout), ms(900));
        // Never more than a quarter of the transaction timeout.
        assert_eq!(batch_window(ms(50), ms(8_000), timeout), ms(2_500));
        // A configured interval above that cap is the user's to keep.
        assert_eq!(batch_window(ms(5_000), ms(8_000), timeout), ms(5_000));
    }
}
