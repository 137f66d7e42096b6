//! The independent checker: reads the input topic and every output topic
//! back with `read_committed` and proves, from the records alone and the
//! generator's own account of what it wrote, that
//!
//! - every input ends in exactly one place (its campaign topic, the
//!   suppressed topic with the right reason, or the dead-letter topic with
//!   the right class), or nowhere when it is a duplicate or a test lead;
//! - no input is lost and none is written twice;
//! - no dedupe key reaches a campaign topic twice within the window;
//! - per key, outputs keep the order of their inputs;
//! - every output's value is the lead it names: a campaign or suppressed
//!   record carries its input's `event_id` (or the id derived from the
//!   input's position), its record key as `dedupe_key` and its topic's
//!   campaign; a dead letter carries its input's bytes (cut to the limit
//!   only when it says so);
//! - the dedupe changelog agrees with the outputs: its live keys are
//!   exactly the dedupe keys of the campaign and suppressed records.
//!
//! It shares no code with the pipeline: where a record must go comes from
//! the generator ([`Expected`]), where it went from the record headers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leadflow::domain::Storefront;
use leadflow::generate::{Expected, Generator, GeneratorOptions};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{Env, PATIENCE, bootstrap, consumer, header, partitions, read_all};

/// What the generator wrote: each record's timestamp and value, and where
/// it must end. (A lead without an envelope carries its event time only in
/// the record timestamp, so a repeat may have the same bytes.)
pub struct Written {
    pub expected: HashMap<(i64, Vec<u8>), Expected>,
    pub count: usize,
    /// Dedupe keys (hex) written straight into the changelog
    /// ([`write_changelog`]), which no output carries.
    pub preloaded: BTreeSet<String>,
}

/// Writes `count` generated leads to `topic`, keyed as the generator keys
/// them, and returns where each must end.
pub fn write_generated(topic: &str, count: usize, seed: u64) -> Written {
    write_generated_with(
        topic,
        count,
        GeneratorOptions {
            seed,
            ..GeneratorOptions::default()
        },
    )
}

/// [`write_generated`] with the generator's options.
pub fn write_generated_with(topic: &str, count: usize, options: GeneratorOptions) -> Written {
    let mut writer = Writer::new(topic, options);
    writer.write(count);
    writer.finish()
}

/// Writes one generator's leads in parts, for tests that need more input
/// to arrive at a chosen moment: the parts together are one generated
/// stream, so repeats across parts are expected where they fall.
pub struct Writer {
    topic: String,
    producer: BaseProducer,
    generator: Generator,
    written: Written,
}

impl Writer {
    pub fn new(topic: &str, options: GeneratorOptions) -> Writer {
        Writer {
            topic: topic.to_owned(),
            producer: rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("enable.idempotence", "true")
                .set("linger.ms", "20")
                // Room for hostile records just over leadflow's input limit.
                .set("message.max.bytes", "2000000")
                .create()
                .expect("producer"),
            generator: Generator::new(options),
            written: Written {
                expected: HashMap::new(),
                count: 0,
                preloaded: BTreeSet::new(),
            },
        }
    }

    /// Writes the next `count` leads and waits until the broker has them.
    pub fn write(&mut self, count: usize) {
        let topic = self.topic.as_str();
        // Stamped with the time of writing, as `leadflow produce` does (the
        // event time is in `received_at`), a millisecond apart so that equal
        // values (repeats of leads without an envelope) stay apart; all in
        // the past, so none is refused as too far ahead.
        let base = super::now_ms() - count as i64;
        for n in 0..count {
            let Some(mut lead) = self.generator.next() else {
                break;
            };
            lead.timestamp_ms = base + n as i64;
            let mut record = BaseRecord::<str, [u8]>::to(topic)
                .key(&lead.key)
                .payload(&lead.value)
                .timestamp(lead.timestamp_ms);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    // Serving delivery reports frees room in a full queue.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        record = returned;
                        self.producer.poll(std::time::Duration::from_millis(50));
                    }
                    Err((e, _)) => panic!("cannot write a lead to {topic}: {e}"),
                }
            }
            // Equal records always mean the same outcome (a malformed record
            // that recurs, say), so keeping one entry per record loses nothing.
            let previous = self.written.expected.insert(
                (lead.timestamp_ms, lead.value.clone()),
                lead.expected.clone(),
            );
            assert!(
                previous.as_ref().is_none_or(|p| *p == lead.expected),
                "the same record expected in two places"
            );
            self.written.count += 1;
        }
        self.producer
            .flush(PATIENCE)
            .expect("all leads acknowledged");
    }

    /// What was written, for [`check`].
    pub fn finish(self) -> Written {
        self.written
    }
}

