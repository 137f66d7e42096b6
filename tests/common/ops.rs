//! Talking to leadflow's operations endpoint from tests: a free port, a
//! plain HTTP GET, metric samples, and condition waits.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::PATIENCE;

/// A port free right now, for a process's `http.listen`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `--set http.listen=127.0.0.1:PORT`, as two arguments.
pub fn listen_on(port: u16) -> [String; 2] {
    ["--set".to_owned(), format!("http.listen=127.0.0.1:{port}")]
}

/// GET `path`: the status and body, or `None` while nothing answers.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The Prometheus text of `/metrics`.
pub fn scrape(port: u16) -> String {
    match get(port, "/metrics") {
        Some((200, body)) => body,
        other => panic!("scrape of port {port} failed: {other:?}"),
    }
}

/// The value of one series, e.g. `leadflow_leads_total{outcome="test"}`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every series of a metric name, as (labels, value).
pub fn series<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// Checks the exposition with `promtool check metrics`.
pub fn promtool_check(text: &str) {
    let out = super::piped(
        std::process::Command::new("promtool").args(["check", "metrics"]),
        text,
        "promtool (Debian's prometheus package; scripts/test.sh installs it)",
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `probe` until it gives a value, failing after `patience`.
pub fn wait_for<T>(what: &str, patience: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait
    }
}

/// [`eventually`], failing with what `context` says then (a log, say).
pub fn wait_for_or<T>(
    what: &str,
    context: impl FnOnce() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}:\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(50)); // polling interval of a condition wait
    }
}

/// [`wait_for`] with the tests' usual patience.
pub fn eventually<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    wait_for(what, PATIENCE, probe)
}
