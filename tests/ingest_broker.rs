//! `leadflow ingest http` while the broker is `kill -9`ed under load: the
//! endpoint answers 503 with `Retry-After` while Kafka cannot acknowledge,
//! takes leads again once the broker is back, and every lead that got a
//! 2xx is in the input topic. It runs its own broker on another port, so
//! that killing it leaves the other tests' broker alone.

#![cfg(feature = "kafka-tests")]

mod common;

use std::time::Duration;

use common::ingest::{Door, assert_all_written, load, settings};
use common::ops::{get, wait_for_or};
use common::{Env, OwnBroker};

#[test]
fn acknowledged_means_durable_across_a_killed_broker() {
    let _deadline = common::deadline(Duration::from_secs(300));
    let broker = OwnBroker::start(common::own_broker_port(600));
    let env = Env::new(
        "ingest-broker",
        3,
        &settings("ack_timeout_ms = 3000\nretry_after_s = 2\n"),
    );
    let door = Door::open(&env, "ingest", &[]);
    let load = load(door.port, "b", 4);
    load.wait_for_acks(300, || door.log());
    broker.kill();
    wait_for_or(
        "a 503 while the broker is down",
        || door.log(),
        || (load.unavailable().0 > 0).then_some(()),
    );
    assert_eq!(load.unavailable().1.as_deref(), Some("2"), "Retry-After");
    wait_for_or(
        "/readyz to say the broker is gone",
        || door.log(),
        || (get(door.ops, "/readyz")?.0 == 503).then_some(()),
    );
    let before = load.acked();
    broker.script("start");
    load.wait_for_acks(before + 300, || door.log());
    let acked = load.finish();
    let written = assert_all_written(&acked, &env.input);
    eprintln!(
        "{} leads acknowledged, {before} before the broker died; {} records in the topic",
        acked.len(),
        written
    );
}
