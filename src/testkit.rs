//! Pipelines and inputs for tests, benchmarks and the fuzz target: the one
//! way they build them, so that a change to how a pipeline is made is made
//! once. Not for production use: these panic on invalid settings.

use crate::config::Config;
use crate::pipeline::{Input, Pipeline, PipelineSettings, SourcePosition};
use crate::stages::decode::Format;

/// The input topic inputs name when the test does not care.
pub const TOPIC: &str = "leads.raw";

/// The shared example leads (`tests/data/raw-leads.jsonl`), one per line:
/// every outcome, in Microsoft's JSON shape. Read when asked, not built in:
/// the library also builds where `tests/` is not (the container image).
pub fn example_leads() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/raw-leads.jsonl");
    std::fs::read_to_string(path).expect("the shared example leads")
}

/// When the example leads were written to Kafka (their record timestamp).
pub const EXAMPLE_TIMESTAMP_MS: i64 = 1_741_083_302_000;

/// The quickstart configuration (`config/quickstart.toml`).
pub fn quickstart_config() -> Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/quickstart.toml");
    Config::load(Some(std::path::Path::new(path))).expect("the quickstart configuration")
}

/// The catalog of the generator's offers, which the quickstart uses too.
pub const GENERATED_CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.toml");

/// The default configuration with the generator's offers catalogued and
/// input in `format`: what generated leads are processed with.
pub fn generated_config(format: Format) -> Config {
    let mut config = Config::default();
    config.catalog.file = Some(GENERATED_CATALOG.into());
    config.topics.input_format = format;
    config
}

/// A pipeline with `config`'s rules, routes and reference data.
pub fn pipeline(config: &Config) -> Pipeline {
    Pipeline::new(PipelineSettings::from_config(config).expect("valid pipeline settings"))
}

/// An input record of [`TOPIC`], partition 0 (and dedupe shard 0).
pub fn input(value: &[u8], timestamp_ms: i64, offset: i64) -> Input<'_> {
    input_at(Some(value), Some(timestamp_ms), (TOPIC, 0, offset))
}

/// An input record at a given place, `(topic, partition, offset)`, in
/// dedupe shard 0 (as if everything was read from one partition).
pub fn input_at<'a>(
    value: Option<&'a [u8]>,
    timestamp_ms: Option<i64>,
    (topic, partition, offset): (&'a str, i32, i64),
) -> Input<'a> {
    Input {
        value,
        timestamp_ms,
        source: SourcePosition {
            topic,
            partition,
            offset,
        },
        shard: 0,
    }
}
