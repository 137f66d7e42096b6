//! End-to-end tests of `leadflow run` against the real local broker
//! (`scripts/kafka.sh`). Run with `--features kafka-tests`; the test
//! command (docs/development.md) starts and stops the broker around them.

#![cfg(feature = "kafka-tests")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Env, PATIENCE, TestRecord, committed, create_topic, ends, event_id, header, produce,
    produce_values, read_all, source_of, t0_rfc3339,
};
use leadflow::config::Config;
use leadflow::pipeline::{Outcome, Place, Tally};
use leadflow::stages::decode::Format;
use leadflow::testkit;
use rdkafka::Timestamp;
use rdkafka::message::{Headers, Message};

fn lead(id: &str, email: &str, source: &str) -> String {
    serde_json::json!({
        "event_id": id,
        "received_at": t0_rfc3339(),
        "UserDetails": {"FirstName": "Ana", "LastName": "Silva", "Email": email, "Title": "CIO", "Country": "PT"},
        "LeadSource": source,
        "OfferTitle": "Contoso Sales Insights",
    })
    .to_string()
}

/// An output stamped when leadflow wrote it (not with its 30-day-old input
/// timestamp, which a stock broker's retention would delete at its next
/// check), naming the input's timestamp in `leadflow.source.timestamp`.
fn assert_written_now(m: &rdkafka::message::OwnedMessage, stamp: i64, started: i64) {
    match m.timestamp() {
        Timestamp::CreateTime(ts) => assert!(
            ts >= started - 1_000 && ts <= common::now_ms(),
            "output {}/{} stamped {ts}, not when written (after {started})",
            m.partition(),
            m.offset()
        ),
        other => panic!("output timestamp {other:?}"),
    }
    assert_eq!(
        header(m, "leadflow.source.timestamp"),
        Some(stamp.to_string().as_str())
    );
}

#[test]
fn a_known_mix_lands_exactly_where_it_belongs() {
    let _deadline = common::deadline(Duration::from_secs(120));
    known_mix(true);
}

/// The same through the repartition topic: the outcome does not depend
/// on whether a lead skipped the hop.
#[test]
fn a_known_mix_lands_exactly_where_it_belongs_through_the_hop() {
    let _deadline = common::deadline(Duration::from_secs(120));
    known_mix(false);
}

/// `shortcut`: whether leads may skip the hop (they all do: one process
/// holds every partition).
fn known_mix(shortcut: bool) {
    let env = Env::new(
        "mix",
        2,
        &format!("[pipeline]\nmax_record_bytes = 4096\nrepartition_shortcut = {shortcut}"),
    );
    let appsource = "SPZA-PLT|contoso.sales-insights";
    let portal = "AzurePortal-Create|contoso.contoso-gateway-byol";
    let gateway = "AzureMarketplace-INS|contoso.contoso-gateway-byol";
    let p0: Vec<String> = vec![
        lead("a1", "ana.silva@fabrikam.com", appsource),
        lead("a2", "ana.silva@fabrikam.com", appsource), // exact repeat
        lead("r1", "raj.mehta@northwindtraders.com", portal),
        lead("r2", " RAJ.Mehta@NorthwindTraders.com ", portal), // differs by case
        r#"{"event_id":"bad1","UserDetails":{"Email":"#.to_owned(), // malformed JSON
        lead(
            "d1",
            "omar@tailspintoys.com",
            "SPZA-DNC|contoso.sales-insights",
        ),
    ];
    let p1: Vec<String> = vec![
        lead("g1", "lee.wong@gmail.com", gateway),
        lead("g2", "Lee.Wong+trial@gmail.com", gateway), // +tag on gmail
        lead("g3", "leewong@googlemail.com", gateway),   // dots, googlemail
        lead("m1", "", appsource),                       // missing email
        lead("t1", "MSFT_TEST_636573304831318844@test.com", appsource),
        lead("u1", "kim@contoso.com", "Bing-INS|contoso.sales-insights"), // unknown source
        // No envelope, split form, offer by title.
        r#"{"UserDetails":{"Email":"noah@litware.co.uk"},"LeadSource":"AppSource","ActionCode":"INS","OfferTitle":"Contoso Sales Insights"}"#.to_owned(),
        lead("o1", "big@contoso.com", &format!("{appsource}{}", " ".repeat(5000))), // oversized
    ];
    // Written now; their leads' event time (`received_at`) is 30 days old.
    let stamp = common::now_ms();
    let mut records = Vec::new();
    for (partition, values) in [(0, &p0), (1, &p1)] {
        for value in values {
            records.push(TestRecord {
                partition,
                key: Some("input-key"),
                value: Some(value.as_bytes()),
                headers: &[("traceparent", "00-abc-01")],
                timestamp_ms: stamp,
            });
        }
    }
    produce(&env.input, &records);

    let started = common::now_ms();
    let out = env.run_until_drained();
    let tally: Tally = serde_json::from_slice(&out.stdout).expect("tally on stdout");
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
    };
    let expected = Tally {
        inputs: 14,
        routed: 4,
        campaigns: counts(&[("nurture", 2), ("demand-gen", 2)]),
        suppressed: counts(&[("do_not_contact", 1)]),
        duplicates: 4,
        test_leads: 1,
        dead_letter: counts(&[
            ("json_syntax", 1),
            ("missing_email", 1),
            ("unknown_source", 1),
            ("oversized", 1),
        ]),
        // Both offers are in the catalog: a SaaS app and a virtual machine.
        listings: counts(&[("app", 5)]),
        // Everything that got past identification was re-keyed, through
        // the topic or not.
        repartitioned: if shortcut { 0 } else { 9 },
        ..Tally::default()
    };
    assert_eq!(tally, expected);

    // Outputs are partitioned by dedupe key, so compare them as sets.
    let ids = |topic: &str| -> BTreeSet<String> { read_all(topic).iter().map(event_id).collect() };
    let set = |ids: &[&str]| -> BTreeSet<String> { ids.iter().map(|s| (*s).to_owned()).collect() };
    assert_eq!(
        ids(&env.nurture),
        set(&["a1", &format!("{}/1/6", env.input)])
    );
    assert_eq!(ids(&env.demand_gen), set(&["r1", "g1"]));
    let suppressed = read_all(&env.suppressed);
    assert_eq!(
        suppressed.iter().map(event_id).collect::<Vec<_>>(),
        vec!["d1"]
    );
    assert_eq!(
        header(&suppressed[0], "leadflow.suppressed.reason"),
        Some("do_not_contact")
    );

    // Campaign records are keyed by the dedupe key and carry their provenance.
    let nurture = read_all(&env.nurture);
    let ana = nurture
        .iter()
        .find(|m| event_id(m) == "a1")
        .expect("a1 in nurture");
    let value: serde_json::Value =
        serde_json::from_slice(ana.payload().expect("value")).expect("json");
    assert_eq!(ana.key(), value["dedupe_key"].as_str().map(str::as_bytes));
    assert_eq!(value["email"], "ana.silva@fabrikam.com");
    assert_eq!(value["campaign"], "nurture");
    assert_eq!(
        (&value["listing"], &value["offer_type"], &value["publisher"]),
        (
            &serde_json::json!("app"),
            &serde_json::json!("saas"),
            &serde_json::json!("Contoso")
        )
    );
    // Contact me 50; CIO 25 + business email 10: 85.
    assert_eq!(
        (value["score"].as_u64(), value["grade"].as_str()),
        (Some(85), Some("A"))
    );
    assert_eq!(header(ana, "leadflow.storefront"), Some("appsource"));
    assert_eq!(header(ana, "leadflow.grade"), Some("A"));
    assert_eq!(
        header(ana, "leadflow.rules.version"),
        Some("default-2025.1")
    );
    assert_eq!(source_of(ana), (0, 0));
    // Stamped when written, so the broker's 7-day retention counts from
    // then; the 30-day-old source timestamp rides in a header.
    assert_written_now(ana, stamp, started);

    // Dead letters: original key, value, headers and timestamp, plus why and whence.
    let dlq = read_all(&env.dead_letter);
    let by_offset: BTreeMap<(i32, i64), _> = dlq.iter().map(|m| (source_of(m), m)).collect();
    let expect_dead = [
        ((0, 4), "decode", "json_syntax"),
        ((1, 3), "decode", "missing_email"),
        ((1, 5), "enrich", "unknown_source"),
        ((1, 7), "decode", "oversized"),
    ];
    assert_eq!(dlq.len(), expect_dead.len());
    for ((partition, offset), stage, class) in expect_dead {
        let m = by_offset[&(partition, offset)];
        let original = if partition == 0 { &p0 } else { &p1 };
        let original = original[offset as usize].as_bytes();
        if class == "oversized" {
            // Cut to the input limit, so that the dead letter always fits.
            assert_eq!(m.payload(), original.get(..4096));
            let cut = format!("value:{}", original.len());
            assert_eq!(header(m, "leadflow.error.truncated"), Some(cut.as_str()));
        } else {
            assert_eq!(m.payload(), Some(original));
            assert_eq!(header(m, "leadflow.error.truncated"), None);
        }
        assert_eq!(m.key(), Some(&b"input-key"[..]));
        assert_written_now(m, stamp, started);
        assert_eq!(header(m, "traceparent"), Some("00-abc-01"));
        assert_eq!(header(m, "leadflow.error.stage"), Some(stage));
        assert_eq!(header(m, "leadflow.error.class"), Some(class));
        assert!(header(m, "leadflow.error.message").is_some_and(|s| !s.is_empty()));
        assert_eq!(header(m, "leadflow.source.topic"), Some(env.input.as_str()));
        assert_eq!(
            header(m, "leadflow.pipeline.version"),
            Some(format!("{} rules/default-2025.1", leadflow::LEADFLOW_VERSION).as_str())
        );
        let truncated = usize::from(class == "oversized");
        assert_eq!(m.headers().map(Headers::count), Some(9 + truncated));
    }

    // Offsets are committed to the end of each partition.
    assert_eq!(
        committed(&env.group, &env.input),
        BTreeMap::from([(0, 6), (1, 8)])
    );
}

