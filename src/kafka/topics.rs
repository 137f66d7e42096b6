//! `leadflow topics`: create leadflow's topics and count what is in them.
//! Counting reads every record with `read_committed`: watermarks would also
//! count transaction markers and aborted records, which exactly-once writes.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::{Logged, Role, SetupError, check_topics, client_config, cluster_metadata};
use crate::config::{Config, KafkaConfig};

/// What leadflow uses a topic for, which decides the configuration it
/// creates it with and checks at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    /// Raw leads in: the cluster's defaults, the operator's to choose.
    Input,
    /// Campaign and suppressed records: the cluster's defaults. Records
    /// leadflow writes are stamped when written, so time-based retention
    /// counts from then.
    Output,
    /// Dead letters: like outputs, but as large as an input may be.
    DeadLetter,
    /// The re-keying hop. It keeps each record's source timestamp (the
    /// event time of a lead without `received_at`), so time-based deletion
    /// is off and any timestamp is taken; leadflow deletes what it has
    /// committed itself, as Kafka Streams does.
    Repartition,
    /// The dedupe changelog: batches of changes (`stages::dedupe`), each
    /// kept `retention_ms` by the broker's clock, longer than any key in
    /// it lives ([`Config::changelog_retention_ms`]).
    Changelog { retention_ms: i64 },
    /// The table ingest's position: compacted, never deleted by time.
    Position,
}

/// Kafka's stock `max.message.bytes` of a topic.
const STOCK_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// The largest record leadflow may write to a topic of `role`, when it
/// takes inputs of up to `max_record_bytes`.
pub fn largest_record(role: TopicRole, max_record_bytes: usize) -> usize {
    match role {
        TopicRole::Input | TopicRole::Position => 0,
        TopicRole::Changelog { .. } => {
            crate::stages::dedupe::BATCH_MAX_BYTES + super::RECORD_HEADROOM
        }
        TopicRole::Output => super::LEAD_RECORD_MAX,
        TopicRole::DeadLetter | TopicRole::Repartition => {
            max_record_bytes.saturating_add(super::RECORD_HEADROOM)
        }
    }
}

/// Every topic of `config` with its role, in [`Config::all_topics`] order.
pub fn roles(config: &Config) -> Vec<(String, TopicRole)> {
    let repartition = config.repartition_topic();
    let changelog = config.changelog_topic();
    config
        .all_topics()
        .into_iter()
        .map(|name| {
            let role = if Some(&name) == repartition.as_ref() {
                TopicRole::Repartition
            } else if name == changelog {
                TopicRole::Changelog {
                    retention_ms: config.changelog_retention_ms(),
                }
            } else if name == config.ingest.azure_table.position_topic {
                TopicRole::Position
            } else if name == config.topics.input {
                TopicRole::Input
            } else if name == config.topics.dead_letter {
                TopicRole::DeadLetter
            } else {
                TopicRole::Output
            };
            (name, role)
        })
        .collect()
}

/// Topic-level configuration leadflow sets on a topic of `role`.
pub fn topic_configs(role: TopicRole, max_record_bytes: usize) -> Vec<(&'static str, String)> {
    let room = || {
        (
            "max.message.bytes",
            largest_record(role, max_record_bytes)
                .max(STOCK_MAX_MESSAGE_BYTES)
                .to_string(),
        )
    };
    let fixed = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    match role {
        TopicRole::Input | TopicRole::Output => Vec::new(),
        TopicRole::DeadLetter => vec![room()],
        TopicRole::Repartition => {
            let mut configs = fixed(&[
                ("cleanup.policy", "delete"),
                ("retention.ms", "-1"),
                ("retention.bytes", "-1"),
                ("message.timestamp.type", "CreateTime"),
                ("message.timestamp.after.max.ms", "9223372036854775807"),
                ("message.timestamp.before.max.ms", "9223372036854775807"),
                // Smaller segments, so that purged records free disk sooner
                // (Kafka Streams' choice for its repartition topics).
                ("segment.bytes", "52428800"),
            ]);
            configs.push(room());
            configs
        }
        TopicRole::Changelog { retention_ms } => {
            let mut configs = fixed(&[
                // Batches hold many keys each: compaction would keep
                // every one, so retention deletes them once no key in
                // them can be live, counted by the broker's clock
                // (leadflow's host's may be off).
                ("cleanup.policy", "delete"),
                ("retention.bytes", "-1"),
                ("message.timestamp.type", "LogAppendTime"),
                // A segment is deleted whole once its newest batch is
                // past retention: a day's segments keep at most a day
                // more than needed, about 180 segments a partition by
                // default.
                ("segment.ms", "86400000"),
            ]);
            configs.push(("retention.ms", retention_ms.to_string()));
            configs.push(room());
            configs
        }
        TopicRole::Position => fixed(&[
            ("cleanup.policy", "compact"),
            // Every start reads it back whole, and Kafka compacts only
            // segments that have rolled: with the stock 1 GiB or 7 days,
            // a soak's dedupe changelog (compacted, before its batches)
            // held 4.4 million records for 200,000 keys after 45 minutes,
            // and a restore took 18.5 s.
            // Rolling every 10 minutes (or 50 MB) lets the cleaner keep it
            // near the live keys.
            ("segment.ms", "600000"),
            ("segment.bytes", "52428800"),
            // A forgotten key's tombstone is read back by every restore for
            // as long as Kafka keeps it: at the stock day, a 60-minute soak's
            // restores grew to 3.87 million records for 200,000 live keys.
            // Ten minutes is far longer than a restore takes; a restore
            // slower than that may miss a tombstone and remember a key it
            // had forgotten, which costs memory (the budget forgets it
            // again), never an outcome: a remembered key past the window
            // is no repeat, and expiry forgets it.
            ("delete.retention.ms", "600000"),
        ]),
    }
}

