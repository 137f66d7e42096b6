//! Configuration: one TOML file, every key optional with a documented
//! default (docs/configuration.md), with `LEADFLOW_…` environment
//! variables and `--set` flags over it, in that order. Unknown keys are
//! errors, so a typo never silently falls back to a default. Errors name
//! the file (or the variable or flag), the key and the reason on one line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::domain::Offer;
use crate::error::{ConfigError, parse_toml, read};
use crate::stages::decode::Format;
use crate::stages::route::{MAX_ROUTES, Route, RoutingTable, default_routes};
use crate::stages::score::ScoringRules;

mod overrides;
mod sections;

pub use overrides::{ENV_PREFIX, Override, interpolate};
use overrides::{interpolate_all, merge};
pub use sections::*;

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
    pub schema_registry: RegistryConfig,
    /// The routing table: storefront (and optionally grade and action) to
    /// campaign topics.
    pub routes: Vec<Route>,
    /// The offer catalog: offer types, publishers and titles, and what
    /// resolves leads whose `LeadSource` has no offer (by title) and test
    /// drives (storefront by offer).
    pub catalog: CatalogConfig,
    /// `leadflow ingest`: the front doors that bring leads in.
    pub ingest: IngestConfig,
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
            schema_registry: RegistryConfig::default(),
            routes: default_routes(),
            catalog: CatalogConfig::default(),
            ingest: IngestConfig::default(),
        }
    }
}

/// Keys that name files.
const FILE_KEYS: [(&str, &str); 2] = [("scoring", "rules_file"), ("catalog", "file")];

/// Makes the file's relative file paths relative to its directory, where
/// they sit beside it wherever leadflow is started from (a path from an
/// override stays relative to the working directory, as on a command line).
fn anchor_paths(table: &mut toml::Value, dir: &Path) {
    for (section, key) in FILE_KEYS {
        let value = table.get_mut(section).and_then(|s| s.get_mut(key));
        // An empty path is no file, wherever it is written.
        if let Some(toml::Value::String(file)) = value
            && !file.is_empty()
            && Path::new(file.as_str()).is_relative()
        {
            *file = dir.join(&*file).display().to_string();
        }
    }
}