/// What the pipeline makes of each input record, computed offline with the
/// same library code. Repeats of a lead share a partition (the generator
/// keys by person and offer), so processing partition by partition gives
/// the same outcomes as any interleaving the live run saw.
fn oracle(env: &Env) -> (BTreeMap<(i32, i64), String>, Tally) {
    let config = Config::load(Some(&env.config)).expect("config");
    let mut pipeline = testkit::pipeline(&config);
    let mut tally = Tally::default();
    let places = read_all(&env.input)
        .iter()
        .map(|m| {
            let place = (env.input.as_str(), m.partition(), m.offset());
            let input = testkit::input_at(m.payload(), m.timestamp().to_millis(), place);
            let outcome = pipeline.process(input);
            tally.record(&outcome, pipeline.routing());
            let place = match outcome.place(pipeline.routing()) {
                Place::Duplicate => "duplicate".to_owned(),
                Place::TestLead => "test".to_owned(),
                place => place.topics(&env.suppressed, &env.dead_letter).join("+"),
            };
            ((m.partition(), m.offset()), place)
        })
        .collect();
    (places, tally)
}

#[test]
fn a_killed_run_restarts_without_losing_or_repeating_anything() {
    let _deadline = common::deadline(Duration::from_secs(120));
    killed_run_restarts("exactly-once");
}

#[test]
fn a_killed_run_restarts_without_losing_anything_at_least_once() {
    let _deadline = common::deadline(Duration::from_secs(120));
    killed_run_restarts("at-least-once");
}

