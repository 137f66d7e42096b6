//! Faults on a 3-broker cluster (`scripts/cluster.sh`), where leadflow
//! reaches each broker through a proxy of its own, so that it can be cut
//! off one broker while the cluster, a second instance and the checker
//! reach every broker directly. Verified by the independent checker.

#![cfg(feature = "kafka-tests")]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::checker::write_generated;
use common::cluster::{Cluster, coordinator, replicas};
use common::faults::{FAILOVER, finish_and_check, leads, repartition, wait_for_progress};
use common::{Env, PATIENCE, committed, signal};

/// Instance A is cut off the broker that coordinates its transactions
/// for longer than its session and transaction timeouts, under load, while
/// instance C (which reaches every broker) shares the work. A's commits
/// time out; that is slowness, not a fence: A restarts from its last
/// commit, C takes over its partitions meanwhile, and once the network
/// heals both go on. Nothing is lost or doubled, and the changelog agrees
/// with the outputs.
#[test]
fn an_instance_cut_off_its_transaction_coordinator_loses_and_doubles_nothing() {
    let _deadline = common::deadline(Duration::from_secs(300));
    let cluster = Cluster::start(common::own_broker_port(400));
    let env = Env::replicated("cut-off", 6, FAILOVER);
    // leadflow's topics, the changelog and the repartition topic included,
    // are replicated as asked.
    for topic in [
        &env.input,
        &env.nurture,
        &repartition(&env),
        &format!("{}-dedupe-changelog", env.group),
    ] {
        for (partition, (replicas, _)) in replicas(topic) {
            assert_eq!(replicas.len(), 3, "{topic}/{partition}");
        }
    }
    let n = leads() as i64;
    let written = write_generated(&env.input, n as usize, 43);
    let topic = repartition(&env);
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
    wait_for_progress(&env, &topic, n / 5, &mut [&mut a, &mut c], PATIENCE);
    let cut = coordinator("__transaction_state", &format!("{}-a", env.group));
    eprintln!(
        "cutting A off node {cut}, which coordinates its transactions (and the group's: {})",
        coordinator("__consumer_offsets", &env.group) == cut
    );
    cluster.cut(cut);
    // C goes on meanwhile.
    let at_cut: i64 = committed(&env.group, &topic).values().sum();
    wait_for_progress(
        &env,
        &topic,
        at_cut + n / 5,
        &mut [&mut a, &mut c],
        PATIENCE,
    );
    cluster.heal(cut);
    // Both go on once it heals.
    let at_heal: i64 = committed(&env.group, &topic).values().sum();
    wait_for_progress(
        &env,
        &topic,
        at_heal + n / 5,
        &mut [&mut a, &mut c],
        PATIENCE,
    );
    for run in [&mut a, &mut c] {
        signal(&run.0, "TERM");
    }
    for run in [&mut a, &mut c] {
        let status = run.0.wait().expect("wait for run");
        assert!(status.success(), "graceful stop failed: {}", run.log());
    }
    eprintln!(
        "A during the cut: {}",
        a.log()
            .lines()
            .find(|l| l.contains("pipeline failed"))
            .unwrap_or("no restart")
    );
    finish_and_check(&env, &written);
}
