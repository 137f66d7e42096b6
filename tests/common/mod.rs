//! Helpers for integration tests against the real local broker that
//! `scripts/kafka.sh` starts. Each test gets its own topics and consumer
//! group, so tests run in parallel without seeing each other's records.

#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod azurite;
pub mod checker;
pub mod cluster;
pub mod deadline;
pub mod faults;
pub mod ingest;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod scenario;
pub mod toxiproxy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

pub use deadline::deadline;

static BOOTSTRAP: OnceLock<String> = OnceLock::new();

/// Event time of the tests' hand-written leads: 30 days ago, to the
/// second. Old enough that a record stamped with it would be deleted by
/// the broker's stock 7-day retention, young enough for the dedupe window.
pub fn t0() -> i64 {
    static T0: OnceLock<i64> = OnceLock::new();
    *T0.get_or_init(|| (now_ms() - 30 * 86_400_000) / 1000 * 1000)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// [`t0`] as RFC 3339, for `received_at`.
pub fn t0_rfc3339() -> String {
    time::OffsetDateTime::from_unix_timestamp(t0() / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .expect("a formattable time")
}

/// Bootstrap servers of the test broker: the one a test binary chose with
/// [`use_broker`], else `LEADFLOW_TEST_BOOTSTRAP`.
pub fn bootstrap() -> String {
    BOOTSTRAP.get().cloned().unwrap_or_else(|| {
        std::env::var("LEADFLOW_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
    })
}

/// A port for a broker of a test binary's own: the test broker's port
/// (`LEADFLOW_KAFKA_PORT`) plus `offset`, so that suites run side by side
/// (as `scripts/test.sh` and the benchmark smoke do) never collide.
pub fn own_broker_port(offset: u16) -> u16 {
    std::env::var("LEADFLOW_KAFKA_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(19_092)
        + offset
}

/// A broker of a test's own, started fresh by `scripts/kafka.sh` on `port`
/// and stopped when dropped, for tests that kill the broker.
pub struct OwnBroker {
    pub port: u16,
    /// The port clients are told to use, when a proxy sits in front.
    pub advertised: u16,
    _stop: deadline::Registered,
}

impl OwnBroker {
    /// Starts the broker (waiting until it answers) and points this test
    /// binary's helpers at it. Call once per binary.
    pub fn start(port: u16) -> OwnBroker {
        OwnBroker::behind(port, port)
    }

    /// [`OwnBroker::start`], advertising `advertised` (a proxy's port, which
    /// must forward to `port` already) as its address.
    pub fn behind(port: u16, advertised: u16) -> OwnBroker {
        let broker = OwnBroker {
            port,
            advertised,
            _stop: deadline::cleanup(move || stop_broker(port)),
        };
        broker.script("reset");
        broker.script("start");
        assert!(
            BOOTSTRAP.set(format!("127.0.0.1:{advertised}")).is_ok(),
            "one broker per test binary"
        );
        broker
    }

    /// Runs `scripts/kafka.sh COMMAND` for this broker; it must succeed.
    pub fn script(&self, command: &str) {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg(command)
            .env("LEADFLOW_KAFKA_PORT", self.port.to_string())
            .env(
                "LEADFLOW_KAFKA_ADVERTISED_PORT",
                self.advertised.to_string(),
            )
            .env_remove("LEADFLOW_KAFKA_CONTROLLER_PORT")
            .status()
            .expect("run scripts/kafka.sh");
        assert!(status.success(), "scripts/kafka.sh {command} failed");
    }

    /// `kill -9` of the broker process.
    pub fn kill(&self) {
        let pidfile = format!(
            "{}/.cache/kafka/data-{}/broker.pid",
            env!("CARGO_MANIFEST_DIR"),
            self.port
        );
        let pid = std::fs::read_to_string(&pidfile).expect("broker pid file");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {pid}");
        let deadline = Instant::now() + PATIENCE;
        while Command::new("kill")
            .args(["-0", pid.trim()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "broker {pid} survived kill -9");
            std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        stop_broker(self.port);
    }
}

fn stop_broker(port: u16) {
    let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
        .arg("stop")
        .env("LEADFLOW_KAFKA_PORT", port.to_string())
        .status();
}

/// Runs `command` with `input` on its stdin; its output. `what` names it
/// when it cannot start, and when it does not finish within [`PATIENCE`].
pub fn piped(command: &mut Command, input: &str, what: &str) -> Output {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write to {what}: {e}"));
    finish_within(child, PATIENCE, what)
}

/// Runs `command` to completion, with its output captured; a command that
/// is still running after `patience` is killed and fails the test with
/// what it wrote. No test waits on a child without a deadline.
pub fn output_within(command: &mut Command, patience: Duration, what: &str) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    finish_within(child, patience, what)
}

/// [`output_within`] [`PATIENCE`], as a method of the command.
pub trait OutputWithin {
    fn output_within_patience(&mut self, what: &str) -> Output;
}

impl OutputWithin for Command {
    fn output_within_patience(&mut self, what: &str) -> Output {
        output_within(self, PATIENCE, what)
    }
}

fn finish_within(child: Child, patience: Duration, what: &str) -> Output {
    let pid = child.id();
    let _watched = deadline::child(pid, what, None);
    let (done, finished) = std::sync::mpsc::channel();
    // The pipes are drained while waiting, so a chatty child cannot block.
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(patience) {
        Ok(output) => output.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let output = finished.recv().ok().and_then(Result::ok);
            let (stdout, stderr) = output.map_or_else(Default::default, |o| {
                (
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            });
            panic!(
                "{what} did not finish within {} s and was killed; stdout:\n{stdout}\nstderr:\n{stderr}",
                patience.as_secs()
            );
        }
    }
}

/// Sends a signal (`TERM`, `STOP`, `CONT`) to a child process.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

/// How long any wait for the broker or leadflow may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A test's own topics, consumer group and config file.
pub struct Env {
    pub input: String,
    pub nurture: String,
    pub demand_gen: String,
    pub suppressed: String,
    pub dead_letter: String,
    pub group: String,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Env {
    /// Creates topics named after `name` with `partitions` partitions each,
    /// and a config file pointing at them. `extra` starts the file.
    pub fn new(name: &str, partitions: i32, extra: &str) -> Env {
        Env::with_topics(name, partitions, "", extra)
    }

    /// Like [`Env::new`], with `topics` added to the `[topics]` table.
    pub fn with_topics(name: &str, partitions: i32, topics: &str, extra: &str) -> Env {
        Env::make(name, partitions, topics, extra, &[])
    }

    /// Like [`Env::new`], on a cluster: every topic with 3 replicas and
    /// `min.insync.replicas` 2, as in production.
    pub fn replicated(name: &str, partitions: i32, extra: &str) -> Env {
        Env::make(
            name,
            partitions,
            "",
            extra,
            &["--replication-factor", "3", "--min-insync-replicas", "2"],
        )
    }

    fn make(name: &str, partitions: i32, topics: &str, extra: &str, create: &[&str]) -> Env {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = format!(
            "{name}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("leadflow.toml");
        let env = Env {
            input: format!("{id}.raw"),
            nurture: format!("{id}.nurture"),
            demand_gen: format!("{id}.demand-gen"),
            suppressed: format!("{id}.suppressed"),
            dead_letter: format!("{id}.dlq"),
            group: format!("{id}.group"),
            config,
            _dir: dir,
        };
        let catalog = format!(
            "[catalog]\nfile = {:?}",
            leadflow::testkit::GENERATED_CATALOG
        );
        let text = format!(
            "{extra}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[kafka]\nbootstrap_servers = {:?}\ngroup_id = {:?}\n\n[topics]\n{topics}\ninput = {:?}\nsuppressed = {:?}\ndead_letter = {:?}\n\n\
             [[routes]]\ncampaign = \"nurture\"\nstorefront = \"appsource\"\ntopic = {:?}\n\n\
             [[routes]]\ncampaign = \"demand-gen\"\nstorefront = \"azure-marketplace\"\ntopic = {:?}\n\n{catalog}",
            bootstrap(),
            env.group,
            env.input,
            env.suppressed,
            env.dead_letter,
            env.nurture,
            env.demand_gen,
        );
        std::fs::write(&env.config, text).expect("write config");
        let partitions = partitions.to_string();
        let mut args = vec!["topics", "create", "--partitions", &partitions];
        args.extend_from_slice(create);
        let out = env.leadflow(&args);
        assert!(
            out.status.success(),
            "topics create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    /// A `leadflow` command using this test's config.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_leadflow"));
        command.arg("--config").arg(&self.config).args(args);
        command.env("RUST_LOG", "info");
        command
    }

    /// Starts `leadflow` in the background; `name` names its log file.
    pub fn spawn(&self, name: &str, args: &[&str], stdout: Stdio) -> Running {
        self.spawn_with(name, args, stdout, &[])
    }

    /// [`Env::spawn`] with extra environment variables.
    pub fn spawn_with(
        &self,
        name: &str,
        args: &[&str],
        stdout: Stdio,
        vars: &[(&str, &str)],
    ) -> Running {
        let log = self.config.with_file_name(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = self
            .command(args)
            .envs(vars.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start leadflow");
        let watched = deadline::child(
            child.id(),
            &format!("leadflow {}", args.join(" ")),
            Some(log.clone()),
        );
        Running(child, log, watched)
    }

    /// Runs `leadflow run --until-drained`, which must succeed.
    pub fn run_until_drained(&self) -> Output {
        let out = self.leadflow(&["run", "--until-drained"]);
        assert!(
            out.status.success(),
            "run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `leadflow` to completion, within [`PATIENCE`].
    pub fn leadflow(&self, args: &[&str]) -> Output {
        output_within(
            &mut self.command(args),
            PATIENCE,
            &format!("leadflow {}", args.join(" ")),
        )
    }
}

/// A child process that is killed when the test ends, pass or fail, so a
/// failed test leaves nothing running. Its stderr goes to a file, read back
/// by [`Running::log`] for failure messages.
pub struct Running(pub Child, PathBuf, deadline::Registered);

impl Running {
    /// Starts `command` (`what`, for a deadline's report), its stdout and
    /// stderr both into `log`.
    pub fn start(command: &mut Command, what: &str, log: PathBuf) -> Running {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let watched = deadline::child(child.id(), what, Some(log.clone()));
        Running(child, log, watched)
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A record to write to a given partition.
pub struct TestRecord<'a> {
    pub partition: i32,
    pub key: Option<&'a str>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a str)],
    pub timestamp_ms: i64,
}

/// Writes `values` in order to partition 0 of `topic`, without keys or
/// headers, all with timestamp `timestamp_ms`.
pub fn produce_values(topic: &str, values: &[Vec<u8>], timestamp_ms: i64) {
    let records: Vec<TestRecord<'_>> = values
        .iter()
        .map(|value| TestRecord {
            partition: 0,
            key: None,
            value: Some(value),
            headers: &[],
            timestamp_ms,
        })
        .collect();
    produce(topic, &records);
}

/// Writes records in order and waits until the broker has them all.
pub fn produce(topic: &str, records: &[TestRecord<'_>]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        // Room for records up to a stock topic's limit, past leadflow's.
        .set("message.max.bytes", "1048000")
        .create()
        .expect("producer");
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (key, value) in r.headers {
            headers = headers.insert(Header {
                key,
                value: Some(*value),
            });
        }
        let mut record = BaseRecord::<str, [u8]>::to(topic)
            .partition(r.partition)
            .timestamp(r.timestamp_ms)
            .headers(headers);
        if let Some(key) = r.key {
            record = record.key(key);
        }
        if let Some(value) = r.value {
            record = record.payload(value);
        }
        producer.send(record).map_err(|(e, _)| e).expect("enqueue");
    }
    producer.flush(PATIENCE).expect("all records acknowledged");
}

fn consumer(group: Option<&str>, report_end: bool) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap())
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", report_end.to_string());
    config.set("group.id", group.unwrap_or("leadflow-test-reader"));
    config.create().expect("consumer")
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    retried(|| try_partitions(consumer, topic, Duration::from_secs(10)))
}

/// The partitions of `topic`, asked once, waiting at most `timeout`.
fn try_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    Ok(metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect())
}

/// `attempt` until it succeeds: a broker that just died fails a request
/// or two (librdkafka drops the handle of a broker gone from the
/// metadata), and one that just started answers "not coordinator" or
/// "coordinator loading" for a while.
fn retried<T>(mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        std::thread::sleep(Duration::from_millis(200)); // retry interval of a condition wait
    }
}

/// Every record in `topic`, read with `read_committed`, in partition then
/// offset order. A partition is done when the consumer reports its end
/// (which, with transactions, lies past the commit markers that no message
/// offset reaches); partitions that were empty at the start are skipped.
pub fn read_all(topic: &str) -> Vec<OwnedMessage> {
    let consumer = consumer(None, true);
    let mut remaining = BTreeSet::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions(&consumer, topic) {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, PATIENCE)
            .expect("watermarks");
        if high > low {
            remaining.insert(partition);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("assign");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !remaining.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                remaining.remove(&partition);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(message)) => records.push(message.detach()),
        }
    }
    records.sort_by_key(|m| (m.partition(), m.offset()));
    records
}

/// The group's committed offsets on `topic`, by partition (absent when none),
/// retrying while the group coordinator is not ready. Offsets of a
/// transaction still open are not included; they are not waited for either
/// (a `read_committed` client would wait until no transaction with offsets
/// is pending, which under steady exactly-once traffic is rarely).
pub fn committed(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    retried(|| try_committed(group, topic, Duration::from_secs(10)))
}

/// [`committed`], asked once, each request waiting at most `timeout`.
pub fn try_committed(
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap())
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .set("group.id", group);
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in try_partitions(&consumer, topic, timeout)? {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, timeout)
        .map_err(|e| format!("committed offsets: {e}"))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// How many members the consumer group has now.
pub fn group_members(group: &str) -> usize {
    let consumer = consumer(None, false);
    let groups = consumer
        .fetch_group_list(Some(group), PATIENCE)
        .expect("group list");
    groups.groups().iter().map(|g| g.members().len()).sum()
}

/// The end of every partition of `topic` for a `read_committed` reader:
/// its last stable offset, short of any open transaction.
pub fn ends(topic: &str) -> BTreeMap<i32, i64> {
    watermarks(topic)
        .into_iter()
        .map(|(p, (_, end))| (p, end))
        .collect()
}

/// The first offset still in each partition of `topic` (its log start).
pub fn starts(topic: &str) -> BTreeMap<i32, i64> {
    watermarks(topic)
        .into_iter()
        .map(|(p, (start, _))| (p, start))
        .collect()
}

/// Both watermarks of every partition of `topic`.
fn watermarks(topic: &str) -> BTreeMap<i32, (i64, i64)> {
    retried(|| try_watermarks(topic, Duration::from_secs(10)))
}

/// [`watermarks`], asked once, each request waiting at most `timeout`.
pub fn try_watermarks(topic: &str, timeout: Duration) -> Result<BTreeMap<i32, (i64, i64)>, String> {
    let consumer = consumer(None, false);
    try_partitions(&consumer, topic, timeout)?
        .into_iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, timeout)
                .map(|marks| (p, marks))
                .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))
        })
        .collect()
}