/// `kill -9` of `leadflow run` mid-stream, then a restart to the end. In
/// either mode nothing is lost; under exactly-once no input's output is
/// written twice either.
fn killed_run_restarts(guarantee: &str) {
    // A short session lets the restarted run take over the killed one's
    // partitions in seconds rather than after the default 45 s.
    let env = Env::new(
        &format!("restart-{guarantee}"),
        4,
        &format!(
            "[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\n\
             [pipeline]\ncommit_interval_ms = 50\nmax_batch_records = 200\nprocessing_guarantee = \"{guarantee}\""
        ),
    );
    let total: i64 = 30_000;
    // Leads keep arriving while leadflow runs, so the kill lands mid-stream.
    let count = total.to_string();
    let produce_args = [
        "produce", "--count", &count, "--rate", "6000", "--seed", "7",
    ];
    let mut producer = env.spawn("produce", &produce_args, Stdio::piped());
    let mut first = env.spawn("first-run", &["run"], Stdio::null());

    let deadline = Instant::now() + PATIENCE;
    let at_kill = loop {
        let done: i64 = committed(&env.group, &env.input).values().sum();
        if done >= total / 4 {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "run committed only {done} records"
        );
        assert!(
            first.0.try_wait().expect("poll run").is_none(),
            "run exited early: {}",
            first.log()
        );
        std::thread::sleep(Duration::from_millis(100)); // polling interval of a condition wait
    };
    first.0.kill().expect("kill -9 the run");
    first.0.wait().expect("reap run");
    // Whatever the kill left open is not counted: it never commits.
    assert!(
        at_kill < total,
        "the kill came after everything was committed"
    );

    let mut stdout = String::new();
    producer
        .0
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .expect("read produce output");
    assert!(
        producer.0.wait().expect("produce").success(),
        "produce failed: {}",
        producer.log()
    );
    let generated: Tally = serde_json::from_str(&stdout).expect("expected tally");
    assert_eq!(generated.inputs, total as u64);

    let second = env.run_until_drained();
    assert_eq!(
        committed(&env.group, &env.input),
        ends(&env.input),
        "restart did not commit to the end: {}",
        String::from_utf8_lossy(&second.stderr)
    );

    // The offline oracle agrees with the generator on where everything goes.
    let (oracle, oracle_tally) = oracle(&env);
    assert_eq!(oracle_tally, generated);

    // Every output names its input; no input reaches two different places,
    // and nothing reaches a place the oracle did not send it: dedupe state
    // survives the kill in its changelog, so no repeat passes after it.
    let mut seen: BTreeMap<(i32, i64), &str> = BTreeMap::new();
    let mut written: BTreeMap<(i32, i64), u32> = BTreeMap::new();
    let outputs = [
        &env.nurture,
        &env.demand_gen,
        &env.suppressed,
        &env.dead_letter,
    ];
    let records: Vec<(&str, _)> = outputs
        .iter()
        .flat_map(|t| read_all(t).into_iter().map(move |m| (t.as_str(), m)))
        .collect();
    for (topic, m) in &records {
        let source = source_of(m);
        let place = oracle
            .get(&source)
            .map(String::as_str)
            .expect("output of a known input");
        assert_eq!(
            place, *topic,
            "{source:?} expected in {place}, found in {topic}"
        );
        let first = seen.entry(source).or_insert(topic);
        assert_eq!(*first, *topic, "{source:?} in two places");
        *written.entry(source).or_default() += 1;
    }
    if guarantee == "exactly-once" {
        let repeated: Vec<_> = written.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            repeated.is_empty(),
            "{} inputs written more than once, e.g. {:?}",
            repeated.len(),
            repeated.first()
        );
    }
    // Nothing lost: every input the oracle routes somewhere is there.
    let found: BTreeSet<(i32, i64)> = seen.keys().copied().collect();
    let missing: Vec<_> = oracle
        .iter()
        .filter(|(source, place)| {
            !matches!(place.as_str(), "duplicate" | "test") && !found.contains(source)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} inputs lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
}

#[test]
fn a_missing_topic_is_a_one_line_error_within_seconds() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("missing", 1, "");
    let started = Instant::now();
    let out = env.leadflow(&["run", "--input-topic", "no-such-topic-anywhere"]);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains("\"no-such-topic-anywhere\" does not exist"),
        "{stderr}"
    );
}

#[test]
fn the_test_broker_supports_transactions() {
    let _deadline = common::deadline(Duration::from_secs(120));
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let env = Env::new("txn", 1, "");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("transactional.id", format!("{}-txn", env.group))
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(PATIENCE)
        .expect("init transactions");
    for (value, commit) in [("aborted", false), ("committed", true)] {
        producer.begin_transaction().expect("begin");
        producer
            .send(BaseRecord::<(), str>::to(&env.input).payload(value))
            .map_err(|(e, _)| e)
            .expect("send");
        producer.flush(PATIENCE).expect("flush");
        if commit {
            producer.commit_transaction(PATIENCE).expect("commit");
        } else {
            producer.abort_transaction(PATIENCE).expect("abort");
        }
    }
    // read_committed sees only the committed record.
    let values: Vec<Vec<u8>> = read_all(&env.input)
        .iter()
        .filter_map(|m| m.payload().map(<[u8]>::to_vec))
        .collect();
    assert_eq!(values, vec![b"committed".to_vec()]);
}

/// Where each line of `tests/data/raw-leads.jsonl` (the shared examples)
/// must end, in order.
const EXAMPLE_PLACES: [&str; 12] = [
    "nurture",                     // Contact me on AppSource
    "demand-gen",                  // portal Create
    "demand-gen",                  // bare AzureMarketplace + ActionCode, offer by title
    "duplicate",                   // the same gmail identity, offer and action
    "nurture",                     // AppSource Get it now
    "suppressed:do_not_contact",   // DNC
    "test",                        // MSFT_TEST
    "demand-gen",                  // .edu test drive
    "suppressed:disposable_email", // mailinator.com
    "dlq:missing_email",           // empty email
    "duplicate",                   // Ana again, spelled differently
    "demand-gen",                  // no envelope
];