/// Why a topic's current configuration can lose or refuse what leadflow
/// writes to it; `None` when it cannot. `config` looks a configuration
/// value up by name.
pub fn config_problem(
    role: TopicRole,
    max_record_bytes: usize,
    config: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let policy = config("cleanup.policy").unwrap_or_else(|| "delete".into());
    let policies: Vec<&str> = policy.split(',').map(str::trim).collect();
    let value = |name: &str| config(name).unwrap_or_default();
    let largest = largest_record(role, max_record_bytes);
    let allowed = value("max.message.bytes").parse::<usize>().ok();
    if let Some(allowed) = allowed.filter(|allowed| *allowed < largest) {
        return Some(format!(
            "max.message.bytes={allowed} is below the {largest} bytes leadflow may write to it (pipeline.max_record_bytes={max_record_bytes}); raise it on the topic or lower pipeline.max_record_bytes"
        ));
    }
    match role {
        TopicRole::Input | TopicRole::Output | TopicRole::DeadLetter => None,
        TopicRole::Repartition => {
            if policies.contains(&"compact") {
                Some(format!(
                    "cleanup.policy={policy} would compact away leads that share a dedupe key; it must be delete"
                ))
            } else if value("retention.ms") != "-1" {
                Some(format!(
                    "retention.ms={} deletes records by their (source) timestamp before they are read; it must be -1 (leadflow purges what it committed; alter it with kafka-configs --alter --add-config retention.ms=-1)",
                    value("retention.ms")
                ))
            } else if config("message.timestamp.type").is_some_and(|t| t != "CreateTime") {
                Some(format!(
                    "message.timestamp.type={} would overwrite the source timestamp (the event time of a lead without received_at); it must be CreateTime",
                    value("message.timestamp.type")
                ))
            } else if value("retention.bytes") != "-1" {
                Some(format!(
                    "retention.bytes={} deletes records before they are read; it must be -1",
                    value("retention.bytes")
                ))
            } else {
                None
            }
        }
        TopicRole::Changelog { retention_ms } => {
            let kept = value("retention.ms")
                .parse::<i64>()
                .ok()
                .filter(|ms| *ms >= 0);
            if policies.contains(&"delete") && kept.is_some_and(|ms| ms < retention_ms) {
                Some(format!(
                    "retention.ms={} deletes dedupe state its keys still need; it must be at least {retention_ms} (dedupe.window_days, dedupe.max_future_ms and a day) or -1 (kafka-configs --alter --entity-type topics --add-config retention.ms={retention_ms})",
                    value("retention.ms")
                ))
            } else if policies.contains(&"delete")
                && config("retention.bytes").is_some_and(|b| b.parse::<i64>().is_ok_and(|b| b >= 0))
            {
                Some(format!(
                    "retention.bytes={} deletes dedupe state its keys still need; it must be -1",
                    value("retention.bytes")
                ))
            } else {
                None
            }
        }
        TopicRole::Position => (policies != ["compact"]).then(|| {
            format!("cleanup.policy={policy} can delete the read position; it must be compact")
        }),
    }
}