/// Leads written in the background at a steady rate, `per_tick` every
/// `tick`, until [`Feed::finish`]: load that goes on through a fault.
pub struct Feed {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writing: Option<std::thread::JoinHandle<Writer>>,
}

impl Feed {
    pub fn start(mut writer: Writer, per_tick: usize, tick: std::time::Duration) -> Feed {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let writing = std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                writer.write(per_tick);
                // The feed's pace (what is left of the tick after writing),
                // not a wait for anything.
                std::thread::sleep(tick.saturating_sub(started.elapsed()));
            }
            writer
        });
        Feed {
            stop,
            writing: Some(writing),
        }
    }

    /// Stops writing; everything written so far, for [`check`].
    pub fn finish(mut self) -> Written {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.writing
            .take()
            .map(|writing| writing.join().expect("the feed").finish())
            .expect("a feed finishes once")
    }
}

impl Drop for Feed {
    /// A test that failed stops its feed, which would otherwise write on
    /// into the next test's cluster.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub inputs: usize,
    pub campaign: usize,
    pub suppressed: usize,
    pub dead_letter: usize,
    pub duplicates: usize,
    pub test_leads: usize,
    /// Inputs that should have an output and have none.
    pub lost: Vec<String>,
    /// Inputs with more than one output.
    pub doubled: Vec<String>,
    /// Inputs whose one output is in the wrong place.
    pub misplaced: Vec<String>,
    /// Duplicates or test leads that reached an output.
    pub leaked: Vec<String>,
    /// Outputs that name no input record.
    pub orphans: Vec<String>,
    /// Dedupe keys found twice in a campaign topic within the window.
    pub repeated_keys: Vec<String>,
    /// Keys whose outputs are not in the order of their inputs.
    pub out_of_order: Vec<String>,
    /// Outputs whose value is not the lead their headers name.
    pub bad_values: Vec<String>,
    /// Dedupe keys live in the changelog without an output, or the reverse.
    pub changelog: Vec<String>,
    /// Output keys the changelog holds a tombstone for: forgotten, by a
    /// run with a memory budget too small for all its keys (else wrong).
    pub forgotten: Vec<String>,
}

impl Report {
    /// The checker's summary lines.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "checker: inputs={} campaign={} suppressed={} dead_letter={} duplicates={} test_leads={}",
            self.inputs,
            self.campaign,
            self.suppressed,
            self.dead_letter,
            self.duplicates,
            self.test_leads
        );
        let _ = write!(
            text,
            "checker: lost={} doubled={} misplaced={} leaked={} orphans={} repeated_keys={} out_of_order={} bad_values={} changelog={} forgotten={}",
            self.lost.len(),
            self.doubled.len(),
            self.misplaced.len(),
            self.leaked.len(),
            self.orphans.len(),
            self.repeated_keys.len(),
            self.out_of_order.len(),
            self.bad_values.len(),
            self.changelog.len(),
            self.forgotten.len()
        );
        text
    }

    /// Fails the test with the summary and examples unless all is well.
    pub fn assert_clean(&self) {
        assert!(
            self.forgotten.is_empty(),
            "{}\nforgotten: {:?}",
            self.summary(),
            self.forgotten.first()
        );
        self.assert_clean_but_forgotten();
    }

    /// [`Report::assert_clean`], but keys forgotten (evicted under the
    /// dedupe memory budget) are allowed.
    pub fn assert_clean_but_forgotten(&self) {
        let problems = [
            ("lost", &self.lost),
            ("doubled", &self.doubled),
            ("misplaced", &self.misplaced),
            ("leaked", &self.leaked),
            ("orphans", &self.orphans),
            ("repeated_keys", &self.repeated_keys),
            ("out_of_order", &self.out_of_order),
            ("bad_values", &self.bad_values),
            ("changelog", &self.changelog),
        ];
        let examples: Vec<String> = problems
            .iter()
            .filter_map(|(name, list)| list.first().map(|e| format!("{name}: {e}")))
            .collect();
        assert!(
            examples.is_empty(),
            "{}\nexamples: {examples:?}",
            self.summary()
        );
        let accounted =
            self.campaign + self.suppressed + self.dead_letter + self.duplicates + self.test_leads;
        assert_eq!(accounted, self.inputs, "{}", self.summary());
    }
}

