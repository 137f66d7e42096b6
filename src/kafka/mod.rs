//! The Kafka edge: client configuration, start-up checks, transactions
//! ([`txn`]), reading partitions to their end ([`read_to_end`]), the lead
//! producer ([`produce`]), dead-letter replay ([`replay`]) and topic tools
//! ([`topics`]). Stages never see anything from here; the processing loop
//! is `crate::engine`.
//!
//! Start-up fails fast and says why in one line: an unreachable broker, a
//! missing topic or an invalid client property ends the process with an
//! error within the configured connect timeout, never a hang.

pub mod headers;
pub mod produce;
mod producer;
pub(crate) mod purge;
pub mod replay;
pub mod tail;
pub mod topics;
pub mod txn;

pub use producer::Wedged;
pub(crate) use producer::{
    DeliveryTracker, LeadProducer, any_broker_up, copy_of, flush, refusal, send,
    send_offsets_to_transaction,
};

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create Kafka client: {0}")]
    Client(KafkaError),
    #[error("cannot reach Kafka at {servers} within {timeout_ms} ms: {cause}")]
    Unreachable {
        servers: String,
        timeout_ms: u64,
        /// What librdkafka said of the failed connection, or else of the
        /// request that timed out.
        cause: String,
    },
    #[error("topic {0:?} does not exist (create it, e.g. with `leadflow topics create`)")]
    MissingTopic(String),
    #[error("topic {topic:?} is unusable: {reason}")]
    BadTopic { topic: String, reason: String },
    /// A client setting that cannot carry what leadflow writes.
    #[error("{0}")]
    Limit(String),
}

/// Room for what leadflow adds to an input record's bytes when it writes
/// them on: a dead letter's headers (its message capped at 1 KiB), and the
/// input's own key and headers up to [`KEPT_KEY_AND_HEADERS`]. A record
/// leadflow writes from an input is at most `pipeline.max_record_bytes`
/// plus this.
pub const RECORD_HEADROOM: usize = 64 * 1024;

/// The most of an input's key and headers a dead letter keeps; past it
/// both are dropped (and the dead letter says so), so it always fits.
pub const KEPT_KEY_AND_HEADERS: usize = 48 * 1024;

/// The most a campaign or suppressed record can take: its fields are
/// capped (`stages::decode::limits`), so this bound holds for any input.
pub const LEAD_RECORD_MAX: usize = 64 * 1024;

/// The most a consumer prefetches, in KiB: leadflow's default for
/// `queued.max.messages.kbytes`.
const CONSUMER_PREFETCH_KIB: &str = "16384";

/// Which kind of client a configuration is for; each reads the shared
/// pass-through properties and then its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
    Admin,
}

/// Client settings: bootstrap servers, then leadflow's `defaults` for this
/// client, then the operator's pass-through librdkafka properties
/// (`kafka.client`, then `kafka.consumer` or `kafka.producer`), so that an
/// operator's explicit setting wins over a default. Settings correctness
/// depends on are set by the caller afterwards.
pub fn client_config(kafka: &KafkaConfig, role: Role, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    if role == Role::Consumer {
        // librdkafka prefetches up to 64 MiB by default. In the soak that
        // was resident memory swinging by 100 MiB and more as backlogs came
        // and went; 16 MiB is still more than a second of input at full
        // speed.
        config.set("queued.max.messages.kbytes", CONSUMER_PREFETCH_KIB);
    }
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    let own = match role {
        Role::Consumer => Some(&kafka.consumer),
        Role::Producer => Some(&kafka.producer),
        Role::Admin => None,
    };
    for (key, value) in kafka.client.iter().chain(own.into_iter().flatten()) {
        config.set(key, value);
    }
    config
}

