//! Network faults between leadflow and the broker, through Toxiproxy
//! (`scripts/toxiproxy.sh`): the broker advertises the proxy's port, so
//! every connection, leadflow's and the tests', passes through it. Its own
//! broker (port `LEADFLOW_KAFKA_PORT` + 300), so that the other tests'
//! broker stays fast.

#![cfg(feature = "kafka-tests")]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::checker::write_generated;
use common::faults::{finish_and_check, leads, wait_for_progress};
use common::ops::free_port;
use common::toxiproxy::Toxiproxy;
use common::{Env, OwnBroker, PATIENCE, signal};

/// The broker answers 15 s late for 20 s: longer than the transaction
/// timeout (10 s) and the delivery timeout. Transactions time out and the
/// broker aborts them, which librdkafka reports as fenced. That is a slow
/// network, not another instance: leadflow restarts from its last commit
/// (with backoff) until the network is well again, and then finishes,
/// exactly once. Before, it took the first such fence for a rival's and
/// exited for good.
#[test]
fn a_broker_answering_15_s_late_is_slowness_not_a_fence() {
    let _deadline = common::deadline(common::faults::scaled(Duration::from_secs(300)));
    let port = common::own_broker_port(300);
    let toxiproxy = Toxiproxy::start(free_port());
    let listen = free_port();
    toxiproxy.proxy("kafka", listen, port);
    let _broker = OwnBroker::behind(port, listen);
    // Small batches, so that the run is mid-stream when the fault comes.
    let env = Env::new("slow-broker", 4, "[pipeline]\nmax_batch_records = 100\n");
    let n = leads() as i64;
    let written = write_generated(&env.input, n as usize, 37);
    // One process: every lead skips the hop.
    let topic = env.input.clone();
    let mut run = env.spawn("run", &["run"], Stdio::null());
    wait_for_progress(&env, &topic, n / 5, &mut [&mut run], PATIENCE);
    // Both ways: requests reach the broker late too, so that transactions
    // outlive their timeout at the coordinator.
    toxiproxy.delay("kafka", 15_000);
    // The fault lasts this long: a window, not a wait for a condition.
    std::thread::sleep(Duration::from_secs(20));
    toxiproxy.undelay("kafka");
    assert!(
        run.0.try_wait().expect("poll run").is_none(),
        "leadflow exited: {}",
        run.log()
    );
    eprintln!(
        "during the fault: {}",
        run.log()
            .lines()
            .find(|l| l.contains("pipeline failed"))
            .unwrap_or("no restart")
    );
    wait_for_progress(&env, &topic, 3 * n / 5, &mut [&mut run], PATIENCE);
    signal(&run.0, "TERM");
    let status = run.0.wait().expect("wait for run");
    assert!(status.success(), "graceful stop failed: {}", run.log());
    finish_and_check(&env, &written);
}
