//! The steps the cluster scenarios (`tests/cluster.rs`) and the soak
//! (`tests/soak.rs`) are made of: a fresh cluster with replicated topics
//! under a steady feed of leads, waiting for the pipeline to go on or to
//! recover from a fault, pausing an instance, and stopping and reporting.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use leadflow::generate::GeneratorOptions;

use super::checker::{Feed, Writer};
use super::cluster::{Cluster, replicas};
use super::faults::{FAILOVER, leads, repartition, wait_for_progress};
use super::ops::wait_for;
use super::{
    Env, PATIENCE, Running, committed, ends, signal, starts, try_committed, try_watermarks,
};

/// A fresh cluster, replicated topics for a test named `name`, a second's
/// worth of leads written to its input, and more arriving steadily until
/// the feed is finished, so that faults hit a pipeline under load: 200 a
/// second at the default size, more in proportion at a larger one (up to
/// 800), so that the steps of a scenario (each a share of its leads) are
/// reached in about as much time. Either leaves one instance room to catch
/// up after a fault on this machine, with the three brokers beside it and
/// the test's small transactions (at most 500 records): the debug build of
/// the default size manages about 700 a second there, the release build
/// about 1,300 leads (both hops) while Kafka's copier runs beside it, which
/// a feed of 1,333 a second left behind for good. The backlog at the start
/// is small on purpose: a large one is still being worked off at the first
/// fault, and the recovery measured is then the backlog's, not the fault's.
pub fn setup(name: &str, seed: u64) -> (Cluster, Env, Feed) {
    let per_tick = (20 * leads() / 30_000).clamp(20, 80);
    // Through the hop: the scenarios watch its progress and its purges.
    let extra = format!("{FAILOVER}repartition_shortcut = false\n");
    setup_with(name, seed, &extra, per_tick * 10, per_tick)
}

/// [`setup`] with leadflow configuration `extra`, `first` leads written
/// before the feed starts, and `per_tick` leads every 100 ms after.
pub fn setup_with(
    name: &str,
    seed: u64,
    extra: &str,
    first: usize,
    per_tick: usize,
) -> (Cluster, Env, Feed) {
    let cluster = Cluster::start(super::own_broker_port(400));
    let env = Env::replicated(name, 6, extra);
    // leadflow's topics, the changelog and the repartition topic included,
    // are replicated as asked.
    for topic in [
        &env.input,
        &env.nurture,
        &repartition(&env),
        &changelog(&env),
    ] {
        for (partition, (replicas, _)) in replicas(topic) {
            assert_eq!(replicas.len(), 3, "{topic}/{partition}");
        }
    }
    let mut writer = Writer::new(
        &env.input,
        GeneratorOptions {
            seed,
            ..GeneratorOptions::default()
        },
    );
    writer.write(first);
    let feed = Feed::start(writer, per_tick, Duration::from_millis(100));
    (cluster, env, feed)
}

/// `leadflow run` as instance `instance` (the suffix of its
/// `transactional.id`), its log named `name`: through the proxies at
/// `clients` when given (so that the network faults reach it), else
/// straight to the brokers.
pub fn instance(env: &Env, name: &str, instance: &str, clients: Option<&str>) -> Running {
    let mut vars = vec![("LEADFLOW_KAFKA__INSTANCE_ID", instance)];
    if let Some(clients) = clients {
        vars.push(("LEADFLOW_KAFKA__BOOTSTRAP_SERVERS", clients));
    }
    env.spawn_with(name, &["run"], std::process::Stdio::null(), &vars)
}

/// The dedupe changelog of `env`'s group.
pub fn changelog(env: &Env) -> String {
    format!("{}-dedupe-changelog", env.group)
}

/// Committed progress through the whole pipeline so far.
pub fn progress(env: &Env) -> i64 {
    committed(&env.group, &repartition(env)).values().sum()
}

/// Waits until the whole pipeline has committed `more` records past where
/// it stands, with every one of `alive` still running.
pub fn goes_on(env: &Env, more: i64, alive: &mut [&mut Running]) {
    let target = progress(env) + more;
    wait_for_progress(env, &repartition(env), target, alive, PATIENCE);
}

/// Records of the whole pipeline read by no commit yet: the input's and
/// the repartition topic's.
pub fn lag(env: &Env) -> i64 {
    [env.input.clone(), repartition(env)]
        .iter()
        .map(|topic| {
            let done = committed(&env.group, topic);
            behind(ends(topic).iter(), &done)
        })
        .sum()
}

