//! The test harness's own guarantees: every integration test has an
//! overall deadline, and a test past it fails the run within seconds,
//! with the logs of the children it started, and leaves none running.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::OutputWithin as _;

/// Run only in a child process, by the test below: a test that hangs.
#[test]
#[ignore = "hangs on purpose; run in a child process by a_test_past_its_deadline_fails_the_run"]
fn hangs_past_its_deadline() {
    let _deadline = common::deadline(Duration::from_secs(2));
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("child.log");
    let mut child = Command::new("sh")
        .args(["-c", "echo \"child $$ was here\" >&2; exec sleep 600"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start sh");
    let _watched = common::deadline::child(child.id(), "sleeper", Some(log));
    // Hangs here: the watchdog kills the child and ends the process.
    let _ = child.wait();
    loop {
        std::thread::park();
    }
}

/// Run only in a child process, by the test below: a test whose turn at
/// a shared resource comes after its own deadline would have passed.
#[test]
#[ignore = "run in a child process by waiting_for_a_turn_does_not_count_against_the_deadline"]
fn waits_its_turn_past_its_deadline() {
    let _deadline = common::deadline(Duration::from_secs(2));
    let turn = std::sync::Arc::new(std::sync::Mutex::new(()));
    let (taken, was_taken) = std::sync::mpsc::channel();
    let other = {
        let turn = std::sync::Arc::clone(&turn);
        std::thread::spawn(move || {
            let _held = turn.lock().expect("turn");
            taken.send(()).expect("taken");
            // Another test's turn, longer than this test's whole deadline.
            std::thread::sleep(Duration::from_secs(4));
        })
    };
    was_taken.recv().expect("the other test took its turn");
    let _mine = common::deadline::not_counting(|| turn.lock().expect("turn"));
    other.join().expect("the other test");
}

#[test]
fn waiting_for_a_turn_does_not_count_against_the_deadline() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let out = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--ignored", "--exact", "waits_its_turn_past_its_deadline"])
        .output_within_patience("the waiting test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[test]
fn a_test_past_its_deadline_fails_the_run() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let out = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--ignored", "--exact", "hangs_past_its_deadline"])
        .output_within_patience("the hanging test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "stderr:\n{stderr}");
    assert!(
        stderr.contains("test `hangs_past_its_deadline` is still running")
            && stderr.contains("past its overall deadline"),
        "{stderr}"
    );
    // The child's own log is in the failure, and the child is gone.
    let pid = stderr
        .split("child ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("the child's log in the report")
        .to_owned();
    assert!(
        stderr.contains(&format!("child {pid} was here")),
        "{stderr}"
    );
    common::ops::eventually("the sleeper killed", || {
        let alive = Command::new("kill")
            .args(["-0", &pid])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        (!alive).then_some(())
    });
}

/// A source check, because the harness cannot arm a deadline for a test
/// that does not ask: every `#[test]` in `tests/` starts by arming one.
#[test]
fn every_test_has_an_overall_deadline() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let mut missing = Vec::new();
    let mut tests = 0;
    for entry in std::fs::read_dir(dir).expect("tests/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("test source");
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            if line.trim() != "#[test]" {
                continue;
            }
            tests += 1;
            // The body's first line is the one after the signature's `{`.
            let body = lines[at..]
                .iter()
                .position(|l| l.trim_end().ends_with('{'))
                .and_then(|open| lines.get(at + open + 1));
            if !body.is_some_and(|l| {
                l.trim_start()
                    .starts_with("let _deadline = common::deadline(")
            }) {
                missing.push(format!("{}:{}", path.display(), at + 1));
            }
        }
    }
    assert!(tests > 50, "found only {tests} tests");
    assert!(missing.is_empty(), "tests without a deadline: {missing:?}");
}