/// Runs the shared examples through the broker in `format` and checks that
/// every line lands where the domain notes say.
fn examples_land_where_the_domain_says(format: &str) {
    let topics = format!("input_format = \"{format}\"\noutput_format = \"{format}\"");
    let env = Env::with_topics(&format!("examples-{format}"), 1, &topics, "");
    let lines: Vec<Vec<u8>> = include_str!("data/raw-leads.jsonl")
        .lines()
        .map(|line| match format {
            "avro" => leadflow::generate::to_raw_avro(line.as_bytes()).expect("a lead object"),
            _ => line.as_bytes().to_vec(),
        })
        .collect();
    produce_values(&env.input, &lines, common::now_ms());
    let out = env.run_until_drained();

    let schema = apache_avro::Schema::parse_str(leadflow::stages::encode::CAMPAIGN_LEAD_SCHEMA)
        .expect("schema");
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");
    let decode = |m: &rdkafka::message::OwnedMessage| -> serde_json::Value {
        let bytes = m.payload().expect("value");
        match format {
            "avro" => {
                let value = reader
                    .read_value(&mut &bytes[..])
                    .expect("a campaign-lead datum");
                serde_json::Value::try_from(value).expect("as json")
            }
            _ => serde_json::from_slice(bytes).expect("json"),
        }
    };
    let mut places = vec!["duplicate or test".to_owned(); lines.len()];
    for (topic, label) in [(&env.nurture, "nurture"), (&env.demand_gen, "demand-gen")] {
        for m in read_all(topic) {
            let value = decode(&m);
            assert_eq!(value["campaign"], label);
            places[source_of(&m).1 as usize] = label.to_owned();
        }
    }
    for m in read_all(&env.suppressed) {
        let value = decode(&m);
        let reason = header(&m, "leadflow.suppressed.reason").expect("reason header");
        assert_eq!(value["suppressed"], reason);
        places[source_of(&m).1 as usize] = format!("suppressed:{reason}");
    }
    for m in read_all(&env.dead_letter) {
        let class = header(&m, "leadflow.error.class").expect("class header");
        places[source_of(&m).1 as usize] = format!("dlq:{class}");
    }
    let expected: Vec<String> = EXAMPLE_PLACES
        .iter()
        .map(|p| match *p {
            "duplicate" | "test" => "duplicate or test".to_owned(),
            p => p.to_owned(),
        })
        .collect();
    assert_eq!(places, expected);
    let tally: Tally = serde_json::from_slice(&out.stdout).expect("tally");
    assert_eq!((tally.duplicates, tally.test_leads), (2, 1));
}

#[test]
fn the_shared_examples_land_where_the_domain_says_in_json() {
    let _deadline = common::deadline(Duration::from_secs(120));
    examples_land_where_the_domain_says("json");
}

#[test]
fn the_shared_examples_land_where_the_domain_says_in_avro() {
    let _deadline = common::deadline(Duration::from_secs(120));
    examples_land_where_the_domain_says("avro");
}

/// Internal topics that a stock broker (or an operator) configured so that
/// they lose data: `run` refuses them at start, in one line naming the
/// topic and the setting, within seconds.
#[test]
fn run_refuses_internal_topics_whose_configuration_can_lose_data() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let id = format!("unsafe-{}-{}", std::process::id(), common::now_ms());
    let cases = [
        (
            format!("repartition = \"{id}.repartition\""),
            format!("{id}.repartition"),
            vec![],
            "retention.ms=604800000",
        ),
        (
            format!("changelog = \"{id}.changelog\""),
            format!("{id}.changelog"),
            vec![("cleanup.policy", "compact,delete")],
            "retention.ms=604800000",
        ),
    ];
    for (topics, topic, configs, setting) in cases {
        create_topic(&topic, 2, &configs);
        let env = Env::with_topics("unsafe", 2, &topics, "");
        let started = Instant::now();
        let out = env.leadflow(&["run", "--until-drained"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains(setting))
            .unwrap_or_else(|| panic!("no line names {setting}: {stderr}"));
        assert!(line.contains(&topic), "{line}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}

/// Internal topics that work but that a production cluster should not
/// keep: a changelog an older leadflow made (compacted, which keeps every
/// batch of changes: it only grows), on one replica. `run` works, and says
/// at start what to change, naming the topic and the setting.
#[test]
fn run_advises_on_internal_topics_made_otherwise_than_it_makes_them() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let id = format!("older-{}-{}", std::process::id(), common::now_ms());
    let changelog = format!("{id}.changelog");
    create_topic(&changelog, 2, &[("cleanup.policy", "compact")]);
    let env = Env::with_topics("older", 2, &format!("changelog = \"{changelog}\""), "");
    let out = env.leadflow(&["run", "--until-drained"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for advice in [
        "cleanup.policy=compact, where leadflow creates it with cleanup.policy=delete",
        "segment.ms=604800000, where leadflow creates it with segment.ms=86400000",
        "message.timestamp.type=CreateTime, where leadflow creates it with message.timestamp.type=LogAppendTime",
        "1 replica(s)",
    ] {
        assert!(
            log_line(&stderr, &["WARN", &changelog, advice]).is_some(),
            "no warning {advice:?} on {changelog}: {stderr}"
        );
    }
}

/// `count` distinct AppSource leads numbered from `from`, 30 days old.
fn numbered_leads(from: usize, count: usize) -> Vec<Vec<u8>> {
    let received = t0_rfc3339();
    (from..from + count)
        .map(|i| {
            format!(
                r#"{{"event_id":"n{i}","received_at":"{received}","UserDetails":{{"Email":"person{i}@fabrikam.com"}},"LeadSource":"SPZA-PLT|contoso.sales-insights"}}"#
            )
            .into_bytes()
        })
        .collect()
}

/// The first line of `log` that contains every one of `parts`.
fn log_line<'a>(log: &'a str, parts: &[&str]) -> Option<&'a str> {
    log.lines().find(|l| parts.iter().all(|p| l.contains(p)))
}

/// Records deleted (by retention, or here by DeleteRecords) between two
/// runs, before leadflow read them: the next run says so (a warning with
/// both offsets, the tally) and still ends when drained. On the old main
/// the reset was only librdkafka's own warning, and `--until-drained`
/// waited forever on a position the deleted records could never reach.
/// The run also purges the repartition topic up to what it committed.
#[test]
fn records_deleted_before_they_were_read_are_reported_and_the_drain_ends() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("reset", 1, "[pipeline]\nrepartition_shortcut = false");
    let repartition = format!("{}-repartition", env.group);
    produce_values(&env.input, &numbered_leads(0, 10), common::now_ms());
    let first: Tally =
        serde_json::from_slice(&env.run_until_drained().stdout).expect("tally on stdout");
    assert_eq!(
        (first.inputs, first.routed, first.offset_resets),
        (10, 10, 0)
    );
    // What the run committed of its re-keying hop is gone from the broker.
    // Every re-keyed lead is committed; past them, transaction markers
    // take offsets too, and the position is past one once it was fetched.
    let committed_hop = committed(&env.group, &repartition);
    let hop_end: i64 = ends(&repartition).values().sum();
    let hop_done: i64 = committed_hop.values().sum();
    assert!(
        (10..=hop_end).contains(&hop_done),
        "committed {hop_done} of the hop's 10 leads ({hop_end} offsets with markers)"
    );
    assert_eq!(common::starts(&repartition), committed_hop);

    produce_values(&env.input, &numbered_leads(10, 20), common::now_ms());
    common::delete_records(&env.input, 0, 30);
    let out = env.run_until_drained();
    let tally: Tally = serde_json::from_slice(&out.stdout).expect("tally on stdout");
    assert_eq!(
        (tally.inputs, tally.offset_resets, tally.skipped_records),
        (0, 1, 20),
        "{tally:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = log_line(
        &stderr,
        &["offset reset", "\"from_offset\":10", "\"to_offset\":30"],
    )
    .unwrap_or_else(|| panic!("no offset reset warning: {stderr}"));
    assert!(line.contains(&env.input) && line.contains("WARN"), "{line}");
    assert_eq!(read_all(&env.nurture).len(), 10);
}

/// Records deleted under a running leadflow: the metric counts the reset,
/// `/readyz` names it, the log has both offsets, and what is left flows.
#[test]
fn an_offset_reset_under_a_running_leadflow_is_never_silent() {
    let _deadline = common::deadline(Duration::from_secs(120));
    use common::ops::{eventually, free_port, get, listen_on, sample, scrape};
    let port = free_port();
    let env = Env::new("reset-live", 1, "");
    produce_values(&env.input, &numbered_leads(0, 10), common::now_ms());
    let listen = listen_on(port);
    let run = env.spawn(
        "run",
        &["run", listen[0].as_str(), listen[1].as_str()],
        Stdio::null(),
    );
    eventually("the first leads committed", || {
        (committed(&env.group, &env.input).get(&0) == Some(&10)).then_some(())
    });
    // Stopped, leadflow fetches nothing; waiting out the broker's long poll
    // (fetch.wait.max.ms, 500 ms) lets its last fetch come back empty
    // before the records are written and deleted.
    common::signal(&run.0, "STOP");
    std::thread::sleep(Duration::from_millis(1_500));
    produce_values(&env.input, &numbered_leads(10, 20), common::now_ms());
    common::delete_records(&env.input, 0, 20);
    common::signal(&run.0, "CONT");
    let series = format!("leadflow_offset_resets_total{{topic=\"{}\"}}", env.input);
    eventually("the reset counted", || {
        (sample(&scrape(port), &series) == Some(1.0)).then_some(())
    });
    let (_, body) = get(port, "/readyz").expect("readyz answers");
    assert!(
        body.contains("1 offset resets skipped 10 records"),
        "{body}"
    );
    eventually("the leads after the deleted ones", || {
        (read_all(&env.nurture).len() == 20).then_some(())
    });
    let log = run.log();
    assert!(
        log_line(
            &log,
            &["offset reset", "\"from_offset\":10", "\"to_offset\":20"]
        )
        .is_some(),
        "{log}"
    );
}

/// A lead of about 6 KB of text that lz4 cannot shrink, for a topic whose
/// limit is 3,000 bytes: over it however batched.
fn big(id: &str) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    let noise: String = (0..6_000).map(|_| rng.alphanumeric()).collect();
    format!(
        r#"{{"event_id":"{id}","received_at":"{}","UserDetails":{{"Email":"big@fabrikam.com"}},"LeadSource":"SPZA-PLT|contoso.sales-insights","Description":"{noise}"}}"#,
        t0_rfc3339()
    )
    .into_bytes()
}