/// How many records up to `ends` (each partition's end) are past the
/// commits in `done`.
fn behind<'a>(ends: impl Iterator<Item = (&'a i32, &'a i64)>, done: &BTreeMap<i32, i64>) -> i64 {
    ends.map(|(partition, end)| end - done.get(partition).copied().unwrap_or(0))
        .sum()
}

/// The pipeline's lag now, if measured within 2 s; `None` when not (a
/// leader or the group coordinator is gone). Waiting longer would measure
/// the probe, not leadflow: after a broker's `kill -9`, librdkafka's ask
/// for committed offsets can wait past its own timeout (issue 5456), and
/// the probe is left to finish on its own.
fn lags_now(env: &Env) -> Option<Lags> {
    let timeout = Duration::from_secs(1);
    let topics = [env.input.clone(), repartition(env)];
    let group = env.group.clone();
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        // Records not committed, and records committed.
        let of = |topic: &str| -> Option<(i64, i64)> {
            let done = try_committed(&group, topic, timeout).ok()?;
            let marks = try_watermarks(topic, timeout).ok()?;
            let lag = behind(
                marks.iter().map(|(partition, (_, end))| (partition, end)),
                &done,
            );
            Some((lag, done.values().sum()))
        };
        let lags =
            of(&topics[0])
                .zip(of(&topics[1]))
                .map(|((input, committed), (repartition, _))| Lags {
                    input,
                    repartition,
                    committed,
                });
        let _ = answer.send(lags);
    });
    answered.recv_timeout(timeout * 2).ok().flatten()
}

/// The pipeline's lag at one moment.
struct Lags {
    input: i64,
    repartition: i64,
    /// Input records committed, over all partitions.
    committed: i64,
}

/// How many input records were written so far, over all partitions: taken
/// before a fault, what [`recovered`] waits to see committed.
pub fn written_so_far(env: &Env) -> i64 {
    ends(&env.input).values().sum()
}

/// How long after `fault` the lag was back under one batch (500 records)
/// with every input record written before it (`written`, from
/// [`written_so_far`]) committed, and every one of `alive` still running.
/// The lag alone could be low while the pipeline stood still, when the
/// fault held the feed up too (its writes to a dead leader wait). Sampled
/// from 2 s after the fault, by when a pipeline it stopped is a second of
/// the feed (500 leads) behind. A recovery slower than 20 s prints the
/// lag, input and repartition apart (`?` where it could not be measured),
/// at each second: where the time went.
pub fn recovered(env: &Env, fault: Instant, written: i64, alive: &mut [&mut Running]) -> Duration {
    let after = Duration::from_secs(2);
    hold(fault, after, alive);
    let mut trace = String::new();
    let mut traced = None;
    let deadline = Instant::now() + PATIENCE;
    let time = loop {
        for running in alive.iter_mut() {
            assert!(
                running.0.try_wait().expect("poll run").is_none(),
                "run exited: {}",
                running.log()
            );
        }
        let lags = lags_now(env);
        let second = fault.elapsed().as_secs();
        if traced != Some(second) {
            traced = Some(second);
            let _ = match &lags {
                Some(lags) => write!(trace, " {second}s:{}+{}", lags.input, lags.repartition),
                None => write!(trace, " {second}s:?"),
            };
        }
        if lags.is_some_and(|lags| lags.input + lags.repartition < 500 && lags.committed >= written)
        {
            break fault.elapsed();
        }
        // A failure says where the time went: the lag by second, and what
        // each instance logged last.
        if Instant::now() >= deadline {
            let logs: Vec<String> = alive
                .iter()
                .map(|running| tail(&running.log(), 40))
                .collect();
            panic!(
                "timed out waiting for the lag back under one batch\nlag (input+repartition) by second:{trace}\n{}",
                logs.join("\n---\n")
            );
        }
        // Each probe is four new clients: a recovery is measured to 0.2 s,
        // without the probing loading the cluster it measures.
        std::thread::sleep(Duration::from_millis(200)); // polling interval of a condition wait
    };
    eprintln!(
        "recovered: lag under one batch {:.1} s after the fault",
        time.as_secs_f64()
    );
    if time > Duration::from_secs(20) {
        eprintln!("recovered: lag (input+repartition) by second:{trace}");
    }
    time
}

