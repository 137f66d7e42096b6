//! `leadflow produce`: writes generated raw leads to a topic, then prints
//! the outcome leadflow must reach for them as JSON.

use clap::Args;
use leadflow::config::Config;
use leadflow::generate::GeneratorOptions;
use leadflow::kafka::produce::{ProduceOptions, produce};
use leadflow::kafka::topics;
use leadflow::stages::decode::Format;

#[derive(Args)]
pub struct ProduceArgs {
    /// Topic to write to [default: `topics.input`].
    #[arg(long)]
    pub topic: Option<String>,
    /// Number of leads.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Leads per second; 0 for as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Random seed; the same seed gives the same leads.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of leads that repeat an earlier one.
    #[arg(long, default_value_t = 0.10)]
    pub duplicates: f64,
    /// Share of records that are malformed.
    #[arg(long, default_value_t = 0.02)]
    pub malformed: f64,
    /// Share of leads that are do-not-contact.
    #[arg(long, default_value_t = 0.01)]
    pub dnc: f64,
    /// Share of leads that are Microsoft test leads.
    #[arg(long, default_value_t = 0.005)]
    pub test_leads: f64,
    /// Share of hostile records (JSON only): just over and under
    /// `pipeline.max_record_bytes`, dated far ahead, huge or garbage fields,
    /// control characters.
    #[arg(long, default_value_t = 0.0)]
    pub hostile: f64,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Record encoding [default: `topics.input_format`].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Stamp each record with its lead's event time instead of the time of
    /// producing (for experiments: on a broker with time-based retention,
    /// records older than it are deleted at its next retention check).
    #[arg(long)]
    pub event_time_timestamps: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Json,
    Avro,
    ConfluentAvro,
}

/// `leadflow produce`.
pub fn run(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    args: ProduceArgs,
) -> anyhow::Result<()> {
    let topic = args.topic.unwrap_or_else(|| config.topics.input.clone());
    let format = match args.format {
        Some(FormatArg::Json) => Format::Json,
        Some(FormatArg::Avro) => Format::Avro,
        Some(FormatArg::ConfluentAvro) => Format::ConfluentAvro,
        None => config.topics.input_format,
    };
    // As a producer with Confluent's serializer does: the raw-lead
    // schema registered under the topic's subject frames each record.
    let schema_id = if format == Format::ConfluentAvro {
        raw_lead_schema_id(config, &topic)?
    } else {
        0
    };
    if let Some(partitions) = args.partitions {
        runtime.block_on(topics::create(
            &config.kafka,
            &[(&topic, topics::TopicRole::Input)],
            topics::Layout::partitions(partitions),
            config.pipeline.max_record_bytes,
        ))?;
    }
    let options = ProduceOptions {
        topic,
        event_time_timestamps: args.event_time_timestamps,
        count: args.count,
        rate: (args.rate > 0.0).then_some(args.rate),
        generator: GeneratorOptions {
            seed: args.seed,
            duplicate_ratio: args.duplicates,
            malformed_ratio: args.malformed,
            dnc_ratio: args.dnc,
            test_lead_ratio: args.test_leads,
            hostile_ratio: args.hostile,
            max_record_bytes: config.pipeline.max_record_bytes,
            format,
            schema_id,
            ..GeneratorOptions::default()
        },
    };
    let expected = produce(&config.kafka, &options)?;
    println!("{}", serde_json::to_string(&expected)?);
    Ok(())
}

/// The registry id of `schemas/raw-lead.avsc` under `topic`'s subject,
/// registering it if need be, for `produce --format confluent-avro`.
fn raw_lead_schema_id(config: &Config, topic: &str) -> anyhow::Result<u32> {
    use leadflow::registry::{Registration, RegistryClient, record_name};
    use leadflow::stages::decode::{RAW_LEAD_SCHEMA, raw_lead_schema};
    let client = RegistryClient::new(&config.schema_registry)?;
    let subject = config
        .schema_registry
        .subject_name_strategy
        .subject(topic, &record_name(raw_lead_schema()));
    match client.register(&subject, RAW_LEAD_SCHEMA)? {
        Registration::Registered(id) => Ok(id),
        Registration::Incompatible(reason) => {
            anyhow::bail!("the registry refused schemas/raw-lead.avsc under {subject:?}: {reason}")
        }
    }
}
