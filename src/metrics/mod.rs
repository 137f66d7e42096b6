//! leadflow's Prometheus metrics (prefix `leadflow_`), kept in one
//! registry and encoded in the text format for `/metrics`.
//!
//! Counts of records and leads move only when a batch commits (see
//! [`Batch`]): an aborted batch is processed again, and counting it twice
//! would make the counters disagree with the topics. Latencies are
//! observed as they happen. Every metric is listed, with its labels, in
//! the metrics reference in docs/operations.md (a test holds the two equal).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::domain::{Grade, Storefront};

mod batch;
mod ingest;

pub use batch::{Batch, StageLaps, Stopwatch};
pub use ingest::IngestMetrics;

/// A label set of one label with a fixed vocabulary.
macro_rules! static_label {
    ($name:ident, $label:ident) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub struct $name {
            pub $label: &'static str,
        }
    };
}

static_label!(StageLabels, stage);
static_label!(OutcomeLabels, outcome);
static_label!(GradeLabels, grade);
static_label!(ResultLabels, result);
static_label!(KindLabels, kind);
static_label!(StorefrontLabels, storefront);
static_label!(StatusLabels, status);
static_label!(ClassLabels, class);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub topic: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub stage: &'static str,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

/// Where a lead ended, the `outcome` label of `leadflow_leads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadOutcome {
    Campaign,
    Suppressed,
    Duplicate,
    Test,
    DeadLetter,
}

impl LeadOutcome {
    const ALL: [LeadOutcome; 5] = [
        LeadOutcome::Campaign,
        LeadOutcome::Suppressed,
        LeadOutcome::Duplicate,
        LeadOutcome::Test,
        LeadOutcome::DeadLetter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeadOutcome::Campaign => "campaign",
            LeadOutcome::Suppressed => "suppressed",
            LeadOutcome::Duplicate => "duplicate",
            LeadOutcome::Test => "test",
            LeadOutcome::DeadLetter => "dead_letter",
        }
    }
}

const GRADES: [Grade; 4] = [Grade::A, Grade::B, Grade::C, Grade::D];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric leadflow exports.
pub struct Metrics {
    registry: Registry,
    pub records_in: Family<TopicLabels, Counter>,
    pub records_out: Family<TopicLabels, Counter>,
    pub leads: Family<OutcomeLabels, Counter>,
    pub stage_duration: HistogramFamily<StageLabels>,
    pub end_to_end: Histogram,
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    pub dedupe_hits: Counter,
    pub dedupe_misses: Counter,
    pub repartition_skipped: Counter,
    pub repartition_local: Gauge,
    pub dedupe_keys: Gauge,
    pub dedupe_bytes: Gauge,
    pub dedupe_evictions: Counter,
    pub dedupe_expired: Counter,
    pub score: Histogram,
    pub grades: Family<GradeLabels, Counter>,
    pub uncatalogued: Family<StorefrontLabels, Counter>,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub transactions: Family<ResultLabels, Counter>,
    pub commit_duration: Histogram,
    pub rebalances: Family<KindLabels, Counter>,
    pub restore_duration: Histogram,
    pub restored_records: Counter,
    pub pipeline_restarts: Counter,
    pub offset_resets: Family<TopicLabels, Counter>,
    pub repartition_purges: Family<ResultLabels, Counter>,
    pub produce_rejections: Family<RejectionLabels, Counter>,
    pub rules: Family<VersionLabels, Gauge>,
    pub reloads: Family<ResultLabels, Counter>,
    pub schema_lookups: Family<ResultLabels, Counter>,
    pub ready: Gauge,
    pub ingest: IngestMetrics,
    resident_memory: Gauge,
    /// Serialises rules-version swaps, which clear and set a family.
    rules_lock: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn stage_histogram() -> Histogram {
    // 1 µs to 16 ms: one stage on one lead.
    Histogram::new(exponential_buckets(1e-6, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("leadflow");
        let m = Metrics {
            registry: Registry::default(),
            records_in: Family::default(),
            records_out: Family::default(),
            leads: Family::default(),
            stage_duration: Family::new_with_constructor(stage_histogram),
            end_to_end: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            dead_letters: Family::default(),
            dedupe_hits: Counter::default(),
            dedupe_misses: Counter::default(),
            repartition_skipped: Counter::default(),
            repartition_local: Gauge::default(),
            dedupe_keys: Gauge::default(),
            dedupe_bytes: Gauge::default(),
            dedupe_evictions: Counter::default(),
            dedupe_expired: Counter::default(),
            score: Histogram::new((1..=10).map(|i| f64::from(i) * 10.0)),
            grades: Family::default(),
            uncatalogued: Family::default(),
            consumer_lag: Family::default(),
            transactions: Family::default(),
            commit_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            rebalances: Family::default(),
            restore_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            restored_records: Counter::default(),
            pipeline_restarts: Counter::default(),
            offset_resets: Family::default(),
            repartition_purges: Family::default(),
            produce_rejections: Family::default(),
            rules: Family::default(),
            reloads: Family::default(),
            schema_lookups: Family::default(),
            ready: Gauge::default(),
            ingest: IngestMetrics::new(),
            resident_memory: Gauge::default(),
            rules_lock: Mutex::new(()),
        };
        m.register_flow(&mut registry);
        m.register_state(&mut registry);
        m.register_hop(&mut registry);
        m.ingest.register(&mut registry);
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: crate::LEADFLOW_VERSION.to_owned(),
            })
            .set(1);
        registry.register("build", "leadflow's version (value 1)", build);
        m.zero_series();
        Metrics { registry, ..m }
    }