/// A partition's low and high watermarks, asked again (100 ms doubling to
/// 2 s apart) while the answer is an error, until `patience` has passed.
/// Right after a leader moved or a broker died, librdkafka answers from
/// stale metadata for a moment ("Not leader for partition", "Broker handle
/// destroyed"); in a soak, failing on the first such answer restarted the
/// pipeline, and with it a restore of every partition.
///
/// Each ask waits at most [`WATERMARKS_ASK`]: one ask waits for the leader
/// it started with, and after `kill -9` of that leader a restore's single
/// 30 s ask went on waiting for it long after Kafka had elected another,
/// and failed.
pub fn watermarks<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partition: i32,
    patience: Duration,
) -> Result<(i64, i64), KafkaError> {
    let deadline = Instant::now() + patience;
    let mut backoff = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ask = left.clamp(Duration::from_millis(100), WATERMARKS_ASK);
        match client.fetch_watermarks(topic, partition, ask) {
            Ok(marks) => return Ok(marks),
            Err(e) if Instant::now() + backoff < deadline => {
                tracing::debug!(topic, partition, error = %e, "watermarks; asking again");
                std::thread::sleep(backoff);
                // The ask itself looks the leader up only in the client's
                // metadata cache, which kept a leader that died for good
                // (the mock test below); asking for the topic's metadata
                // refreshes it.
                let _ = client.fetch_metadata(Some(topic), ask);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads `partitions` of `topic` from their start to the end a reader of
/// `consumer`'s isolation level sees now, calling `each` on every record;
/// returns how many it read. `consumer` must have `enable.partition.eof`
/// on, and is assigned those partitions meanwhile. Fails after `patience`
/// without progress (an open transaction holding the end back, a leader
/// that does not come back), naming the partitions left.
pub fn read_to_end<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    (topic, partitions): (&str, &[i32]),
    patience: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<u64, String> {
    use rdkafka::consumer::Consumer;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = std::collections::BTreeSet::new();
    for partition in partitions {
        let (low, high) = watermarks(consumer.client(), topic, *partition, patience)
            .map_err(|e| format!("partition {partition}: {e}"))?;
        if high > low {
            assignment
                .add_partition_offset(topic, *partition, rdkafka::Offset::Beginning)
                .map_err(|e| e.to_string())?;
            remaining.insert(*partition);
        }
    }
    if remaining.is_empty() {
        return Ok(0);
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let mut records = 0_u64;
    // The clock is read only when a poll brings nothing: two reads a
    // record were 4% of a restore's CPU here (librdkafka reads it four
    // times a poll besides). Patience runs from the first poll of a quiet
    // spell, at most one poll after the last progress.
    let mut quiet_since: Option<Instant> = None;
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(record)) => {
                quiet_since = None;
                records += 1;
                each(&record);
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                quiet_since = None;
                remaining.remove(&partition);
                continue;
            }
            None => {}
            Some(Err(e)) => tracing::warn!(topic, error = %e, "read error; retrying"),
        }
        if quiet_since.get_or_insert_with(Instant::now).elapsed() > patience {
            return Err(format!(
                "no progress for {} s on partitions {remaining:?}",
                patience.as_secs()
            ));
        }
    }
    consumer.unassign().map_err(|e| e.to_string())?;
    Ok(records)
}

/// A consumer for [`read_to_end`]: `read_committed`, telling where each
/// partition ends, committing nothing. It never joins `group` (it assigns
/// partitions itself), but librdkafka wants a group to unassign.
pub(crate) fn reader(
    kafka: &KafkaConfig,
    group: &str,
) -> Result<rdkafka::consumer::BaseConsumer<Logged>, KafkaError> {
    client_config(
        kafka,
        Role::Consumer,
        &[("isolation.level", "read_committed")],
    )
    .set("enable.partition.eof", "true")
    .set("enable.auto.commit", "false")
    .set("group.id", group)
    .set("statistics.interval.ms", "0")
    // A partition whose queue holds `queued.min.messages` (100,000) is not
    // fetched again for `fetch.queue.backoff.ms`, 1 s by default: a reader
    // that drains it in milliseconds waited most of that second. A restore
    // of 3 million keys took 7.2 s, and 2.3 s with 10 ms.
    .set("fetch.queue.backoff.ms", "10")
    .create_with_context(Logged)
}

/// How long one ask for a partition's watermarks waits: a few round trips
/// of a slow network (connecting, metadata, the offsets), and short beside
/// the 9 s in which KRaft replaces a leader that died.
const WATERMARKS_ASK: Duration = Duration::from_secs(3);

/// Logs a client error, except end of partition: leadflow asks for those
/// events to learn where a partition ends, and they are no fault.
pub(crate) fn log_client_error(error: KafkaError, reason: &str) {
    if !matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    ) {
        remember_connection_error(&error, reason);
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

/// Why a client could not connect, last seen, and when: librdkafka tells
/// the error callback (a refused password, an untrusted certificate), while
/// the request that waited on the connection only times out. Start-up
/// errors name it ([`cluster_metadata`]).
static CONNECTION_ERROR: Mutex<Option<(Instant, RDKafkaErrorCode, String)>> = Mutex::new(None);

/// How telling a connection error is: an authentication or TLS failure
/// says what to fix, a refused or dropped connection less, and "all
/// brokers are down" nothing that the others have not said.
fn specificity(code: RDKafkaErrorCode) -> Option<u8> {
    match code {
        RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::SaslAuthenticationFailed
        | RDKafkaErrorCode::SSL
        | RDKafkaErrorCode::UnsupportedSASLMechanism
        | RDKafkaErrorCode::IllegalSASLState => Some(2),
        RDKafkaErrorCode::BrokerTransportFailure
        | RDKafkaErrorCode::Resolve
        | RDKafkaErrorCode::BrokerNotAvailable => Some(1),
        _ => None,
    }
}

fn remember_connection_error(error: &KafkaError, reason: &str) {
    let Some(code) = error.rdkafka_error_code() else {
        return;
    };
    let Some(rank) = specificity(code) else {
        return;
    };
    let mut last = lock(&CONNECTION_ERROR);
    // A vaguer error right after a telling one (the dropped connection
    // that follows a refused password) keeps the telling one.
    let keep = last.as_ref().is_some_and(|(at, previous, _)| {
        at.elapsed() < Duration::from_secs(10) && specificity(*previous).unwrap_or(0) > rank
    });
    if !keep {
        *last = Some((Instant::now(), code, reason.to_owned()));
    }
}

/// The connection error remembered since `since`, if any.
fn connection_error_since(since: Instant) -> Option<String> {
    lock(&CONNECTION_ERROR)
        .as_ref()
        .filter(|(at, _, _)| *at >= since)
        .map(|(_, _, reason)| reason.clone())
}

/// Logs a librdkafka log line as rdkafka's default context does, through
/// `tracing`, for contexts that look at some lines themselves first.
pub(crate) fn log_client_message(
    level: rdkafka::config::RDKafkaLogLevel,
    fac: &str,
    message: &str,
) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", "{fac} {message}");
        }
        L::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", "{fac} {message}"),
        L::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
    }
}

