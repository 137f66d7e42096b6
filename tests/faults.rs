//! Fault tests of the exactly-once pipeline against the real local broker,
//! each verified by the independent checker (`common::checker`): nothing
//! lost, nothing doubled, no dedupe key twice in a campaign, order kept.
//!
//! `LEADFLOW_FAULT_LEADS` sets how many leads each test writes (see
//! `common::faults`).

#![cfg(feature = "kafka-tests")]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::checker::{write_generated, write_generated_with};
use common::faults::{FAILOVER, finish_and_check, leads, repartition, wait_for_progress};
use common::{Env, PATIENCE, Running, signal};

/// Waits for progress with the tests' usual patience.
fn progress_to(env: &Env, topic: &str, target: i64, alive: &mut [&mut Running]) -> i64 {
    wait_for_progress(env, topic, target, alive, PATIENCE)
}

#[test]
fn killed_three_times_loses_and_doubles_nothing() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(300)));
    // Through the hop: every lead is written, read and committed twice.
    let env = Env::new(
        "kill-three-times",
        6,
        &format!("{FAILOVER}repartition_shortcut = false\n"),
    );
    let n = leads();
    let written = write_generated(&env.input, n, 11);
    let topic = repartition(&env);
    let mut at_kill = 0;
    for round in 1..=3 {
        let mut run = env.spawn(&format!("run-{round}"), &["run"], Stdio::null());
        // Each run must get further than the last before it is killed.
        at_kill = progress_to(&env, &topic, at_kill + n as i64 / 5, &mut [&mut run]);
        run.0.kill().expect("kill -9 the run");
        run.0.wait().expect("reap run");
        eprintln!("round {round}: killed at {at_kill} repartition offsets committed");
    }
    finish_and_check(&env, &written);
}

/// 1% hostile records mixed in: just over and just under the input
/// limit, dated in 9999 or half a year ahead, a huge `LeadSource`, a
/// garbage action code, an overlong email, control and bidirectional
/// characters. Each ends where it belongs, nothing is lost or doubled,
/// and the pipeline never restarts.
#[test]
fn hostile_records_mixed_in_end_where_they_belong() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(120)));
    let limit = 65_536;
    let env = Env::new(
        "hostile",
        4,
        &format!("[pipeline]\nmax_record_bytes = {limit}\n"),
    );
    let n = leads();
    let written = write_generated_with(
        &env.input,
        n,
        leadflow::generate::GeneratorOptions {
            seed: 29,
            hostile_ratio: 0.01,
            max_record_bytes: limit,
            ..leadflow::generate::GeneratorOptions::default()
        },
    );
    let out = env.run_until_drained();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("pipeline failed"), "{stderr}");
    let tally: leadflow::pipeline::Tally =
        serde_json::from_slice(&out.stdout).expect("tally on stdout");
    eprintln!("dead letters by class: {:?}", tally.dead_letter);
    for class in leadflow::generate::HOSTILE_CLASSES {
        assert!(
            tally.dead_letter.contains_key(class),
            "no {class}: {tally:?}"
        );
    }
    let report = common::checker::check(&env, &written, common::faults::WINDOW_MS);
    eprintln!("{}", report.summary());
    report.assert_clean();
}

/// How many times a run's log says `what`.
fn log_count(running: &Running, what: &str) -> usize {
    running.log().matches(what).count()
}

#[test]
fn two_processes_survive_a_kill_and_restart_of_one() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(120)));
    let env = Env::new("two-processes", 6, FAILOVER);
    let n = leads() as i64;
    let written = write_generated(&env.input, n as usize, 17);
    // The input's commits: each process's leads skip the hop where it
    // holds their partition and take it where the other one does.
    let topic = env.input.clone();
    let mut a = env.spawn("a-1", &["run", "--instance-id", "a"], Stdio::null());
    let mut b = env.spawn("b", &["run", "--instance-id", "b"], Stdio::null());
    progress_to(&env, &topic, n / 5, &mut [&mut a, &mut b]);
    let assigned_before = log_count(&b, "partitions assigned");
    a.0.kill().expect("kill -9 a");
    a.0.wait().expect("reap a");
    let caught_up_before = log_count(&b, "caught up");
    // b takes over a's partitions once a's session expires, its leads skip
    // the hop again once it caught up (a's open transaction is aborted by
    // then at the latest)...
    let deadline = Instant::now() + PATIENCE;
    while log_count(&b, "partitions assigned") == assigned_before
        || log_count(&b, "caught up") == caught_up_before
    {
        assert!(Instant::now() < deadline, "b never took over: {}", b.log());
        std::thread::sleep(Duration::from_millis(100)); // polling interval of a condition wait
    }
    // ...and goes on with them.
    progress_to(&env, &topic, 2 * n / 5, &mut [&mut b]);
    let mut a = env.spawn("a-2", &["run", "--instance-id", "a"], Stdio::null());
    progress_to(&env, &topic, 3 * n / 5, &mut [&mut a, &mut b]);
    for running in [&mut a, &mut b] {
        let status = stop(running);
        assert!(status.success(), "graceful stop failed: {}", running.log());
    }
    // Partitions moved to b when a died and back when a returned.
    assert!(log_count(&b, "partitions assigned") >= 2, "{}", b.log());
    assert!(log_count(&b, "partitions revoked") >= 1, "{}", b.log());
    finish_and_check(&env, &written);
}

