//! `leadflow demo` needs no broker: a small run on the in-process mock
//! cluster must end with a summary that adds up, checked here from its
//! printed numbers, not from its own verdict alone.

mod common;

use std::time::Duration;

use common::OutputWithin as _;

use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn a_small_demo_accounts_for_every_lead() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let leads = 3_000_u64;
    let out = Command::new(env!("CARGO_BIN_EXE_leadflow"))
        .args(["demo", "--leads", &leads.to_string(), "--seed", "9"])
        .env("LEADFLOW_HTTP__LISTEN", "127.0.0.1:0")
        .env_remove("LEADFLOW_CONFIG")
        .env_remove("RUST_LOG")
        .output_within_patience("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Every lead is accounted for"), "{stdout}");
    // Rows are "  LABEL   VALUE  NOTE"; sub-rows are indented further.
    let mut rows: BTreeMap<String, u64> = BTreeMap::new();
    let mut parts: BTreeMap<String, u64> = BTreeMap::new();
    let mut section = String::new();
    for line in stdout.lines() {
        let Some(body) = line.strip_prefix("  ") else {
            continue;
        };
        let sub = body.starts_with("  ");
        let fields: Vec<&str> = body.split_whitespace().collect();
        let Some(at) = fields.iter().position(|f| f.parse::<u64>().is_ok()) else {
            if !sub {
                section = body.trim().to_owned();
            }
            continue;
        };
        let label = fields[..at].join(" ");
        let value: u64 = fields[at].parse().expect("number");
        if sub {
            *parts.entry(section.clone()).or_default() += value;
        } else {
            section = label.clone();
            rows.insert(label, value);
        }
    }
    assert_eq!(rows.get("leads in"), Some(&leads), "{stdout}");
    let campaigns: u64 = rows
        .iter()
        .filter(|(label, _)| label.starts_with("campaign "))
        .map(|(_, n)| n)
        .sum();
    let landed = campaigns
        + rows["suppressed"]
        + rows["duplicates dropped"]
        + rows["test leads dropped"]
        + rows["dead letters"];
    // Leads routed to two campaigns would count twice; the default table
    // routes each storefront to one.
    assert_eq!(landed, leads, "{stdout}");
    assert_eq!(
        parts.get("dead letters"),
        Some(&rows["dead letters"]),
        "{stdout}"
    );
    assert_eq!(
        parts.get("suppressed"),
        Some(&rows["suppressed"]),
        "{stdout}"
    );
    assert_eq!(
        parts.get("grades"),
        Some(&(campaigns + rows["suppressed"])),
        "{stdout}"
    );
    assert!(
        rows["duplicates dropped"] > 0 && rows["dead letters"] > 0,
        "{stdout}"
    );
}
