//! Configuration: one TOML file, every key optional with a documented
//! default (README, "Configuration"). Unknown keys are errors, so a typo
//! never silently falls back to a default. Errors name the file, the key
//! and the reason on one line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::domain::{Offer, Storefront};
use crate::stages::decode::Format;
use crate::stages::enrich::{CatalogOffer, Reference};
use crate::stages::route::{DisposablePolicy, MAX_ROUTES, Route, RoutingTable, default_routes};
use crate::stages::score::ScoringRules;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}, key `{key}`: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
    #[error("config {origin}, key `{key}`: {reason}")]
    Invalid {
        origin: String,
        key: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub pipeline: PipelineConfig,
    pub dedupe: DedupeConfig,
    pub scoring: ScoringConfig,
    pub policy: PolicyConfig,
    /// The routing table: storefront (and optionally grade and action) to
    /// campaign topics.
    pub routes: Vec<Route>,
    /// Offers the publisher lists, for leads whose `LeadSource` has no offer
    /// (looked up by title) and test drives (storefront by offer).
    pub catalog: Vec<CatalogEntry>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka: KafkaConfig::default(),
            topics: Topics::default(),
            pipeline: PipelineConfig::default(),
            dedupe: DedupeConfig::default(),
            scoring: ScoringConfig::default(),
            policy: PolicyConfig::default(),
            routes: default_routes(),
            catalog: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    /// A scoring rules file; without it the built-in `rules/scoring.toml` applies.
    pub rules_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `suppress`, `dead-letter` or `allow`.
    pub disposable_email: DisposablePolicy,
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub input: String,
    pub suppressed: String,
    pub dead_letter: String,
    /// Encoding of the input topic: `json` or `avro`.
    pub input_format: Format,
    /// Encoding of campaign and suppressed records, unless a route sets its own.
    pub output_format: Format,
    /// Internal topic that re-keys raw leads by person and offer before
    /// dedupe. Defaults to `GROUP-repartition`.
    pub repartition: Option<String>,
    /// Internal compacted topic that makes the dedupe state durable, one
    /// partition per processed partition. Defaults to `GROUP-dedupe-changelog`.
    pub changelog: Option<String>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessingGuarantee {
    /// Each batch's outputs and its consumed offsets commit in one Kafka
    /// transaction: nothing lost, nothing repeated.
    ExactlyOnce,
    /// Offsets are committed after the outputs are acknowledged: nothing is
    /// lost, but a crash between the two repeats the outputs of a batch.
    AtLeastOnce,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub processing_guarantee: ProcessingGuarantee,
    /// Longest time a batch stays open before its outputs are flushed and
    /// its offsets committed.
    pub commit_interval_ms: u64,
    /// Largest number of input records in one batch.
    pub max_batch_records: usize,
    /// Records larger than this are dead-lettered as `oversized`.
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
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            processing_guarantee: ProcessingGuarantee::ExactlyOnce,
            commit_interval_ms: 100,
            max_batch_records: 10_000,
            max_record_bytes: 1_048_576,
            delivery_timeout_ms: 10_000,
            repartition: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupeConfig {
    /// A repeat of the same (email, offer, action) within this many days of
    /// event time is a duplicate.
    pub window_days: u32,
    /// Memory the dedupe state may take; past it the least recently seen
    /// keys are forgotten (and counted).
    pub memory_budget_mib: u64,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window_days: 180,
            memory_budget_mib: 1_024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// `publisher.offer`.
    pub offer: String,
    pub title: String,
    pub storefront: Storefront,
}

/// Parses TOML into `T`, turning a parse error into one line that names the
/// file, the line and the key.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |span| span.start);
        let before = text.get(..offset).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let key = text
            .lines()
            .nth(line - 1)
            .and_then(|l| l.split_once('='))
            .map_or_else(|| "?".to_owned(), |(k, _)| k.trim().to_owned());
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            key,
            reason: e.message().replace('\n', " "),
        }
    })
}

impl Config {
    /// Loads a config file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = parse_toml(path, &text)?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Every topic leadflow reads or writes: input, campaign topics (once
    /// each), suppressed and dead-letter, then the internal ones.
    pub fn all_topics(&self) -> Vec<String> {
        let mut topics = vec![self.topics.input.clone()];
        for route in &self.routes {
            if !topics.contains(&route.topic) {
                topics.push(route.topic.clone());
            }
        }
        topics.push(self.topics.suppressed.clone());
        topics.push(self.topics.dead_letter.clone());
        if let Some(repartition) = self.repartition_topic() {
            topics.push(repartition);
        }
        topics.push(self.changelog_topic());
        topics
    }

