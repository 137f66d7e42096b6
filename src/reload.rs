//! Hot reload of the scoring rules and the routing table.
//!
//! Whoever notices a change (SIGHUP, or a changed config or rules file)
//! loads and validates the whole configuration the way start-up does and
//! offers it here. The processing loop takes the latest offer between two
//! transactions, checks what only it can check (that new campaign topics
//! exist), and swaps rules and routes at once: every lead of a transaction
//! is scored and routed by one version. A configuration that does not load
//! or validate is refused where it is loaded, and the rules in use stay.
//!
//! Only `routes`, `policy` and `scoring` take effect on reload; any other
//! changed key is reported and waits for a restart.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::config::Config;

/// The latest configuration offered for reload and not yet taken.
#[derive(Debug, Default)]
pub struct ReloadSlot {
    offered: Mutex<Option<Config>>,
}

impl ReloadSlot {
    /// Offers a loaded, validated configuration; a later offer replaces an
    /// earlier one not yet taken.
    pub fn offer(&self, config: Config) {
        *self.lock() = Some(config);
    }

    /// Takes the offer, if any.
    pub fn take(&self) -> Option<Config> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Config>> {
        // The slot holds plain data; a panic elsewhere leaves it usable.
        self.offered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Keys of `new` that differ from `old` and need a restart: everything
/// outside `routes`, `policy` and `scoring`.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let sections: [(&'static str, String, String); 7] = [
        ("kafka", toml(&old.kafka), toml(&new.kafka)),
        ("topics", toml(&old.topics), toml(&new.topics)),
        ("pipeline", toml(&old.pipeline), toml(&new.pipeline)),
        ("dedupe", toml(&old.dedupe), toml(&new.dedupe)),
        ("http", toml(&old.http), toml(&new.http)),
        ("log", toml(&old.log), toml(&new.log)),
        ("catalog", toml(&old.catalog), toml(&new.catalog)),
    ];
    for (name, before, after) in sections {
        if before != after {
            changed.push(name);
        }
    }
    changed
}

fn toml<T: serde::Serialize>(value: &T) -> String {
    // Compared, never shown: an unprintable section compares as empty.
    toml::to_string(&Wrapped { value }).unwrap_or_default()
}

/// TOML needs a table at the top.
#[derive(serde::Serialize)]
struct Wrapped<'a, T> {
    value: &'a T,
}

/// The files whose change triggers a reload: the config file and the
/// scoring rules file it names.
pub fn watched_files(config_file: Option<&std::path::Path>, config: &Config) -> Vec<PathBuf> {
    config_file
        .map(std::path::Path::to_path_buf)
        .into_iter()
        .chain(config.scoring.rules_file.clone())
        .collect()
}

/// Modification times of `files`, to notice a change by polling (no
/// platform file-watching API, and an editor's rename-over-write is seen
/// the same way as an in-place write).
pub fn modified(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_outside_routes_policy_and_scoring_need_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.routes[0].grades = vec![crate::domain::Grade::A];
        new.scoring.rules_file = Some(PathBuf::from("rules.toml"));
        assert!(needs_restart(&old, &new).is_empty());
        new.pipeline.commit_interval_ms = 7;
        new.kafka.group_id = "other".into();
        assert_eq!(needs_restart(&old, &new), ["kafka", "pipeline"]);
    }

    #[test]
    fn a_later_offer_replaces_one_not_taken() {
        let slot = ReloadSlot::default();
        assert!(slot.take().is_none());
        let mut first = Config::default();
        first.kafka.group_id = "first".into();
        slot.offer(first);
        let mut second = Config::default();
        second.kafka.group_id = "second".into();
        slot.offer(second);
        assert_eq!(
            slot.take().map(|c| c.kafka.group_id).as_deref(),
            Some("second")
        );
        assert!(slot.take().is_none());
    }
}
