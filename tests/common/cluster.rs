//! A 3-broker cluster of a test binary's own (`scripts/cluster.sh`), with
//! each broker's client listener behind a Toxiproxy proxy of its own, so
//! that a test can cut leadflow off one broker while the cluster, other
//! instances and the checker (on the direct listeners) still reach it.
//! Stopped when dropped.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::deadline::{self, Registered};
use super::ops::free_port;
use super::toxiproxy::Toxiproxy;
use super::{BOOTSTRAP, PATIENCE, output_within};

pub const NODES: [i32; 3] = [1, 2, 3];

pub struct Cluster {
    /// `LEADFLOW_CLUSTER_PORT`: node N's direct listener is `base + N - 1`.
    pub base: u16,
    /// Node N's client listener is advertised at `proxy_base + N - 1`.
    pub proxy_base: u16,
    pub toxiproxy: Toxiproxy,
    _stop: Registered,
    /// One cluster at a time: the tests of a binary take turns, each with
    /// a fresh cluster, as each breaks it its own way.
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts fresh proxies and a fresh cluster on ports from `base`, and
    /// points this test binary's helpers at its direct listeners. Call once
    /// per binary.
    pub fn start(base: u16) -> Cluster {
        static TURN: Mutex<()> = Mutex::new(());
        // A test that failed while holding the turn leaves nothing to fix.
        let turn = deadline::not_counting(|| {
            TURN.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        let toxiproxy = Toxiproxy::start(free_port());
        let proxy_base = base + 30;
        for node in NODES {
            toxiproxy.proxy(
                &proxy_name(node),
                proxy_base + node as u16 - 1,
                base + 20 + node as u16 - 1,
            );
        }
        let cluster = Cluster {
            base,
            proxy_base,
            toxiproxy,
            // Killed, not stopped: the next test resets it anyway, and a
            // clean stop of three brokers takes about 10 s.
            _stop: deadline::cleanup(move || {
                let _ = script_command(base, proxy_base).arg("kill").status();
            }),
            _turn: turn,
        };
        cluster.script(&["reset"]);
        cluster.script(&["start"]);
        let direct = NODES
            .iter()
            .map(|n| format!("127.0.0.1:{}", base + *n as u16 - 1))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            BOOTSTRAP.get_or_init(|| direct.clone()),
            &direct,
            "one cluster address per test binary"
        );
        warm_up();
        cluster
    }

    /// `kill -9` of node `node`.
    pub fn kill(&self, node: i32) {
        self.script(&["kill-node", &node.to_string()]);
    }

    /// Clean shutdown of node `node`.
    pub fn stop(&self, node: i32) {
        self.script(&["stop-node", &node.to_string()]);
    }

    /// Starts node `node` again, and waits until every partition of every
    /// topic, Kafka's own included, has all its replicas in sync.
    pub fn restart(&self, node: i32) {
        self.script(&["start-node", &node.to_string()]);
        super::ops::eventually("every partition fully replicated", || {
            (under_replicated() == 0).then_some(())
        });
    }

    /// Runs `scripts/cluster.sh ARGS` for this cluster; it must succeed.
    pub fn script(&self, args: &[&str]) {
        let out = output_within(
            script_command(self.base, self.proxy_base).args(args),
            PATIENCE,
            "scripts/cluster.sh",
        );
        assert!(
            out.status.success(),
            "scripts/cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A Java command with the cluster's Kafka jars (Kafka's own tools
    /// included) on its class path, running `class`; without a log4j
    /// configuration, it logs errors only, to stderr.
    pub fn java(&self, class: &str) -> Command {
        let home = concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/kafka");
        let mut command = Command::new("java");
        command
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(format!("{home}/libs/*"))
            .arg(class);
        command
    }

    /// Bootstrap servers for the leadflow under test: the proxies.
    pub fn clients(&self) -> String {
        NODES
            .iter()
            .map(|n| format!("127.0.0.1:{}", self.proxy_base + *n as u16 - 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cuts leadflow off node `node`: what it sends there, and what the
    /// broker answers, is held (as TCP holds packets through a network
    /// partition) until [`Cluster::heal`] lets it through.
    pub fn cut(&self, node: i32) {
        self.toxiproxy.delay(&proxy_name(node), 3_600_000);
    }

    /// Ends [`Cluster::cut`] of node `node`.
    pub fn heal(&self, node: i32) {
        self.toxiproxy.undelay(&proxy_name(node));
    }

    /// Slows the network between leadflow and every broker: `ms` of
    /// latency each way, until [`Cluster::unslow`].
    pub fn slow(&self, ms: u64) {
        self.each_proxy(|proxy| self.toxiproxy.delay(proxy, ms));
    }

    /// Ends [`Cluster::slow`].
    pub fn unslow(&self) {
        self.each_proxy(|proxy| self.toxiproxy.undelay(proxy));
    }

    /// Limits the network between leadflow and each broker to `kb_per_s`
    /// KB/s each way, until [`Cluster::unthrottle`].
    pub fn throttle(&self, kb_per_s: u64) {
        self.each_proxy(|proxy| self.toxiproxy.throttle(proxy, kb_per_s));
    }

    /// Ends [`Cluster::throttle`].
    pub fn unthrottle(&self) {
        self.each_proxy(|proxy| self.toxiproxy.unthrottle(proxy));
    }

    /// `change` on the proxy of every broker.
    fn each_proxy(&self, change: impl Fn(&str)) {
        for node in NODES {
            change(&proxy_name(node));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = script_command(self.base, self.proxy_base)
            .arg("stop")
            .status();
    }
}

/// Has a fresh cluster create and load Kafka's own topics for transactions
/// and consumer groups (50 partitions of 3 replicas each) with one small
/// transaction that commits a group's offsets, and waits until every
/// partition is in sync. A production cluster has long done this; here it
/// kept the brokers busy for the first minutes, and a transaction then took
/// up to a second, so a scenario's first faults hit a cluster still being
/// born rather than one at work.
fn warm_up() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let topic = "warm-up";
    super::create_topic_replicated(topic, 1, 3, &[]);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", super::bootstrap())
        .set("transactional.id", "warm-up")
        .create()
        .expect("warm-up producer");
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", super::bootstrap())
        .set("group.id", "warm-up")
        .create()
        .expect("warm-up consumer");
    let metadata = group.group_metadata().expect("group metadata");
    producer
        .init_transactions(PATIENCE)
        .expect("init transactions");
    producer.begin_transaction().expect("begin");
    producer
        .send(BaseRecord::<(), str>::to(topic).payload("warm-up"))
        .map_err(|(e, _)| e)
        .expect("send");
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(1))
        .expect("offset");
    producer
        .send_offsets_to_transaction(&offsets, &metadata, PATIENCE)
        .expect("send offsets");
    producer.commit_transaction(PATIENCE).expect("commit");
    super::ops::eventually("every partition fully replicated", || {
        (under_replicated() == 0).then_some(())
    });
}

fn proxy_name(node: i32) -> String {
    format!("node-{node}")
}

fn script_command(base: u16, proxy_base: u16) -> Command {
    let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"));
    command
        .env("LEADFLOW_CLUSTER_PORT", base.to_string())
        .env("LEADFLOW_CLUSTER_PROXY_PORT", proxy_base.to_string());
    command
}

/// Partitions of all topics (Kafka's own included) with a replica out of
/// sync.
pub fn under_replicated() -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", super::bootstrap())
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(None, PATIENCE).expect("metadata");
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .filter(|p| p.isr().len() < p.replicas().len())
        .count()
}

/// The broker leading the most partitions of `topics`.
pub fn busiest_leader(topics: &[&str]) -> i32 {
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for topic in topics {
        for leader in leaders(topic).into_values() {
            *led.entry(leader).or_default() += 1;
        }
    }
    led.into_iter()
        .max_by_key(|(_, count)| *count)
        .map(|(leader, _)| leader)
        .expect("leaders")
}

/// The brokers holding a replica of each partition of `topic`, and of
/// those the ones in sync.
pub fn replicas(topic: &str) -> BTreeMap<i32, (Vec<i32>, Vec<i32>)> {
    partitions_of(topic, |p| (p.replicas().to_vec(), p.isr().to_vec()))
}

/// The broker leading each partition of `topic`.
pub fn leaders(topic: &str) -> BTreeMap<i32, i32> {
    partitions_of(topic, |p| p.leader())
}

fn partitions_of<T>(
    topic: &str,
    what: impl Fn(&rdkafka::metadata::MetadataPartition) -> T,
) -> BTreeMap<i32, T> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", super::bootstrap())
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), PATIENCE)
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), what(p)))
        .collect()
}

/// The broker coordinating `key` (a consumer group, or a `transactional.id`)
/// in Kafka's internal `topic` (`__consumer_offsets`, `__transaction_state`):
/// the leader of the partition Kafka maps the key to, as Kafka does it
/// (`Utils.abs` of the Java hash code of the key, modulo the partitions).
pub fn coordinator(topic: &str, key: &str) -> i32 {
    let hash = key.encode_utf16().fold(0_i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let leaders = leaders(topic);
    let partition =
        hash.checked_abs().unwrap_or(0) % i32::try_from(leaders.len()).expect("partitions");
    leaders[&partition]
}
