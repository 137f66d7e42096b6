//! The configuration's sections and their defaults, each declared with
//! what a reload does with it ([`Section::ON_RELOAD`]): applied between
//! two transactions, or reported and left for a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::stages::decode::Format;
use crate::stages::route::{DisposablePolicy, Route};

/// What a reload (SIGHUP, or a changed config or rules file) does with a
/// section whose contents changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReload {
    /// Applied between two transactions: every lead of a transaction is
    /// scored and routed by one version.
    Apply,
    /// Reported, and left for a restart.
    Restart,
}

/// A section of the configuration.
pub trait Section: Serialize {
    const ON_RELOAD: OnReload;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoint; port 0
    /// picks a free port (logged); empty turns the endpoint off.
    pub listen: String,
}

impl Section for HttpConfig {
    const ON_RELOAD: OnReload = OnReload::Restart;
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON lines otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `leadflow=debug,rdkafka=warn`;
    /// `RUST_LOG`, when set, takes precedence.
    pub level: String,
    pub format: LogFormat,
}

impl Section for LogConfig {
    const ON_RELOAD: OnReload = OnReload::Restart;
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    /// A scoring rules file; without it the built-in `rules/scoring.toml`
    /// applies. A relative path is read from the config file's directory.
    pub rules_file: Option<PathBuf>,
}

impl Section for ScoringConfig {
    const ON_RELOAD: OnReload = OnReload::Apply;
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `suppress`, `dead-letter` or `allow`.
    pub disposable_email: DisposablePolicy,
}

impl Section for PolicyConfig {
    const ON_RELOAD: OnReload = OnReload::Apply;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    /// This process's stable name within the group. Under exactly-once the
    /// `transactional.id` is `GROUP-INSTANCE`, so a restarted instance
    /// fences its predecessor; every concurrently running process needs its
    /// own. Defaults to the host name.
    pub instance_id: Option<String>,
    /// How long start-up waits for the broker before giving up.
    pub connect_timeout_ms: u64,
    /// librdkafka properties for every client, passed through unchanged.
    pub client: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for producers only.
    pub producer: BTreeMap<String, String>,
}

impl Section for KafkaConfig {
    const ON_RELOAD: OnReload = OnReload::Restart;
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "leadflow".into(),
            instance_id: None,
            connect_timeout_ms: 5_000,
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub input: String,
    pub suppressed: String,
    pub dead_letter: String,
    /// Encoding of the input topic: `json`, `avro` or `confluent-avro`.
    pub input_format: Format,
    /// Encoding of campaign and suppressed records, unless a route sets its own.
    pub output_format: Format,
    /// Internal topic that re-keys raw leads by person and offer before
    /// dedupe. Defaults to `GROUP-repartition`.
    pub repartition: Option<String>,
    /// Internal topic that makes the dedupe state durable, one partition
    /// per processed partition: batches of changes, deleted by retention.
    /// Defaults to `GROUP-dedupe-changelog`.
    pub changelog: Option<String>,
}

impl Section for Topics {
    const ON_RELOAD: OnReload = OnReload::Restart;
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            input: "leads.raw".into(),
            suppressed: "leads.suppressed".into(),
            dead_letter: "leads.dlq".into(),
            input_format: Format::Json,
            output_format: Format::Json,
            repartition: None,
            changelog: None,
        }
    }
}

/// How outputs and consumed offsets are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessingGuarantee {
    /// Each batch's outputs and its consumed offsets commit in one Kafka
    /// transaction: nothing lost, nothing repeated.
    ExactlyOnce,
    /// Offsets are committed after the outputs are acknowledged: nothing is
    /// lost, but a crash between the two repeats the outputs of a batch.
    AtLeastOnce,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub processing_guarantee: ProcessingGuarantee,
    /// Longest time a batch stays open before its outputs are flushed and
    /// its offsets committed.
    pub commit_interval_ms: u64,
    /// Largest number of input records in one batch.
    pub max_batch_records: usize,
    /// Records larger than this are dead-lettered as `oversized`. Every
    /// record leadflow writes from an input (dead letter, re-keyed copy)
    /// fits in this plus [`crate::kafka::RECORD_HEADROOM`]: the producer's
    /// `message.max.bytes` and those topics' `max.message.bytes` must
    /// allow that, which `run` checks at start. The default fits Kafka's
    /// stock 1,048,588-byte topic limit.
    pub max_record_bytes: usize,
    /// How long a batch may wait for its outputs to be acknowledged before
    /// leadflow stops with an error (and restarts from the last commit).
    /// Also the transaction timeout under exactly-once: how long a crashed
    /// instance's open transaction can hold back read_committed readers.
    pub delivery_timeout_ms: u64,
    /// Re-key the input by person and offer through the repartition topic
    /// before dedupe. Turn off only when producers already key `leads.raw`
    /// so that all leads of one person for one offer share a partition.
    pub repartition: bool,
    /// A lead whose repartition partition this process holds, restored
    /// and read to its end, skips the hop and is processed at once on that
    /// partition's state: the same outcome, without the second write, read
    /// and decode. Off sends every lead through the hop.
    pub repartition_shortcut: bool,
    /// After SIGTERM or SIGINT, how long leadflow may take to finish and
    /// commit its batch and leave the group before it exits anyway.
    pub shutdown_timeout_ms: u64,
}