/// A header's value as UTF-8.
pub fn header<'a>(message: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    leadflow::kafka::headers::get(message.headers()?, key)
}

/// The (partition, offset) of the input record an output came from.
pub fn source_of(message: &OwnedMessage) -> (i32, i64) {
    let partition = header(message, "leadflow.source.partition")
        .and_then(|p| p.parse().ok())
        .expect("source partition header");
    let offset = header(message, "leadflow.source.offset")
        .and_then(|p| p.parse().ok())
        .expect("source offset header");
    (partition, offset)
}

/// The `event_id` field of a JSON record value.
pub fn event_id(message: &OwnedMessage) -> String {
    let value: serde_json::Value =
        serde_json::from_slice(message.payload().expect("value")).expect("JSON value");
    value["event_id"].as_str().expect("event_id").to_owned()
}

/// Creates `name` with `partitions` partitions and these topic-level
/// `configs` (none: the broker's stock defaults), as an operator or another
/// tool would, outside leadflow.
pub fn create_topic(name: &str, partitions: i32, configs: &[(&str, &str)]) {
    create_topic_replicated(name, partitions, 1, configs);
}

/// [`create_topic`], with `replicas` replicas of each partition.
pub fn create_topic_replicated(
    name: &str,
    partitions: i32,
    replicas: i32,
    configs: &[(&str, &str)],
) {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let topic = configs.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(replicas)),
        |topic, (key, value)| topic.set(key, value),
    );
    let (admin, options, runtime) = admin();
    let results = runtime
        .block_on(admin.create_topics([&topic], &options))
        .expect("create topics");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot create {topic}: {code}"));
    }
}

