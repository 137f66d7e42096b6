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

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::checker::{changelog_key_hex, changelog_record, write_changelog};
use common::cluster::{busiest_leader, coordinator};
use common::faults::{finish_and_check, leads, repartition};
use common::ops::{free_port, get, listen_on, wait_for};
use common::scenario::{
    changelog, goes_on, hold, instance, log_count, pause_and_wake, progress, purged_past,
    recovered, report_restarts, setup, stop_all, written_so_far,
};
use common::{Env, PATIENCE, Running, starts};
use rdkafka::Message;

/// Scenario 1: the broker leading most of leadflow's partitions is killed
/// (`kill -9`) mid-run; leadership moves to the other two, leadflow goes
/// on, and goes on once the broker is back and in sync.
#[test]
fn a_killed_partition_leader_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(420)));
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
#[ignore = "in scripts/faults.sh; CI runs scenario 1"]
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
/// mid-run, leadflow goes on and purges the repartition topic again, the
/// broker comes back and every partition is in sync again, leadflow goes
/// on; then the checker.
fn killed_and_restarted(name: &str, seed: u64, what: &str, victim: impl Fn(&Env) -> i32) {
    let (cluster, env, feed) = setup(name, seed);
    let n = leads() as i64;
    let mut run = instance(&env, "run", "a", None);
    goes_on(&env, n / 10, &mut [&mut run]);
    let victim = victim(&env);
    eprintln!("killing node {victim}, {what}");
    let written = written_so_far(&env);
    cluster.kill(victim);
    recovered(&env, Instant::now(), written, &mut [&mut run]);
    let since = starts(&repartition(&env));
    goes_on(&env, n / 10, &mut [&mut run]);
    purged_past(&env, &since, &mut [&mut run]);
    cluster.restart(victim);
    goes_on(&env, n / 20, &mut [&mut run]);
    stop_all(&mut [&mut run]);
    report_restarts(&run);
    finish_and_check(&env, &feed.finish());
}

/// Scenario 3: a rolling restart. Each broker in turn is stopped cleanly
/// and started again, the next only once every partition is back in sync;
/// leadflow goes on throughout.
#[test]
#[ignore = "in scripts/faults.sh; CI runs scenario 1"]
fn a_rolling_restart_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(480)));
    let (cluster, env, feed) = setup("rolling", 57);
    let n = leads() as i64;
    let mut run = env.spawn("run", &["run"], Stdio::null());
    goes_on(&env, n / 20, &mut [&mut run]);
    for node in common::cluster::NODES {
        eprintln!("stopping node {node}");
        let written = written_so_far(&env);
        cluster.stop(node);
        recovered(&env, Instant::now(), written, &mut [&mut run]);
        goes_on(&env, n / 20, &mut [&mut run]);
        cluster.restart(node);
    }
    goes_on(&env, n / 20, &mut [&mut run]);
    stop_all(&mut [&mut run]);
    report_restarts(&run);
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
#[ignore = "in scripts/faults.sh; CI runs scenario 1"]
fn an_instance_cut_off_its_transaction_coordinator_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(300)));
    let (cluster, env, feed) = setup("cut-off", 43);
    let n = leads() as i64;
    let clients = cluster.clients();
    let mut a = instance(&env, "a", "a", Some(&clients));
    let mut c = instance(&env, "c", "c", None);
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
    recovered(
        &env,
        Instant::now(),
        written_so_far(&env),
        &mut [&mut a, &mut c],
    );
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

/// Scenario 5: a slow network between leadflow and the whole cluster,
/// under load: 500 ms of latency each way for 60 s, then a 100 KB/s limit
/// each way for 60 s. leadflow must go on through the latency (slower:
/// each transaction takes several round trips), may restart under the
/// bandwidth limit, and must go on at full speed once the network is
/// fast again.
#[test]
#[ignore = "in scripts/faults.sh; CI runs scenario 1"]
fn a_slow_network_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(480)));
    let (cluster, env, feed) = setup("slow", 59);
    let n = leads() as i64;
    let clients = cluster.clients();
    let mut run = instance(&env, "run", "a", Some(&clients));
    goes_on(&env, n / 5, &mut [&mut run]);

    eprintln!("slowing: 500 ms of latency each way for 60 s");
    cluster.slow(500);
    let started = progress(&env);
    let slowed = Instant::now();
    // It goes on under the latency, not only after it.
    goes_on(&env, 500, &mut [&mut run]);
    hold(slowed, SLOW_FOR, &mut [&mut run]);
    cluster.unslow();
    eprintln!(
        "slowing: {} records in 60 s of latency",
        progress(&env) - started
    );

    eprintln!("throttling: 100 KB/s each way for 60 s");
    cluster.throttle(100);
    let started = progress(&env);
    hold(Instant::now(), SLOW_FOR, &mut [&mut run]);
    cluster.unthrottle();
    eprintln!(
        "throttling: {} records in 60 s at 100 KB/s",
        progress(&env) - started
    );

    recovered(&env, Instant::now(), written_so_far(&env), &mut [&mut run]);
    goes_on(&env, n / 5, &mut [&mut run]);
    stop_all(&mut [&mut run]);
    report_restarts(&run);
    finish_and_check(&env, &feed.finish());
}

