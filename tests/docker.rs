//! Checks of `docker/` that need no Docker engine: the Grafana dashboard
//! and the Prometheus alert rules query only metrics leadflow exports, and
//! the dashboard has the panels operators rely on and uses the provisioned
//! data source. (`scripts/test.sh` also runs `docker-compose config` and
//! `promtool check config` on the compose and Prometheus files.)

mod common;

use std::time::Duration;

use std::collections::BTreeSet;

use common::metrics::exported;

const DOCKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker");

/// `leadflow_…` names in a query or rules text.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("leadflow_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{DOCKER}/{path}")).expect(path)
}

#[test]
fn the_dashboard_shows_what_operators_need_from_exported_metrics() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/leadflow.json")).expect("dashboard JSON");
    let exported = exported();
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for needed in [
        "Throughput by outcome",
        "Consumer lag by partition",
        "End-to-end latency",
        "Dead letters by class",
        "Dedupe ratio",
        "Grade mix",
    ] {
        assert!(
            titles.contains(&needed),
            "no panel {needed:?} in {titles:?}"
        );
    }
    let provisioned = read("grafana/provisioning/datasources/prometheus.yaml");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        let uid = panel["datasource"]["uid"]
            .as_str()
            .expect("panel data source");
        assert!(
            provisioned.contains(&format!("uid: {uid}")),
            "{title}: data source {uid} is not provisioned"
        );
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: id reused"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let names = referenced(expr);
            assert!(
                !names.is_empty(),
                "{title}: {expr} queries no leadflow metric"
            );
            for name in names {
                assert!(exported.contains(&name), "{title}: {name} is not exported");
            }
        }
    }
}

#[test]
fn alert_rules_use_exported_metrics() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let rules = read("prometheus/alerts.yml");
    let exported = exported();
    let names = referenced(&rules);
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        assert!(
            exported.contains(&name),
            "alerts.yml: {name} is not exported"
        );
    }
}
