//! The everyday tools against the real local broker: a standard Kafka
//! client (kcat) writes raw leads and reads what leadflow writes, with the
//! exact commands docs/interop.md gives; `leadflow tail` decodes dead letters;
//! `leadflow dlq replay` re-drives dead letters exactly once, even when
//! killed halfway and run again.

#![cfg(feature = "kafka-tests")]

mod common;

use std::time::Duration;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::ops::wait_for;
use common::{Env, PATIENCE, TestRecord, bootstrap, header, piped, produce, read_all};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The lead of docs/interop.md's kcat example: an AppSource trial.
const LEAD: &str = r#"{"event_id":"kcat-0001","received_at":"2025-03-04T10:15:02Z","UserDetails":{"FirstName":"Ana","LastName":"Silva","Email":"ana.silva@fabrikam.com","Country":"PT","Company":"Fabrikam","Title":"Head of Sales Ops"},"LeadSource":"SPZA-PLT|contoso.sales-insights","ActionCode":"PLT"}"#;

/// Runs kcat with `args`, `input` on stdin; its stdout.
fn kcat(args: &[&str], input: &str) -> String {
    let out = piped(
        Command::new("kcat").args(args),
        input,
        "kcat (Debian's kcat package; scripts/test.sh installs it)",
    );
    assert!(
        out.status.success(),
        "kcat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// docs/interop.md: every committed record of `topic` as
/// `KEY<tab>HEADERS<tab>VALUE` lines.
fn read_committed(broker: &str, topic: &str) -> String {
    kcat(
        &[
            "-C",
            "-b",
            broker,
            "-t",
            topic,
            "-X",
            "isolation.level=read_committed",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k\t%h\t%s\n",
        ],
        "",
    )
}

#[test]
fn a_standard_client_writes_raw_leads_and_reads_campaign_and_dead_letter_records() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("kcat", 1, "");
    let broker = bootstrap();
    // docs/interop.md: write a raw lead (and a broken one), keyed.
    kcat(
        &["-P", "-b", &broker, "-t", &env.input, "-K", r"\t"],
        &format!("kcat-0001\t{LEAD}\nkcat-0002\tnot a lead\n"),
    );
    env.run_until_drained();

    // Read the campaign topic back: key, headers, value.
    let campaign = read_committed(&broker, &env.nurture);
    let lines: Vec<&str> = campaign.lines().collect();
    assert_eq!(lines.len(), 1, "{campaign}");
    let fields: Vec<&str> = lines[0].splitn(3, '\t').collect();
    assert_eq!(fields.len(), 3, "{campaign}");
    assert!(
        fields[1].contains("leadflow.storefront=appsource"),
        "{campaign}"
    );
    assert!(fields[1].contains("leadflow.grade="), "{campaign}");
    let value: serde_json::Value = serde_json::from_str(fields[2]).expect("campaign lead JSON");
    assert_eq!(value["event_id"], "kcat-0001");
    assert_eq!(value["campaign"], "nurture");
    assert_eq!(fields[0], value["dedupe_key"].as_str().expect("dedupe key"));

    // Read the dead-letter topic back: the original bytes and key, and why.
    let dead = read_committed(&broker, &env.dead_letter);
    let fields: Vec<&str> = dead.trim_end().splitn(3, '\t').collect();
    assert_eq!(fields.len(), 3, "{dead}");
    assert_eq!(
        (fields[0], fields[2]),
        ("kcat-0002", "not a lead"),
        "{dead}"
    );
    for expected in [
        "leadflow.error.stage=decode",
        "leadflow.error.class=json_syntax",
        &format!("leadflow.source.topic={}", env.input),
        "leadflow.source.offset=1",
    ] {
        assert!(fields[1].contains(expected), "{expected} not in {dead}");
    }

    // `leadflow tail` shows the same dead letter, decoded, with its headers.
    let tail_dead_letters = |how: &str| {
        let out = env.leadflow(&[
            "tail",
            &env.dead_letter,
            "--from-beginning",
            "--exit-at-end",
            how,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let records: Vec<serde_json::Value> = tail_dead_letters("--json")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON record"))
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["key"], "kcat-0002");
    assert_eq!(records[0]["value"], "not a lead");
    assert_eq!(records[0]["decoded_as"], "text");
    assert_eq!(records[0]["headers"]["leadflow.error.class"], "json_syntax");
    // `--timestamps`: the same record's timestamp, and nothing else.
    assert_eq!(
        tail_dead_letters("--timestamps").trim(),
        records[0]["timestamp_ms"].to_string()
    );
    let out = env.leadflow(&["tail", &env.nurture, "--from-beginning", "--max", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("leadflow.storefront: appsource"), "{text}");
    assert!(text.contains("\"event_id\": \"kcat-0001\""), "{text}");
}

#[test]
fn an_interrupted_dlq_replay_run_again_replays_each_dead_letter_once() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("replay", 2, "");
    // 300 records that are not JSON (class json_syntax) and 50 JSON
    // records that are not leads (another class), all distinct.
    let broken: Vec<String> = (0..300).map(|i| format!("broken lead {i}")).collect();
    let shapes: Vec<String> = (0..50).map(|i| format!("[{i}]")).collect();
    let written_at = common::now_ms() - 3_600_000;
    let records: Vec<TestRecord<'_>> = broken
        .iter()
        .chain(&shapes)
        .enumerate()
        .map(|(i, value)| TestRecord {
            partition: (i % 2) as i32,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[("producer", "test")],
            // An hour old: a replayed copy is stamped when replayed, not
            // with this (a stock broker deletes copies of week-old inputs).
            timestamp_ms: written_at + i as i64,
        })
        .collect();
    produce(&env.input, &records);
    env.run_until_drained();
    let dead = read_all(&env.dead_letter);
    let replays_started = common::now_ms();
    let classes: BTreeMap<&str, usize> = dead.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(header(r, "leadflow.error.class").unwrap_or("?"))
            .or_default() += 1;
        m
    });
    assert_eq!(classes.get("json_syntax"), Some(&300), "{classes:?}");
    let originals = read_all(&env.input).len();
    assert_eq!(originals, 350);

    // A dry run lists the 300 and writes nothing.
    let out = env.leadflow(&["dlq", "replay", "--class", "json_syntax", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.ends_with("decode/json_syntax"))
            .count(),
        300
    );
    assert!(stdout.contains("\"chosen\":300,\"replayed\":0"), "{stdout}");
    assert_eq!(read_all(&env.input).len(), originals);

    // Killed halfway: some replayed records are committed, the rest not.
    let mut first = env.spawn(
        "replay-1",
        &["dlq", "replay", "--class", "json_syntax", "--rate", "25"],
        Stdio::null(),
    );
    wait_for("part of the replay committed", PATIENCE, || {
        let replayed = read_all(&env.input).len() - originals;
        (replayed >= 40).then_some(())
    });
    first.0.kill().expect("kill -9 the replay");
    first.0.wait().expect("reap");
    let before_rerun = read_all(&env.input).len() - originals;
    assert!(before_rerun < 300, "the kill came after the whole replay");

    let out = env.leadflow(&["dlq", "replay", "--class", "json_syntax"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input = read_all(&env.input);
    let replayed = replayed_copies(&input);
    assert_eq!(
        sorted_values(&replayed),
        sorted(&broken),
        "each json_syntax dead letter exactly once"
    );
    assert_eq!(input.len(), originals + 300);
    for record in &replayed {
        assert_eq!(
            header(record, "producer"),
            Some("test"),
            "original headers kept"
        );
        assert!(header(record, "leadflow.error.class").is_none());
        let stamped = record.timestamp().to_millis().unwrap_or_default();
        assert!(
            stamped >= replays_started,
            "replayed copy stamped {stamped}"
        );
    }
    // Run again: nothing left to replay under this name.
    let out = env.leadflow(&["dlq", "replay", "--class", "json_syntax"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"replayed\":0"), "{stdout}");
    assert_eq!(read_all(&env.input).len(), originals + 300);
    eprintln!("killed after {before_rerun} of 300 replayed; the rerun replayed the rest");
}

/// `scripts/kafka.sh COMMAND` for the test broker: what it printed.
fn kafka_script(command: &str) -> String {
    let port = bootstrap()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let out = common::output_within(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg(command)
            .env("LEADFLOW_KAFKA_PORT", port),
        PATIENCE,
        "kafka.sh",
    );
    assert!(out.status.success(), "kafka.sh {command} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Input that other producers compressed, with each of Kafka's codecs, is
/// read: batches from kcat and from Confluent's Python client, in gzip,
/// snappy, lz4 and zstd (which the broker's own log shows they used),
/// each lead ending up in its campaign topic once.
#[test]
fn input_compressed_with_every_codec_by_other_clients_is_read() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("codecs", 1, "");
    let broker = bootstrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    let mut expected = std::collections::BTreeSet::new();
    for codec in codecs {
        for client in ["kcat", "python"] {
            // 40 leads of 40 people: nothing is a duplicate of anything.
            let lines: String = (0..40)
                .map(|i| {
                    let id = format!("{client}-{codec}-{i}");
                    let lead = LEAD
                        .replace("kcat-0001", &id)
                        .replace("ana.silva@", &format!("ana.silva.{client}.{codec}.{i}@"));
                    expected.insert(id.clone());
                    format!("{id}\t{lead}\n")
                })
                .collect();
            if client == "kcat" {
                kcat(
                    &[
                        "-P", "-b", &broker, "-t", &env.input, "-p", "0", "-K", r"\t", "-z", codec,
                    ],
                    &lines,
                );
            } else {
                let out = piped(
                    Command::new("python3")
                        .arg(format!("{root}/tests/interop/compressed_produce.py"))
                        .args([broker.as_str(), env.input.as_str(), codec])
                        .env("PYTHONPATH", format!("{root}/.cache/python")),
                    &lines,
                    "compressed_produce.py",
                );
                assert!(
                    out.status.success(),
                    "python {codec}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    // The broker keeps batches as their producers compressed them.
    let data = std::path::PathBuf::from(kafka_script("dir"));
    let log = data.join("kraft").join(format!("{}-0", env.input));
    let segments: Vec<String> = std::fs::read_dir(&log)
        .expect("the input's log directory")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "log").then(|| path.to_string_lossy().into_owned())
        })
        .collect();
    let libs = data.parent().expect("kafka home").join("libs");
    let out = common::output_within(
        Command::new("java")
            .arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .arg("kafka.tools.DumpLogSegments")
            .arg("--files")
            .arg(segments.join(",")),
        PATIENCE,
        "DumpLogSegments",
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    let used: std::collections::BTreeSet<&str> = dump
        .split("compresscodec: ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(
        used,
        ["gzip", "lz4", "snappy", "zstd"].into_iter().collect(),
        "{dump}"
    );

    env.run_until_drained();
    let read: Vec<String> = read_all(&env.nurture)
        .iter()
        .map(|m| {
            let value: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("campaign JSON");
            value["event_id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    let unique: std::collections::BTreeSet<String> = read.iter().cloned().collect();
    assert_eq!(read.len(), unique.len(), "a lead written twice");
    assert_eq!(unique, expected);
    assert!(read_all(&env.dead_letter).is_empty(), "dead letters");
}

/// The README's quickstart command, end to end on a broker of its own
/// (with this build's binary and 2,000 leads): it must find every lead
/// accounted for. It once printed "NO" with every count matching.
#[test]
fn the_quickstart_accounts_for_every_lead() {
    let _deadline = common::deadline(Duration::from_secs(300));
    let port = common::own_broker_port(500);
    let out = common::output_within(
        Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/quickstart.sh"
        ))
        .arg("2000")
        .env("LEADFLOW_BIN", env!("CARGO_BIN_EXE_leadflow"))
        .env("LEADFLOW_KAFKA_PORT", port.to_string())
        .env_remove("LEADFLOW_KEEP_BROKER"),
        Duration::from_secs(290),
        "scripts/quickstart.sh",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every lead accounted for: yes"), "{stdout}");
    assert!(stdout.contains("leads.raw (in)"), "{stdout}");
}

/// The window the kill above hits only sometimes, made certain: a replay
/// stopped between sending its dead-letter offsets and committing them
/// leaves them pending, and a read_committed consumer cannot learn where
/// to resume until that transaction ends. The rerun must fence the
/// stopped one first (which aborts it) rather than wait for its
/// transaction timeout; and a dry run, which must not fence anything,
/// says why it cannot list yet.
#[test]
fn a_replay_stopped_with_its_offsets_pending_is_fenced_and_resumed() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("replay-pending", 1, "");
    let broken: Vec<String> = (0..20).map(|i| format!("broken lead {i}")).collect();
    let values: Vec<Vec<u8>> = broken.iter().map(|v| v.clone().into_bytes()).collect();
    common::produce_values(&env.input, &values, common::now_ms());
    env.run_until_drained();
    assert_eq!(read_all(&env.dead_letter).len(), 20);

    // The stopped replay: it copied the first dead letter and sent the
    // offset past it, and never committed.
    let name = format!("{}-dlq-replay", env.group);
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &name)
        .create()
        .expect("the replay's group");
    let stopped: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", &name)
        .set("transaction.timeout.ms", "60000")
        .create()
        .expect("the stopped replay's producer");
    stopped.init_transactions(PATIENCE).expect("init");
    stopped.begin_transaction().expect("begin");
    stopped
        .send(BaseRecord::<(), str>::to(&env.input).payload(&broken[0]))
        .map_err(|(e, _)| e)
        .expect("send");
    stopped.flush(PATIENCE).expect("flush");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&env.dead_letter, 0, Offset::Offset(1))
        .expect("offset");
    let metadata = group.group_metadata().expect("group metadata");
    stopped
        .send_offsets_to_transaction(&offsets, &metadata, PATIENCE)
        .expect("offsets in the transaction");

    let out = env.leadflow(&["dlq", "replay", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the dry run listed from a guess");
    assert!(stderr.contains("open transaction"), "{stderr}");

    let started = std::time::Instant::now();
    let out = env.leadflow(&["dlq", "replay"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the rerun waited {:?}, as for the stopped one's transaction timeout",
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"replayed\":20"), "{stdout}");
    assert_eq!(
        sorted_values(&replayed_copies(&read_all(&env.input))),
        sorted(&broken),
        "each dead letter once, the aborted copy not"
    );
}

/// The records of `input` that `dlq replay` wrote.
fn replayed_copies(input: &[OwnedMessage]) -> Vec<&OwnedMessage> {
    input
        .iter()
        .filter(|r| header(r, "leadflow.replayed.from").is_some())
        .collect()
}

/// The values of `records` as text, sorted.
fn sorted_values(records: &[&OwnedMessage]) -> Vec<String> {
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.payload().unwrap_or_default()).into_owned())
        .collect();
    sorted(&values)
}

fn sorted(values: &[String]) -> Vec<String> {
    let mut values = values.to_vec();
    values.sort();
    values
}