/// One output record, as the checker sees it.
struct Output {
    topic: String,
    /// The output itself, to check against its input.
    message: OwnedMessage,
    reason: Option<String>,
    class: Option<String>,
}

/// Reads everything back and checks it against what was written.
pub fn check(env: &Env, written: &Written, window_ms: i64) -> Report {
    check_with(env, written, window_ms, Watched::default())
}

/// [`check`], with the changelog as `watch` saw it written during the run.
pub fn check_watched(env: &Env, written: &Written, window_ms: i64, watch: Watch) -> Report {
    check_with(env, written, window_ms, watch.finish())
}

fn check_with(env: &Env, written: &Written, window_ms: i64, watched: Watched) -> Report {
    let mut report = Report::default();
    let inputs = read_all(&env.input);
    report.inputs = inputs.len();
    assert_eq!(
        inputs.len(),
        written.count,
        "the input topic holds what was written"
    );

    let campaign_topic = |storefront: Storefront| match storefront {
        Storefront::AppSource => env.nurture.as_str(),
        Storefront::AzureMarketplace => env.demand_gen.as_str(),
    };
    let outputs = [
        env.nurture.as_str(),
        env.demand_gen.as_str(),
        env.suppressed.as_str(),
        env.dead_letter.as_str(),
    ];
    // Input position → its outputs, in the order they were read.
    let mut by_source: HashMap<(i32, i64), Vec<Output>> = HashMap::new();
    // (campaign topic, dedupe key) → event times of its records.
    let mut campaign_times: HashMap<(&str, Vec<u8>), Vec<i64>> = HashMap::new();
    for topic in outputs {
        // topic → key → [(source partition, source offset)] in output order.
        let mut sequences: BTreeMap<Vec<u8>, Vec<(i32, i64)>> = BTreeMap::new();
        for m in read_all(topic) {
            let source = source_position(&m);
            let Some(source) =
                source.filter(|_| header(&m, "leadflow.source.topic") == Some(env.input.as_str()))
            else {
                report
                    .orphans
                    .push(format!("{topic}/{}/{}", m.partition(), m.offset()));
                continue;
            };
            if let Some(key) = m.key() {
                sequences.entry(key.to_vec()).or_default().push(source);
            }
            if topic == env.nurture || topic == env.demand_gen {
                campaign_times
                    .entry((topic, m.key().map(<[u8]>::to_vec).unwrap_or_default()))
                    .or_default()
                    .push(
                        header(&m, "leadflow.source.timestamp")
                            .and_then(|ts| ts.parse().ok())
                            .unwrap_or_default(),
                    );
            }
            by_source.entry(source).or_default().push(Output {
                topic: topic.to_owned(),
                reason: header(&m, "leadflow.suppressed.reason").map(str::to_owned),
                class: header(&m, "leadflow.error.class").map(str::to_owned),
                message: m,
            });
        }
        for (key, sources) in sequences {
            let mut last: HashMap<i32, i64> = HashMap::new();
            for (partition, offset) in sources {
                let previous = last.insert(partition, offset);
                if previous.is_some_and(|p| p >= offset) {
                    report.out_of_order.push(format!(
                        "{topic} key {} input {partition}/{offset} after {partition}/{previous:?}",
                        String::from_utf8_lossy(&key)
                    ));
                }
            }
        }
    }

    let changelog = changelog_keys(&format!("{}-dedupe-changelog", env.group), watched);
    report.changelog.extend(
        changelog
            .vanished
            .iter()
            .map(|key| format!("changelog key {key} vanished: live when last watched")),
    );
    // Dedupe keys of campaign and suppressed records.
    let mut output_keys: BTreeSet<String> = BTreeSet::new();
    for m in &inputs {
        let position = (m.partition(), m.offset());
        let name = format!("{}/{}", position.0, position.1);
        let expected = m
            .payload()
            .zip(m.timestamp().to_millis())
            .and_then(|(value, ts)| written.expected.get(&(ts, value.to_vec())))
            .unwrap_or_else(|| panic!("input {name} was not written by this test"));
        let found = by_source.remove(&position).unwrap_or_default();
        let must_be: Option<(&str, Option<&str>, Option<&str>)> = match expected {
            Expected::Campaign(storefront, _) => {
                report.campaign += 1;
                Some((campaign_topic(*storefront), None, None))
            }
            Expected::Suppressed(reason, _) => {
                report.suppressed += 1;
                Some((env.suppressed.as_str(), Some(*reason), None))
            }
            Expected::DeadLetter(class) => {
                report.dead_letter += 1;
                Some((env.dead_letter.as_str(), None, Some(*class)))
            }
            Expected::Duplicate => {
                report.duplicates += 1;
                None
            }
            Expected::TestLead => {
                report.test_leads += 1;
                None
            }
        };
        match (must_be, found.as_slice()) {
            (None, []) => {}
            (None, [first, ..]) => {
                let key = first.message.key().map(String::from_utf8_lossy);
                let forgotten = key.is_some_and(|key| changelog.ever_forgotten.contains(&*key));
                report.leaked.push(format!(
                    "{name} ({expected:?}) in {}{}",
                    first.topic,
                    if forgotten {
                        " (its key had been forgotten)"
                    } else {
                        ""
                    }
                ));
            }
            (Some((topic, _, _)), []) => report.lost.push(format!("{name} for {topic}")),
            (Some((topic, reason, class)), [one]) => {
                if one.topic != topic
                    || reason.is_some_and(|r| one.reason.as_deref() != Some(r))
                    || class.is_some_and(|c| one.class.as_deref() != Some(c))
                {
                    report.misplaced.push(format!(
                        "{name} for {topic} {reason:?}{class:?}, in {} {:?}{:?}",
                        one.topic, one.reason, one.class
                    ));
                } else if let Err(why) = value_matches(env, m, one) {
                    report
                        .bad_values
                        .push(format!("{name} in {}: {why}", one.topic));
                }
                if one.topic != env.dead_letter
                    && let Some(key) = one.message.key()
                {
                    output_keys.insert(String::from_utf8_lossy(key).into_owned());
                }
            }
            (Some(_), many) => report
                .doubled
                .push(format!("{name} written {} times", many.len())),
        }
    }
    for (source, outputs) in by_source {
        report.orphans.push(format!(
            "{}/{} (no such input) in {}",
            source.0, source.1, outputs[0].topic
        ));
    }

    for key in output_keys.difference(&changelog.live) {
        match changelog.tombstoned.contains(key) {
            true => report.forgotten.push(key.clone()),
            false => report
                .changelog
                .push(format!("output key {key} never in the changelog")),
        }
    }
    for key in changelog.live.difference(&output_keys) {
        if written.preloaded.contains(key) {
            continue;
        }
        report
            .changelog
            .push(format!("changelog key {key} has no output"));
    }

    for ((topic, key), mut times) in campaign_times {
        times.sort_unstable();
        if times.windows(2).any(|w| w[1] - w[0] < window_ms) {
            report.repeated_keys.push(format!(
                "{topic} key {} at {times:?}",
                String::from_utf8_lossy(&key)
            ));
        }
    }
    report
}