#[test]
fn a_paused_zombie_writes_nothing_visible() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(120)));
    let env = Env::new("zombie", 6, FAILOVER);
    let n = leads() as i64;
    let written = write_generated(&env.input, n as usize, 19);
    let topic = env.input.clone();
    let mut a = env.spawn("a", &["run", "--instance-id", "a"], Stdio::null());
    let mut b = env.spawn("b", &["run", "--instance-id", "b"], Stdio::null());
    let at_stop = progress_to(&env, &topic, n / 5, &mut [&mut a, &mut b]);
    let assigned_before = log_count(&b, "partitions assigned");
    signal(&a.0, "STOP");
    // b is assigned a's partitions once a's session (6 s) expires...
    let deadline = Instant::now() + PATIENCE;
    while log_count(&b, "partitions assigned") == assigned_before {
        assert!(Instant::now() < deadline, "b never took over: {}", b.log());
        std::thread::sleep(Duration::from_millis(100)); // polling interval of a condition wait
    }
    // ...and commits past where a stopped.
    progress_to(&env, &topic, at_stop + n / 10, &mut [&mut b]);
    signal(&a.0, "CONT");
    // The woken zombie finds itself fenced out of the group's generation;
    // whatever it had open or writes next is aborted.
    progress_to(&env, &topic, 3 * n / 5, &mut [&mut b]);
    let status = stop(&mut b);
    assert!(status.success(), "graceful stop failed: {}", b.log());
    // The zombie either rejoined or stopped on being fenced; both are fine,
    // as long as nothing it wrote after waking is visible.
    signal(&a.0, "TERM");
    let status = a.0.wait().expect("wait for zombie");
    let log = a.log();
    eprintln!(
        "zombie exited with {status}; its last words: {}",
        log.lines().last().unwrap_or_default()
    );
    finish_and_check(&env, &written);
}

/// A process paused (a long GC, a stalled VM) with a transaction open for
/// longer than the transaction timeout, but not its session: the broker
/// aborts the transaction and bumps the producer's epoch, which librdkafka
/// reports as fenced. That is slowness, not another instance: leadflow
/// restarts from its last commit and finishes, exactly once. Before, it
/// took the epoch bump for a rival's fence and exited for good.
#[test]
fn a_transaction_that_outlives_its_timeout_is_not_a_fence() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(300)));
    let env = Env::new("stalled", 4, "");
    let n = leads() as i64;
    let written = write_generated(&env.input, n as usize, 31);
    // One process: every lead skips the hop.
    let topic = env.input.clone();
    let mut run = env.spawn("run", &["run"], Stdio::null());
    let at_stop = progress_to(&env, &topic, n / 5, &mut [&mut run]);
    signal(&run.0, "STOP");
    // Past the transaction timeout (10 s) and the broker's check for
    // expired transactions (every 10 s), short of the session (45 s).
    std::thread::sleep(Duration::from_secs(25));
    signal(&run.0, "CONT");
    progress_to(&env, &topic, at_stop + n / 5, &mut [&mut run]);
    let status = stop(&mut run);
    assert!(status.success(), "graceful stop failed: {}", run.log());
    eprintln!(
        "after the pause: {}",
        run.log()
            .lines()
            .find(|l| l.contains("pipeline failed"))
            .unwrap_or("no restart")
    );
    finish_and_check(&env, &written);
}

/// SIGTERM, then the exit status.
fn stop(running: &mut Running) -> std::process::ExitStatus {
    signal(&running.0, "TERM");
    running.0.wait().expect("wait for run")
}

#[test]
fn input_keyed_by_person_and_offer_needs_no_repartition() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(120)));
    // FAILOVER ends inside its [pipeline] table.
    let env = Env::new(
        "no-repartition",
        6,
        &format!("{FAILOVER}repartition = false\n"),
    );
    // The generator keys each lead by person and offer, as the option asks.
    let written = write_generated(&env.input, leads() / 3, 23);
    let mut run = env.spawn("first", &["run"], Stdio::null());
    progress_to(&env, &env.input, leads() as i64 / 6, &mut [&mut run]);
    run.0.kill().expect("kill -9 the run");
    run.0.wait().expect("reap run");
    finish_and_check(&env, &written);
}