impl Section for PipelineConfig {
    const ON_RELOAD: OnReload = OnReload::Restart;
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            processing_guarantee: ProcessingGuarantee::ExactlyOnce,
            commit_interval_ms: 100,
            max_batch_records: 10_000,
            max_record_bytes: 983_040,
            delivery_timeout_ms: 10_000,
            repartition: true,
            repartition_shortcut: true,
            shutdown_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupeConfig {
    /// A repeat of the same (email, offer, action) within this many days of
    /// event time is a duplicate.
    pub window_days: u32,
    /// Memory the dedupe state may take; past it the least recently seen
    /// keys are forgotten (and counted).
    pub memory_budget_mib: u64,
    /// A lead whose event time is further than this ahead of the processing
    /// time is a dead letter (`future_event_time`): a broken clock, not a lead.
    pub max_future_ms: u64,
}

impl Section for DedupeConfig {
    const ON_RELOAD: OnReload = OnReload::Restart;
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window_days: 180,
            memory_budget_mib: 1_024,
            max_future_ms: 3_600_000,
        }
    }
}

/// Where the offer catalog is (`[catalog]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// The catalog file (docs/listings.md); without it no offer is
    /// catalogued. A relative path is read from the config file's
    /// directory.
    pub file: Option<PathBuf>,
}

/// How leadflow reaches the schema registry (`[schema_registry]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g.
    /// `http://registry:8081` or `http://apicurio:8080/apis/ccompat/v7`.
    /// Required when a topic uses the `confluent-avro` format.
    pub url: Option<String>,
    /// Which subject leadflow's output schemas are registered under.
    pub subject_name_strategy: SubjectNameStrategy,
    /// Register leadflow's output schemas at start (`true`), or only look
    /// them up and refuse to start if they are not registered (`false`,
    /// for registries where deploy pipelines register schemas).
    pub auto_register: bool,
    /// Longest one request may take, connecting included.
    pub timeout_ms: u64,
    /// Retries of a request that failed in a way a retry can fix.
    pub retries: u32,
    /// First wait before a retry; it doubles each time, up to 5 s.
    pub retry_backoff_ms: u64,
    /// HTTP basic authentication (Confluent Cloud: API key and secret).
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM file of the certificate authorities to trust for `https`,
    /// instead of the built-in web roots.
    pub ca_file: Option<String>,
}

impl Section for RegistryConfig {
    const ON_RELOAD: OnReload = OnReload::Restart;
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: None,
            subject_name_strategy: SubjectNameStrategy::TopicName,
            auto_register: true,
            timeout_ms: 5_000,
            retries: 2,
            retry_backoff_ms: 200,
            username: None,
            password: None,
            ca_file: None,
        }
    }
}

/// Confluent's subject name strategies for record values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectNameStrategy {
    /// `<topic>-value`: one schema history per topic (Confluent's default).
    TopicName,
    /// The record's full name, e.g. `dev.leadflow.CampaignLead`: one
    /// schema history per record type, whatever topic it is on.
    RecordName,
}

impl SubjectNameStrategy {
    /// The subject for values of `topic` written with a schema whose
    /// record's full name is `record_name`.
    pub fn subject(self, topic: &str, record_name: &str) -> String {
        match self {
            SubjectNameStrategy::TopicName => format!("{topic}-value"),
            SubjectNameStrategy::RecordName => record_name.to_owned(),
        }
    }
}

/// The routing table: swapped whole between two transactions.
impl Section for Vec<Route> {
    const ON_RELOAD: OnReload = OnReload::Apply;
}

/// The catalog: read again and swapped whole between two transactions.
impl Section for CatalogConfig {
    const ON_RELOAD: OnReload = OnReload::Apply;
}

