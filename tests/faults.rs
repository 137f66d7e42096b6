//! Fault tests of the exactly-once pipeline against the real local broker,
//! each verified by the independent checker (`common::checker`): nothing
//! lost, nothing doubled, no dedupe key twice in a campaign, order kept.
//!
//! `LEADFLOW_FAULT_LEADS` sets how many leads each test writes: the test
//! command keeps it small; `scripts/faults.sh` runs the full size.

#![cfg(feature = "kafka-tests")]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::checker::{Written, check, write_generated};
use common::{Env, PATIENCE, Running, committed};

/// The dedupe window of the default configuration.
const WINDOW_MS: i64 = 180 * 86_400_000;

/// Short sessions, so that a dead process's partitions move in seconds,
/// and small batches, so that a run lasts long enough to be interrupted.
const FAILOVER: &str = "[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\n\
                        [pipeline]\ncommit_interval_ms = 50\nmax_batch_records = 500\n";

fn leads() -> usize {
    std::env::var("LEADFLOW_FAULT_LEADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30_000)
}

/// The internal topic that carries whole-pipeline progress.
fn repartition(env: &Env) -> String {
    format!("{}-repartition", env.group)
}

/// Waits until the group's committed offsets on `topic` sum to `target`,
/// failing if any of `alive` exits meanwhile.
fn wait_for_progress(env: &Env, topic: &str, target: i64, alive: &mut [&mut Running]) -> i64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let done: i64 = committed(&env.group, topic).values().sum();
        if done >= target {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "committed only {done} of {target} on {topic}"
        );
        for running in alive.iter_mut() {
            assert!(
                running.0.try_wait().expect("poll run").is_none(),
                "run exited early: {}",
                running.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100)); // polling interval of a condition wait
    }
}

/// Finishes what is left with one run to the end, then checks everything.
fn finish_and_check(env: &Env, written: &Written) {
    env.run_until_drained();
    let report = check(env, written, WINDOW_MS);
    eprintln!("{}", report.summary());
    report.assert_clean();
}

#[test]
fn killed_three_times_loses_and_doubles_nothing() {
    let env = Env::new("kill-three-times", 6, FAILOVER);
    let n = leads();
    let written = write_generated(&env.input, n, 11);
    let topic = repartition(&env);
    for round in 1..=3_i64 {
        let mut run = env.spawn(&format!("run-{round}"), &["run"], Stdio::null());
        // Measured while the run lives: after a kill, the offsets of the
        // transaction it left open stay unstable until a restart fences it.
        let at_kill = wait_for_progress(&env, &topic, round * n as i64 / 5, &mut [&mut run]);
        run.0.kill().expect("kill -9 the run");
        run.0.wait().expect("reap run");
        eprintln!("round {round}: killed at {at_kill} repartition offsets committed");
    }
    finish_and_check(&env, &written);
}
