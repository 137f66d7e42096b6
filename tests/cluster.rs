//! Faults on a 3-broker cluster (`scripts/cluster.sh`, Kafka's stock
//! settings) under load, with leadflow's topics replicated 3 times and
//! `min.insync.replicas` 2, each verified by the independent checker:
//! nothing lost, doubled, leaked or out of order, and the changelog agrees
//! with the outputs. Each test has a fresh cluster of its own (they take
//! turns). leadflow can reach each broker through a proxy of its own, so
//! that it can be cut off one broker while the cluster, a second instance
//! and the checker reach every broker directly.

#![cfg(feature = "kafka-tests")]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::checker::{Feed, Writer};
use common::cluster::{Cluster, busiest_leader, coordinator, replicas};
use common::faults::{FAILOVER, finish_and_check, leads, repartition, wait_for_progress};
use common::{Env, PATIENCE, Running, committed, signal};
use leadflow::generate::GeneratorOptions;

/// A fresh cluster, replicated topics for a test named `name`, a third of
/// the test's leads written to its input, and more arriving steadily (500
/// a second) until the feed is finished, so that faults hit a pipeline
/// under load.
fn setup(name: &str, seed: u64) -> (Cluster, Env, Feed) {
    let cluster = Cluster::start(common::own_broker_port(400));
    let env = Env::replicated(name, 6, FAILOVER);
    // leadflow's topics, the changelog and the repartition topic included,
    // are replicated as asked.
    for topic in [
        &env.input,
        &env.nurture,
        &repartition(&env),
        &changelog(&env),
    ] {
        for (partition, (replicas, _)) in replicas(topic) {
            assert_eq!(replicas.len(), 3, "{topic}/{partition}");
        }
    }
    let mut writer = Writer::new(
        &env.input,
        GeneratorOptions {
            seed,
            ..GeneratorOptions::default()
        },
    );
    writer.write(leads() / 3);
    let feed = Feed::start(writer, 50, Duration::from_millis(100));
    (cluster, env, feed)
}

fn changelog(env: &Env) -> String {
    format!("{}-dedupe-changelog", env.group)
}

/// Committed progress through the whole pipeline so far.
fn progress(env: &Env) -> i64 {
    committed(&env.group, &repartition(env)).values().sum()
}

/// Waits until the whole pipeline has committed `more` records past where
/// it stands, with every one of `alive` still running.
fn goes_on(env: &Env, more: i64, alive: &mut [&mut Running]) {
    let target = progress(env) + more;
    wait_for_progress(env, &repartition(env), target, alive, PATIENCE);
}

/// SIGTERM to each, then each must exit 0.
fn stop_all(runs: &mut [&mut Running]) {
    for run in runs.iter() {
        signal(&run.0, "TERM");
    }
    for run in runs.iter_mut() {
        let status = run.0.wait().expect("wait for run");
        assert!(status.success(), "graceful stop failed: {}", run.log());
    }
}

/// Scenario 1: the broker leading most of leadflow's partitions is killed
/// (`kill -9`) mid-run; leadership moves to the other two, leadflow goes
/// on, and goes on once the broker is back and in sync.
#[test]
#[ignore = "in scripts/faults.sh; not in CI until the stall after a broker kill is fixed"]
fn a_killed_partition_leader_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(300)));
    killed_and_restarted(
        "leader-killed",
        51,
        "the leader of most partitions",
        |env| {
            busiest_leader(&[
                env.input.as_str(),
                &repartition(env),
                &changelog(env),
                &env.nurture,
                &env.demand_gen,
            ])
        },
    );
}

/// Scenario 2: the broker coordinating leadflow's `transactional.id` is
/// killed (`kill -9`) mid-run, and later restarted.
#[test]
#[ignore = "in scripts/faults.sh; not in CI until the stall after a broker kill is fixed"]
fn a_killed_transaction_coordinator_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(300)));
    killed_and_restarted(
        "coordinator-killed",
        53,
        "the transaction coordinator",
        |env| coordinator("__transaction_state", &format!("{}-a", env.group)),
    );
}