/// At-least-once writes dedupe state outside a transaction, so the state
/// of a lead that its campaign topic then refuses had reached the
/// changelog. leadflow writes the state from before the lead back: after a
/// restart, which restores dedupe from the changelog, a repeat of the lead
/// (its topic's limit raised again) reaches its campaign, and is not
/// dropped as a duplicate. Before, it was dropped.
#[test]
fn at_least_once_a_refused_lead_leaves_no_state_in_the_changelog() {
    let _deadline = common::deadline(Duration::from_secs(120));
    use common::ops::{eventually, wait_for_or};
    let env = Env::new(
        "refused-alo",
        1,
        "[pipeline]\nprocessing_guarantee = \"at-least-once\"\n",
    );
    let mut run = env.spawn("run", &["run"], Stdio::null());
    produce_values(&env.input, &numbered_leads(0, 3), common::now_ms());
    eventually("the first leads in their campaign", || {
        (read_all(&env.nurture).len() == 3).then_some(())
    });
    common::alter_topic(&env.nurture, &[("max.message.bytes", "3000")]);
    produce_values(&env.input, &[big("big1")], common::now_ms());
    // (At-least-once may write it more than once: its forward through the
    // repartition topic was delivered before the refusal rewound the batch.)
    let dead = wait_for_or(
        "the refused lead dead-lettered",
        || run.log(),
        || Some(read_all(&env.dead_letter)).filter(|d| !d.is_empty()),
    );
    assert!(dead.iter().all(|m| event_id(m) == "big1"));
    common::signal(&run.0, "TERM");
    let status = run.0.wait().expect("wait for run");
    assert!(status.success(), "graceful stop failed: {}", run.log());

    common::alter_topic(&env.nurture, &[("max.message.bytes", "1048588")]);
    produce_values(&env.input, &[big("big2")], common::now_ms());
    let out = env.run_until_drained();
    let tally: leadflow::pipeline::Tally =
        serde_json::from_slice(&out.stdout).expect("tally on stdout");
    assert_eq!(tally.duplicates, 0, "{tally:?}");
    let routed: Vec<String> = read_all(&env.nurture).iter().map(event_id).collect();
    assert_eq!(routed, ["n0", "n1", "n2", "big2"]);
}