/// A client context that only logs what librdkafka reports (through
/// `tracing`) and remembers why a connection failed.
pub(crate) struct Logged;

impl ClientContext for Logged {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Logged {}

/// Metadata of every topic, or `Unreachable` within the connect timeout,
/// naming why when librdkafka said (wrong password, untrusted or expired
/// certificate, refused connection).
pub(crate) fn cluster_metadata<C: ClientContext>(
    client: &Client<C>,
    kafka: &KafkaConfig,
) -> Result<rdkafka::metadata::Metadata, SetupError> {
    // The client may have tried (and failed) before this call.
    let since = Instant::now()
        .checked_sub(Duration::from_secs(10))
        .unwrap_or_else(Instant::now);
    client
        .fetch_metadata(None, Duration::from_millis(kafka.connect_timeout_ms))
        .map_err(|source| {
            let mut cause = connection_error_since(since).unwrap_or_else(|| source.to_string());
            if cause.contains("certificate verify failed")
                && let Some(why) = why_untrusted(kafka)
            {
                cause = format!("{cause}; the broker's certificate: {why}");
            }
            SetupError::Unreachable {
                servers: kafka.bootstrap_servers.clone(),
                timeout_ms: kafka.connect_timeout_ms,
                cause,
            }
        })
}

/// Why the first bootstrap server's certificate is not trusted (expired,
/// signed by an unknown CA, made for another name), from a TLS handshake
/// of leadflow's own that trusts what librdkafka was told to
/// (`ssl.ca.location`, a PEM file, else the web roots). librdkafka only
/// says that verification failed: OpenSSL ends the handshake before
/// librdkafka can ask it why.
fn why_untrusted(kafka: &KafkaConfig) -> Option<String> {
    let property = |key: &str| {
        kafka
            .consumer
            .get(key)
            .or_else(|| kafka.client.get(key))
            .map(String::as_str)
    };
    let ca_file = property("ssl.ca.location").filter(|path| std::path::Path::new(path).is_file());
    let tls = crate::registry::trusting(ca_file).ok()?;
    let server = kafka.bootstrap_servers.split(',').next()?.trim();
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .tls_config(tls)
        .build()
        .new_agent();
    // The handshake is all that matters: past it, a broker does not speak HTTP.
    let error = agent.get(format!("https://{server}/")).call().err()?;
    let text = error.to_string();
    let text = text.strip_prefix("io: ").unwrap_or(&text);
    text.contains("certificate").then(|| text.to_owned())
}

/// Checks that the cluster answers and that every topic exists, returning
/// each topic's partition count in order.
pub fn check_topics<C: ClientContext>(
    client: &Client<C>,
    kafka: &KafkaConfig,
    topics: &[&str],
) -> Result<Vec<usize>, SetupError> {
    let metadata = cluster_metadata(client, kafka)?;
    topics
        .iter()
        .map(|name| {
            let topic = metadata
                .topics()
                .iter()
                .find(|t| t.name() == *name)
                .ok_or_else(|| SetupError::MissingTopic((*name).to_owned()))?;
            if let Some(error) = topic.error() {
                let error = rdkafka::types::RDKafkaErrorCode::from(error);
                if error == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                    return Err(SetupError::MissingTopic((*name).to_owned()));
                }
                return Err(SetupError::BadTopic {
                    topic: (*name).to_owned(),
                    reason: error.to_string(),
                });
            }
            if topic.partitions().is_empty() {
                return Err(SetupError::MissingTopic((*name).to_owned()));
            }
            Ok(topic.partitions().len())
        })
        .collect()
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::producer::{BaseRecord, Producer};