/// What a production cluster should change on a topic that works as it
/// is: a replica count or `min.insync.replicas` that loses acknowledged
/// writes with one broker, or stops them while one is down, and, on the
/// internal topics, a setting other than the one leadflow creates them
/// with (a topic made by an older leadflow, or by hand). Logged at start,
/// never refused: a development cluster of one broker has one replica of
/// everything. Topics leadflow only reads (the input) get none.
pub fn config_advice(
    role: TopicRole,
    max_record_bytes: usize,
    replicas: usize,
    config: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    if role == TopicRole::Input {
        return Vec::new();
    }
    let mut advice = Vec::new();
    let min_insync = config("min.insync.replicas").and_then(|v| v.parse::<usize>().ok());
    if replicas < 3 {
        advice.push(format!(
            "{replicas} replica(s): a broker's loss can lose what leadflow wrote here; production clusters keep 3 (topics create --replication-factor 3 --min-insync-replicas 2)"
        ));
    } else if let Some(min) = min_insync.filter(|min| *min < 2) {
        advice.push(format!(
            "min.insync.replicas={min} with {replicas} replicas: a write one broker acknowledged is lost with that broker; use 2"
        ));
    }
    if let Some(min) = min_insync.filter(|min| replicas >= 2 && *min >= replicas) {
        advice.push(format!(
            "min.insync.replicas={min} with {replicas} replicas: leadflow's writes stop while any replica is down; use {}",
            replicas - 1
        ));
    }
    if matches!(
        role,
        TopicRole::Repartition | TopicRole::Changelog { .. } | TopicRole::Position
    ) {
        for (key, want) in topic_configs(role, max_record_bytes) {
            let found = config(key);
            if key != "max.message.bytes" && found.as_deref().is_some_and(|found| found != want) {
                advice.push(format!(
                    "{key}={}, where leadflow creates it with {key}={want} (kafka-configs --alter --entity-type topics --add-config {key}={want})",
                    found.unwrap_or_default()
                ));
            }
        }
    }
    advice
}

/// How many partitions and replicas topics are created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub partitions: i32,
    /// `None`: the broker's `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// `None`: the broker's `min.insync.replicas`.
    pub min_insync_replicas: Option<u32>,
}

impl Layout {
    /// `partitions` partitions, replicated as the broker's defaults say.
    pub fn partitions(partitions: i32) -> Layout {
        Layout {
            partitions,
            replication_factor: None,
            min_insync_replicas: None,
        }
    }
}

