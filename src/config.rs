//! Configuration: one TOML file, every key optional with a documented
//! default (README, "Configuration"), with `LEADFLOW_…` environment
//! variables and `--set` flags over it, in that order. Unknown keys are
//! errors, so a typo never silently falls back to a default. Errors name
//! the file (or the variable or flag), the key and the reason on one line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::{Offer, Storefront};
use crate::stages::decode::Format;
use crate::stages::enrich::{CatalogOffer, Reference};
use crate::stages::route::{DisposablePolicy, MAX_ROUTES, Route, RoutingTable, default_routes};
use crate::stages::score::ScoringRules;

/// What a secret prints as.
pub const HIDDEN: &str = "********";

/// Whether librdkafka property `key` holds a secret: passwords, client
/// secrets, key passphrases, private keys in PEM and bearer tokens
/// (`sasl.password`, `ssl.key.password`, `ssl.keystore.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.key.pem`,
/// `sasl.oauthbearer.assertion.private.key.pem`, ...). librdkafka's own
/// list of sensitive properties is wider than its names say, so the rule
/// is by words, erring towards hiding.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "passphrase",
        "key.pem",
        "token",
        "sasl.jaas",
        "credential",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// `text` with the password of a URL in it (`scheme://user:password@host`)
/// hidden; anything else unchanged.
pub fn without_password(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &text[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return text.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:{HIDDEN}{}", &text[..authority_start], &rest[at..]),
        None => text.to_owned(),
    }
}

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
    Override {
        origin: String,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub pipeline: PipelineConfig,
    pub dedupe: DedupeConfig,
    pub scoring: ScoringConfig,
    pub policy: PolicyConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    /// The schema registry, for topics in the `confluent-avro` format.
    pub schema_registry: crate::registry::RegistryConfig,
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
            http: HttpConfig::default(),
            log: LogConfig::default(),
            schema_registry: crate::registry::RegistryConfig::default(),
            routes: default_routes(),
            catalog: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoint; port 0
    /// picks a free port (logged); empty turns the endpoint off.
    pub listen: String,
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
    /// A scoring rules file; without it the built-in `rules/scoring.toml` applies.
    pub rules_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `suppress`, `dead-letter` or `allow`.
    pub disposable_email: DisposablePolicy,
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
    /// After SIGTERM or SIGINT, how long leadflow may take to finish and
    /// commit its batch and leave the group before it exits anyway.
    pub shutdown_timeout_ms: u64,
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

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window_days: 180,
            memory_budget_mib: 1_024,
            max_future_ms: 3_600_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// `publisher.offer`.
    pub offer: String,
    pub title: String,
    pub storefront: Storefront,
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
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

/// One setting that overrides the file, from an environment variable or a
/// `--set` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Where it came from, for errors: `LEADFLOW_…` or `--set`.
    pub origin: String,
    /// A dotted TOML key, e.g. `pipeline.commit_interval_ms` or
    /// `kafka.client."linger.ms"`.
    pub key: String,
    /// A TOML value, or else taken as a string.
    pub value: String,
}

/// Environment variables that override keys start with this and separate
/// the levels of a key with `__`: `LEADFLOW_PIPELINE__COMMIT_INTERVAL_MS`.
pub const ENV_PREFIX: &str = "LEADFLOW_";

/// The tables of librdkafka properties, whose keys have dots.
const PROPERTY_TABLES: [&str; 3] = ["kafka.client", "kafka.consumer", "kafka.producer"];

/// The TOML key an environment variable's name (without the prefix)
/// stands for. Below a table of librdkafka properties the rest of the name
/// is one property, its `_` standing for `.`:
/// `KAFKA__CLIENT__SASL_PASSWORD` is `kafka.client."sasl.password"`.
/// librdkafka's string properties have no `_` of their own, and a name
/// cannot hold a dot.
fn env_key(name: &str) -> String {
    let key = name.to_lowercase().replace("__", ".");
    for table in PROPERTY_TABLES {
        if let Some(property) = key.strip_prefix(table).and_then(|k| k.strip_prefix('.')) {
            return format!("{table}.\"{}\"", property.replace(['.', '_'], "."));
        }
    }
    key
}