    use super::producer::{WEDGED_AFTER, within};
    use super::*;
    use rdkafka::Offset;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::{MockCluster, MockCoordinator};

    /// Managed clusters need TLS with SCRAM or OAuth (OIDC included), and
    /// other producers may compress with any of Kafka's codecs: a build
    /// without one of these features cannot connect or read at all.
    #[test]
    fn librdkafka_has_tls_sasl_oauth_and_every_codec() {
        let native = ClientConfig::new()
            .create_native_config()
            .expect("a client configuration");
        let features = native.get("builtin.features").expect("builtin.features");
        for needed in [
            "gzip",
            "snappy",
            "lz4",
            "zstd",
            "ssl",
            "sasl_scram",
            "sasl_oauthbearer",
            "oidc",
        ] {
            assert!(
                features.split(',').any(|feature| feature == needed),
                "{needed} missing from librdkafka's builtin.features: {features}"
            );
        }
    }

    #[test]
    fn a_refused_password_outranks_the_dropped_connection_after_it() {
        let since = Instant::now();
        remember_connection_error(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed: Invalid username or password",
        );
        remember_connection_error(
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "Disconnected",
        );
        remember_connection_error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let remembered = connection_error_since(since).expect("an error since");
        assert!(
            remembered.contains("Invalid username or password"),
            "{remembered}"
        );
    }