/// The last `lines` lines of `log`.
fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until leadflow has purged every partition of the repartition
/// topic past `since` (its log starts, taken after a fault): a purge can
/// fail while a leader is gone, and must work again once there is a new
/// one. Before, librdkafka's admin client kept the dead leader for up to 5
/// minutes, and every purge until then failed.
pub fn purged_past(env: &Env, since: &BTreeMap<i32, i64>, alive: &mut [&mut Running]) {
    let topic = repartition(env);
    // Two purge intervals (30 s), one of them for a purge that fails.
    wait_for(
        "every repartition partition purged again",
        Duration::from_secs(120),
        || {
            for running in alive.iter_mut() {
                assert!(
                    running.0.try_wait().expect("poll run").is_none(),
                    "run exited: {}",
                    running.log()
                );
            }
            let now = starts(&topic);
            since
                .iter()
                .all(|(p, start)| now.get(p).is_some_and(|now| now > start))
                .then_some(())
        },
    );
}

/// SIGTERM to each, then each must exit 0.
pub fn stop_all(runs: &mut [&mut Running]) {
    for run in runs.iter() {
        signal(&run.0, "TERM");
    }
    for run in runs.iter_mut() {
        let status = run.0.wait().expect("wait for run");
        assert!(status.success(), "graceful stop failed: {}", run.log());
    }
}

/// Keeps a fault that began at `since` in place until `length` has passed,
/// failing if any of `alive` exits meanwhile.
pub fn hold(since: Instant, length: Duration, alive: &mut [&mut Running]) {
    while since.elapsed() < length {
        for running in alive.iter_mut() {
            assert!(
                running.0.try_wait().expect("poll run").is_none(),
                "run exited during a fault: {}",
                running.log()
            );
        }
        std::thread::sleep(Duration::from_millis(500)); // the fault's length, not a readiness wait
    }
}

/// Prints how often a run restarted its pipeline, and why, and what it
/// warned about (each message once, with how often, librdkafka's own
/// connection noise left out).
pub fn report_restarts(run: &Running) {
    let log = run.log();
    let mut warnings: BTreeMap<String, usize> = BTreeMap::new();
    let mut restarts = 0;
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if !matches!(entry["level"].as_str(), Some("WARN" | "ERROR"))
            || entry["target"] == "librdkafka"
            || entry["fields"]["message"] == "Kafka client error"
        {
            continue;
        }
        let message = entry["fields"]["message"].as_str().unwrap_or_default();
        restarts += usize::from(message.starts_with("pipeline failed"));
        let error = entry["fields"]["error"].as_str().unwrap_or_default();
        let error: String = error.chars().take(160).collect();
        *warnings.entry(format!("{message}: {error}")).or_default() += 1;
    }
    eprintln!("restarts: {restarts}");
    for (warning, count) in warnings {
        eprintln!("  {count} × {warning}");
    }
}

/// How many times a run's log says `what`.
pub fn log_count(running: &Running, what: &str) -> usize {
    running.log().matches(what).count()
}

/// Pauses `zombie` with SIGSTOP past its session; `other` must take its
/// partitions over and commit past it; then wakes it, and stops it. Kept
/// running: `other`.
pub fn pause_and_wake(env: &Env, zombie: &mut Running, other: &mut Running) {
    let assigned = log_count(other, "partitions assigned");
    let written = written_so_far(env);
    signal(&zombie.0, "STOP");
    let paused = Instant::now();
    eprintln!("zombie: paused");
    wait_for("the other instance to take over", PATIENCE, || {
        (log_count(other, "partitions assigned") > assigned).then_some(())
    });
    recovered(env, paused, written, &mut [&mut *other]);
    goes_on(env, 1_000, &mut [&mut *other]);
    signal(&zombie.0, "CONT");
    eprintln!(
        "zombie: woken after {:.1} s",
        paused.elapsed().as_secs_f64()
    );
    goes_on(env, 1_000, &mut [&mut *other]);
    // Whether it rejoined or stopped on being fenced, nothing it wrote
    // after waking may be visible (the checker's part).
    signal(&zombie.0, "TERM");
    let status = zombie.0.wait().expect("wait for zombie");
    let log = zombie.log();
    let last: Vec<&str> = log.lines().rev().take(12).collect();
    eprintln!("zombie: exited with {status}; its last words, latest first:");
    for line in last {
        eprintln!("  {}", line.chars().take(400).collect::<String>());
    }
}
