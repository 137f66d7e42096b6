//! Every integration test's overall deadline. Each child a test starts is
//! bounded by its own wait, but a test can still hang between children: in
//! a loop, on a lock, on a library call without a timeout. A test therefore
//! starts with [`deadline`]; if it is still running when that passes, a
//! watchdog prints what every live child wrote, kills the children and the
//! brokers and proxies the tests started, and ends the test binary with a
//! failure. The run fails in minutes with the evidence, not at CI's limit.
//!
//! The watchdog writes to the process's stderr directly: the test harness
//! captures `eprintln!` of test threads and would lose it on exit.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How much of each child's log the watchdog prints.
const LOG_TAIL: u64 = 8 * 1024;

#[derive(Default)]
struct Watched {
    /// Running tests: their name, start and deadline.
    tests: BTreeMap<u64, (String, Instant, Instant)>,
    /// Live children: pid, what they are, where their stderr goes.
    children: BTreeMap<u64, (u32, String, Option<PathBuf>)>,
    /// Stops for brokers and proxies the tests started.
    cleanups: BTreeMap<u64, Box<dyn Fn() + Send>>,
}

fn watched() -> MutexGuard<'static, Watched> {
    static WATCHED: OnceLock<Mutex<Watched>> = OnceLock::new();
    WATCHED
        .get_or_init(|| {
            std::thread::spawn(watchdog);
            Mutex::default()
        })
        .lock()
        // A test that panicked while holding the lock left consistent maps.
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A running test's deadline; dropping it (the test ended) disarms it.
#[must_use = "the deadline holds only while this guard lives"]
pub struct Deadline(u64);

/// Arms the calling test's overall deadline: `limit` from now.
pub fn deadline(limit: Duration) -> Deadline {
    let id = next_id();
    let name = std::thread::current().name().unwrap_or("a test").to_owned();
    let now = Instant::now();
    watched().tests.insert(id, (name, now, now + limit));
    Deadline(id)
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let ended = watched().tests.remove(&self.0);
        // How close tests come to their deadlines, for choosing them.
        if let (Some((name, started, until)), Ok(_)) = (ended, std::env::var("LEADFLOW_TEST_TIMES"))
        {
            let _ = writeln!(
                std::io::stderr(),
                "test-time {name} {:.1} s of {} s",
                started.elapsed().as_secs_f64(),
                (until - started).as_secs()
            );
        }
    }
}

/// Runs `wait` (for a resource tests take turns at) without counting the
/// time against the calling test's deadline.
pub fn not_counting<T>(wait: impl FnOnce() -> T) -> T {
    let name = std::thread::current().name().map(str::to_owned);
    let mine = |test: &String| Some(test) == name.as_ref();
    // The deadline is held off while waiting, not extended afterwards: the
    // watchdog would otherwise fail a test whose turn comes after its
    // deadline, for the time another test took.
    let held_off = Instant::now() + Duration::from_secs(365 * 86_400);
    let mut left = BTreeMap::new();
    for (id, (test, _, until)) in &mut watched().tests {
        if mine(test) {
            left.insert(*id, until.saturating_duration_since(Instant::now()));
            *until = held_off;
        }
    }
    let value = wait();
    for (id, (_, _, until)) in &mut watched().tests {
        if let Some(left) = left.get(id) {
            *until = Instant::now() + *left;
        }
    }
    value
}

/// A registration that ends when dropped.
pub struct Registered(u64, bool);

impl Drop for Registered {
    fn drop(&mut self) {
        let mut watched = watched();
        if self.1 {
            watched.cleanups.remove(&self.0);
        } else {
            watched.children.remove(&self.0);
        }
    }
}

/// Registers a live child process, so the watchdog can show its log and
/// kill it.
pub fn child(pid: u32, what: &str, log: Option<PathBuf>) -> Registered {
    let id = next_id();
    watched().children.insert(id, (pid, what.to_owned(), log));
    Registered(id, false)
}

/// Registers how to stop something a test started outside its process
/// group's reach (a broker, a proxy), for the watchdog to run.
pub fn cleanup(stop: impl Fn() + Send + 'static) -> Registered {
    let id = next_id();
    watched().cleanups.insert(id, Box::new(stop));
    Registered(id, true)
}

fn watchdog() {
    loop {
        // The watchdog's polling interval; deadlines are minutes long.
        std::thread::sleep(Duration::from_millis(500));
        let now = Instant::now();
        let mut watched = watched();
        let Some((name, started, _)) = watched
            .tests
            .values()
            .find(|(_, _, until)| *until <= now)
            .cloned()
        else {
            continue;
        };
        let mut report = format!(
            "\n=== test `{name}` is still running {} s after it started, past its \
             overall deadline: it fails, with every test of this binary ===\n",
            started.elapsed().as_secs()
        );
        for (pid, what, log) in watched.children.values() {
            report.push_str(&format!("--- {what} (pid {pid}) is killed"));
            match log {
                Some(path) => report.push_str(&format!("; the end of its log:\n{}\n", tail(path))),
                None => report.push('\n'),
            }
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::io::stderr().write_all(report.as_bytes());
        for stop in std::mem::take(&mut watched.cleanups).into_values() {
            stop();
        }
        std::process::exit(101);
    }
}

fn tail(path: &Path) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return "(no log)".to_owned();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