    /// Zero-valued series exist from the start, so that rates and
    /// ratios over them are defined before the first such lead.
    fn zero_series(&self) {
        for outcome in LeadOutcome::ALL {
            self.leads.get_or_create_owned(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        for grade in GRADES {
            self.grades.get_or_create_owned(&GradeLabels {
                grade: grade.as_str(),
            });
        }
        for storefront in [Storefront::AppSource, Storefront::AzureMarketplace] {
            self.uncatalogued.get_or_create_owned(&StorefrontLabels {
                storefront: storefront.as_str(),
            });
        }
        for result in ["committed", "aborted"] {
            self.transactions
                .get_or_create_owned(&ResultLabels { result });
        }
        for result in ["applied", "refused"] {
            self.reloads.get_or_create_owned(&ResultLabels { result });
        }
        for result in ["found", "unknown", "failed"] {
            self.schema_lookups
                .get_or_create_owned(&ResultLabels { result });
        }
    }

    /// Records, leads and stages.
    fn register_flow(&self, r: &mut Registry) {
        r.register(
            "records_in",
            "Records consumed, per topic (counted when their batch commits)",
            self.records_in.clone(),
        );
        r.register(
            "records_out",
            "Records produced, per topic (counted when their batch commits)",
            self.records_out.clone(),
        );
        r.register(
            "leads",
            "Input records by where they ended: campaign, suppressed, duplicate, test or dead_letter",
            self.leads.clone(),
        );
        r.register_with_unit(
            "stage_duration",
            "Time one stage takes on one lead, sampled on one record in 16",
            Unit::Seconds,
            self.stage_duration.clone(),
        );
        r.register_with_unit(
            "end_to_end_latency",
            "From an input record's timestamp to the commit that makes its output visible",
            Unit::Seconds,
            self.end_to_end.clone(),
        );
        r.register(
            "dead_letters",
            "Records sent to the dead-letter topic, by stage and error class",
            self.dead_letters.clone(),
        );
        r.register(
            "dedupe_hits",
            "Leads dropped as duplicates",
            self.dedupe_hits.clone(),
        );
        r.register(
            "dedupe_misses",
            "Leads checked by dedupe and let through",
            self.dedupe_misses.clone(),
        );
        r.register(
            "dedupe_keys",
            "Dedupe keys held in memory",
            self.dedupe_keys.clone(),
        );
        r.register_with_unit(
            "dedupe",
            "Memory held by the dedupe state",
            Unit::Bytes,
            self.dedupe_bytes.clone(),
        );
        r.register(
            "dedupe_evictions",
            "Dedupe keys forgotten to stay within dedupe.memory_budget_mib",
            self.dedupe_evictions.clone(),
        );
        r.register(
            "dedupe_expired",
            "Dedupe keys forgotten after a window of event time without a lead",
            self.dedupe_expired.clone(),
        );
        r.register(
            "lead_score",
            "Scores of leads scored and routed (0-100)",
            self.score.clone(),
        );
        r.register(
            "lead_grades",
            "Leads scored and routed, by grade",
            self.grades.clone(),
        );
        r.register(
            "leads_uncatalogued",
            "Leads scored and routed whose offer the catalog does not list, by storefront",
            self.uncatalogued.clone(),
        );
    }

    /// The repartition hop: leads that skip it, and purges of its topic.
    fn register_hop(&self, r: &mut Registry) {
        r.register(
            "repartition_skipped",
            "Input leads processed without the repartition hop, their key's partition being held and caught up here",
            self.repartition_skipped.clone(),
        );
        r.register(
            "repartition_local_partitions",
            "Repartition partitions whose leads skip the hop in this process",
            self.repartition_local.clone(),
        );
        r.register(
            "repartition_purges",
            "Deletions of committed records from the repartition topic, by result: purged or failed",
            self.repartition_purges.clone(),
        );
    }

    /// Dedupe state, commits, rebalances and the process.
    fn register_state(&self, r: &mut Registry) {
        r.register(
            "consumer_lag",
            "Records between the consumer's position and the partition's last stable offset, per assigned partition, from librdkafka statistics",
            self.consumer_lag.clone(),
        );
        r.register(
            "transactions",
            "Batch commits by result: committed or aborted",
            self.transactions.clone(),
        );
        r.register_with_unit(
            "commit_duration",
            "Time to commit a batch: the transaction commit, or flush and offset commit",
            Unit::Seconds,
            self.commit_duration.clone(),
        );
        r.register(
            "rebalances",
            "Consumer group rebalance events, by kind: assign or revoke",
            self.rebalances.clone(),
        );
        r.register_with_unit(
            "restore_duration",
            "Time to restore the dedupe state of newly assigned partitions",
            Unit::Seconds,
            self.restore_duration.clone(),
        );
        r.register(
            "restored_records",
            "Changelog records read while restoring dedupe state",
            self.restored_records.clone(),
        );
        r.register(
            "pipeline_restarts",
            "Restarts of the pipeline from the last commit after a runtime failure",
            self.pipeline_restarts.clone(),
        );
        r.register(
            "offset_resets",
            "Offset resets on a topic leadflow consumes: records deleted (retention, DeleteRecords) before leadflow read them",
            self.offset_resets.clone(),
        );
        r.register(
            "produce_rejections",
            "Records the broker refused for good (too large, timestamp out of range, not authorized), by topic and error; each aborts its batch, which is retried with the record isolated",
            self.produce_rejections.clone(),
        );
        r.register(
            "rules",
            "The scoring rules and routing version in use (value 1)",
            self.rules.clone(),
        );
        r.register(
            "reloads",
            "Reloads of the scoring rules and routing table, by result: applied or refused",
            self.reloads.clone(),
        );
        r.register(
            "schema_lookups",
            "Writer schema lookups in the schema registry for confluent-avro input, by result: found, unknown (no schema has the id; its records are dead-lettered) or failed (the registry did not answer; the batch runs again from the last commit)",
            self.schema_lookups.clone(),
        );
        r.register(
            "ready",
            "1 when partitions are assigned and restored and the broker is reachable",
            self.ready.clone(),
        );
        r.register_with_unit(
            "resident_memory",
            "Resident set size of the process",
            Unit::Bytes,
            self.resident_memory.clone(),
        );
    }

    /// The text exposition, with the resident memory read now.
    pub fn encode(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Names the rules version in use; the previous one's series goes.
    pub fn set_rules_version(&self, version: &str) {
        let _guard = self.rules_lock.lock();
        self.rules.clear();
        self.rules
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
            })
            .set(1);
    }

    /// Counts a writer schema lookup: `found`, `unknown` or `failed`.
    pub fn schema_looked_up(&self, result: &'static str) {
        self.schema_lookups
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a reload: `applied` or `refused`.
    pub fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The dedupe state's size now.
    pub fn set_dedupe_size(&self, keys: usize, bytes: usize) {
        self.dedupe_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
        self.dedupe_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Observes one lead's stage timings.
    pub fn observe_stages(&self, laps: &StageLaps) {
        for (stage, duration) in laps.iter() {
            self.stage_duration
                .get_or_create(&StageLabels {
                    stage: stage.as_str(),
                })
                .observe(duration.as_secs_f64());
        }
    }

    /// Adds a committed batch's counts and empties it.
    pub fn commit(&self, batch: &mut Batch, now_ms: i64) {
        for (topic, n) in batch.consumed.drain(..) {
            self.records_in
                .get_or_create(&TopicLabels { topic })
                .inc_by(n);
        }
        for (topic, n) in batch.produced.drain(..) {
            self.records_out
                .get_or_create(&TopicLabels { topic })
                .inc_by(n);
        }
        for (i, n) in batch.outcomes.iter_mut().enumerate() {
            if *n > 0 {
                self.leads
                    .get_or_create(&OutcomeLabels {
                        outcome: LeadOutcome::ALL[i].as_str(),
                    })
                    .inc_by(*n);
                *n = 0;
            }
        }
        for ((stage, class), n) in std::mem::take(&mut batch.dead_letters) {
            self.dead_letters
                .get_or_create(&DeadLetterLabels {
                    stage: stage.as_str(),
                    class,
                })
                .inc_by(n);
        }
        self.dedupe_hits
            .inc_by(std::mem::take(&mut batch.dedupe_hits));
        self.dedupe_misses
            .inc_by(std::mem::take(&mut batch.dedupe_misses));
        self.repartition_skipped
            .inc_by(std::mem::take(&mut batch.skipped_hop));
        for (storefront, n) in [Storefront::AppSource, Storefront::AzureMarketplace]
            .into_iter()
            .zip(std::mem::take(&mut batch.uncatalogued))
        {
            if n > 0 {
                self.uncatalogued
                    .get_or_create(&StorefrontLabels {
                        storefront: storefront.as_str(),
                    })
                    .inc_by(n);
            }
        }
        for (points, grade) in batch.scores.drain(..) {
            self.score.observe(f64::from(points));
            self.grades
                .get_or_create(&GradeLabels {
                    grade: grade.as_str(),
                })
                .inc();
        }
        for timestamp_ms in batch.timestamps.drain(..) {
            // Clocks of other hosts may run ahead: never a negative latency.
            let millis = now_ms.saturating_sub(timestamp_ms).max(0);
            self.end_to_end.observe(millis as f64 / 1000.0);
        }
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, the clock of
/// record timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The process's resident set size, from `/proc/self/status` (Linux).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::Stage;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_committed_batch_is_counted_and_an_aborted_one_is_not() {
        let metrics = Metrics::new();
        let mut batch = Batch::default();
        batch.consumed("leads.raw");
        batch.produced("campaign.x");
        batch.outcome(LeadOutcome::Campaign, true);
        batch.scored(72, Grade::B);
        batch.uncatalogued(Storefront::AppSource);
        batch.output_of(Some(1_000));
        batch.clear();
        metrics.commit(&mut batch, 2_000);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, "leadflow_leads_total{outcome=\"campaign\"}"),
            Some(0.0)
        );

        batch.consumed("leads.raw");
        batch.consumed("leads.raw");
        batch.produced("campaign.x");
        batch.outcome(LeadOutcome::Campaign, true);
        batch.outcome(LeadOutcome::Duplicate, true);
        batch.dead_letter(Stage::Decode, "json_syntax");
        batch.scored(72, Grade::B);
        batch.uncatalogued(Storefront::AzureMarketplace);
        batch.output_of(Some(1_000));
        metrics.commit(&mut batch, 1_250);
        let text = metrics.encode();
        for (series, value) in [
            ("leadflow_records_in_total{topic=\"leads.raw\"}", 2.0),
            ("leadflow_records_out_total{topic=\"campaign.x\"}", 1.0),
            ("leadflow_leads_total{outcome=\"campaign\"}", 1.0),
            ("leadflow_leads_total{outcome=\"duplicate\"}", 1.0),
            ("leadflow_dedupe_hits_total", 1.0),
            ("leadflow_dedupe_misses_total", 1.0),
            (
                "leadflow_dead_letters_total{stage=\"decode\",class=\"json_syntax\"}",
                1.0,
            ),
            ("leadflow_lead_grades_total{grade=\"B\"}", 1.0),
            (
                "leadflow_leads_uncatalogued_total{storefront=\"azure-marketplace\"}",
                1.0,
            ),
            (
                "leadflow_leads_uncatalogued_total{storefront=\"appsource\"}",
                0.0,
            ),
            ("leadflow_lead_score_sum", 72.0),
            ("leadflow_end_to_end_latency_seconds_sum", 0.25),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        assert!(sample(&text, "leadflow_resident_memory_bytes").is_some_and(|b| b > 0.0));
    }

    #[test]
    fn a_new_rules_version_replaces_the_old_one() {
        let metrics = Metrics::new();
        metrics.set_rules_version("v1");
        metrics.set_rules_version("v2");
        let text = metrics.encode();
        assert_eq!(
            sample(&text, "leadflow_rules{version=\"v2\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains("version=\"v1\""), "{text}");
    }

    #[test]
    fn stage_laps_accumulate_per_stage() {
        let metrics = Metrics::new();
        let mut laps = StageLaps::default();
        laps.add(Stage::Dedupe, Duration::from_micros(3));
        laps.add(Stage::Dedupe, Duration::from_micros(2));
        laps.add(Stage::Decode, Duration::from_micros(1));
        metrics.observe_stages(&laps);
        let text = metrics.encode();
        let sum = sample(
            &text,
            "leadflow_stage_duration_seconds_sum{stage=\"dedupe\"}",
        )
        .expect("dedupe series");
        assert!((sum - 5e-6).abs() < 1e-9, "{sum}");
        assert!(!text.contains("stage=\"score\""), "{text}");
    }
}
