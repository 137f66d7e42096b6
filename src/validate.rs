//! `leadflow validate`: the pipeline offline over a file of leads, in file
//! order, with the configuration and rules `run` would use, so that a
//! publisher can check a lead export, or a rules or routing change, before
//! deploying it. Each input line gets one [`Verdict`]: where the lead would
//! go and why, or why it would be dead-lettered. Nothing here touches
//! Kafka; dedupe state lives only for the run.

use serde::Serialize;

use crate::config::Config;
use crate::pipeline::{Input, Outcome, Pipeline, Place, SourcePosition};
use crate::stages::route::Destination;

/// What became of one input line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// 1-based line number (1 for a file that is one JSON lead).
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `campaign`, `suppressed`, `duplicate`, `test` or `dead_letter`.
    pub outcome: &'static str,
    /// The topics the lead would be written to.
    pub topics: Vec<String>,
    /// The error class of a dead letter, or the suppression reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Why a dead letter failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The stage that failed, for a dead letter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    /// The kind of listing, the offer type and the publisher, for a lead
    /// that got as far as routing (`unknown`: not in the catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listing: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grade: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mql: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// The leads of a file: one per non-blank line (JSON Lines), or the whole
/// file when it is a single JSON value spread over several lines.
pub fn split_leads(bytes: &[u8]) -> Vec<(usize, &[u8])> {
    let multi_line = bytes.trim_ascii().contains(&b'\n');
    if multi_line && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        return vec![(1, bytes.trim_ascii())];
    }
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(i, line)| (i + 1, line.trim_ascii()))
        .collect()
}

/// Runs every lead of `bytes` through the pipeline. `now_ms` is the event
/// time of leads that carry none (a record timestamp stands in for it in
/// `run`).
pub fn validate(
    config: &Config,
    pipeline: &mut Pipeline,
    bytes: &[u8],
    now_ms: i64,
) -> Vec<Verdict> {
    split_leads(bytes)
        .into_iter()
        .map(|(line, value)| {
            let input = Input {
                value: Some(value),
                timestamp_ms: Some(now_ms),
                source: SourcePosition {
                    topic: "validate",
                    partition: 0,
                    offset: line as i64,
                },
                shard: 0,
            };
            let outcome = pipeline.process(input);
            // Commit as `run` would, so a later repeat is a duplicate.
            pipeline.commit_batch();
            verdict(config, pipeline, line, value, outcome)
        })
        .collect()
}

fn verdict(
    config: &Config,
    pipeline: &Pipeline,
    line: usize,
    value: &[u8],
    outcome: Outcome,
) -> Verdict {
    let mut verdict = Verdict {
        line,
        event_id: None,
        outcome: "",
        topics: Vec::new(),
        class: None,
        message: None,
        stage: None,
        listing: None,
        offer_type: None,
        publisher: None,
        score: None,
        grade: None,
        mql: None,
        reasons: Vec::new(),
    };
    let place = outcome.place(pipeline.routing());
    verdict.outcome = match place {
        Place::Campaigns(_) => "campaign",
        Place::Suppressed(_) => "suppressed",
        Place::DeadLetter(_) => "dead_letter",
        Place::Duplicate => "duplicate",
        Place::TestLead => "test",
    };
    let topics = &config.topics;
    verdict.topics = place
        .topics(&topics.suppressed, &topics.dead_letter)
        .into_iter()
        .map(str::to_owned)
        .collect();
    match outcome {
        Outcome::Routed {
            destination,
            lead,
            score,
        } => {
            verdict.event_id = lead.event_id.clone();
            verdict.listing = Some(lead.listing().as_str());
            verdict.offer_type = Some(lead.offer_type().into());
            verdict.publisher = Some(lead.publisher().into());
            verdict.score = Some(score.points);
            verdict.grade = Some(score.grade.as_str());
            verdict.mql = Some(score.mql);
            verdict.reasons = score.reasons.iter().map(|r| r.to_string()).collect();
            if let Destination::Suppressed(reason) = destination {
                verdict.class = Some(reason.as_str().to_owned());
            }
        }
        Outcome::Duplicate { .. } | Outcome::TestLead => {}
        Outcome::Failed(failure) => {
            verdict.class = Some(failure.class.to_owned());
            verdict.stage = Some(failure.stage.as_str());
            verdict.message = Some(failure.message);
        }
    }
    if verdict.event_id.is_none() {
        verdict.event_id = event_id_of(value);
    }
    verdict
}

