//! `leadflow ingest azure-table` against Azurite, Microsoft's storage
//! emulator, and the real broker, with entities written by Azure's own
//! Tables client as Microsoft's destination writes them: entities added
//! while it runs reach the input topic once each, and on to campaigns;
//! `kill -9` and a restart neither lose nor repeat one; a table not made
//! yet is waited for; a SAS reads as well as the key; a wrong key is a
//! one-line error within seconds.

#![cfg(feature = "kafka-tests")]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::azurite::{Azurite, PICK_UP, lead_entity};
use common::ops::{free_port, get, wait_for, wait_for_or};
use common::{Env, Running, event_id, read_all};
use leadflow::pipeline::Tally;
use rdkafka::Message as _;

/// An environment reading `table` of `azurite` with `connection`.
fn env_for(name: &str, connection: &str, table: &str) -> Env {
    let settings = format!(
        "[ingest.azure_table]\nconnection_string = {connection:?}\ntable = {table:?}\n\
         poll_interval_ms = 200\nposition_topic = \"{name}-{}-position\"\n",
        std::process::id()
    );
    Env::new(name, 3, &settings)
}

/// `leadflow ingest azure-table`, ready.
fn start(env: &Env, name: &str) -> Running {
    let ops = free_port();
    let listen = format!("http.listen=127.0.0.1:{ops}");
    let running = env.spawn(
        name,
        &["ingest", "azure-table", "--set", &listen],
        Stdio::null(),
    );
    wait_for_or(
        "the table ingest to be ready",
        || running.log(),
        || (get(ops, "/readyz")?.0 == 200).then_some(()),
    );
    running
}

/// Input records by event id, once at least `n` are there.
fn records(env: &Env, n: usize, log: impl Fn() -> String) -> BTreeMap<String, usize> {
    wait_for_or(&format!("{n} leads in the input topic"), log, || {
        let read = read_all(&env.input);
        (read.len() >= n).then_some(())
    });
    let mut ids = BTreeMap::new();
    for record in read_all(&env.input) {
        *ids.entry(event_id(&record)).or_default() += 1;
    }
    ids
}

#[test]
fn entities_added_while_it_runs_reach_the_input_once_and_go_on_to_campaigns() {
    let _deadline = common::deadline(Duration::from_secs(180));
    let azurite = Azurite::start();
    azurite.create("Leads");
    let env = env_for("table-live", &azurite.connection_string(), "Leads");
    let first: Vec<String> = (0..3)
        .map(|i| lead_entity(&format!("r{i}"), &format!("ana{i}@fabrikam.com")))
        .collect();
    azurite.insert("Leads", &first, 0.0);
    let ingest = start(&env, "ingest");
    let ids = records(&env, 3, || ingest.log());
    assert_eq!(ids.len(), 3, "{ids:?}");
    let more: Vec<String> = (3..5)
        .map(|i| lead_entity(&format!("r{i}"), &format!("ana{i}@fabrikam.com")))
        .collect();
    azurite.insert("Leads", &more, 0.0);
    let ids = records(&env, 5, || ingest.log());
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.values().all(|n| *n == 1), "each entity once: {ids:?}");

    // In the envelope: the entity's Timestamp as received_at, and the
    // customer's details as UserDetails.
    let record = &read_all(&env.input)[0];
    let value: serde_json::Value =
        serde_json::from_slice(record.payload().expect("value")).expect("JSON");
    assert!(
        value["received_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{value}"
    );
    assert!(
        value["UserDetails"]["Email"]
            .as_str()
            .is_some_and(|e| e.ends_with("@fabrikam.com"))
    );

    let out = env.run_until_drained();
    let tally: Tally = serde_json::from_slice(&out.stdout).expect("tally");
    assert_eq!(tally.campaigns.get("nurture"), Some(&5), "{tally:?}");
}

#[test]
fn kill_9_and_a_restart_neither_lose_nor_repeat_a_lead() {
    let _deadline = common::deadline(Duration::from_secs(240));
    let azurite = Azurite::start();
    azurite.create("Leads");
    let env = env_for("table-kill", &azurite.connection_string(), "Leads");
    let mut ingest = start(&env, "ingest");
    // 150 entities over about three seconds, while the reader is killed
    // and started again.
    let entities: Vec<String> = (0..150)
        .map(|i| lead_entity(&format!("k{i:03}"), &format!("k{i}@fabrikam.com")))
        .collect();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| azurite.insert("Leads", &entities, 0.02));
        wait_for("some leads read before the kill", PICK_UP, || {
            (!read_all(&env.input).is_empty()).then_some(())
        });
        ingest.0.kill().expect("kill -9");
        let _ = ingest.0.wait();
        let killed_at = read_all(&env.input).len();
        eprintln!("{killed_at} leads in the input topic at kill -9");
        ingest = start(&env, "ingest-again");
        writer.join().expect("the writer");
    });
    let ids = records(&env, 150, || ingest.log());
    let repeated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "written twice: {repeated:?}");
    assert_eq!(ids.len(), 150);
    // And nothing more comes: once an entity written after all of them is
    // in, the reader has polled over every one again (each poll looks
    // back over the overlap), and still wrote each once.
    azurite.insert(
        "Leads",
        &[lead_entity("sentinel", "last@fabrikam.com")],
        0.0,
    );
    let ids = records(&env, 151, || ingest.log());
    assert_eq!(ids.len(), 151, "{ids:?}");
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    assert_eq!(read_all(&env.input).len(), 151, "{}", ingest.log());
}

#[test]
fn a_table_not_made_yet_is_waited_for_and_a_sas_reads_it() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let azurite = Azurite::start();
    // No table yet: the reader starts, says so, and waits.
    let env = env_for("table-missing", &azurite.connection_string(), "Later");
    let ingest = start(&env, "ingest");
    wait_for_or(
        "the missing table to be reported",
        || ingest.log(),
        || ingest.log().contains("does not exist yet").then_some(()),
    );
    azurite.create("Later");
    azurite.insert("Later", &[lead_entity("m1", "mia@fabrikam.com")], 0.0);
    assert_eq!(records(&env, 1, || ingest.log()).len(), 1);

    // The same table read with a read-only SAS instead of the key.
    let sas = azurite.sas_connection_string("Later");
    let by_sas = env_for("table-sas", &sas, "Later");
    let reader = start(&by_sas, "ingest-sas");
    assert_eq!(records(&by_sas, 1, || reader.log()).len(), 1);
}

#[test]
fn a_wrong_key_is_a_one_line_error_within_seconds() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let azurite = Azurite::start();
    azurite.create("Leads");
    let wrong = azurite.connection_string_with("d3Jvbmcga2V5IGZvciB0aGUgYWNjb3VudA==");
    let env = env_for("table-wrong-key", &wrong, "Leads");
    let started = Instant::now();
    let out = env.leadflow(&["ingest", "azure-table"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("leadflow: error"))
        .collect();
    assert!(!out.status.success());
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(error[0].contains("refused the credentials"), "{stderr}");
    assert!(
        !error[0].contains("d3Jvbmcg"),
        "the key is not printed: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