/// At-least-once writes a batch's dedupe state changes only once its
/// outputs are acknowledged. A crash right after an output was refused
/// (`LEADFLOW_FAILPOINT=crash-on-refusal:alo`, test builds only) then
/// leaves nothing of the refused lead in the changelog: the restarted
/// process reads it again and, its topic's limit raised meanwhile, writes
/// it to its campaign. Before, the state went out beside the outputs and
/// was acknowledged before the refusal was known; the restarted process
/// restored it and dropped the lead as a repeat of one never written. (CI
/// once lost 3 leads that way, after `kill -9`, in
/// `a_killed_run_restarts_without_losing_anything_at_least_once`.)
#[test]
fn at_least_once_a_crash_after_a_refused_output_loses_nothing() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new(
        "crash-alo",
        1,
        "[pipeline]\nprocessing_guarantee = \"at-least-once\"\n",
    );
    let mut run = env.spawn_with(
        "run",
        &["run"],
        Stdio::null(),
        &[("LEADFLOW_FAILPOINT", "crash-on-refusal:alo")],
    );
    produce_values(&env.input, &numbered_leads(0, 3), common::now_ms());
    common::ops::wait_for_or(
        "the first leads in their campaign",
        || run.log(),
        || (read_all(&env.nurture).len() == 3).then_some(()),
    );
    common::alter_topic(&env.nurture, &[("max.message.bytes", "3000")]);
    produce_values(&env.input, &[big("big1")], common::now_ms());
    let status = run.0.wait().expect("wait for run");
    assert!(
        !status.success(),
        "the failpoint did not fire: {}",
        run.log()
    );

    common::alter_topic(&env.nurture, &[("max.message.bytes", "1048588")]);
    // (Its forward through the repartition topic may be there twice, from
    // before and after the crash; the second is a duplicate.)
    env.run_until_drained();
    let routed: Vec<String> = read_all(&env.nurture).iter().map(event_id).collect();
    assert_eq!(routed, ["n0", "n1", "n2", "big1"]);
}

/// A campaign record the broker refuses for good (its topic's limit was
/// lowered under a running leadflow) aborts its transaction. leadflow
/// finds the one record, one per transaction, dead-letters it with the
/// broker's error, and everything else goes through: no restart, no
/// tight loop. On the old main the same batch aborted and was processed
/// again at once, forever. The refused lead is not remembered by dedupe:
/// its repeat is refused again, not dropped as a duplicate. Fan-out is all
/// or nothing: AppSource leads also feed a second campaign, and the lead
/// that campaign's topic refuses is in neither campaign, only dead-lettered.
#[test]
fn a_record_the_broker_refuses_is_dead_lettered_and_blocks_nothing() {
    let _deadline = common::deadline(Duration::from_secs(120));
    use common::ops::{eventually, free_port, listen_on, sample, scrape, series};
    let port = free_port();
    let sales = format!("refused-{}-{}.sales", std::process::id(), common::now_ms());
    let env = Env::new(
        "refused",
        1,
        &format!(
            "[[routes]]\ncampaign = \"sales\"\nstorefront = \"appsource\"\ntopic = {sales:?}\n"
        ),
    );
    let listen = listen_on(port);
    let run = env.spawn(
        "run",
        &["run", listen[0].as_str(), listen[1].as_str()],
        Stdio::null(),
    );
    produce_values(&env.input, &numbered_leads(0, 3), common::now_ms());
    eventually("the first leads in both campaigns", || {
        (read_all(&env.nurture).len() == 3 && read_all(&sales).len() == 3).then_some(())
    });
    common::alter_topic(&sales, &[("max.message.bytes", "3000")]);
    let mut values = numbered_leads(3, 5);
    values.push(big("big1"));
    values.extend(numbered_leads(8, 5));
    produce_values(&env.input, &values, common::now_ms());
    common::ops::wait_for_or(
        "every small lead in both campaigns",
        || run.log(),
        || (read_all(&env.nurture).len() == 13 && read_all(&sales).len() == 13).then_some(()),
    );
    let dead = eventually("the refused lead dead-lettered", || {
        let dead = read_all(&env.dead_letter);
        (dead.len() == 1).then_some(dead)
    });
    let m = &dead[0];
    assert_eq!(event_id(m), "big1");
    assert_eq!(header(m, "leadflow.error.stage"), Some("produce"));
    assert_eq!(header(m, "leadflow.error.class"), Some("produce_rejected"));
    let message = header(m, "leadflow.error.message").unwrap_or_default();
    assert!(
        message.contains(&sales) && message.contains("MessageSizeTooLarge"),
        "{message}"
    );
    // Its nurture record was in the aborted transaction: not visible.
    for topic in [&env.nurture, &sales] {
        assert!(
            read_all(topic).iter().all(|m| event_id(m) != "big1"),
            "the refused lead is in {topic}"
        );
    }
    let metrics = scrape(port);
    let refused: f64 = series(&metrics, "leadflow_produce_rejections_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(refused >= 1.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "leadflow_pipeline_restarts_total"),
        Some(0.0)
    );

    // Not remembered as sent: the repeat is refused again, not a duplicate.
    produce_values(&env.input, &[big("big2")], common::now_ms());
    eventually("the repeat dead-lettered too", || {
        (read_all(&env.dead_letter).len() == 2).then_some(())
    });
    assert_eq!(
        sample(&scrape(port), "leadflow_leads_total{outcome=\"duplicate\"}").unwrap_or(0.0),
        0.0
    );
    assert!(!run.log().contains("pipeline failed"), "{}", run.log());
}

/// A life of the pipeline that fails mid-transaction commits nothing
/// more. AppSource leads fan out to two campaigns; a failure injected
/// between a lead's two records (`LEADFLOW_FAILPOINT`, test builds only)
/// fails the life after the first record was written in the open
/// transaction. The pipeline restarts and writes the lead to both
/// campaigns, once each. Before, dropping the failed life's consumer
/// revoked its partitions, and that revoke committed the open
/// transaction: the first campaign got the lead twice.
#[test]
fn a_failed_life_commits_nothing_more() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let sales = format!(
        "failed-life-{}-{}.sales",
        std::process::id(),
        common::now_ms()
    );
    let env = Env::new("failed-life", 1, &fan_out_to(&sales));
    let run = env.spawn_with(
        "run",
        &["run"],
        Stdio::null(),
        &[("LEADFLOW_FAILPOINT", "between-routes:n3")],
    );
    produce_values(&env.input, &numbered_leads(0, 6), common::now_ms());
    common::ops::wait_for_or(
        "every lead in both campaigns",
        || run.log(),
        || (read_all(&env.nurture).len() >= 6 && read_all(&sales).len() >= 6).then_some(()),
    );
    assert!(run.log().contains("pipeline failed"), "{}", run.log());
    for topic in [&env.nurture, &sales] {
        let ids: Vec<String> = read_all(topic).iter().map(event_id).collect();
        assert_eq!(ids, ["n0", "n1", "n2", "n3", "n4", "n5"], "{topic}");
    }
}

