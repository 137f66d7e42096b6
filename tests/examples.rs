//! Snapshots of what leadflow makes of each shared example lead
//! (`tests/data/raw-leads.jsonl`): the outcome, and for routed leads the
//! output record in JSON and in Avro. A change to any output field shows up
//! here as a snapshot diff to review.

mod common;

use std::time::Duration;

use leadflow::pipeline::Outcome;
use leadflow::stages::decode::Format;
use leadflow::stages::encode::{CAMPAIGN_LEAD_SCHEMA, Encoder};
use leadflow::stages::route::Destination;
use leadflow::testkit;

#[test]
fn example_outputs_in_json_and_avro() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let mut pipeline = testkit::pipeline(&testkit::quickstart_config());
    let json = Encoder::new(Format::Json);
    let avro = Encoder::new(Format::Avro);
    let schema = apache_avro::Schema::parse_str(CAMPAIGN_LEAD_SCHEMA).expect("schema");
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");
    let leads = testkit::example_leads();
    for (i, line) in leads.lines().enumerate() {
        let name = format!("example_{:02}", i + 1);
        let input = testkit::input(line.as_bytes(), testkit::EXAMPLE_TIMESTAMP_MS, i as i64);
        let outcome = pipeline.process(input);
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
