//! Hot reload of the scoring rules, the routing table and the catalog.
//!
//! Whoever notices a change (SIGHUP, or a changed config or rules file)
//! loads and validates the whole configuration the way start-up does and
//! offers it here. The processing loop takes the latest offer between two
//! transactions, checks what only it can check (that new campaign topics
//! exist), and swaps rules and routes at once: every lead of a transaction
//! is scored and routed by one version. A configuration that does not load
//! or validate is refused where it is loaded, and the rules in use stay.
//!
//! Each section declares what a reload does with it
//! (`config::Section::ON_RELOAD`): `routes`, `policy`, `scoring` and
//! `catalog` take effect; any other changed section is reported and waits
//! for a restart.
//!
//! A catalog reload can change which offer a title names. A bare lead
//! forwarded over the repartition topic before such a reload is identified
//! again after it, and may land in a partition whose dedupe state is not
//! its offer's: it is still written exactly once, but may miss being
//! recognised as a duplicate of a lead before the reload.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::config::{Config, OnReload};

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

/// Sections of `new` that differ from `old` and wait for a restart
/// (see [`crate::config::Section::ON_RELOAD`]).
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    old.sections()
        .into_iter()
        .zip(new.sections())
        .filter(|((_, on_reload, before), (_, _, after))| {
            *on_reload == OnReload::Restart && before != after
        })
        .map(|((name, ..), _)| name)
        .collect()
}

/// The files whose change triggers a reload: the config file and the
/// scoring rules and catalog files it names.
pub fn watched_files(config_file: Option<&std::path::Path>, config: &Config) -> Vec<PathBuf> {
    config_file
        .map(std::path::Path::to_path_buf)
        .into_iter()
        .chain(config.scoring.rules_file.clone())
        .chain(config.catalog.file.clone())
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
    fn only_sections_outside_routes_policy_scoring_and_catalog_need_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.routes[0].grades = vec![crate::domain::Grade::A];
        new.scoring.rules_file = Some(PathBuf::from("rules.toml"));
        new.catalog.file = Some(PathBuf::from("catalog.toml"));
        assert!(needs_restart(&old, &new).is_empty());
        new.pipeline.commit_interval_ms = 7;
        new.kafka.group_id = "other".into();
        assert_eq!(needs_restart(&old, &new), ["kafka", "pipeline"]);
    }

    /// It was once left out of a hand-kept list, and a changed registry
    /// was silently ignored on reload.
    #[test]
    fn a_changed_schema_registry_waits_for_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.schema_registry.url = Some("http://registry:8081".into());
        assert_eq!(needs_restart(&old, &new), ["schema_registry"]);
    }

    /// A changed catalog file is reloaded like a changed rules file.
    #[test]
    fn the_config_rules_and_catalog_files_are_watched() {
        let mut config = Config::default();
        assert_eq!(watched_files(None, &config), Vec::<PathBuf>::new());
        config.scoring.rules_file = Some(PathBuf::from("/etc/leadflow/rules.toml"));
        config.catalog.file = Some(PathBuf::from("/etc/leadflow/catalog.toml"));
        let config_file = std::path::Path::new("/etc/leadflow/leadflow.toml");
        assert_eq!(
            watched_files(Some(config_file), &config),
            [
                config_file.to_path_buf(),
                PathBuf::from("/etc/leadflow/rules.toml"),
                PathBuf::from("/etc/leadflow/catalog.toml"),
            ]
        );
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