/// Creates each topic that does not exist yet, laid out as `layout` says,
/// with the configuration of its role ([`topic_configs`]). Returns the
/// names of the topics it created.
pub async fn create(
    kafka: &KafkaConfig,
    topics: &[(&str, TopicRole)],
    layout: Layout,
    max_record_bytes: usize,
) -> Result<Vec<String>, SetupError> {
    let admin: AdminClient<Logged> = client_config(kafka, Role::Admin, &[])
        .create_with_context(Logged)
        .map_err(SetupError::Client)?;
    // Fail fast on an unreachable broker rather than waiting on the admin call.
    cluster_metadata(admin.inner(), kafka)?;
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let configs: Vec<Vec<(&str, String)>> = topics
        .iter()
        .map(|(_, role)| {
            let mut configs = topic_configs(*role, max_record_bytes);
            if let Some(min) = layout.min_insync_replicas {
                configs.push(("min.insync.replicas", min.to_string()));
            }
            configs
        })
        .collect();
    // -1 asks the broker for its default (KIP-464).
    let replicas = layout.replication_factor.unwrap_or(-1);
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&configs)
        .map(|((name, _), configs)| {
            configs.iter().fold(
                NewTopic::new(name, layout.partitions, TopicReplication::Fixed(replicas)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(SetupError::Client)?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(SetupError::BadTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    let names: Vec<&str> = topics.iter().map(|(name, _)| *name).collect();
    wait_until_visible(admin.inner(), kafka, &names)?;
    Ok(created)
}

/// A topic as the broker describes it: its topic-level configuration (the
/// effective values, defaults included) and its fewest replicas of any
/// partition.
struct Described {
    config: HashMap<String, String>,
    replicas: usize,
}

async fn describe(kafka: &KafkaConfig, names: &[&str]) -> Result<Vec<Described>, SetupError> {
    let admin: AdminClient<Logged> = client_config(kafka, Role::Admin, &[])
        .create_with_context(Logged)
        .map_err(SetupError::Client)?;
    let metadata = cluster_metadata(admin.inner(), kafka)?;
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let specifiers: Vec<ResourceSpecifier<'_>> = names
        .iter()
        .map(|name| ResourceSpecifier::Topic(name))
        .collect();
    let results = admin
        .describe_configs(&specifiers, &options)
        .await
        .map_err(SetupError::Client)?;
    names
        .iter()
        .zip(results)
        .map(|(name, result)| {
            let resource = result.map_err(|code| SetupError::BadTopic {
                topic: (*name).to_owned(),
                reason: format!("cannot describe its configuration: {code}"),
            })?;
            let replicas = metadata
                .topics()
                .iter()
                .find(|topic| topic.name() == *name)
                .and_then(|topic| topic.partitions().iter().map(|p| p.replicas().len()).min())
                .unwrap_or(0);
            Ok(Described {
                config: resource
                    .entries
                    .into_iter()
                    .filter_map(|entry| Some((entry.name, entry.value?)))
                    .collect(),
                replicas,
            })
        })
        .collect()
}

/// [`check_configs`], for the run loop's own thread.
pub fn check_configs_blocking(
    kafka: &KafkaConfig,
    topics: &[(&str, TopicRole)],
    max_record_bytes: usize,
) -> Result<Vec<(String, String)>, SetupError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| SetupError::BadTopic {
            topic: topics
                .first()
                .map_or_else(String::new, |(t, _)| (*t).to_owned()),
            reason: format!("cannot check its configuration: {e}"),
        })?;
    runtime.block_on(check_configs(kafka, topics, max_record_bytes))
}

/// Refuses, naming the topic and the setting, a topic whose configuration
/// can lose what leadflow keeps in it or refuse what it writes there.
/// Returns the [`config_advice`] for each topic, by topic name.
pub async fn check_configs(
    kafka: &KafkaConfig,
    topics: &[(&str, TopicRole)],
    max_record_bytes: usize,
) -> Result<Vec<(String, String)>, SetupError> {
    let names: Vec<&str> = topics.iter().map(|(name, _)| *name).collect();
    let found = describe(kafka, &names).await?;
    let mut advice = Vec::new();
    for ((name, role), described) in topics.iter().zip(found) {
        let config = &described.config;
        if config.is_empty() {
            return Err(SetupError::BadTopic {
                topic: (*name).to_owned(),
                reason: "the broker described no configuration for it".into(),
            });
        }
        let value = |key: &str| config.get(key).cloned();
        if let Some(reason) = config_problem(*role, max_record_bytes, value) {
            return Err(SetupError::BadTopic {
                topic: (*name).to_owned(),
                reason,
            });
        }
        advice.extend(
            config_advice(*role, max_record_bytes, described.replicas, value)
                .into_iter()
                .map(|text| ((*name).to_owned(), text)),
        );
    }
    Ok(advice)
}

/// Waits until every topic has a leader for each partition in the broker's
/// metadata. A created topic takes a moment to propagate, and a command run
/// right after `topics create` must find it.
fn wait_until_visible<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    kafka: &KafkaConfig,
    names: &[&str],
) -> Result<(), SetupError> {
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let metadata = cluster_metadata(client, kafka)?;
        let missing = names.iter().find(|name| {
            !metadata.topics().iter().any(|t| {
                t.name() == **name
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
        });
        match missing {
            None => return Ok(()),
            Some(name) if std::time::Instant::now() >= deadline => {
                return Err(SetupError::BadTopic {
                    topic: (*name).to_owned(),
                    reason: format!(
                        "created but not visible with leaders within {} ms",
                        kafka.connect_timeout_ms
                    ),
                });
            }
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// How long counting waits for a partition that makes no progress.
const COUNT_PATIENCE: Duration = Duration::from_secs(60);

/// Committed records in each topic, read from the beginning to the end
/// with `read_committed`, one topic at a time (an end-of-partition event
/// names only the partition).
pub fn counts(kafka: &KafkaConfig, names: &[&str]) -> Result<Vec<u64>, SetupError> {
    let defaults = [
        ("group.id", "leadflow-topics-counts"),
        ("enable.auto.commit", "false"),
        ("isolation.level", "read_committed"),
        ("enable.partition.eof", "true"),
    ];
    let config = client_config(kafka, Role::Consumer, &defaults);
    let probe: BaseConsumer<Logged> = config
        .create_with_context(Logged)
        .map_err(SetupError::Client)?;
    let partitions = check_topics(probe.client(), kafka, names)?;
    let mut counts = Vec::with_capacity(names.len());
    for (name, count) in names.iter().zip(partitions) {
        let consumer: BaseConsumer<Logged> = config
            .create_with_context(Logged)
            .map_err(SetupError::Client)?;
        let partitions: Vec<i32> = (0..i32::try_from(count).unwrap_or(i32::MAX)).collect();
        // Reading stalls only behind an open transaction, which the broker
        // aborts within leadflow's transaction timeout.
        let records = super::read_to_end(&consumer, (name, &partitions), COUNT_PATIENCE, |_| {})
            .map_err(|reason| SetupError::BadTopic {
                topic: (*name).to_owned(),
                reason,
            })?;
        counts.push(records);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 983_040;
    /// The default configuration's: 180 days, an hour, and a day.
    const RETENTION_MS: i64 = 181 * 86_400_000 + 3_600_000;
    const CHANGELOG: TopicRole = TopicRole::Changelog {
        retention_ms: RETENTION_MS,
    };

    /// A topic's configuration as the broker would describe it: `pairs`.
    fn described<'a>(pairs: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn check(role: TopicRole, pairs: &[(&str, &str)]) -> Option<String> {
        config_problem(role, LIMIT, described(pairs))
    }

    #[test]
    fn what_leadflow_creates_passes_its_own_check() {
        let roles = [
            TopicRole::Input,
            TopicRole::Output,
            TopicRole::DeadLetter,
            TopicRole::Repartition,
            CHANGELOG,
            TopicRole::Position,
        ];
        for max_record_bytes in [LIMIT, 4 << 20] {
            for role in roles {
                let configs = topic_configs(role, max_record_bytes);
                // What the broker has where leadflow sets nothing: stock.
                let found = |key: &str| {
                    configs
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.clone())
                        .or_else(|| (key == "max.message.bytes").then(|| "1048588".into()))
                        .or_else(|| (key == "retention.ms").then(|| "604800000".into()))
                };
                assert_eq!(
                    config_problem(role, max_record_bytes, found),
                    None,
                    "{role:?}"
                );
            }
        }
    }

    fn numbers(role: TopicRole) -> impl Fn(&str) -> Option<i64> {
        let configs = topic_configs(role, LIMIT);
        move |key: &str| {
            configs
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse::<i64>().ok())
        }
    }

    #[test]
    fn the_position_topic_is_compacted_and_forgets_tombstones_soon() {
        let value = numbers(TopicRole::Position);
        // Kafka's stock 7 days (and 1 GiB) would leave a week of writes
        // uncompacted for every start to read.
        assert!(value("segment.ms").is_some_and(|ms| ms <= 3_600_000));
        assert!(value("segment.bytes").is_some_and(|b| b <= 64 << 20));
        // Kafka's stock day of tombstones is a day of forgotten keys that
        // every start reads.
        assert!(value("delete.retention.ms").is_some_and(|ms| ms <= 3_600_000));
    }

    #[test]
    fn the_changelog_keeps_batches_longer_than_their_keys_live_by_the_brokers_clock() {
        let configs = topic_configs(CHANGELOG, LIMIT);
        let text = |key: &str| {
            configs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(text("cleanup.policy"), Some("delete"));
        assert_eq!(text("message.timestamp.type"), Some("LogAppendTime"));
        let value = numbers(CHANGELOG);
        assert_eq!(value("retention.ms"), Some(RETENTION_MS));
        assert_eq!(value("retention.bytes"), Some(-1));
        // A batch as large as leadflow writes one fits.
        assert!(value("max.message.bytes").is_some_and(|b| b as usize
            >= crate::stages::dedupe::BATCH_MAX_BYTES + super::super::RECORD_HEADROOM));
        let config = Config::default();
        let day = 86_400_000;
        assert_eq!(
            config.changelog_retention_ms(),
            180 * day + 3_600_000 + day,
            "the window, the most an event time may be ahead, and a day"
        );
    }

    #[test]
    fn a_topic_limit_below_what_leadflow_writes_is_refused() {
        let stock = [("max.message.bytes", "1048588")];
        for role in [TopicRole::Output, TopicRole::DeadLetter, TopicRole::Input] {
            assert_eq!(check(role, &stock), None, "{role:?}");
        }
        let small = [("max.message.bytes", "500000")];
        assert!(check(TopicRole::DeadLetter, &small).is_some_and(|r| r.contains("1048576 bytes")));
        assert_eq!(check(TopicRole::Output, &small), None);
        let tiny = [("max.message.bytes", "10000")];
        assert!(check(TopicRole::Output, &tiny).is_some());
        assert_eq!(check(TopicRole::Input, &tiny), None);
    }

    fn advise(role: TopicRole, replicas: usize, pairs: &[(&str, &str)]) -> Vec<String> {
        config_advice(role, LIMIT, replicas, described(pairs))
    }

    #[test]
    fn weak_replication_is_advised_against_but_not_refused() {
        let stock = [("min.insync.replicas", "1")];
        let one = advise(TopicRole::Output, 1, &stock);
        assert!(one.len() == 1 && one[0].contains("1 replica(s)"), "{one:?}");
        let three = advise(CHANGELOG, 3, &stock);
        assert!(
            three
                .iter()
                .any(|a| a.contains("min.insync.replicas=1 with 3")),
            "{three:?}"
        );
        let stalls = advise(TopicRole::DeadLetter, 3, &[("min.insync.replicas", "3")]);
        assert!(
            stalls.len() == 1 && stalls[0].contains("writes stop") && stalls[0].ends_with("use 2"),
            "{stalls:?}"
        );
        let sound = [("min.insync.replicas", "2")];
        for role in [TopicRole::Output, TopicRole::DeadLetter] {
            assert_eq!(advise(role, 3, &sound), Vec::<String>::new());
        }
        // leadflow reads the input only: its layout is the operator's.
        assert_eq!(advise(TopicRole::Input, 1, &stock), Vec::<String>::new());
    }

    #[test]
    fn internal_topics_made_otherwise_than_leadflow_makes_them_are_named() {
        for role in [TopicRole::Repartition, CHANGELOG, TopicRole::Position] {
            let mut configs = topic_configs(role, LIMIT);
            configs.push(("min.insync.replicas", "2".into()));
            let pairs: Vec<(&str, &str)> = configs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(advise(role, 3, &pairs), Vec::<String>::new(), "{role:?}");
        }
        // What an older leadflow made: compacted, but with Kafka's stock
        // week-long segments and day of tombstones.
        let older = [
            ("cleanup.policy", "compact"),
            ("min.insync.replicas", "2"),
            ("segment.ms", "604800000"),
            ("segment.bytes", "1073741824"),
            ("delete.retention.ms", "86400000"),
        ];
        let advice = advise(TopicRole::Position, 3, &older);
        assert_eq!(advice.len(), 3, "{advice:?}");
        assert!(
            advice[0].starts_with(
                "segment.ms=604800000, where leadflow creates it with segment.ms=600000"
            )
        );
        // A changelog it made before batches works (compaction keeps
        // every batch, so it only grows), and is named for what to change.
        assert_eq!(check(CHANGELOG, &older), None);
        let advice = advise(CHANGELOG, 3, &older);
        assert!(
            advice[0].starts_with(
                "cleanup.policy=compact, where leadflow creates it with cleanup.policy=delete"
            ),
            "{advice:?}"
        );
    }

    #[test]
    fn internal_topics_that_can_lose_data_are_refused() {
        // Kafka's stock defaults: 7 days of time-based retention, delete.
        let stock = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "604800000"),
            ("retention.bytes", "-1"),
        ];
        assert!(
            check(TopicRole::Repartition, &stock)
                .is_some_and(|r| r.contains("retention.ms=604800000"))
        );
        assert!(
            check(CHANGELOG, &stock)
                .is_some_and(|r| r.contains("retention.ms=604800000") && r.contains("at least"))
        );
        assert!(check(TopicRole::Position, &stock).is_some_and(|r| r.contains("compact")));
        assert_eq!(check(TopicRole::Input, &stock), None);
        let compacted = [
            ("cleanup.policy", "compact"),
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
        ];
        assert!(check(TopicRole::Repartition, &compacted).is_some());
        assert_eq!(check(CHANGELOG, &compacted), None);
        let both = [
            ("cleanup.policy", "compact,delete"),
            ("retention.ms", "604800000"),
        ];
        assert!(check(TopicRole::Position, &both).is_some());
        assert!(check(CHANGELOG, &both).is_some());
        let kept = RETENTION_MS.to_string();
        let long = [
            ("cleanup.policy", "delete"),
            ("retention.ms", kept.as_str()),
        ];
        assert_eq!(check(CHANGELOG, &long), None);
        let bytes = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "-1"),
            ("retention.bytes", "1073741824"),
        ];
        assert!(
            check(TopicRole::Repartition, &bytes).is_some_and(|r| r.contains("retention.bytes"))
        );
        assert!(check(CHANGELOG, &bytes).is_some_and(|r| r.contains("retention.bytes")));
    }
}