/// How long each of scenario 5's slow networks lasts.
const SLOW_FOR: Duration = Duration::from_secs(60);

/// Scenario 6: the process faults of `tests/faults.rs`, on the cluster,
/// under load. Two instances share the work; instance A is killed with
/// `kill -9` three times (each time B takes its partitions, and gives some
/// back when A returns); then B is paused with SIGSTOP past its session,
/// A takes everything over, and B, woken, writes nothing visible.
#[test]
#[ignore = "in scripts/faults.sh; CI runs scenario 1"]
fn killed_paused_and_rebalanced_instances_lose_and_double_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(600)));
    let (_cluster, env, feed) = setup("process-faults", 61);
    let n = leads() as i64;
    let mut b = instance(&env, "b", "b", None);
    for round in 1..=3 {
        let mut a = instance(&env, &format!("a-{round}"), "a", None);
        goes_on(&env, n / 10, &mut [&mut a, &mut b]);
        let written = written_so_far(&env);
        a.0.kill().expect("kill -9 a");
        a.0.wait().expect("reap a");
        let killed = Instant::now();
        eprintln!("round {round}: killed A");
        // B takes A's partitions once A's session expires.
        recovered(&env, killed, written, &mut [&mut b]);
        goes_on(&env, n / 20, &mut [&mut b]);
    }
    let mut a = instance(&env, "a-4", "a", None);
    goes_on(&env, n / 10, &mut [&mut a, &mut b]);
    assert!(log_count(&b, "partitions assigned") >= 4, "{}", b.log());
    assert!(log_count(&b, "partitions revoked") >= 3, "{}", b.log());

    pause_and_wake(&env, &mut b, &mut a);
    stop_all(&mut [&mut a]);
    report_restarts(&a);
    finish_and_check(&env, &feed.finish());
}

/// Scenario 6 beside Kafka's own exactly-once client: the zombie of
/// scenario 6 again, while Kafka's Java `TransactionalMessageCopier` (the
/// copier of Kafka's `transactions_test.py`, from the `kafka-tools` jar)
/// copies leadflow's input into a topic of its own, transactionally, with
/// random aborts, on the same cluster. Both come out exactly once: the
/// copy holds each partition's input, in order, once; the checker passes.
#[test]
#[ignore = "in scripts/faults.sh; CI runs scenario 1"]
fn a_paused_zombie_beside_kafkas_own_copier_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(420)));
    let (cluster, env, feed) = setup("copier", 67);
    let n = leads() as i64;
    let copy = format!("{}.copy", env.group);
    common::create_topic_replicated(&copy, 6, 3, &[("min.insync.replicas", "2")]);
    let (mut a, mut b) = (
        instance(&env, "a", "a", None),
        instance(&env, "b", "b", None),
    );
    goes_on(&env, n / 10, &mut [&mut a, &mut b]);
    let transaction_size = (50 * leads() / 30_000).clamp(50, 500).to_string();
    let mut copier = Running::start(
        cluster
            .java("org.apache.kafka.tools.TransactionalMessageCopier")
            .args(["--broker-list", &common::bootstrap()])
            .args(["--input-topic", &env.input, "--input-partition", "0"])
            .args([
                "--output-topic",
                &copy,
                "--group-mode",
                "--use-group-metadata",
            ])
            .args(["--consumer-group", &format!("{}.copier", env.group)])
            .args(["--transactional-id", &format!("{}.copier", env.group)])
            // Small transactions (a third of them aborted): it copies for
            // about as long as the zombie sleeps, so that the two overlap
            // (50 records at the default size, more at a larger one).
            .args([
                "--transaction-size",
                &transaction_size,
                "--enable-random-aborts",
            ]),
        "TransactionalMessageCopier",
        env.config.with_file_name("copier.log"),
    );
    let copying = Instant::now();
    // Its status lines (JSON) count what it has committed.
    wait_for("the copier to copy", PATIENCE, || {
        copier
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|status| status["totalProcessed"].as_u64().is_some_and(|n| n > 0))
            .then_some(())
    });
    pause_and_wake(&env, &mut a, &mut b);
    let overlapped = copier.0.try_wait().expect("poll copier").is_none();
    goes_on(&env, n / 10, &mut [&mut b]);
    // It stops by itself, once it has copied what its input held when it
    // was assigned its partitions.
    let patience = common::faults::scaled(PATIENCE);
    let status = loop {
        if let Some(status) = copier.0.try_wait().expect("poll copier") {
            break status;
        }
        assert!(
            copying.elapsed() < patience,
            "the copier did not finish in {} s: {}",
            patience.as_secs(),
            copier
                .log()
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200)); // polling interval of a condition wait
    };
    assert!(status.success(), "copier: {}", copier.log());
    eprintln!(
        "copier: done {:.1} s after it started; still copying when the zombie woke: {overlapped}",
        copying.elapsed().as_secs_f64()
    );
    stop_all(&mut [&mut b]);
    report_restarts(&b);

    let mut input: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for m in common::read_all(&env.input) {
        input
            .entry(m.partition())
            .or_default()
            .push(m.payload().unwrap_or_default().to_vec());
    }
    let mut copied: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for m in common::read_all(&copy) {
        copied
            .entry(m.partition())
            .or_default()
            .push(m.payload().unwrap_or_default().to_vec());
    }
    let total: usize = copied.values().map(Vec::len).sum();
    eprintln!(
        "copier: {total} records copied exactly once; {}",
        copier.log().lines().last().unwrap_or_default()
    );
    // The copier started once n/10 leads had gone through, so its input
    // held at least that many; it copied them while the zombie slept.
    assert!(total as i64 >= n / 10, "copied only {total}");
    assert!(overlapped, "the copier was done before the zombie woke");
    for (partition, values) in &copied {
        let source = &input[partition];
        assert!(
            values.len() <= source.len() && values[..] == source[..values.len()],
            "partition {partition}: the copy is not the input's first {} records once, in order",
            values.len()
        );
    }
    finish_and_check(&env, &feed.finish());
}