impl Config {
    /// Each section by name, with what a reload does with it and its
    /// contents as TOML (for comparing). Every field is named here, so a
    /// section added without a declared reload behaviour does not compile.
    pub fn sections(&self) -> Vec<(&'static str, OnReload, String)> {
        fn section<T: Section>(name: &'static str, value: &T) -> (&'static str, OnReload, String) {
            // TOML needs a table at the top.
            #[derive(Serialize)]
            struct Wrapped<'a, T> {
                value: &'a T,
            }
            // Compared, never shown: an unprintable section compares as empty.
            let text = toml::to_string(&Wrapped { value }).unwrap_or_default();
            (name, T::ON_RELOAD, text)
        }
        let Config {
            kafka,
            topics,
            pipeline,
            dedupe,
            scoring,
            policy,
            http,
            log,
            schema_registry,
            routes,
            catalog,
            ingest,
        } = self;
        vec![
            section("kafka", kafka),
            section("topics", topics),
            section("pipeline", pipeline),
            section("dedupe", dedupe),
            section("scoring", scoring),
            section("policy", policy),
            section("http", http),
            section("log", log),
            section("schema_registry", schema_registry),
            section("routes", routes),
            section("catalog", catalog),
            section("ingest", ingest),
        ]
    }

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
            anchor_paths(&mut base, path.parent().unwrap_or(Path::new("")));
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
    /// any URL, the ingest endpoint's secret, and librdkafka properties
    /// that [`is_secret`] names.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.schema_registry.password.is_some() {
            shown.schema_registry.password = Some(HIDDEN.into());
        }
        if let Some(url) = &mut shown.schema_registry.url {
            *url = without_password(url);
        }
        if !shown.ingest.http.secret.is_empty() {
            shown.ingest.http.secret = HIDDEN.into();
        }
        if !shown.ingest.azure_table.connection_string.is_empty() {
            shown.ingest.azure_table.connection_string = HIDDEN.into();
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
        // Only where the table ingest is set up: nobody else needs it.
        if !self.ingest.azure_table.connection_string.is_empty() {
            topics.push(self.ingest.azure_table.position_topic.clone());
        }
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
        let invalid = |(key, reason): (String, String)| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            reason,
        };
        self.check_names().map_err(invalid)?;
        self.check_routes().map_err(invalid)?;
        self.check_limits().map_err(invalid)?;
        self.scoring_rules()?;
        self.catalog().map(|_| ())
    }

    /// The topics whose names the routes must not reuse, by key.
    fn named_topics(&self) -> [(&'static str, &String); 3] {
        [
            ("topics.input", &self.topics.input),
            ("topics.suppressed", &self.topics.suppressed),
            ("topics.dead_letter", &self.topics.dead_letter),
        ]
    }

    /// Names and addresses: set, distinct, and well-formed.
    fn check_names(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, reason: &str| Err((key.to_owned(), reason.to_owned()));
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return invalid("kafka.bootstrap_servers", "must not be empty");
        }
        if self.kafka.group_id.trim().is_empty() {
            return invalid("kafka.group_id", "must not be empty");
        }
        let topics = self.named_topics();
        for (i, (key, name)) in topics.iter().enumerate() {
            if name.trim().is_empty() {
                return invalid(key, "must not be empty");
            }
            if let Some((other, _)) = topics[..i].iter().find(|(_, n)| n == name) {
                return invalid(key, &format!("topic {name:?} is also {other}"));
            }
        }
        let confluent = [self.topics.input_format, self.topics.output_format]
            .into_iter()
            .chain(self.routes.iter().filter_map(|r| r.format))
            .any(|format| format == Format::ConfluentAvro);
        if confluent && self.schema_registry.url.is_none() {
            return invalid(
                "schema_registry.url",
                "must be set: a topic uses the confluent-avro format",
            );
        }
        if let Some(url) = &self.schema_registry.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            let reason = format!("{url:?} is not an http:// or https:// URL");
            return invalid("schema_registry.url", &reason);
        }
        Ok(())
    }

    /// The routing table: 1 to [`MAX_ROUTES`] routes, each with a campaign
    /// and a topic of its own.
    fn check_routes(&self) -> Result<(), (String, String)> {
        if self.routes.is_empty() || self.routes.len() > MAX_ROUTES {
            let reason = format!("need 1 to {MAX_ROUTES} routes, got {}", self.routes.len());
            return Err(("routes".to_owned(), reason));
        }
        let topics = self.named_topics();
        for (i, route) in self.routes.iter().enumerate() {
            let invalid =
                |field: &str, reason: String| Err((format!("routes[{i}].{field}"), reason));
            if route.campaign.trim().is_empty() {
                return invalid("campaign", "must not be empty".into());
            }
            if route.topic.trim().is_empty() {
                return invalid("topic", "must not be empty".into());
            }
            if let Some((key, _)) = topics.iter().find(|(_, name)| **name == route.topic) {
                return invalid("topic", format!("topic {:?} is also {key}", route.topic));
            }
            if let Some(offer) = route.offers.iter().find(|o| Offer::parse(o).is_none()) {
                return invalid("offers", format!("{offer:?} is not publisher.offer"));
            }
        }
        Ok(())
    }

    /// Timeouts, intervals, sizes and budgets: none may be 0.
    fn check_limits(&self) -> Result<(), (String, String)> {
        let p = &self.pipeline;
        let limits = [
            ("pipeline.commit_interval_ms", p.commit_interval_ms),
            ("pipeline.delivery_timeout_ms", p.delivery_timeout_ms),
            ("kafka.connect_timeout_ms", self.kafka.connect_timeout_ms),
            ("pipeline.shutdown_timeout_ms", p.shutdown_timeout_ms),
            ("pipeline.max_batch_records", p.max_batch_records as u64),
            ("pipeline.max_record_bytes", p.max_record_bytes as u64),
            ("dedupe.memory_budget_mib", self.dedupe.memory_budget_mib),
            ("dedupe.window_days", u64::from(self.dedupe.window_days)),
        ];
        match limits.iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err(((*key).to_owned(), "must be greater than 0".to_owned())),
            None => Ok(()),
        }
    }

    /// The offer catalog: the configured file, or an empty one.
    pub fn catalog(&self) -> Result<Catalog, ConfigError> {
        match &self.catalog.file {
            Some(path) => Catalog::load(path),
            None => Ok(Catalog::default()),
        }
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

    /// How long the changelog keeps a batch of dedupe changes: longer than
    /// any key in it lives. A key expires a window after its latest event
    /// time, by processing time, and that event time is at most
    /// `max_future_ms` past the time its latest change was written; a day
    /// more covers expiry's rounds and a clock that steps.
    pub fn changelog_retention_ms(&self) -> i64 {
        let max_future = i64::try_from(self.dedupe.max_future_ms).unwrap_or(i64::MAX);
        self.dedupe_window_ms()
            .saturating_add(max_future)
            .saturating_add(86_400_000)
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
    use crate::domain::Storefront;
    use std::path::PathBuf;

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
        config.ingest.http.secret = "ingest-secret-0123456789".into();
        config.ingest.azure_table.connection_string = "AccountKey=table-secret".into();
        let printed = config.to_toml();
        for secret in [
            "registry-secret",
            "kafka-secret",
            "oauth-secret",
            "ingest-secret",
            "table-secret",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("leadflow"), "{printed}");
        assert_eq!(printed.matches("********").count(), 5, "{printed}");
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
            [catalog]
            file = "offers/catalog.toml"
            "#,
        );
        let dir = path.parent().expect("dir").join("offers");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(
            dir.join("catalog.toml"),
            "[[offer]]\nid = \"contoso.sales-insights\"\ntitle = \"Contoso Sales Insights\"\n\
             storefront = \"appsource\"\ntype = \"saas\"\npublisher = \"Contoso\"\n",
        )
        .expect("write catalog");
        // Read beside the config file, not from the working directory.
        let config = Config::load(Some(&path)).expect("valid config");
        assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:19092");
        assert_eq!(
            config.kafka.client.get("linger.ms").map(String::as_str),
            Some("5")
        );
        assert_eq!(config.topics.input, "raw");
        assert_eq!(config.topics.dead_letter, "leads.dlq");
        let catalog = config.catalog().expect("catalog");
        let offer = crate::domain::Offer::parse("contoso.sales-insights").expect("offer");
        assert_eq!(
            catalog.offer(&offer).map(|o| o.storefront),
            Some(Storefront::AppSource)
        );
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

        let (dir, path) = write("[catalog]\nfile = \"catalog.toml\"\n");
        std::fs::write(
            dir.path().join("catalog.toml"),
            "[[offer]]\nid = \"nodot\"\ntitle = \"x\"\nstorefront = \"appsource\"\n\
             type = \"saas\"\npublisher = \"x\"\n",
        )
        .expect("write catalog");
        let message = Config::load(Some(&path))
            .expect_err("bad offer")
            .to_string();
        assert!(
            message.contains("catalog.toml") && message.contains("offer[0].id"),
            "{message}"
        );
    }
}