/// One run (instance `a`) under load; the broker `victim` picks is killed
/// mid-run, leadflow goes on, the broker comes back and every partition is
/// in sync again, leadflow goes on; then the checker.
fn killed_and_restarted(name: &str, seed: u64, what: &str, victim: impl Fn(&Env) -> i32) {
    let (cluster, env, feed) = setup(name, seed);
    let n = leads() as i64;
    let mut run = env.spawn_with(
        "run",
        &["run"],
        Stdio::null(),
        &[("LEADFLOW_KAFKA__INSTANCE_ID", "a")],
    );
    goes_on(&env, n / 5, &mut [&mut run]);
    let victim = victim(&env);
    eprintln!("killing node {victim}, {what}");
    cluster.kill(victim);
    goes_on(&env, n / 5, &mut [&mut run]);
    cluster.restart(victim);
    goes_on(&env, n / 10, &mut [&mut run]);
    stop_all(&mut [&mut run]);
    finish_and_check(&env, &feed.finish());
}

/// Scenario 3: a rolling restart. Each broker in turn is stopped cleanly
/// and started again, the next only once every partition is back in sync;
/// leadflow goes on throughout.
#[test]
#[ignore = "in scripts/faults.sh; not in CI until the stall after a broker kill is fixed"]
fn a_rolling_restart_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(300)));
    let (cluster, env, feed) = setup("rolling", 57);
    let n = leads() as i64;
    let mut run = env.spawn("run", &["run"], Stdio::null());
    goes_on(&env, n / 10, &mut [&mut run]);
    for node in common::cluster::NODES {
        cluster.stop(node);
        goes_on(&env, n / 20, &mut [&mut run]);
        cluster.restart(node);
    }
    goes_on(&env, n / 20, &mut [&mut run]);
    stop_all(&mut [&mut run]);
    finish_and_check(&env, &feed.finish());
}

/// Scenario 4: instance A is cut off the broker that coordinates its transactions
/// for longer than its session and transaction timeouts, under load, while
/// instance C (which reaches every broker) shares the work. A's commits
/// time out; that is slowness, not a fence: A restarts from its last
/// commit, C takes over its partitions meanwhile, and once the network
/// heals both go on. Nothing is lost or doubled, and the changelog agrees
/// with the outputs.
#[test]
#[ignore = "in scripts/faults.sh; not in CI until the stall after a broker kill is fixed"]
fn an_instance_cut_off_its_transaction_coordinator_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(300)));
    let (cluster, env, feed) = setup("cut-off", 43);
    let n = leads() as i64;
    let clients = cluster.clients();
    let mut a = env.spawn_with(
        "a",
        &["run"],
        Stdio::null(),
        &[
            ("LEADFLOW_KAFKA__BOOTSTRAP_SERVERS", &clients),
            ("LEADFLOW_KAFKA__INSTANCE_ID", "a"),
        ],
    );
    let mut c = env.spawn_with(
        "c",
        &["run"],
        Stdio::null(),
        &[("LEADFLOW_KAFKA__INSTANCE_ID", "c")],
    );
    goes_on(&env, n / 5, &mut [&mut a, &mut c]);
    let cut = coordinator("__transaction_state", &format!("{}-a", env.group));
    eprintln!(
        "cutting A off node {cut}, which coordinates its transactions (and the group's: {})",
        coordinator("__consumer_offsets", &env.group) == cut
    );
    cluster.cut(cut);
    // C goes on meanwhile.
    goes_on(&env, n / 5, &mut [&mut a, &mut c]);
    cluster.heal(cut);
    // Both go on once it heals.
    goes_on(&env, n / 5, &mut [&mut a, &mut c]);
    stop_all(&mut [&mut a, &mut c]);
    eprintln!(
        "A during the cut: {}",
        a.log()
            .lines()
            .find(|l| l.contains("pipeline failed"))
            .unwrap_or("no restart")
    );
    finish_and_check(&env, &feed.finish());
}