    /// The repartition topic, when the input is re-keyed.
    pub fn repartition_topic(&self) -> Option<String> {
        self.pipeline.repartition.then(|| {
            self.topics
                .repartition
                .clone()
                .unwrap_or_else(|| format!("{}-repartition", self.kafka.group_id))
        })
    }

    /// The dedupe changelog topic.
    pub fn changelog_topic(&self) -> String {
        self.topics
            .changelog
            .clone()
            .unwrap_or_else(|| format!("{}-dedupe-changelog", self.kafka.group_id))
    }

    /// The routing table, with the disposable-email policy.
    pub fn routing_table(&self) -> RoutingTable {
        RoutingTable::new(self.routes.clone(), self.policy.disposable_email)
    }

    /// The scoring rules: the configured file, or the built-in defaults.
    pub fn scoring_rules(&self) -> Result<ScoringRules, ConfigError> {
        match &self.scoring.rules_file {
            Some(path) => ScoringRules::load(path),
            None => Ok(ScoringRules::default_rules()),
        }
    }

    /// Checks what the types cannot: non-empty, distinct names and sane numbers.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            reason,
        };
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap_servers",
                "must not be empty".into(),
            ));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty".into()));
        }
        let topics = [
            ("topics.input", &self.topics.input),
            ("topics.suppressed", &self.topics.suppressed),
            ("topics.dead_letter", &self.topics.dead_letter),
        ];
        for (i, (key, name)) in topics.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(invalid(key, "must not be empty".into()));
            }
            if let Some((other, _)) = topics[..i].iter().find(|(_, n)| n == name) {
                return Err(invalid(key, format!("topic {name:?} is also {other}")));
            }
        }
        if self.routes.is_empty() || self.routes.len() > MAX_ROUTES {
            return Err(invalid(
                "routes",
                format!("need 1 to {MAX_ROUTES} routes, got {}", self.routes.len()),
            ));
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.campaign.trim().is_empty() {
                return Err(invalid(
                    &format!("routes[{i}].campaign"),
                    "must not be empty".into(),
                ));
            }
            if route.topic.trim().is_empty() {
                return Err(invalid(
                    &format!("routes[{i}].topic"),
                    "must not be empty".into(),
                ));
            }
            if let Some((key, _)) = topics.iter().find(|(_, name)| **name == route.topic) {
                return Err(invalid(
                    &format!("routes[{i}].topic"),
                    format!("topic {:?} is also {key}", route.topic),
                ));
            }
        }
        let p = &self.pipeline;
        for (key, value) in [
            ("pipeline.commit_interval_ms", p.commit_interval_ms),
            ("pipeline.delivery_timeout_ms", p.delivery_timeout_ms),
            ("kafka.connect_timeout_ms", self.kafka.connect_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        if p.max_batch_records == 0 {
            return Err(invalid(
                "pipeline.max_batch_records",
                "must be greater than 0".into(),
            ));
        }
        if p.max_record_bytes == 0 {
            return Err(invalid(
                "pipeline.max_record_bytes",
                "must be greater than 0".into(),
            ));
        }
        if self.dedupe.memory_budget_mib == 0 {
            return Err(invalid(
                "dedupe.memory_budget_mib",
                "must be greater than 0".into(),
            ));
        }
        if self.dedupe.window_days == 0 {
            return Err(invalid(
                "dedupe.window_days",
                "must be greater than 0".into(),
            ));
        }
        self.scoring_rules()?;
        self.reference(origin).map(|_| ())
    }

    /// Builds enrichment reference data from the catalog.
    pub fn reference(&self, origin: &str) -> Result<Reference, ConfigError> {
        let offers = self
            .catalog
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let offer = Offer::parse(&entry.offer).ok_or_else(|| ConfigError::Invalid {
                    origin: origin.to_owned(),
                    key: format!("catalog[{i}].offer"),
                    reason: format!("{:?} is not publisher.offer", entry.offer),
                })?;
                Ok(CatalogOffer {
                    offer,
                    title: entry.title.clone(),
                    storefront: entry.storefront,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Reference::new(offers))
    }

    /// This instance's name: `kafka.instance_id`, else the host name.
    pub fn instance_id(&self) -> String {
        self.kafka.instance_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "leadflow".to_owned())
        })
    }

    /// The producer's `transactional.id` under exactly-once.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.kafka.group_id, self.instance_id())
    }

    pub fn dedupe_window_ms(&self) -> i64 {
        i64::from(self.dedupe.window_days) * 86_400_000
    }

    /// The dedupe memory budget in keys, at the most a key can cost.
    pub fn dedupe_max_keys(&self) -> usize {
        let bytes = self.dedupe.memory_budget_mib.saturating_mul(1 << 20);
        usize::try_from(bytes / crate::stages::dedupe::MAX_BYTES_PER_KEY as u64)
            .unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("leadflow.toml");
        std::fs::write(&path, text).expect("write config");
        (dir, path)
    }

    #[test]
    fn defaults_need_no_file() {
        let config = Config::load(None).expect("defaults");
        assert_eq!(config.topics.input, "leads.raw");
        assert_eq!(config.routes[0].topic, "campaign.appsource.nurture");
        assert_eq!(config.routes[1].campaign, "demand-gen");
        assert_eq!(config.pipeline.commit_interval_ms, 100);
        assert_eq!(config.dedupe_window_ms(), 180 * 86_400_000);
    }

    #[test]
    fn reads_a_file_with_a_catalog() {
        let (_dir, path) = write(
            r#"
            [kafka]
            bootstrap_servers = "127.0.0.1:19092"
            client = { "linger.ms" = "5" }
            [topics]
            input = "raw"
            [[catalog]]
            offer = "contoso.sales-insights"
            title = "Contoso Sales Insights"
            storefront = "appsource"
            "#,
        );
        let config = Config::load(Some(&path)).expect("valid config");
        assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:19092");
        assert_eq!(
            config.kafka.client.get("linger.ms").map(String::as_str),
            Some("5")
        );
        assert_eq!(config.topics.input, "raw");
        assert_eq!(config.topics.dead_letter, "leads.dlq");
        assert_eq!(config.catalog[0].storefront, Storefront::AppSource);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_reason_on_one_line() {
        let (_dir, path) = write("[pipeline]\ncommit_interval_ms = \"soon\"\n");
        let message = Config::load(Some(&path)).expect_err("bad type").to_string();
        assert!(message.contains("leadflow.toml"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("`commit_interval_ms`"), "{message}");
        assert!(!message.contains('\n'), "{message}");

        let (_dir, path) = write("[topics]\ninptu = \"x\"\n");
        let message = Config::load(Some(&path))
            .expect_err("unknown key")
            .to_string();
        assert!(message.contains("inptu"), "{message}");

        let (_dir, path) = write("[topics]\nsuppressed = \"leads.dlq\"\n");
        let message = Config::load(Some(&path)).expect_err("clash").to_string();
        assert!(message.contains("topics.dead_letter"), "{message}");

        let (_dir, path) = write(
            "[[routes]]\ncampaign = \"x\"\nstorefront = \"appsource\"\ntopic = \"leads.raw\"\n",
        );
        let message = Config::load(Some(&path))
            .expect_err("route clash")
            .to_string();
        assert!(message.contains("routes[0].topic"), "{message}");

        let (_dir, path) =
            write("[[routes]]\ncampaign = \"x\"\nstorefront = \"bing\"\ntopic = \"t\"\n");
        let message = Config::load(Some(&path))
            .expect_err("bad storefront")
            .to_string();
        assert!(
            message.contains("storefront") && message.contains("line 3"),
            "{message}"
        );

        let (_dir, path) = write("[scoring]\nrules_file = \"/nonexistent/rules.toml\"\n");
        let message = Config::load(Some(&path))
            .expect_err("missing rules")
            .to_string();
        assert!(message.contains("/nonexistent/rules.toml"), "{message}");

        let (_dir, path) =
            write("[[catalog]]\noffer = \"nodot\"\ntitle = \"x\"\nstorefront = \"appsource\"\n");
        let message = Config::load(Some(&path))
            .expect_err("bad offer")
            .to_string();
        assert!(message.contains("catalog[0].offer"), "{message}");
    }
}
