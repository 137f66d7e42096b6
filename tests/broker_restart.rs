//! Fault test d: `kill -9` of the broker mid-run and a restart. leadflow
//! must recover on its own (no restart of leadflow) within 60 s of the
//! broker answering again, and the checker must find nothing lost or
//! doubled. It runs its own broker on another port, so that killing it
//! leaves the other tests' broker alone.

#![cfg(feature = "kafka-tests")]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::checker::{check, write_generated};
use common::{Env, OwnBroker, PATIENCE, committed, signal};

const WINDOW_MS: i64 = 180 * 86_400_000;

#[test]
fn leadflow_recovers_from_a_killed_broker_on_its_own() {
    let port = std::env::var("LEADFLOW_KAFKA_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .map_or(19_192, |p| p + 100);
    let broker = OwnBroker::start(port);
    let env = Env::new(
        "broker-kill",
        6,
        "[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\n\
         [pipeline]\ncommit_interval_ms = 50\nmax_batch_records = 500\n",
    );
    let n: usize = std::env::var("LEADFLOW_FAULT_LEADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30_000);
    let written = write_generated(&env.input, n, 13);
    let topic = format!("{}-repartition", env.group);
    let mut run = env.spawn("run", &["run"], Stdio::null());

    let progress = || -> i64 { committed(&env.group, &topic).values().sum() };
    let deadline = Instant::now() + PATIENCE;
    let at_kill = loop {
        let done = progress();
        if done >= n as i64 / 5 {
            break done;
        }
        assert!(Instant::now() < deadline, "committed only {done}");
        assert!(
            run.0.try_wait().expect("poll").is_none(),
            "run exited: {}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(100)); // polling interval of a condition wait
    };
    broker.kill();
    broker.script("start");
    let back = Instant::now();
    // What was committed before the broker died, some of it after `at_kill`.
    let before = progress();
    // Progress past that proves the same process recovered.
    let recovered_after = loop {
        let done = progress();
        if done > before {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no progress 60 s after the broker came back: {}",
            run.log()
        );
        assert!(
            run.0.try_wait().expect("poll").is_none(),
            "run exited: {}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(200)); // polling interval of a condition wait
    };
    eprintln!(
        "broker killed at {at_kill} committed ({before} when it was back); leadflow progressed again {} ms after the broker was back",
        recovered_after.as_millis()
    );
    signal(&run.0, "TERM");
    let status = run.0.wait().expect("wait for run");
    assert!(status.success(), "graceful stop failed: {}", run.log());

    env.run_until_drained();
    let report = check(&env, &written, WINDOW_MS);
    eprintln!("{}", report.summary());
    report.assert_clean();
    drop(broker);
}
