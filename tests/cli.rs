//! The errors people hit first, checked without a broker: each is one line
//! on stderr naming the problem, and a non-zero exit within seconds.

mod common;

use common::OutputWithin as _;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn leadflow(args: &[&str]) -> (Output, Duration) {
    leadflow_with(args, &[])
}

/// Runs leadflow with extra environment variables. Tests run in
/// parallel, so the HTTP endpoint takes any free port.
fn leadflow_with(args: &[&str], vars: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_leadflow"))
        .args(args)
        .env("RUST_LOG", "off")
        .env("LEADFLOW_HTTP__LISTEN", "127.0.0.1:0")
        .env_remove("LEADFLOW_CONFIG")
        .env_remove("LEADFLOW_BOOTSTRAP_SERVERS")
        .envs(vars.iter().copied())
        .output_within_patience("run leadflow");
    (out, started.elapsed())
}

fn only_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    stderr.trim_end().to_owned()
}

#[test]
fn an_unreachable_broker_fails_fast_with_one_line() {
    let _deadline = common::deadline(Duration::from_secs(120));
    // Port 1 on loopback: nothing listens there.
    for args in [
        &["--bootstrap-servers", "127.0.0.1:1", "run"][..],
        &[
            "--bootstrap-servers",
            "127.0.0.1:1",
            "produce",
            "--count",
            "1",
        ][..],
        &["--bootstrap-servers", "127.0.0.1:1", "topics", "create"][..],
    ] {
        let (out, took) = leadflow(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        let line = only_line(&out);
        assert!(line.contains("cannot reach Kafka at 127.0.0.1:1"), "{line}");
    }
}

#[test]
fn bad_configuration_names_file_key_and_reason() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[pipeline]\ncommit_interval_ms = -5\n").expect("write");
    let (out, _) = leadflow(&["--config", path.to_str().expect("utf-8 path"), "run"]);
    assert!(!out.status.success());
    let line = only_line(&out);
    assert!(
        line.contains("bad.toml") && line.contains("commit_interval_ms"),
        "{line}"
    );

    let (out, _) = leadflow(&["--config", "/nonexistent/leadflow.toml", "run"]);
    assert!(!out.status.success());
    assert!(only_line(&out).contains("cannot read config file /nonexistent/leadflow.toml"));
}

#[test]
fn an_unknown_librdkafka_property_is_refused() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("client.toml");
    std::fs::write(&path, "[kafka.client]\n\"no.such.property\" = \"1\"\n").expect("write");
    let (out, took) = leadflow(&["--config", path.to_str().expect("utf-8 path"), "run"]);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(10));
    let line = only_line(&out);
    assert!(line.contains("no.such.property"), "{line}");
}

