//! Fault test d: `kill -9` of the broker mid-run and a restart. leadflow
//! must recover on its own (no restart of leadflow) within 60 s of the
//! broker answering again, and the checker must find nothing lost or
//! doubled. It runs its own broker on another port, so that killing it
//! leaves the other tests' broker alone.

#![cfg(feature = "kafka-tests")]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::checker::write_generated;
use common::faults::{FAILOVER, finish_and_check, leads, wait_for_progress};
use common::ops::{free_port, get, listen_on, wait_for};
use common::{Env, OwnBroker, PATIENCE, committed, signal};

#[test]
fn leadflow_recovers_from_a_killed_broker_on_its_own() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(300)));
    let port = common::own_broker_port(100);
    let broker = OwnBroker::start(port);
    let env = Env::new("broker-kill", 6, FAILOVER);
    let n = leads() as i64;
    let written = write_generated(&env.input, n as usize, 13);
    // One process: every lead skips the hop, so the input's commits are
    // its progress.
    let topic = env.input.clone();
    let port = free_port();
    let listen = listen_on(port);
    let mut run = env.spawn(
        "run",
        &["run", listen[0].as_str(), listen[1].as_str()],
        Stdio::null(),
    );
    let at_kill = wait_for_progress(&env, &topic, n / 5, &mut [&mut run], PATIENCE);
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));
    broker.kill();
    // Not ready while the broker is gone, alive all the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Some(answer) = get(port, "/readyz").filter(|(status, _)| *status == 503) {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 for 30 s with the broker down: {}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait
    };
    eprintln!("with the broker down, /readyz says: {}", reason.1.trim());
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    broker.script("start");
    let back = Instant::now();
    // What was committed before the broker died, some of it after `at_kill`.
    let before: i64 = committed(&env.group, &topic).values().sum();
    // Progress past that, by the same process, within 60 s proves it recovered.
    wait_for_progress(
        &env,
        &topic,
        before + 1,
        &mut [&mut run],
        Duration::from_secs(60),
    );
    let recovered_after = back.elapsed();
    wait_for("/readyz to turn 200 again", Duration::from_secs(60), || {
        get(port, "/readyz").filter(|(status, _)| *status == 200)
    });
    eprintln!(
        "broker killed at {at_kill} committed ({before} when it was back); leadflow progressed again {} ms after the broker was back",
        recovered_after.as_millis()
    );
    signal(&run.0, "TERM");
    let status = run.0.wait().expect("wait for run");
    assert!(status.success(), "graceful stop failed: {}", run.log());

    finish_and_check(&env, &written);
    drop(broker);
}
