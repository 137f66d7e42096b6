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
    request(port, "GET", path, &[], b"").map(|reply| (reply.status, reply.body))
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The status line and the headers.
    pub head: String,
    pub body: String,
}

impl Reply {
    /// A header's value, by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// One HTTP/1.1 request on a connection of its own, or `None` while
/// nothing answers (or the connection breaks before the answer).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Reply> {
    exchange(port, method, path, headers, body).ok()
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// Nothing listens: the connection was refused.
    Refused,
    /// Connected, and the connection ended without a whole answer.
    Broken,
}

/// [`request`], telling a refused connection from a broken one.
pub fn exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, NoAnswer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|_| NoAnswer::Refused)?;
    answer(&mut stream, (method, path), headers, body).ok_or(NoAnswer::Broken)
}

fn answer(
    stream: &mut TcpStream,
    (method, path): (&str, &str),
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Reply> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    // A server may answer (413, say) before taking the whole body.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
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