/// A second route: AppSource leads also feed campaign `sales` in `topic`.
fn fan_out_to(topic: &str) -> String {
    format!("[[routes]]\ncampaign = \"sales\"\nstorefront = \"appsource\"\ntopic = {topic:?}\n")
}

/// A campaign topic deleted under a running leadflow (an operator's
/// mistake): librdkafka cannot add it to the transaction, and ends the
/// producer with a fatal error when the transaction is aborted. leadflow
/// restarts the pipeline with a new producer, and once the topic is back,
/// the lead reaches both campaigns, once each.
#[test]
fn a_campaign_topic_deleted_under_leadflow_stops_nothing_for_good() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let sales = format!("deleted-{}-{}.sales", std::process::id(), common::now_ms());
    let env = Env::new("deleted", 1, &fan_out_to(&sales));
    let run = env.spawn("run", &["run"], Stdio::null());
    produce_values(&env.input, &numbered_leads(0, 3), common::now_ms());
    common::ops::wait_for_or(
        "the first leads in both campaigns",
        || run.log(),
        || (read_all(&env.nurture).len() == 3 && read_all(&sales).len() == 3).then_some(()),
    );
    common::delete_topic(&sales);
    produce_values(&env.input, &numbered_leads(3, 1), common::now_ms());
    common::ops::wait_for_or(
        "the pipeline to fail",
        || run.log(),
        || run.log().contains("pipeline failed").then_some(()),
    );
    common::create_topic(&sales, 1, &[]);
    common::ops::wait_for_or(
        "the lead in the campaign put back",
        || run.log(),
        || (read_all(&sales).len() == 1).then_some(()),
    );
    let nurture: Vec<String> = read_all(&env.nurture).iter().map(event_id).collect();
    assert_eq!(nurture, ["n0", "n1", "n2", "n3"], "{}", run.log());
    assert_eq!(event_id(&read_all(&sales)[0]), "n3");
}

/// With the default limits, a valid lead of 1,040,000 bytes (which a stock
/// topic takes) is `oversized`, and its dead letter, cut to the limit,
/// fits. On the old main the input limit was above what the producer could
/// write: the lead passed decode, its forward was refused, and the pipeline
/// restarted forever.
#[test]
fn a_lead_over_the_input_limit_is_a_dead_letter_that_fits() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("oversized", 1, "");
    let mut values = numbered_leads(0, 2);
    let mut big: serde_json::Value = serde_json::from_slice(&values[0]).expect("lead");
    big["event_id"] = "big".into();
    big["Padding"] = serde_json::Value::String(String::new());
    let base = serde_json::to_vec(&big).expect("json").len();
    big["Padding"] = serde_json::Value::String("p".repeat(1_040_000 - base));
    let big = serde_json::to_vec(&big).expect("json");
    assert_eq!(big.len(), 1_040_000);
    values.insert(1, big);
    produce_values(&env.input, &values, common::now_ms());
    let out = env.run_until_drained();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("pipeline failed"), "{stderr}");
    assert_eq!(read_all(&env.nurture).len(), 2);
    let dead = read_all(&env.dead_letter);
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "leadflow.error.class"), Some("oversized"));
    assert_eq!(
        header(&dead[0], "leadflow.error.truncated"),
        Some("value:1040000")
    );
    assert_eq!(dead[0].payload().map(<[u8]>::len), Some(983_040));
}