/// Scenario 7: restarts during a restore. The changelog holds 1,000,000
/// dedupe keys (written straight into it, as an earlier run would have
/// left them); leadflow is killed with `kill -9` while restoring them,
/// twice; the third run restores every key and goes on.
#[test]
#[ignore = "in scripts/faults.sh; CI runs scenario 1"]
fn killed_twice_while_restoring_a_million_keys_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(600)));
    let (_cluster, env, feed) = setup("restore-kills", 71);
    let n = leads() as i64;
    let keys = 1_000_000_u64;
    let at = common::now_ms();
    let mut preloaded = BTreeSet::new();
    write_changelog(
        &changelog(&env),
        (0..keys).map(|i| {
            let record = changelog_record(i, at);
            preloaded.insert(changelog_key_hex(&record.0));
            ((i % 6) as i32, record)
        }),
    );
    for round in 1..=2 {
        let port = free_port();
        let listen = listen_on(port);
        let mut run = env.spawn_with(
            &format!("run-{round}"),
            &["run", &listen[0], &listen[1]],
            Stdio::null(),
            &[("LEADFLOW_KAFKA__INSTANCE_ID", "a")],
        );
        wait_for("the restore to begin", PATIENCE, || {
            get(port, "/readyz")
                .filter(|(status, body)| *status == 503 && body.contains("restoring dedupe state"))
        });
        run.0.kill().expect("kill -9 the run");
        run.0.wait().expect("reap the run");
        assert!(
            !run.log().contains("dedupe state restored"),
            "round {round}: the restore was over before the kill: {}",
            run.log()
        );
        eprintln!("round {round}: killed while restoring");
    }
    let mut run = instance(&env, "run-3", "a", None);
    let restored = wait_for("the restore", PATIENCE, || {
        run.log()
            .lines()
            .find(|l| l.contains("dedupe state restored"))
            .map(str::to_owned)
    });
    let restored: serde_json::Value = serde_json::from_str(&restored).expect("JSON log line");
    let restored_keys = restored["fields"]["keys"].as_u64().unwrap_or_default();
    eprintln!(
        "restored {restored_keys} keys from {} records in {} ms",
        restored["fields"]["records"], restored["fields"]["millis"]
    );
    assert!(restored_keys >= keys, "{restored}");
    goes_on(&env, n / 5, &mut [&mut run]);
    stop_all(&mut [&mut run]);
    report_restarts(&run);
    let mut written = feed.finish();
    written.preloaded = preloaded;
    finish_and_check(&env, &written);
}