#[test]
fn config_check_prints_the_effective_configuration_file_then_env_then_flags() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("leadflow.toml");
    std::fs::write(
        &path,
        "[pipeline]\ncommit_interval_ms = 50\nmax_batch_records = 7\nmax_record_bytes = 1000\n",
    )
    .expect("write");
    let file = path.to_str().expect("utf-8 path");
    let (out, _) = leadflow_with(
        &[
            "--set",
            "pipeline.max_batch_records=9",
            "--set",
            "kafka.client.\"linger.ms\"=20",
            "--set",
            "topics.input=raw.leads",
            "config",
            "check",
            file,
        ],
        &[
            ("LEADFLOW_PIPELINE__COMMIT_INTERVAL_MS", "70"),
            ("LEADFLOW_PIPELINE__MAX_BATCH_RECORDS", "8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("TOML on stdout");
    let pipeline = &effective["pipeline"];
    // File, then environment, then flags; untouched keys show their defaults.
    assert_eq!(pipeline["max_record_bytes"].as_integer(), Some(1000));
    assert_eq!(pipeline["commit_interval_ms"].as_integer(), Some(70));
    assert_eq!(pipeline["max_batch_records"].as_integer(), Some(9));
    assert_eq!(pipeline["delivery_timeout_ms"].as_integer(), Some(10_000));
    assert_eq!(effective["topics"]["input"].as_str(), Some("raw.leads"));
    assert_eq!(
        effective["kafka"]["client"]["linger.ms"].as_str(),
        Some("20")
    );
    assert_eq!(
        effective["routes"].as_array().map(Vec::len),
        Some(2),
        "default routes printed"
    );
}

#[test]
fn a_bad_override_names_its_variable_or_flag_and_the_key() {
    let _deadline = common::deadline(Duration::from_secs(120));
    for (vars, flags, names) in [
        (
            &[("LEADFLOW_PIPELINE__COMMIT_INTERVAL_MS", "soon")][..],
            &[][..],
            &[
                "LEADFLOW_PIPELINE__COMMIT_INTERVAL_MS",
                "commit_interval_ms",
            ][..],
        ),
        (
            &[("LEADFLOW_PIPELINE__COMMIT_INTERVL_MS", "5")][..],
            &[][..],
            &["commit_intervl_ms"][..],
        ),
        (
            &[][..],
            &["--set", "dedupe.window_days=0"][..],
            &["--set", "dedupe.window_days", "greater than 0"][..],
        ),
        (
            &[][..],
            &["--set", "nonsense"][..],
            &["--set", "KEY=VALUE"][..],
        ),
    ] {
        let args: Vec<&str> = flags
            .iter()
            .copied()
            .chain(["config", "check", "/dev/null"])
            .collect();
        let (out, _) = leadflow_with(&args, vars);
        assert!(!out.status.success(), "{vars:?} {flags:?} accepted");
        let line = only_line(&out);
        for name in names {
            assert!(line.contains(name), "{name} not in: {line}");
        }
    }
}

#[test]
fn a_taken_http_port_is_a_one_line_error() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let (out, took) = leadflow_with(&["run"], &[("LEADFLOW_HTTP__LISTEN", &address)]);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let line = only_line(&out);
    assert!(
        line.contains("http.listen") && line.contains(&address),
        "{line}"
    );
}

/// Runs `leadflow validate` with `input` on stdin.
fn validate_stdin(args: &[&str], input: &str) -> Output {
    common::piped(
        Command::new(env!("CARGO_BIN_EXE_leadflow"))
            .args([
                "--config",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config/quickstart.toml"),
                "validate",
            ])
            .args(args)
            .env("RUST_LOG", "off")
            .env_remove("LEADFLOW_CONFIG"),
        input,
        "leadflow validate",
    )
}

#[test]
fn validate_prints_one_json_object_per_lead_in_order_and_fails_on_dead_letters() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let examples = include_str!("data/raw-leads.jsonl");
    let leads: Vec<&str> = examples.lines().filter(|l| !l.trim().is_empty()).collect();
    let input = format!("{}\n{{\"broken\": \n{}\n", leads.join("\n"), leads[0]);
    let out = validate_stdin(&["--json", "-"], &input);
    assert!(!out.status.success(), "a dead letter must fail the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdicts: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(verdicts.len(), leads.len() + 2, "{stdout}");
    for (i, verdict) in verdicts.iter().enumerate() {
        assert_eq!(verdict["line"], i + 1, "{verdict}");
        let outcome = verdict["outcome"].as_str().expect("outcome");
        assert!(
            ["campaign", "suppressed", "duplicate", "test", "dead_letter"].contains(&outcome),
            "{verdict}"
        );
        if matches!(outcome, "campaign" | "suppressed") {
            assert!(
                verdict["score"].is_u64() && verdict["grade"].is_string(),
                "{verdict}"
            );
            assert!(verdict["reasons"].is_array(), "{verdict}");
            assert!(!verdict["topics"].as_array().expect("topics").is_empty());
        }
        if matches!(outcome, "dead_letter" | "suppressed") {
            assert!(verdict["class"].is_string(), "{verdict}");
        }
    }
    let broken = &verdicts[leads.len()];
    assert_eq!(broken["outcome"], "dead_letter");
    assert_eq!(broken["topics"][0], "leads.dlq");
    // The first lead again, last: a duplicate, unless it never got past decode.
    let first = verdicts[0]["outcome"].as_str().expect("outcome");
    let last = verdicts[leads.len() + 1]["outcome"]
        .as_str()
        .expect("outcome");
    if matches!(first, "campaign" | "suppressed") {
        assert_eq!(last, "duplicate");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("would be dead-lettered"), "{stderr}");
}

#[test]
fn validate_succeeds_when_every_lead_gets_through() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let examples = include_str!("data/raw-leads.jsonl");
    let leads: Vec<&str> = examples.lines().filter(|l| !l.trim().is_empty()).collect();
    let out = validate_stdin(&["--json", "-"], &leads.join("\n"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The examples that reach a campaign, validated again on their own.
    let routed: Vec<&str> = stdout
        .lines()
        .zip(&leads)
        .filter(|(verdict, _)| verdict.contains("\"outcome\":\"campaign\""))
        .map(|(_, lead)| *lead)
        .collect();
    assert!(!routed.is_empty(), "{stdout}");
    let out = validate_stdin(&["-"], &routed.join("\n"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.lines().count(), routed.len(), "{stdout}");
    for (i, line) in stdout.lines().enumerate() {
        assert!(line.starts_with(&format!("line {}", i + 1)), "{line}");
        assert!(line.contains(": campaign -> campaign."), "{line}");
        assert!(line.contains(" grade "), "{line}");
    }
}
