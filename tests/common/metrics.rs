//! leadflow's metrics as a scrape shows them, for tests that check what
//! refers to them (dashboards, alert rules, the docs).

use std::collections::BTreeSet;

use leadflow::metrics::{
    DeadLetterLabels, KindLabels, Metrics, PartitionLabels, RejectionLabels, ResultLabels,
    StageLabels, TopicLabels,
};

/// Every metric family: its name and its type (`counter`, `gauge`,
/// `histogram`, `info`).
pub fn families() -> Vec<(String, String)> {
    // Labelled families show only once they have a series: give each one.
    let metrics = Metrics::new();
    let topic = TopicLabels {
        topic: "leads.raw".into(),
    };
    metrics.records_in.get_or_create(&topic).inc();
    metrics.records_out.get_or_create(&topic).inc();
    metrics.offset_resets.get_or_create(&topic).inc();
    metrics
        .produce_rejections
        .get_or_create(&RejectionLabels {
            topic: "campaign.x".into(),
            error: "MessageSizeTooLarge".into(),
        })
        .inc();
    metrics
        .dead_letters
        .get_or_create(&DeadLetterLabels {
            stage: "decode",
            class: "json_syntax",
        })
        .inc();
    metrics
        .consumer_lag
        .get_or_create(&PartitionLabels {
            topic: "leads.raw".into(),
            partition: 0,
        })
        .set(0);
    metrics
        .rebalances
        .get_or_create(&KindLabels { kind: "assign" })
        .inc();
    metrics
        .stage_duration
        .get_or_create(&StageLabels { stage: "decode" })
        .observe(1e-6);
    metrics
        .repartition_purges
        .get_or_create(&ResultLabels { result: "deleted" })
        .inc();
    metrics.set_rules_version("v1");
    metrics
        .ingest
        .request(200, std::time::Duration::from_millis(1));
    metrics.ingest.invalid("json_syntax");
    let text = metrics.encode();
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

/// Every series name leadflow can export: counters with `_total`,
/// histograms with `_bucket`, `_sum` and `_count`.
pub fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind) in families() {
        match kind.as_str() {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name);
            }
        }
    }
    names
}