/// The `event_id` of a lead that did not get through, where it can be read.
fn event_id_of(value: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    let id = json.get("event_id").or_else(|| json.get("EventId"))?;
    id.as_str().map(str::to_owned)
}

/// One human-readable line for a verdict.
pub fn describe(v: &Verdict) -> String {
    let id = v
        .event_id
        .as_deref()
        .map(|id| format!(" {id}"))
        .unwrap_or_default();
    match v.outcome {
        "dead_letter" => format!(
            "line {}{id}: dead_letter {}/{}: {}",
            v.line,
            v.stage.unwrap_or("?"),
            v.class.as_deref().unwrap_or("?"),
            v.message.as_deref().unwrap_or("")
        ),
        "campaign" | "suppressed" => {
            let reason = v
                .class
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            format!(
                "line {}{id}: {}{reason} -> {}; {} {} by {}; score {} grade {}{}; {}",
                v.line,
                v.outcome,
                v.topics.join(", "),
                v.listing.unwrap_or(crate::catalog::UNKNOWN),
                v.offer_type.as_deref().unwrap_or("unknown"),
                v.publisher.as_deref().unwrap_or("unknown"),
                v.score.unwrap_or(0),
                v.grade.unwrap_or("?"),
                if v.mql == Some(true) { " MQL" } else { "" },
                v.reasons.join(", ")
            )
        }
        other => format!("line {}{id}: {other}", v.line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<Verdict> {
        let config = crate::testkit::generated_config(crate::stages::decode::Format::Json);
        let mut pipeline = crate::testkit::pipeline(&config);
        validate(&config, &mut pipeline, text.as_bytes(), 1_760_000_000_000)
    }

    #[test]
    fn every_line_gets_a_verdict_in_order_and_bad_lines_do_not_stop_the_run() {
        let examples = include_str!("../tests/data/raw-leads.jsonl");
        let good = examples.lines().next().expect("an example lead");
        let text = format!("{good}\n\nnot json\n{good}\n\u{1}\u{2}{{\n");
        let verdicts = run(&text);
        let lines: Vec<usize> = verdicts.iter().map(|v| v.line).collect();
        assert_eq!(lines, [1, 3, 4, 5]);
        assert!(
            matches!(verdicts[0].outcome, "campaign" | "suppressed"),
            "{verdicts:?}"
        );
        assert!(!verdicts[0].topics.is_empty());
        assert_eq!(
            (verdicts[0].listing, verdicts[0].offer_type.as_deref()),
            (Some("app"), Some("saas"))
        );
        assert_eq!(verdicts[0].publisher.as_deref(), Some("Contoso"));
        assert!(
            describe(&verdicts[0]).contains("app saas by Contoso"),
            "{}",
            describe(&verdicts[0])
        );
        assert_eq!(verdicts[1].outcome, "dead_letter");
        assert_eq!(verdicts[1].stage, Some("decode"));
        assert!(verdicts[1].class.is_some() && verdicts[1].message.is_some());
        assert_eq!(verdicts[2].outcome, "duplicate", "the same lead again");
        assert_eq!(verdicts[3].outcome, "dead_letter");
    }

    #[test]
    fn a_pretty_printed_single_lead_is_one_lead() {
        let examples = include_str!("../tests/data/raw-leads.jsonl");
        let good: serde_json::Value =
            serde_json::from_str(examples.lines().next().expect("an example")).expect("JSON");
        let pretty = serde_json::to_string_pretty(&good).expect("pretty");
        let verdicts = run(&pretty);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].line, 1);
        assert_ne!(verdicts[0].outcome, "dead_letter", "{verdicts:?}");
    }
}
