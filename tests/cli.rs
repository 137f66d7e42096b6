//! The errors people hit first, checked without a broker: each is one line
//! on stderr naming the problem, and a non-zero exit within seconds.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn leadflow(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_leadflow"))
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("LEADFLOW_CONFIG")
        .env_remove("LEADFLOW_BOOTSTRAP_SERVERS")
        .output()
        .expect("run leadflow");
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
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("client.toml");
    std::fs::write(&path, "[kafka.client]\n\"no.such.property\" = \"1\"\n").expect("write");
    let (out, took) = leadflow(&["--config", path.to_str().expect("utf-8 path"), "run"]);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(10));
    let line = only_line(&out);
    assert!(line.contains("no.such.property"), "{line}");
}
