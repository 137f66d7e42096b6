//! `leadflow ingest http` against the real broker: the shared examples,
//! posted by curl and by a Python client, come out of `run` where
//! `leadflow validate` says; every status the endpoint documents is
//! answered when it should be; and after `kill -9` of the endpoint under
//! load, every lead that got a 2xx is in the input topic.

#![cfg(feature = "kafka-tests")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::process::Command;
use std::time::Duration;

use common::ingest::{Door, SECRET, assert_all_written, load, settings};
use common::ops::{request, sample, scrape};
use common::{Env, event_id, read_all};
use leadflow::pipeline::Tally;

#[test]
fn the_shared_examples_posted_by_curl_and_python_come_out_where_validate_says() {
    let _deadline = common::deadline(Duration::from_secs(180));
    let env = Env::new("ingest-examples", 3, &settings(""));
    let door = Door::open(&env, "ingest", &[]);
    let examples = leadflow::testkit::example_leads();
    let lines: Vec<&str> = examples.lines().filter(|l| !l.trim().is_empty()).collect();
    let url = door.url();
    let (by_curl, by_python) = lines.split_at(lines.len() / 2);
    let mut statuses: Vec<u16> = by_curl
        .iter()
        .map(|line| {
            let out = common::piped(
                Command::new("curl").args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    "@-",
                    &url,
                ]),
                line,
                "curl",
            );
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a status from curl")
        })
        .collect();
    let python = common::piped(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/post_leads.py"
            ))
            .arg(&url),
        &by_python.join("\n"),
        "tests/interop/post_leads.py",
    );
    statuses.extend(
        String::from_utf8_lossy(&python.stdout)
            .lines()
            .map(|s| s.trim().parse::<u16>().expect("a status from Python")),
    );
    assert_eq!(statuses.len(), lines.len(), "{}", door.log());

    // What validate says of the same leads, with the same configuration.
    let file = env.config.with_file_name("examples.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write examples");
    let validated = env
        .command(&["validate", "--json"])
        .arg(&file)
        .output()
        .expect("validate");
    let verdicts: Vec<serde_json::Value> = String::from_utf8_lossy(&validated.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a verdict"))
        .collect();
    assert_eq!(verdicts.len(), lines.len());
    // What the decode stage would dead-letter is refused at the door, so
    // the sender knows; everything else is taken.
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused = 0;
    for (verdict, status) in verdicts.iter().zip(&statuses) {
        if verdict["stage"] == "decode" {
            assert_eq!(*status, 400, "{verdict}");
            refused += 1;
            continue;
        }
        assert_eq!(*status, 200, "{verdict}");
        let outcome = verdict["outcome"].as_str().expect("outcome");
        *expected.entry(outcome.to_owned()).or_default() += 1;
        for topic in verdict["topics"].as_array().expect("topics") {
            *expected
                .entry(topic.as_str().expect("topic").to_owned())
                .or_default() += 1;
        }
    }
    assert!(refused > 0, "the examples include a lead without an email");

    let out = env.run_until_drained();
    let tally: Tally = serde_json::from_slice(&out.stdout).expect("tally");
    let count = |key: &str| expected.get(key).copied().unwrap_or(0) as u64;
    assert_eq!(tally.inputs as usize, lines.len() - refused);
    assert_eq!(tally.routed, count("campaign"));
    assert_eq!(tally.suppressed_total(), count("suppressed"));
    assert_eq!(tally.duplicates, count("duplicate"));
    assert_eq!(tally.test_leads, count("test"));
    assert_eq!(tally.dead_letters(), count("dead_letter"));
    for topic in [
        &env.nurture,
        &env.demand_gen,
        &env.suppressed,
        &env.dead_letter,
    ] {
        assert_eq!(read_all(topic).len() as u64, count(topic), "{topic}");
    }
    // Every record the door wrote is in the envelope, with an event id.
    let written: BTreeSet<String> = read_all(&env.input).iter().map(event_id).collect();
    assert_eq!(written.len(), lines.len() - refused);
}

