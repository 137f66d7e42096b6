//! The reference docs and the code cannot drift apart: every configuration
//! key and every metric that exists in code is in the docs, and the docs
//! name none that does not exist.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use leadflow::config::Config;

fn read(doc: &str) -> String {
    let path = format!("{}/docs/{doc}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The backticked names in the first column of the doc's tables, those
/// that `keep` accepts.
fn first_column(text: &str, keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .filter(|name| keep(name))
        .collect()
}

/// Every configuration key, dotted: each leaf of the default
/// configuration (maps of client properties and lists are leaves).
fn config_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, value: &serde_json::Value, keys: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(fields) if !fields.is_empty() => {
                for (name, field) in fields {
                    let key = match prefix {
                        "" => name.clone(),
                        _ => format!("{prefix}.{name}"),
                    };
                    walk(&key, field, keys);
                }
            }
            _ => {
                keys.insert(prefix.to_owned());
            }
        }
    }
    let config = serde_json::to_value(Config::default()).expect("the configuration as JSON");
    let mut keys = BTreeSet::new();
    walk("", &config, &mut keys);
    keys
}

#[test]
fn every_configuration_key_is_documented_and_every_documented_key_exists() {
    let _deadline = common::deadline(Duration::from_secs(30));
    let in_code = config_keys();
    let sections: BTreeSet<&str> = in_code
        .iter()
        .map(|k| k.split('.').next().unwrap_or(k))
        .collect();
    let documented = first_column(&read("configuration.md"), |name| {
        sections.contains(name.split('.').next().unwrap_or(name))
    });
    let undocumented: Vec<_> = in_code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&in_code).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md misses {undocumented:?} and names keys that do not exist: {unknown:?}"
    );
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    let _deadline = common::deadline(Duration::from_secs(30));
    // Documented as scraped: counters with `_total`, others by family name.
    let in_code: BTreeSet<String> = common::metrics::families()
        .into_iter()
        .map(|(name, kind)| match kind.as_str() {
            "counter" => format!("{name}_total"),
            _ => name,
        })
        .collect();
    let documented = first_column(&read("operations.md"), |name| name.starts_with("leadflow_"));
    let undocumented: Vec<_> = in_code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&in_code).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/operations.md misses {undocumented:?} and names metrics that do not exist: {unknown:?}"
    );
}