/// KIP-447: a partition's previous owner left a transaction pending that
/// holds its last dedupe state and its committed offset. leadflow, taking
/// the partition over, restores only once the group's committed offsets
/// are stable, so its state includes that transaction, and a repeat of the
/// lead is a duplicate. Before, the restore read the changelog up to the
/// pending transaction and stopped: the state missed the lead, and the
/// repeat went to its campaign a second time.
#[test]
fn restore_includes_the_previous_owners_pending_transaction() {
    let _deadline = common::deadline(Duration::from_secs(120));
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let env = Env::new("stable", 1, "[pipeline]\nrepartition = false\n");
    let changelog = format!("{}-dedupe-changelog", env.group);
    let lead = numbered_leads(0, 1).remove(0);
    // What leadflow's changelog holds once it has let this lead through.
    let mut pipeline = testkit::pipeline(&testkit::generated_config(Format::Json));
    let place = (env.input.as_str(), 0, 0);
    let outcome = pipeline.process(testkit::input_at(
        Some(&lead),
        Some(common::now_ms()),
        place,
    ));
    assert!(matches!(outcome, Outcome::Routed { .. }), "{outcome:?}");
    let changes: Vec<_> = pipeline.take_changes().collect();
    assert!(!changes.is_empty());

    // The previous owner: a member of the group whose last transaction
    // (that state, and the group's offset) is still pending when it leaves.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("group.id", &env.group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .expect("member");
    member.subscribe(&[env.input.as_str()]).expect("subscribe");
    common::ops::eventually("the previous owner to be assigned", || {
        let _ = member.poll(Duration::from_millis(100));
        (member.assignment().ok()?.count() > 0).then_some(())
    });
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("transactional.id", format!("{}-previous", env.group))
        .set("transaction.timeout.ms", "60000")
        .create()
        .expect("transactional producer");
    producer.init_transactions(PATIENCE).expect("init");
    producer.begin_transaction().expect("begin");
    for change in &changes {
        let mut record = BaseRecord::<[u8], [u8]>::to(&changelog)
            .partition(change.partition)
            .key(&change.key[..]);
        if let Some(value) = &change.value {
            record = record.payload(&value[..]);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(PATIENCE).expect("flush");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&env.input, 0, Offset::Offset(0))
        .expect("offset");
    let metadata = member.group_metadata().expect("group metadata");
    producer
        .send_offsets_to_transaction(&offsets, &metadata, PATIENCE)
        .expect("offsets in the transaction");
    drop(member);

    let run = env.spawn("run", &["run"], Stdio::null());
    common::ops::eventually("leadflow to take the partition", || {
        run.log().contains("partitions assigned").then_some(())
    });
    // A window for a restore that does not wait to finish first, as the
    // old one did (it took milliseconds); leadflow's must not.
    let window = Instant::now() + Duration::from_secs(5);
    while Instant::now() < window && !run.log().contains("dedupe state restored") {
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a bounded window
    }
    producer.commit_transaction(PATIENCE).expect("commit");
    common::ops::eventually("the restore", || {
        run.log().contains("dedupe state restored").then_some(())
    });
    produce_values(&env.input, &[lead], common::now_ms());
    common::ops::eventually("the repeat committed", || {
        (committed(&env.group, &env.input).get(&0) == Some(&1)).then_some(())
    });
    assert!(
        read_all(&env.nurture).is_empty(),
        "the repeat reached its campaign: the restore missed the pending state"
    );
}

/// An input backlog does not starve the second hop. librdkafka delivers
/// every assigned partition's records through one queue in the order it
/// fetched them, and stops fetching while that queue is full (16 MiB of
/// input), so re-keyed records waited behind the whole backlog: over a slow
/// network, minutes. The repartition topic's records are read first, so
/// the records re-keyed but not yet processed stay within a few batches.
#[test]
fn an_input_backlog_does_not_starve_the_second_hop() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let batch = 500;
    let env = Env::new(
        "second-hop",
        4,
        &format!(
            "[pipeline]\ncommit_interval_ms = 50\nmax_batch_records = {batch}\nrepartition_shortcut = false\n"
        ),
    );
    let total: i64 = 40_000;
    let produced = env.leadflow(&["produce", "--count", &total.to_string(), "--seed", "11"]);
    assert!(produced.status.success(), "{produced:?}");
    let repartition = format!("{}-repartition", env.group);
    let mut run = env.spawn("run", &["run"], Stdio::null());
    let deadline = Instant::now() + PATIENCE;
    let mut widest = (0, 0);
    loop {
        // Re-keyed but not processed: the repartition topic's end (a few
        // transaction markers included) past the group's commits on it.
        let processed: i64 = committed(&env.group, &repartition).values().sum();
        let waiting = ends(&repartition).values().sum::<i64>() - processed;
        let rekeyed: i64 = committed(&env.group, &env.input).values().sum();
        if waiting > widest.0 {
            widest = (waiting, rekeyed);
        }
        if rekeyed >= total && waiting < batch {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{rekeyed} of {total} re-keyed, {waiting} of them not processed yet"
        );
        assert!(
            run.0.try_wait().expect("poll run").is_none(),
            "run exited early: {}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait
    }
    let (gap, at) = widest;
    eprintln!("at most {gap} records re-keyed but not processed, at {at} of {total} re-keyed");
    assert!(
        gap <= 10 * batch,
        "{gap} records re-keyed but not processed (at {at} of {total} re-keyed): the second hop waited behind the input"
    );
}

/// A batch that loses some of its partitions to a new member is committed
/// by the revoke callback before they go, and that commit carries the
/// batch's dedupe changes: the next owner restores them, so a repeat of a
/// lead the batch let through is a duplicate there. The batch stays open
/// (a two-minute commit interval) until the second process joins, so only
/// the revoke callback's commit can have written it.
#[test]
fn a_batch_committed_on_revoke_hands_its_dedupe_state_to_the_next_owner() {
    let _deadline = common::deadline(Duration::from_secs(100));
    use common::ops::{eventually, free_port, listen_on, sample, wait_for_or};
    let env = Env::new(
        "handover",
        2,
        "[pipeline]\nrepartition = false\ncommit_interval_ms = 120000\ndelivery_timeout_ms = 600000\n",
    );
    let leads = numbered_leads(0, 2);
    let record = |partition: i32| TestRecord {
        partition,
        key: None,
        value: Some(&leads[partition as usize]),
        headers: &[],
        timestamp_ms: common::now_ms(),
    };
    produce(&env.input, &[record(0), record(1)]);
    let port = free_port();
    let listen = listen_on(port);
    let a = env.spawn(
        "a",
        &[
            "run",
            "--instance-id",
            "a",
            listen[0].as_str(),
            listen[1].as_str(),
        ],
        Stdio::null(),
    );
    // Consumed (so processed, in the open batch): no lag on either
    // partition, whose last stable offset is already past the lead.
    wait_for_or(
        "a to read both leads",
        || a.log(),
        || {
            let text = common::ops::get(port, "/metrics")?.1;
            (0..2)
                .all(|p| {
                    let series = format!(
                        "leadflow_consumer_lag{{topic=\"{}\",partition=\"{p}\"}}",
                        env.input
                    );
                    sample(&text, &series) == Some(0.0)
                })
                .then_some(())
        },
    );
    assert!(
        read_all(&env.nurture).is_empty(),
        "the batch committed before the revoke"
    );
    let b = env.spawn(
        "b",
        &[
            "run",
            "--instance-id",
            "b",
            "--set",
            "pipeline.commit_interval_ms=100",
        ],
        Stdio::null(),
    );
    wait_for_or(
        "b to restore a partition",
        || b.log(),
        || b.log().contains("dedupe state restored").then_some(()),
    );
    assert!(a.log().contains("partitions revoked"), "{}", a.log());
    assert_eq!(
        read_all(&env.nurture).len(),
        2,
        "the revoke did not commit the batch"
    );
    produce(&env.input, &[record(0), record(1)]);
    // b commits at once; a's batch stays open, so b's partition is the one
    // committed past the repeat.
    let moved = eventually("b to commit the repeat", || {
        committed(&env.group, &env.input)
            .into_iter()
            .find_map(|(partition, offset)| (offset == 2).then_some(partition))
    });
    let nurture = read_all(&env.nurture);
    assert!(
        nurture.iter().all(|m| source_of(m) != (moved, 1)),
        "the repeat on partition {moved} reached its campaign: b's restore missed the revoked batch's state\n{}",
        b.log()
    );
    let counted = common::ops::get(port, "/metrics")
        .and_then(|(_, text)| sample(&text, "leadflow_leads_total{outcome=\"campaign\"}"));
    assert_eq!(counted, Some(2.0), "{}", a.log());
}
