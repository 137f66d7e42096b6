//! What the fault tests share: their configuration, their size, and how
//! they wait for progress and finish.

use std::time::{Duration, Instant};

use super::checker::{Written, check};
use super::{Env, Running, committed};

/// The dedupe window of the default configuration.
pub const WINDOW_MS: i64 = 180 * 86_400_000;

/// Short sessions, so that a dead process's partitions move in seconds,
/// and small batches, so that a run lasts long enough to be interrupted.
/// It ends inside its `[pipeline]` table, so more pipeline keys may follow.
pub const FAILOVER: &str = "[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\n\
                            [pipeline]\ncommit_interval_ms = 50\nmax_batch_records = 500\n";

/// Leads per fault test: `LEADFLOW_FAULT_LEADS`, small by default;
/// `scripts/faults.sh` runs the full size.
pub fn leads() -> usize {
    std::env::var("LEADFLOW_FAULT_LEADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30_000)
}

/// A fault test's overall deadline: `base` at the default size, longer
/// in proportion to [`leads`] beyond it.
pub fn scaled(base: Duration) -> Duration {
    base * u32::try_from(leads().div_ceil(30_000))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The internal topic that carries whole-pipeline progress.
pub fn repartition(env: &Env) -> String {
    format!("{}-repartition", env.group)
}

/// Waits up to `patience` until the group's committed offsets on `topic`
/// sum to `target`, failing if any of `alive` exits meanwhile. Returns the
/// sum reached.
pub fn wait_for_progress(
    env: &Env,
    topic: &str,
    target: i64,
    alive: &mut [&mut Running],
    patience: Duration,
) -> i64 {
    let deadline = Instant::now() + patience;
    loop {
        let done: i64 = committed(&env.group, topic).values().sum();
        if done >= target {
            return done;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = alive
                .iter()
                .map(|r| format!("{}\n{}", r.log(), stacks(r.0.id())))
                .collect();
            panic!(
                "committed only {done} of {target} on {topic} within {} s; the runs' logs and threads:\n{}",
                patience.as_secs(),
                logs.join("\n---\n")
            );
        }
        for running in alive.iter_mut() {
            assert!(
                running.0.try_wait().expect("poll run").is_none(),
                "run exited early: {}",
                running.log()
            );
        }
        // Each probe is a new client of every broker: polled gently, so
        // that the probing does not load the cluster it measures.
        std::thread::sleep(Duration::from_millis(250)); // polling interval of a condition wait
    }
}

/// Every thread's stack of process `pid`, from gdb where it is installed:
/// what a run that stopped making progress is waiting on.
fn stacks(pid: u32) -> String {
    let installed = std::process::Command::new("gdb")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok();
    if !installed {
        return "(no gdb to show the threads)".to_owned();
    }
    let out = super::output_within(
        std::process::Command::new("gdb").args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ]),
        Duration::from_secs(60),
        "gdb",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Finishes what is left with one run to the end, then checks everything.
pub fn finish_and_check(env: &Env, written: &Written) {
    env.run_until_drained();
    let report = check(env, written, WINDOW_MS);
    eprintln!("{}", report.summary());
    report.assert_clean();
}