/// Deletes `topic`, as an operator's mistake would.
pub fn delete_topic(name: &str) {
    let (admin, options, runtime) = admin();
    let results = runtime
        .block_on(admin.delete_topics(&[name], &options))
        .expect("delete topics");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot delete {topic}: {code}"));
    }
}

/// An admin client of the test broker, its request options, and a
/// runtime to wait for its requests on.
fn admin() -> (
    rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    rdkafka::admin::AdminOptions,
    tokio::runtime::Runtime,
) {
    let client = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let options =
        rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (client, options, runtime)
}

/// Deletes the records of `topic`'s `partition` before offset `before`
/// (Kafka's DeleteRecords, as retention or an operator would).
pub fn delete_records(topic: &str, partition: i32, before: i64) {
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, partition, Offset::Offset(before))
        .expect("offset");
    let (admin, options, runtime) = admin();
    let result = runtime
        .block_on(admin.delete_records(&offsets, &options))
        .expect("delete records");
    for tp in result.elements() {
        tp.error()
            .unwrap_or_else(|e| panic!("cannot delete records of {topic}/{partition}: {e}"));
    }
}

/// Sets topic-level configuration of `topic` (replacing what was set
/// before), as an operator would under a running leadflow.
pub fn alter_topic(topic: &str, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    let alter = configs.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(topic)),
        |alter, (key, value)| alter.set(key, value),
    );
    let (admin, options, runtime) = admin();
    let results = runtime
        .block_on(admin.alter_configs([&alter], &options))
        .expect("alter configs");
    for result in results {
        result.unwrap_or_else(|(_, code)| panic!("cannot alter {topic}: {code}"));
    }
}
