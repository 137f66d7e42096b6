//! Snapshots of what leadflow makes of each shared example lead
//! (`tests/data/raw-leads.jsonl`): the outcome, and for routed leads the
//! output record in JSON and in Avro. A change to any output field shows up
//! here as a snapshot diff to review.

mod common;

use std::time::Duration;

use leadflow::config::Config;
use leadflow::pipeline::{Input, Outcome, Pipeline, PipelineSettings, SourcePosition};
use leadflow::stages::decode::Format;
use leadflow::stages::encode::{CAMPAIGN_LEAD_SCHEMA, Encoder};
use leadflow::stages::route::Destination;

const RECORD_TIMESTAMP_MS: i64 = 1_741_083_302_000;

fn quickstart_pipeline() -> Pipeline {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/quickstart.toml");
    let config = Config::load(Some(std::path::Path::new(path))).expect("quickstart config");
    Pipeline::new(PipelineSettings::from_config(&config).expect("settings"))
}

#[test]
fn example_outputs_in_json_and_avro() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let mut pipeline = quickstart_pipeline();
    let json = Encoder::new(Format::Json);
    let avro = Encoder::new(Format::Avro);
    let schema = apache_avro::Schema::parse_str(CAMPAIGN_LEAD_SCHEMA).expect("schema");
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");
    for (i, line) in include_str!("data/raw-leads.jsonl").lines().enumerate() {
        let name = format!("example_{:02}", i + 1);
        let outcome = pipeline.process(Input {
            value: Some(line.as_bytes()),
            timestamp_ms: Some(RECORD_TIMESTAMP_MS),
            source: SourcePosition {
                topic: "leads.raw",
                partition: 0,
                offset: i as i64,
            },
            shard: 0,
        });
        let Outcome::Routed {
            destination,
            lead,
            score,
        } = outcome
        else {
            insta::assert_debug_snapshot!(name, outcome);
            continue;
        };
        let campaign = match destination {
            Destination::Campaigns(set) => set
                .iter()
                .next()
                .map(|i| pipeline.routing().routes()[i].campaign.clone()),
            Destination::Suppressed(_) => None,
        };
        let mut as_json = Vec::new();
        json.encode(
            &lead,
            &score,
            destination,
            campaign.as_deref(),
            &mut as_json,
        );
        let as_json: serde_json::Value = serde_json::from_slice(&as_json).expect("valid json");
        insta::assert_json_snapshot!(format!("{name}_json"), as_json);

        let mut as_avro = Vec::new();
        avro.encode(
            &lead,
            &score,
            destination,
            campaign.as_deref(),
            &mut as_avro,
        );
        let hex: String = as_avro.iter().map(|b| format!("{b:02x}")).collect();
        insta::assert_snapshot!(format!("{name}_avro"), hex);
        let decoded = reader
            .read_value(&mut as_avro.as_slice())
            .expect("a campaign-lead datum");
        assert_eq!(
            serde_json::Value::try_from(decoded).expect("as json"),
            as_json,
            "{name}: Avro and JSON differ"
        );
    }
}