#[test]
fn every_answer_is_the_documented_one() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new(
        "ingest-answers",
        1,
        &settings(
            "rate_limit_per_client = 20\nclient_address_header = \"X-Client\"\nmax_body_bytes = 4096\n",
        ),
    );
    let door = Door::open(&env, "ingest", &[]);
    let post = |path: &str, headers: &[(&str, &str)], body: &str| {
        request(door.port, "POST", path, headers, body.as_bytes()).expect("an answer")
    };
    let path = format!("/leads/{SECRET}");
    assert_eq!(
        common::ops::get(door.ops, "/readyz"),
        Some((200, "ready: taking leads\n".to_owned()))
    );

    // Partner Center's test lead, sent when the endpoint is saved: 200.
    let saved = post(&path, &[], common::ingest::PARTNER_CENTER_TEST_LEAD);
    assert_eq!(saved.status, 200, "{saved:?}");
    let answer: serde_json::Value = serde_json::from_str(&saved.body).expect("JSON");
    assert!(answer["event_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(saved.header("content-type"), Some("application/json"));
    // The secret as a query parameter instead of a path segment.
    let by_query = post(
        &format!("/leads?key={SECRET}"),
        &[],
        common::ingest::PARTNER_CENTER_TEST_LEAD,
    );
    assert_eq!(by_query.status, 200, "{by_query:?}");

    let not_json = post(&path, &[], "{\"UserDetails\":");
    assert_eq!(not_json.status, 400);
    assert!(not_json.body.contains("json_syntax"), "{}", not_json.body);
    let no_email = post(&path, &[], r#"{"LeadSource":"SPZA-PLT|contoso.x"}"#);
    assert_eq!(no_email.status, 400);
    assert!(
        no_email.body.contains("missing_email") && no_email.body.contains("no email"),
        "{}",
        no_email.body
    );

    for wrong in [
        "/leads/wrong-secret-0123456789".to_owned(),
        "/leads".to_owned(),
        format!("/leads?key={SECRET}x"),
        format!("/other/{SECRET}"),
    ] {
        assert_eq!(post(&wrong, &[], "{}").status, 404, "{wrong}");
    }
    let get = request(door.port, "GET", &path, &[], b"").expect("an answer");
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));

    let big = format!(r#"{{"Description":"{}"}}"#, "x".repeat(5_000));
    let too_large = post(&path, &[], &big);
    assert_eq!(too_large.status, 413, "{too_large:?}");

    // One client over its limit gets 429s (its bodies are not even read);
    // another client is apart.
    let statuses: Vec<u16> = (0..30)
        .map(|_| post(&path, &[("X-Client", "10.1.2.3")], "x").status)
        .collect();
    assert!(
        statuses.contains(&400) && statuses.contains(&429),
        "{statuses:?}"
    );
    let limited = post(&path, &[("X-Client", "10.1.2.3")], "x");
    assert_eq!(
        (limited.status, limited.header("retry-after")),
        (429, Some("1"))
    );
    assert_eq!(post(&path, &[("X-Client", "10.9.9.9")], "x").status, 400);

    // What the metrics say of it.
    let text = scrape(door.ops);
    for (series, at_least) in [
        ("leadflow_ingest_requests_total{status=\"200\"}", 2.0),
        ("leadflow_ingest_requests_total{status=\"400\"}", 3.0),
        ("leadflow_ingest_requests_total{status=\"404\"}", 4.0),
        ("leadflow_ingest_requests_total{status=\"413\"}", 1.0),
        ("leadflow_ingest_requests_total{status=\"429\"}", 1.0),
        (
            "leadflow_ingest_invalid_total{class=\"missing_email\"}",
            1.0,
        ),
    ] {
        let value = sample(&text, series).unwrap_or(0.0);
        assert!(value >= at_least, "{series} is {value}\n{text}");
    }
    assert_eq!(
        read_all(&env.input).len(),
        2,
        "only the two test leads were written"
    );
}

#[test]
fn every_acknowledged_lead_is_in_the_input_topic_after_kill_9_of_the_endpoint() {
    let _deadline = common::deadline(Duration::from_secs(180));
    let env = Env::new("ingest-kill", 3, &settings(""));
    let mut door = Door::open(&env, "ingest", &[]);
    let port = door.port;
    let load = load(port, "k", 4);
    load.wait_for_acks(400, || door.log());
    door.kill();
    let acked = load.finish();
    let written = assert_all_written(&acked, &env.input);
    eprintln!(
        "{} leads acknowledged before kill -9, {written} in the topic",
        acked.len()
    );

    // A new endpoint takes leads again at once.
    let again = Door::open(&env, "ingest-again", &[]);
    let reply = request(
        again.port,
        "POST",
        &format!("/leads/{SECRET}"),
        &[],
        common::ingest::PARTNER_CENTER_TEST_LEAD.as_bytes(),
    );
    assert_eq!(reply.map(|r| r.status), Some(200));
}

/// SIGTERM while requests are under way: the endpoint answers every one
/// of them, and exits 0; what it acknowledged is there.
#[test]
fn a_graceful_stop_answers_every_request_in_flight() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("ingest-stop", 3, &settings(""));
    let mut door = Door::open(&env, "ingest", &[]);
    let load = load(door.port, "s", 8);
    load.wait_for_acks(300, || door.log());
    // Eight requests are under way, each waiting for its acknowledgement;
    // no new one starts (one sent after the signal could meet a closed
    // listener, as it would any server).
    let before = load.acked();
    load.stop_posting();
    let status = door.stop();
    assert!(status.success(), "{status}: {}", door.log());
    assert_eq!(load.broken(), 0, "requests cut off without an answer");
    let acked = load.finish();
    eprintln!(
        "{} requests answered after the signal",
        acked.len() - before
    );
    assert_all_written(&acked, &env.input);
    assert!(door.log().contains("ingest: stopped"), "{}", door.log());
}

/// A sender that stops half-way through its body gets 408 and its
/// connection back, rather than holding a slot for ever.
#[test]
fn a_body_that_stalls_is_answered_408() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let env = Env::new("ingest-stall", 1, &settings(""));
    let door = Door::open(&env, "ingest", &[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", door.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "POST /leads/{SECRET} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"UserDetails\":"
    )
    .expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}