/// Replaces `${NAME}` with environment variable `NAME`, and `${NAME:-word}`
/// with it or, when it is unset or empty, with `word` (Vector's syntax);
/// `$$` is one `$`. An unset variable without a default is an error, so a
/// secret missing from the environment is never an empty password.
pub fn interpolate(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| "`${` without its `}` (write `$$` for a `$`)".to_owned())?;
        let expression = &body[..end];
        let (name, default) = match expression.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expression, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{expression}}}` names no environment variable"));
        }
        match (var(name).filter(|value| !value.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// [`interpolate`] in every string of `value`, `key` naming it for errors.
/// Only strings: a value is never parsed again as TOML, so a secret with
/// quotes or line breaks in it cannot change the file's structure.
fn interpolate_all(
    value: &mut toml::Value,
    key: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(text) => {
            *text = interpolate(text, var).map_err(|reason| (key.to_owned(), reason))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_all(item, &format!("{key}[{i}]"), var)?;
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table.iter_mut() {
                let key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                interpolate_all(item, &key, var)?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl Override {
    /// The overrides among environment variables: `LEADFLOW_` names with a
    /// `__` in them, so `LEADFLOW_CONFIG` and the like are not keys.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
        let mut overrides: Vec<Override> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let key = name.strip_prefix(ENV_PREFIX)?;
                key.contains("__").then(|| Override {
                    key: env_key(key),
                    origin: name.clone(),
                    value,
                })
            })
            .collect();
        // Environment order is arbitrary; a stable order gives stable errors.
        overrides.sort_by(|a, b| a.origin.cmp(&b.origin));
        overrides
    }

    /// A `--set KEY=VALUE` flag.
    pub fn from_flag(text: &str) -> Result<Override, ConfigError> {
        let (key, value) = text.split_once('=').ok_or_else(|| ConfigError::Override {
            origin: "--set".to_owned(),
            key: text.to_owned(),
            reason: "expected KEY=VALUE".to_owned(),
        })?;
        Ok(Override {
            origin: "--set".to_owned(),
            key: key.trim().to_owned(),
            value: value.trim().to_owned(),
        })
    }

    /// The override as a TOML table with just this key: the value as
    /// TOML if it is valid TOML and `as_string` is false, else as a string.
    fn table(&self, as_string: bool) -> Result<toml::Table, ConfigError> {
        let string = format!("{} = {}", self.key, toml::Value::String(self.value.clone()));
        let parsed = if as_string {
            toml::from_str(&string)
        } else {
            toml::from_str(&format!("{} = {}", self.key, self.value))
                .or_else(|_| toml::from_str(&string))
        };
        parsed.map_err(|e: toml::de::Error| self.error(e.message()))
    }

    fn is_quoted(&self) -> bool {
        self.value.starts_with('"') || self.value.starts_with('\'')
    }

    fn error(&self, reason: &str) -> ConfigError {
        ConfigError::Override {
            origin: self.origin.clone(),
            key: self.key.clone(),
            reason: reason.replace('\n', " "),
        }
    }
}

/// Sets every key of `patch` in `table`, descending into tables both have.
fn merge(table: &mut toml::Table, patch: toml::Table) {
    for (key, value) in patch {
        match (table.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(patch)) => merge(inner, patch),
            (_, value) => {
                table.insert(key, value);
            }
        }
    }
}

impl Config {
    /// Loads a config file (or the defaults) with overrides applied over
    /// it, later ones winning: the order is file, environment, flags. An
    /// override's value is TOML (`5000`, `true`, `"x"`) or else a string;
    /// where the key wants a string, a number-like value is one too.
    pub fn load_with(path: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        if path.is_none() && overrides.is_empty() {
            return Ok(Config::default());
        }
        let mut base = toml::Value::Table(toml::Table::new());
        if let Some(path) = path {
            base = toml::Value::Table(parse_toml(path, &read(path)?)?);
            let var = |name: &str| std::env::var(name).ok();
            interpolate_all(&mut base, "", &var).map_err(|(key, reason)| ConfigError::Invalid {
                origin: path.display().to_string(),
                key,
                reason,
            })?;
        }
        let toml::Value::Table(base) = base else {
            unreachable!("a table stays a table")
        };
        let mut as_string = vec![false; overrides.len()];
        let config: Config = loop {
            let mut table = base.clone();
            for (o, as_string) in overrides.iter().zip(&as_string) {
                merge(&mut table, o.table(*as_string)?);
            }
            let error = match serde_path_to_error::deserialize(toml::Value::Table(table)) {
                Ok(config) => break config,
                Err(error) => error,
            };
            let key = error.path().to_string();
            let reason = error.inner().message().replace('\n', " ");
            // The last override of the key the error is about is to blame.
            let Some(i) = overrides
                .iter()
                .rposition(|o| o.key.replace('"', "") == key)
            else {
                // The file's own fault: its text again, for the line number.
                if let Some(path) = path {
                    parse_toml::<Config>(path, &read(path)?)?;
                }
                return Err(ConfigError::Invalid {
                    origin: overrides
                        .iter()
                        .map(|o| o.origin.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    key,
                    reason,
                });
            };
            if as_string[i] || overrides[i].is_quoted() {
                return Err(overrides[i].error(&reason));
            }
            as_string[i] = true;
        };
        let origins: Vec<&str> = overrides.iter().map(|o| o.origin.as_str()).collect();
        let origin = match path {
            Some(path) if origins.is_empty() => path.display().to_string(),
            Some(path) => format!("{} with {}", path.display(), origins.join(", ")),
            None => origins.join(", "),
        };
        config.validate(&origin)?;
        Ok(config)
    }

    /// The configuration as TOML, every key with its effective value,
    /// except secrets, which print as `********`: this output ends up in
    /// deploy logs. Secrets are the registry's password, the password of
    /// any URL, and librdkafka properties that [`is_secret`] names.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.schema_registry.password.is_some() {
            shown.schema_registry.password = Some(HIDDEN.into());
        }
        if let Some(url) = &mut shown.schema_registry.url {
            *url = without_password(url);
        }
        let kafka = &mut shown.kafka;
        for properties in [&mut kafka.client, &mut kafka.consumer, &mut kafka.producer] {
            for (key, value) in properties.iter_mut() {
                *value = if is_secret(key) {
                    HIDDEN.into()
                } else {
                    without_password(value)
                };
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// Loads a config file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, &[])
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
        let confluent = [self.topics.input_format, self.topics.output_format]
            .into_iter()
            .chain(self.routes.iter().filter_map(|r| r.format))
            .any(|format| format == Format::ConfluentAvro);
        if confluent && self.schema_registry.url.is_none() {
            return Err(invalid(
                "schema_registry.url",
                "must be set: a topic uses the confluent-avro format".into(),
            ));
        }
        if let Some(url) = &self.schema_registry.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "schema_registry.url",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
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
            ("pipeline.shutdown_timeout_ms", p.shutdown_timeout_ms),
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
    fn only_leadflow_variables_with_a_double_underscore_are_keys() {
        let vars = [
            ("LEADFLOW_CONFIG", "x.toml"),
            ("LEADFLOW_KAFKA__GROUP_ID", "g"),
            ("PATH", "/bin"),
            ("LEADFLOW_KAFKA__CLIENT__SOCKET_TIMEOUT_MS", "1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let keys: Vec<String> = Override::from_env(vars)
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(
            keys,
            ["kafka.client.\"socket.timeout.ms\"", "kafka.group_id"]
        );
    }

    #[test]
    fn environment_variables_set_librdkafka_properties_with_dots() {
        let vars = [
            ("LEADFLOW_KAFKA__CLIENT__SASL_PASSWORD", "from-env"),
            ("LEADFLOW_KAFKA__PRODUCER__LINGER_MS", "7"),
            ("LEADFLOW_KAFKA__CONSUMER__SESSION_TIMEOUT_MS", "6001"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = Config::load_with(None, &Override::from_env(vars)).expect("config");
        assert_eq!(config.kafka.client["sasl.password"], "from-env");
        assert_eq!(config.kafka.producer["linger.ms"], "7");
        assert_eq!(config.kafka.consumer["session.timeout.ms"], "6001");
    }

    #[test]
    fn interpolation_takes_variables_defaults_and_dollars() {
        let var = |name: &str| match name {
            "SET" => Some("s3cr\"t\n".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let cases = [
            ("${SET}", Ok("s3cr\"t\n")),
            ("a-${SET}-b", Ok("a-s3cr\"t\n-b")),
            ("${UNSET:-fallback}", Ok("fallback")),
            ("${EMPTY:-fallback}", Ok("fallback")),
            ("${SET:-fallback}", Ok("s3cr\"t\n")),
            ("$$5 and $HOME", Ok("$5 and $HOME")),
            ("${UNSET}", Err("environment variable UNSET is not set")),
            ("${SET", Err("`${` without its `}` (write `$$` for a `$`)")),
            (
                "${bad-name}",
                Err("`${bad-name}` names no environment variable"),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                interpolate(text, &var).as_deref(),
                expected.map_err(str::to_owned).as_deref(),
                "{text}"
            );
        }
    }

    #[test]
    fn a_file_takes_secrets_from_the_environment_in_strings_only() {
        // Setting a variable is unsafe in edition 2024 (and unsafe code is
        // forbidden here): the test reads PATH, which every process has,
        // and a variable nothing sets.
        let name = "LEADFLOW_TEST_INTERPOLATION_UNSET";
        let home = std::env::var("PATH").expect("PATH is set");
        let (_dir, path) = write(&format!(
            "[kafka]\nbootstrap_servers = \"${{{name}:-broker:9093}}\"\n\n\
             [kafka.client]\n\"sasl.password\" = \"${{PATH}}\"\n"
        ));
        let config = Config::load(Some(&path)).expect("config");
        assert_eq!(config.kafka.bootstrap_servers, "broker:9093");
        assert_eq!(config.kafka.client["sasl.password"], home);
        assert!(!config.to_toml().contains(&home), "the secret is hidden");

        let (_dir, path) =
            write("[kafka.client]\n\"sasl.password\" = \"${LEADFLOW_TEST_UNSET_SECRET}\"\n");
        let error = Config::load(Some(&path)).expect_err("unset").to_string();
        assert!(
            error.ends_with(
                "key `kafka.client.sasl.password`: environment variable LEADFLOW_TEST_UNSET_SECRET is not set"
            ),
            "{error}"
        );
    }

    #[test]
    fn secrets_are_known_by_their_names_and_urls_lose_their_passwords() {
        for key in [
            "sasl.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.oauthbearer.assertion.private.key.passphrase",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in [
            "sasl.username",
            "ssl.ca.location",
            "ssl.certificate.pem",
            "linger.ms",
        ] {
            assert!(!is_secret(key), "{key}");
        }
        assert_eq!(
            without_password("https://user:pa:ss@registry:8081/apis?x=@"),
            "https://user:********@registry:8081/apis?x=@"
        );
        for unchanged in [
            "https://user@registry",
            "https://registry/a@b",
            "plain:text@x",
        ] {
            assert_eq!(without_password(unchanged), unchanged);
        }
    }

    #[test]
    fn printed_configuration_hides_secrets() {
        let mut config = Config::default();
        config.schema_registry.password = Some("registry-secret".into());
        config
            .kafka
            .client
            .insert("sasl.password".into(), "kafka-secret".into());
        config.kafka.producer.insert(
            "sasl.oauthbearer.client.secret".into(),
            "oauth-secret".into(),
        );
        config
            .kafka
            .client
            .insert("sasl.username".into(), "leadflow".into());
        let printed = config.to_toml();
        for secret in ["registry-secret", "kafka-secret", "oauth-secret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("leadflow"), "{printed}");
        assert_eq!(printed.matches("********").count(), 3, "{printed}");
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