/// The front doors that bring leads into the input topic (`[ingest]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// `leadflow ingest http`: Microsoft's HTTPS-endpoint lead destination.
    pub http: HttpIngestConfig,
    /// `leadflow ingest azure-table`: Microsoft's Azure-table destination.
    pub azure_table: TableIngestConfig,
}

impl Section for IngestConfig {
    const ON_RELOAD: OnReload = OnReload::Restart;
}

/// `[ingest.http]`: the endpoint Microsoft POSTs each lead to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpIngestConfig {
    /// Address to listen on. Plain HTTP: TLS ends at the reverse proxy or
    /// ingress in front (docs/ingest.md).
    pub listen: String,
    /// Path leads are posted to, followed by `/<secret>` (or with the
    /// secret as `?key=<secret>`).
    pub path: String,
    /// The secret in the URL registered with Microsoft, which signs
    /// nothing: at least 16 characters of letters, digits, `-`, `.`, `_`
    /// and `~`. Required; write it as `${VARIABLE}` to keep it out of the
    /// file.
    pub secret: String,
    /// Largest request body; larger ones get 413. Leads are under 2 KiB.
    pub max_body_bytes: usize,
    /// Longest wait for Kafka to acknowledge a lead before answering 503.
    pub ack_timeout_ms: u64,
    /// The `Retry-After` of a 503, in seconds (a 429's is 1).
    pub retry_after_s: u64,
    /// Requests per second one client may make, in bursts of as many;
    /// more get 429. 0 turns the limit off.
    pub rate_limit_per_client: u32,
    /// A header naming the client's address, set by the reverse proxy in
    /// front (e.g. `X-Forwarded-For`; its last address, the one the proxy
    /// added, counts). Empty: the connection's peer address is the client.
    pub client_address_header: String,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// After SIGTERM or SIGINT, how long requests in flight may take to
    /// finish; past it, the process exits with code 1.
    pub shutdown_timeout_ms: u64,
}

impl Default for HttpIngestConfig {
    fn default() -> Self {
        HttpIngestConfig {
            listen: "0.0.0.0:8080".into(),
            path: "/leads".into(),
            secret: String::new(),
            max_body_bytes: 65_536,
            ack_timeout_ms: 10_000,
            retry_after_s: 10,
            rate_limit_per_client: 0,
            client_address_header: String::new(),
            max_connections: 1_024,
            shutdown_timeout_ms: 30_000,
        }
    }
}

/// `[ingest.azure_table]`: the storage table Microsoft writes leads to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableIngestConfig {
    /// The storage account's connection string, as given to Partner
    /// Center (account key or SAS). Required; write it as `${VARIABLE}`.
    pub connection_string: String,
    /// The table's name.
    pub table: String,
    /// How often the table is asked for new entities.
    pub poll_interval_ms: u64,
    /// How far before the latest entity written each query looks again,
    /// for entities that became visible late.
    pub overlap_ms: u64,
    /// The compacted topic the read position is kept in, written in the
    /// same transaction as the leads it covers.
    pub position_topic: String,
    /// Longest one request to the Table service may take.
    pub request_timeout_ms: u64,
    /// The table's column names.
    pub columns: Columns,
}

impl Default for TableIngestConfig {
    fn default() -> Self {
        TableIngestConfig {
            connection_string: String::new(),
            table: "MarketplaceLeads".into(),
            poll_interval_ms: 60_000,
            overlap_ms: 300_000,
            position_topic: "leadflow-ingest-position".into(),
            request_timeout_ms: 10_000,
            columns: Columns::default(),
        }
    }
}

/// The lead columns of a lead table (`[ingest.azure_table.columns]`):
/// Microsoft documents none, so each is configuration (docs/lead-destinations.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    /// `Source-Action|publisher.offer`, as the HTTPS destination's `LeadSource`.
    pub lead_source: String,
    pub action_code: String,
    /// A JSON object in a string: first and last name, email, phone,
    /// country, company and title.
    pub customer_info: String,
    /// The offer's display name (the HTTPS destination's `OfferTitle`).
    pub offer_title: String,
    pub description: String,
    /// `publisher.offer`, where the table has it and `LeadSource` does not
    /// name the offer.
    pub product_id: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            lead_source: "LeadSource".into(),
            action_code: "ActionCode".into(),
            customer_info: "CustomerInfo".into(),
            offer_title: "OfferDisplayName".into(),
            description: "Description".into(),
            product_id: "ProductId".into(),
        }
    }
}
