//! Operating leadflow against the real local broker: the metrics endpoint
//! (checked by promtool and against what the topics hold), consumer lag
//! after a rebalance, readiness while dedupe state is restored, JSON logs
//! without personal data, and graceful shutdown.

#![cfg(feature = "kafka-tests")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::checker::{changelog_record, write_changelog, write_generated};
use common::faults::{FAILOVER, finish_and_check, leads, repartition, wait_for_progress};
use common::ops::{eventually, get, listen_on, promtool_check, sample, scrape, series, wait_for};
use common::{Env, PATIENCE, Running, read_all, signal};
use leadflow::generate::{Expected, Generator, GeneratorOptions};

/// Starts `leadflow run` serving HTTP on a free port.
fn spawn_run(env: &Env, name: &str, extra: &[&str]) -> (Running, u16) {
    spawn_run_with(env, name, extra, &[])
}

/// [`spawn_run`] with extra environment variables.
fn spawn_run_with(env: &Env, name: &str, extra: &[&str], vars: &[(&str, &str)]) -> (Running, u16) {
    let port = common::ops::free_port();
    let listen = listen_on(port);
    let mut args = vec!["run", listen[0].as_str(), listen[1].as_str()];
    args.extend_from_slice(extra);
    (env.spawn_with(name, &args, Stdio::null(), vars), port)
}