    #[test]
    fn watermarks_are_asked_again_while_the_leader_is_not_known() {
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("marks", 1, 1).expect("topic");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("consumer");
        let not_leader = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3];
        cluster.request_errors(RDKafkaApiKey::ListOffsets, &not_leader);
        // Asked once, as the restore used to, the answer is the error.
        assert!(
            consumer
                .client()
                .fetch_watermarks("marks", 0, Duration::from_secs(5))
                .is_err()
        );
        cluster.request_errors(RDKafkaApiKey::ListOffsets, &not_leader);
        let marks = watermarks(consumer.client(), "marks", 0, Duration::from_secs(10));
        assert_eq!(marks.ok(), Some((0, 0)));
        // Past its patience, the error is returned.
        cluster.request_errors(RDKafkaApiKey::ListOffsets, &[not_leader[0]; 50]);
        let started = Instant::now();
        assert!(watermarks(consumer.client(), "marks", 0, Duration::from_millis(500)).is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// `read_to_end` reads every record to the partitions' ends, and gives
    /// up after its patience when they make no progress (here every fetch
    /// fails), naming what is left. It reads the clock only when a poll
    /// brings nothing, so this is what shows the patience still holds.
    #[test]
    fn read_to_end_reads_to_the_end_and_gives_up_without_progress() {
        use rdkafka::producer::BaseProducer;
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("ends", 2, 1).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        for partition in [0, 1, 1] {
            let record = BaseRecord::<[u8], [u8]>::to("ends")
                .partition(partition)
                .payload(b"lead");
            producer.send(record).map_err(|(e, _)| e).expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        let reader = || -> BaseConsumer {
            ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap_servers())
                .set("group.id", "ends")
                .set("enable.partition.eof", "true")
                .set("enable.auto.commit", "false")
                .create()
                .expect("reader")
        };
        let read = read_to_end(
            &reader(),
            ("ends", &[0, 1]),
            Duration::from_secs(10),
            |_| {},
        );
        assert_eq!(read, Ok(3));
        let stuck = reader();
        cluster.request_errors(
            RDKafkaApiKey::Fetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 500],
        );
        // On a thread, so that a reader that never gives up fails the test
        // instead of hanging it.
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let read = read_to_end(
                &stuck,
                ("ends", &[0, 1]),
                Duration::from_millis(500),
                |_| {},
            );
            let _ = done.send(read);
        });
        let read = result
            .recv_timeout(Duration::from_secs(10))
            .expect("read_to_end gave up within its patience");
        assert!(
            read.as_ref().is_err_and(|e| e.contains("no progress")),
            "{read:?}"
        );
    }

    #[test]
    fn watermarks_follow_a_leader_that_moved_while_they_were_asked() {
        let cluster = MockCluster::new(2).expect("mock cluster");
        cluster.create_topic("moved", 1, 1).expect("topic");
        cluster
            .partition_leader("moved", 0, Some(1))
            .expect("leader");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("consumer");
        assert!(
            watermarks(consumer.client(), "moved", 0, Duration::from_secs(10)).is_ok(),
            "the leader, up, answers"
        );
        // The leader dies, and Kafka elects the other broker a second
        // later (the length of the fault, not a wait for anything).
        cluster.broker_down(1).expect("leader down");
        let started = Instant::now();
        std::thread::scope(|scope| {
            let asked =
                scope.spawn(|| watermarks(consumer.client(), "moved", 0, Duration::from_secs(60)));
            std::thread::sleep(Duration::from_secs(1));
            cluster
                .partition_leader("moved", 0, Some(2))
                .expect("new leader");
            let asked = asked.join().expect("asked");
            assert_eq!(asked.as_ref().ok(), Some(&(0, 0)), "{asked:?}");
        });
        // Before, asked again from the same stale cache, it failed after
        // the 60 s with "Unknown partition".
        assert!(
            started.elapsed() < WATERMARKS_ASK * 4,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn consumers_prefetch_16_mib_unless_told_otherwise() {
        let mut kafka = crate::config::KafkaConfig::default();
        let prefetch = |kafka: &crate::config::KafkaConfig, role| {
            client_config(kafka, role, &[])
                .get("queued.max.messages.kbytes")
                .map(str::to_owned)
        };
        assert_eq!(prefetch(&kafka, Role::Consumer).as_deref(), Some("16384"));
        assert_eq!(prefetch(&kafka, Role::Producer), None);
        kafka
            .consumer
            .insert("queued.max.messages.kbytes".into(), "65536".into());
        assert_eq!(prefetch(&kafka, Role::Consumer).as_deref(), Some("65536"));
    }

    #[test]
    fn a_call_past_its_limit_is_given_up_and_one_within_it_returns() {
        let started = Instant::now();
        // Never returns: its sender is kept alive by the call itself.
        let (_keep, never) = std::sync::mpsc::channel::<()>();
        let never = Mutex::new(never);
        let given_up = within("never", Duration::from_millis(200), move || {
            let _ = lock(&never).recv();
        });
        assert!(matches!(
            given_up,
            Err(Wedged {
                call: "never",
                waited_ms: 200
            })
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(within("quick", Duration::from_secs(5), || 7).ok(), Some(7));
    }

    /// librdkafka issue 5456, as its report reproduces it on the mock
    /// cluster: with the group coordinator down, `send_offsets_to_transaction`
    /// waits past its timeout (the cluster stall of issue 16 was the same
    /// wait, for a broker killed with `kill -9`). Bounded, the caller gets
    /// `Wedged` soon after the timeout instead of waiting for good.
    #[test]
    fn send_offsets_with_the_group_coordinator_down_is_given_up() {
        let cluster = MockCluster::new(3).expect("mock cluster");
        let (group, id) = ("wedge-group", "wedge-txn");
        cluster
            .coordinator(MockCoordinator::Transaction(id.to_owned()), 1)
            .expect("transaction coordinator");
        cluster
            .coordinator(MockCoordinator::Group(group.to_owned()), 2)
            .expect("group coordinator");
        cluster.create_topic("wedge", 1, 3).expect("topic");
        let producer: LeadProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("transactional.id", id)
            .create_with_context(DeliveryTracker::default())
            .expect("producer");
        let producer = Arc::new(producer);
        let timeout = Duration::from_secs(2);
        producer.init_transactions(timeout).expect("init");
        producer.begin_transaction().expect("begin");
        send(
            &producer,
            BaseRecord::<[u8], [u8]>::to("wedge").payload(&b"lead"[..]),
        )
        .expect("send");
        flush(&producer, timeout).expect("flush");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", group)
            .create()
            .expect("consumer");
        let metadata = consumer.group_metadata().expect("group metadata");
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("wedge-input", 0, Offset::Offset(1))
            .expect("offsets");

        cluster.broker_down(2).expect("group coordinator down");
        let started = Instant::now();
        let sent = send_offsets_to_transaction(&producer, &offsets, metadata, timeout);
        assert!(
            matches!(
                sent,
                Err(Wedged {
                    call: "send_offsets_to_transaction",
                    ..
                })
            ),
            "{sent:?}"
        );
        assert!(started.elapsed() < timeout + WEDGED_AFTER + Duration::from_secs(2));
    }
}
