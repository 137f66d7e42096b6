//! Failures injected on cue, for integration tests of a failure at a point
//! that no real fault reaches reliably (between two records of one lead,
//! say). Compiled only with the `kafka-tests` feature: no other build has
//! any. `LEADFLOW_FAILPOINT=NAME:ARG` arms one; it fires once per process.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether failpoint `name` is armed for `arg` and has not fired yet.
pub fn fires(name: &str, arg: Option<&str>) -> bool {
    static ARMED: OnceLock<Option<(String, String)>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("LEADFLOW_FAILPOINT").ok()?;
        let (name, arg) = spec.split_once(':')?;
        Some((name.to_owned(), arg.to_owned()))
    });
    match armed {
        Some((armed, at)) if armed == name && arg == Some(at.as_str()) => {
            !FIRED.swap(true, Ordering::Relaxed)
        }
        _ => false,
    }
}