/// `leadflow_leads_total` for one outcome.
fn leads_of(text: &str, outcome: &str) -> u64 {
    sample(
        text,
        &format!("leadflow_leads_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0.0) as u64
}

/// The (topic, partition) pairs a scrape has a consumer lag for, with the lag.
fn lags(text: &str) -> BTreeMap<String, f64> {
    series(text, "leadflow_consumer_lag")
        .into_iter()
        .map(|(labels, value)| (labels.to_owned(), value))
        .collect()
}

/// SIGTERM, then the exit status within `patience`.
fn stop(running: &mut Running, patience: Duration) -> std::process::ExitStatus {
    signal(&running.0, "TERM");
    wait_for("the process to exit", patience, || {
        running.0.try_wait().expect("poll process")
    })
}

#[test]
fn metrics_agree_with_the_topics_and_lag_follows_rebalances() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new(
        "metrics",
        3,
        "[kafka.consumer]\n\"statistics.interval.ms\" = \"500\"\n",
    );
    let n = 3_000;
    let seed = 5;
    write_generated(&env.input, n, seed);
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    let mut classes: BTreeMap<&str, u64> = BTreeMap::new();
    let generator = Generator::new(GeneratorOptions {
        seed,
        ..GeneratorOptions::default()
    });
    for lead in generator.take(n) {
        let outcome = match lead.expected {
            Expected::Campaign(..) => "campaign",
            Expected::Suppressed(..) => "suppressed",
            Expected::Duplicate => "duplicate",
            Expected::TestLead => "test",
            Expected::DeadLetter(class) => {
                *classes.entry(class).or_default() += 1;
                "dead_letter"
            }
        };
        *expected.entry(outcome).or_default() += 1;
    }

    // At debug level, so that the log check below covers every level.
    let (mut a, port_a) =
        spawn_run_with(&env, "a", &["--instance-id", "a"], &[("RUST_LOG", "debug")]);
    let text = eventually("every lead counted in leadflow_leads_total", || {
        let text = get(port_a, "/metrics")?.1;
        let counted: u64 = ["campaign", "suppressed", "duplicate", "test", "dead_letter"]
            .iter()
            .map(|o| leads_of(&text, o))
            .sum();
        (counted == n as u64).then_some(text)
    });
    promtool_check(&text);

    for (outcome, count) in &expected {
        assert_eq!(leads_of(&text, outcome), *count, "{outcome}");
    }
    let input = format!("leadflow_records_in_total{{topic=\"{}\"}}", env.input);
    assert_eq!(sample(&text, &input), Some(n as f64));
    for topic in [
        &env.nurture,
        &env.demand_gen,
        &env.suppressed,
        &env.dead_letter,
    ] {
        let out = format!("leadflow_records_out_total{{topic=\"{topic}\"}}");
        let records = read_all(topic).len() as f64;
        assert_eq!(sample(&text, &out).unwrap_or(0.0), records, "{topic}");
    }
    for (class, count) in &classes {
        let found: f64 = series(&text, "leadflow_dead_letters_total")
            .iter()
            .filter(|(labels, _)| labels.contains(&format!("class=\"{class}\"")))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(found, *count as f64, "dead letters of class {class}");
    }
    let scored = expected["campaign"] + expected.get("suppressed").copied().unwrap_or(0);
    let graded: f64 = series(&text, "leadflow_lead_grades_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(graded, scored as f64);
    assert_eq!(
        sample(&text, "leadflow_lead_score_count"),
        Some(scored as f64)
    );
    assert_eq!(
        sample(&text, "leadflow_dedupe_hits_total"),
        Some(expected["duplicate"] as f64)
    );
    assert!(sample(&text, "leadflow_dedupe_keys").is_some_and(|k| k > 0.0));
    assert!(
        sample(&text, "leadflow_transactions_total{result=\"committed\"}").is_some_and(|c| c > 0.0)
    );
    assert!(sample(&text, "leadflow_end_to_end_latency_seconds_count").is_some_and(|c| c > 0.0));
    assert!(sample(&text, "leadflow_resident_memory_bytes").is_some_and(|b| b > 1e6));
    assert_eq!(sample(&text, "leadflow_ready"), Some(1.0));

    // Lag: one series per assigned partition of both topics, all caught up.
    let all = eventually("lag of all six partitions, caught up", || {
        let lags = lags(&get(port_a, "/metrics")?.1);
        (lags.len() == 6 && lags.values().all(|lag| *lag == 0.0)).then_some(lags)
    });

    // A second process takes some partitions: each reports lag for its own
    // partitions only, and together they cover all of them.
    let (mut b, port_b) = spawn_run(&env, "b", &["--instance-id", "b"]);
    eventually("lag split between the two processes", || {
        let of_a = lags(&get(port_a, "/metrics")?.1);
        let of_b = lags(&get(port_b, "/metrics")?.1);
        let a_keys: BTreeSet<&String> = of_a.keys().collect();
        let b_keys: BTreeSet<&String> = of_b.keys().collect();
        let union: BTreeSet<&String> = a_keys.union(&b_keys).copied().collect();
        let split = !a_keys.is_empty()
            && !b_keys.is_empty()
            && a_keys.is_disjoint(&b_keys)
            && union == all.keys().collect();
        split.then_some(())
    });
    let text = scrape(port_a);
    assert!(sample(&text, "leadflow_rebalances_total{kind=\"revoke\"}").is_some_and(|r| r >= 1.0));

    assert!(stop(&mut b, PATIENCE).success(), "{}", b.log());
    assert!(stop(&mut a, PATIENCE).success(), "{}", a.log());
    // `run` logs JSON lines when stderr is not a terminal, and no log line
    // carries an email address. Each committed batch's line names its
    // span: the records and the offset ranges of the batch.
    let log = a.log();
    let mut batch_offsets = 0;
    for line in log.lines() {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
        assert!(!line.contains('@'), "personal data in the log: {line}");
        if parsed["fields"]["message"] == "batch committed" {
            let span = &parsed["span"];
            assert_eq!(span["name"], "batch", "{line}");
            assert!(span["records"].as_u64().is_some_and(|r| r > 0), "{line}");
            let offsets = span["offsets"].as_str().unwrap_or_default();
            if offsets.contains(&format!("{}/", env.input)) {
                batch_offsets += 1;
            }
        }
    }
    assert!(batch_offsets > 0, "no batch span with input offsets: {log}");
}

#[test]
fn readiness_is_false_while_dedupe_state_restores() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("ready", 2, "[pipeline]\nrepartition = false\n");
    let changelog = format!("{}-dedupe-changelog", env.group);
    let per_partition = 60_000_u64;
    write_changelog(
        &changelog,
        (0..2 * per_partition).map(|i| ((i % 2) as i32, changelog_record(i, 1_760_000_000_000))),
    );

    let (mut run, port) = spawn_run(&env, "run", &[]);
    // Every answer of /readyz until the first 200, in order.
    let mut answers: Vec<(u16, String)> = Vec::new();
    eventually("/readyz to say ready", || {
        let answer = get(port, "/readyz")?;
        let ready = answer.0 == 200;
        if answers.last() != Some(&answer) {
            answers.push(answer);
        }
        ready.then_some(())
    });
    assert_eq!(get(port, "/healthz").map(|a| a.0), Some(200));
    let restoring = answers
        .iter()
        .position(|(status, body)| *status == 503 && body.contains("restoring dedupe state"));
    assert!(restoring.is_some(), "never reported restoring: {answers:?}");
    assert!(
        answers[..answers.len() - 1].iter().all(|(s, _)| *s == 503),
        "{answers:?}"
    );
    let text = scrape(port);
    assert_eq!(
        sample(&text, "leadflow_restored_records_total"),
        Some((2 * per_partition) as f64)
    );
    assert_eq!(
        sample(&text, "leadflow_dedupe_keys"),
        Some((2 * per_partition) as f64)
    );
    assert!(sample(&text, "leadflow_restore_duration_seconds_count").is_some_and(|c| c >= 1.0));
    assert!(stop(&mut run, PATIENCE).success(), "{}", run.log());
}

#[test]
fn sigterm_mid_run_commits_leaves_the_group_and_a_restart_finishes_exactly() {
    let _deadline = common::deadline(Duration::from_secs(120));
    // Through the hop, so that a stop finds leads on both hops.
    let config = format!("{FAILOVER}shutdown_timeout_ms = 10000\nrepartition_shortcut = false\n");
    let env = Env::new("sigterm", 3, &config);
    let n = leads();
    let written = write_generated(&env.input, n, 23);
    let topic = repartition(&env);
    let (mut run, _) = spawn_run(&env, "run", &[]);
    wait_for_progress(&env, &topic, n as i64 / 3, &mut [&mut run], PATIENCE);
    let stopped = Instant::now();
    let status = stop(&mut run, Duration::from_secs(10));
    let took = stopped.elapsed();
    assert!(status.success(), "{}", run.log());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(run.log().contains("\"stopped\""), "{}", run.log());
    // It left the group: no member remains, without waiting for a session
    // timeout.
    let members = common::group_members(&env.group);
    assert_eq!(members, 0, "members left in {}", env.group);
    eprintln!("stopped in {} ms", took.as_millis());
    finish_and_check(&env, &written);
}

/// Leads counted in `leadflow_leads_total`, every outcome.
fn counted(text: &str) -> u64 {
    ["campaign", "suppressed", "duplicate", "test", "dead_letter"]
        .iter()
        .map(|o| leads_of(text, o))
        .sum()
}

/// `leadflow_reloads_total` for one result.
fn reloads(text: &str, result: &str) -> u64 {
    sample(
        text,
        &format!("leadflow_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0) as u64
}

/// Waits until the run has counted `n` leads.
fn wait_for_leads(port: u16, n: u64) {
    eventually(&format!("{n} leads counted"), || {
        (counted(&get(port, "/metrics")?.1) == n).then_some(())
    });
}

#[test]
fn hot_reload_swaps_rules_and_routes_between_transactions_and_refuses_a_bad_file() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules.toml");
    let default_rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/scoring.toml"))
            .expect("default rules");
    let version = |v: &str| {
        default_rules.replace(
            "version = \"default-2025.1\"",
            &format!("version = \"{v}\""),
        )
    };
    std::fs::write(&rules, version("test-v1")).expect("write rules");
    let env = Env::new(
        "reload",
        2,
        &format!(
            "[scoring]\nrules_file = {:?}\n",
            rules.display().to_string()
        ),
    );
    let (mut run, port) = spawn_run(&env, "run", &[]);
    write_generated(&env.input, 300, 31);
    wait_for_leads(port, 300);
    let text = scrape(port);
    assert_eq!(
        sample(&text, "leadflow_rules{version=\"test-v1\"}"),
        Some(1.0)
    );
    let boundary = common::ends(&env.input);

    // A routing change by editing the config file: nurture takes grade A only.
    let config = std::fs::read_to_string(&env.config).expect("config");
    let nurture = "campaign = \"nurture\"\nstorefront = \"appsource\"\n";
    assert!(config.contains(nurture));
    let config = config.replace(nurture, &format!("{nurture}grades = [\"A\"]\n"));
    std::fs::write(&env.config, config).expect("write config");
    eventually("the routing change applied", || {
        (reloads(&get(port, "/metrics")?.1, "applied") == 1).then_some(())
    });
    // A rules change by editing the rules file.
    std::fs::write(&rules, version("test-v2")).expect("write rules");
    let text = eventually("the rules change applied", || {
        let text = get(port, "/metrics")?.1;
        (reloads(&text, "applied") == 2).then_some(text)
    });
    assert_eq!(
        sample(&text, "leadflow_rules{version=\"test-v2\"}"),
        Some(1.0)
    );
    assert!(!text.contains("version=\"test-v1\""), "{text}");
    write_generated(&env.input, 300, 32);
    wait_for_leads(port, 600);

    // A broken rules file, announced by SIGHUP: refused, v2 stays.
    let refused_before = reloads(&scrape(port), "refused");
    std::fs::write(&rules, "version = \"broken\"\n[behaviour\n").expect("write rules");
    signal(&run.0, "HUP");
    eventually("the broken rules refused", || {
        (reloads(&get(port, "/metrics")?.1, "refused") > refused_before).then_some(())
    });
    write_generated(&env.input, 300, 33);
    wait_for_leads(port, 900);
    let text = scrape(port);
    assert_eq!(reloads(&text, "applied"), 2);
    assert_eq!(
        sample(&text, "leadflow_rules{version=\"test-v2\"}"),
        Some(1.0)
    );
    assert!(stop(&mut run, PATIENCE).success(), "{}", run.log());
    assert!(run.log().contains("reload refused"), "{}", run.log());

    // Every output names the rules that scored it: v1 before the reload,
    // v2 after, and the broken file never took over.
    let mut nurture_grades_before = BTreeSet::new();
    for topic in [&env.nurture, &env.demand_gen, &env.suppressed] {
        for m in read_all(topic) {
            let (partition, offset) = common::source_of(&m);
            let before = offset < boundary[&partition];
            let rules_version = common::header(&m, "leadflow.rules.version");
            let expected = if before { "test-v1" } else { "test-v2" };
            assert_eq!(
                rules_version,
                Some(expected),
                "{topic} {partition}/{offset}"
            );
            if topic == &env.nurture {
                let grade = common::header(&m, "leadflow.grade").expect("grade header");
                if before {
                    nurture_grades_before.insert(grade.to_owned());
                } else {
                    assert_eq!(grade, "A", "{partition}/{offset} routed by the old table");
                }
            }
        }
    }
    assert!(
        nurture_grades_before.len() > 1,
        "the old table let every grade through: {nurture_grades_before:?}"
    );
}