/// Whether an output's value is the lead of its input `input`.
fn value_matches(env: &Env, input: &OwnedMessage, output: &Output) -> Result<(), String> {
    let m = &output.message;
    let payload = m.payload().unwrap_or_default();
    let original = input.payload().unwrap_or_default();
    if output.topic == env.dead_letter {
        return match header(m, "leadflow.error.truncated") {
            None if payload == original => Ok(()),
            Some(_) if !payload.is_empty() && original.starts_with(payload) => Ok(()),
            _ => Err(format!(
                "dead letter of {} bytes is not its input's {} bytes",
                payload.len(),
                original.len()
            )),
        };
    }
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let input_id = serde_json::from_slice::<serde_json::Value>(original)
        .ok()
        .and_then(|v| {
            v.get("event_id")
                .and_then(|id| id.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{}/{}/{}", env.input, input.partition(), input.offset()));
    let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
    let campaign = if output.topic == env.nurture {
        Some("nurture")
    } else if output.topic == env.demand_gen {
        Some("demand-gen")
    } else {
        None
    };
    let checks = [
        (
            "event_id",
            value["event_id"].as_str() == Some(input_id.as_str()),
        ),
        (
            "dedupe_key",
            value["dedupe_key"].as_str() == Some(key.as_ref()),
        ),
        ("campaign", value["campaign"].as_str() == campaign),
        (
            "suppressed",
            value["suppressed"].as_str() == output.reason.as_deref(),
        ),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        None => Ok(()),
        Some((field, _)) => Err(format!("its {field} does not match: {value}")),
    }
}

/// The dedupe keys (hex) of the changelog's `s` records.
struct ChangelogKeys {
    /// Keys whose latest record is a value.
    live: BTreeSet<String>,
    /// Keys whose latest record is a tombstone, or was when watched (the
    /// cleaner has removed it since).
    tombstoned: BTreeSet<String>,
    /// Keys with a tombstone anywhere: forgotten at some point.
    ever_forgotten: BTreeSet<String>,
    /// Keys live when watched, and gone from the changelog since: no
    /// compaction removes a key without a tombstone.
    vanished: Vec<String>,
}

/// A changelog key: the tag `s` and the 128-bit dedupe key.
type SeenKey = [u8; 17];

fn seen_key(m: &OwnedMessage) -> Option<SeenKey> {
    m.key()
        .filter(|key| key.first() == Some(&b's'))
        .and_then(|key| SeenKey::try_from(key).ok())
}

/// Reads `changelog` whole, and adds what `watched` saw of records the
/// cleaner has removed since. The format is the one documented in
/// `stages::dedupe`: a tag byte and the 128-bit key, big-endian.
fn changelog_keys(changelog: &str, watched: Watched) -> ChangelogKeys {
    let mut now = Watched::default();
    for m in read_all(changelog) {
        now.note(&m);
    }
    merged(now, watched)
}

/// What the changelog holds `now`, completed by what was `watched`.
fn merged(mut now: Watched, watched: Watched) -> ChangelogKeys {
    let mut vanished = Vec::new();
    for (key, live) in watched.latest {
        if let std::collections::hash_map::Entry::Vacant(gone) = now.latest.entry(key) {
            match live {
                true => vanished.push(changelog_key_hex(&key)),
                false => {
                    gone.insert(false);
                }
            }
        }
    }
    let (live, tombstoned): (Vec<_>, Vec<_>) = now.latest.into_iter().partition(|(_, live)| *live);
    let hex = |keys: Vec<(SeenKey, bool)>| keys.iter().map(|(k, _)| changelog_key_hex(k)).collect();
    let mut ever_forgotten = now.ever_forgotten;
    ever_forgotten.extend(watched.ever_forgotten);
    ChangelogKeys {
        live: hex(live),
        tombstoned: hex(tombstoned),
        ever_forgotten,
        vanished,
    }
}

/// What a read of the changelog saw: each key's latest record (a value or
/// a tombstone), and the keys with a tombstone anywhere.
#[derive(Default)]
struct Watched {
    latest: HashMap<SeenKey, bool>,
    ever_forgotten: BTreeSet<String>,
}

impl Watched {
    fn note(&mut self, m: &OwnedMessage) {
        for (key, live) in seen_changes(m) {
            if !live {
                self.ever_forgotten.insert(changelog_key_hex(&key));
            }
            self.latest.insert(key, live);
        }
    }
}

/// The `s` changes a changelog record holds, in order, each with whether
/// it is a value (not a tombstone): the record's own key and value, or
/// (key tag `b`) each change of its batch: after a format byte (1), `1`,
/// the 17-byte key and a 16-byte value, or `0` and the key.
fn seen_changes(m: &OwnedMessage) -> Vec<(SeenKey, bool)> {
    if m.key().and_then(|k| k.first()) != Some(&b'b') {
        return seen_key(m)
            .map(|k| (k, m.payload().is_some()))
            .into_iter()
            .collect();
    }
    let value = m.payload().expect("a changelog batch has a value");
    let (&1, mut rest) = value.split_first().expect("a changelog batch's format") else {
        panic!("a changelog batch of an unknown format: {value:?}");
    };
    let mut changes = Vec::new();
    while let Some((&op, after)) = rest.split_first() {
        let (key, after) = after.split_at_checked(17).expect("a change's key");
        let key = SeenKey::try_from(key).expect("17 bytes");
        rest = match op {
            1 => after.split_at_checked(16).expect("a change's value").1,
            0 => after,
            other => panic!("a change of unknown kind {other}"),
        };
        if key[0] == b's' {
            changes.push((key, op == 1));
        }
    }
    changes
}

/// The changelog read as it is written, for a run long enough that Kafka's
/// cleaner removes tombstones (leadflow's changelog keeps them 10 minutes):
/// a read at the end alone could not tell a key that was forgotten from
/// one that was never written.
pub struct Watch {
    stop: Arc<AtomicBool>,
    reader: std::thread::JoinHandle<Watched>,
}

impl Watch {
    /// Starts reading `env`'s changelog from its beginning.
    pub fn start(env: &Env) -> Watch {
        let topic = format!("{}-dedupe-changelog", env.group);
        let consumer = consumer(None, false);
        let mut assignment = TopicPartitionList::new();
        for partition in partitions(&consumer, &topic) {
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&assignment).expect("assign");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let reader = std::thread::spawn(move || {
            let mut watched = Watched::default();
            while !stopped.load(Ordering::Relaxed) {
                // A broker down or moving: librdkafka goes on by itself, and
                // what it misses meanwhile the final read has, unless it falls
                // 10 minutes behind (then keys "vanish").
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
                    watched.note(&m.detach());
                }
            }
            watched
        });
        Watch { stop, reader }
    }

    fn finish(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        self.reader.join().expect("changelog watch")
    }
}

fn source_position(m: &OwnedMessage) -> Option<(i32, i64)> {
    Some((
        header(m, "leadflow.source.partition")?.parse().ok()?,
        header(m, "leadflow.source.offset")?.parse().ok()?,
    ))
}

/// A dedupe key as leadflow writes it to the changelog: a `seen` key (tag
/// `s` and a 128-bit hash, the `i`-th of a made-up set) first emitted and
/// last seen at `at_ms`.
pub fn changelog_record(i: u64, at_ms: i64) -> (Vec<u8>, [u8; 16]) {
    let mut key = vec![b's'];
    let hash = u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    key.extend_from_slice(&hash.to_be_bytes());
    let mut value = [0; 16];
    value[..8].copy_from_slice(&at_ms.to_be_bytes());
    value[8..].copy_from_slice(&at_ms.to_be_bytes());
    (key, value)
}

/// The key of [`changelog_record`] in hex, as the checker names keys.
pub fn changelog_key_hex(key: &[u8]) -> String {
    key[1..].iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes raw changelog records to their partitions, as a previous run
/// of leadflow would have.
pub fn write_changelog(topic: &str, records: impl IntoIterator<Item = (i32, (Vec<u8>, [u8; 16]))>) {
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    for (partition, (key, value)) in records {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .key(key.as_slice())
            .payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    producer.poll(std::time::Duration::from_millis(50));
                }
            }
        }
    }
    producer.flush(PATIENCE).expect("changelog written");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &SeenKey, live: bool) -> OwnedMessage {
        OwnedMessage::new(
            live.then(|| vec![0; 16]),
            Some(key.to_vec()),
            "changelog".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            0,
            None,
        )
    }

    fn key(i: u64) -> SeenKey {
        SeenKey::try_from(changelog_record(i, 0).0.as_slice()).expect("17 bytes")
    }

    #[test]
    fn tombstones_the_cleaner_removed_still_count_as_forgotten() {
        let _deadline = crate::common::deadline(Duration::from_secs(5));
        let (forgotten, kept, lost, dropped) = (key(1), key(2), key(3), key(4));
        let mut watched = Watched::default();
        for (k, live) in [
            (forgotten, true),
            (forgotten, false),
            (kept, true),
            (lost, true),
            (dropped, true),
            (dropped, false),
        ] {
            watched.note(&record(&k, live));
        }
        // At the end the cleaner has removed `forgotten`'s tombstone (and
        // its value), and `dropped` came back; `lost` is gone without one.
        let mut now = Watched::default();
        now.note(&record(&kept, true));
        now.note(&record(&dropped, true));
        let keys = merged(now, watched);
        let hex = |k: &SeenKey| changelog_key_hex(k);
        assert!(keys.tombstoned.contains(&hex(&forgotten)));
        assert!(keys.ever_forgotten.contains(&hex(&forgotten)));
        assert!(keys.ever_forgotten.contains(&hex(&dropped)));
        assert_eq!(
            keys.live,
            BTreeSet::from([hex(&kept), hex(&dropped)]),
            "the changelog's end decides what is live"
        );
        assert_eq!(keys.vanished, vec![hex(&lost)]);
    }
}
