//! The `leadflow` command line. Errors end here as one line on stderr and a
//! non-zero exit; everything below is the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use leadflow::config::Config;
use leadflow::generate::GeneratorOptions;
use leadflow::kafka::produce::{ProduceOptions, produce};
use leadflow::kafka::runner::{RunOptions, run};
use leadflow::kafka::topics;
use leadflow::stages::decode::Format;

#[derive(Parser)]
#[command(
    name = "leadflow",
    version,
    about = "Stream processor for software-marketplace leads"
)]
struct Cli {
    /// TOML configuration file; without it every key takes its default.
    #[arg(long, short, global = true, env = "LEADFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers, overriding `kafka.bootstrap_servers`.
    #[arg(long, global = true, env = "LEADFLOW_BOOTSTRAP_SERVERS")]
    bootstrap_servers: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume raw leads, process them and produce campaign, suppressed and dead-letter records.
    Run(RunArgs),
    /// Produce generated raw leads; prints the outcome leadflow must reach as JSON.
    Produce(ProduceArgs),
    /// Create or count leadflow's topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
}

#[derive(Args)]
struct RunArgs {
    /// Consumer group, overriding `kafka.group_id`.
    #[arg(long)]
    group_id: Option<String>,
    /// Input topic, overriding `topics.input`.
    #[arg(long)]
    input_topic: Option<String>,
    /// This process's stable name in the group, overriding `kafka.instance_id`.
    #[arg(long, env = "LEADFLOW_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Exit once every assigned partition is read to its end and committed.
    #[arg(long)]
    until_drained: bool,
}

#[derive(Args)]
struct ProduceArgs {
    /// Topic to write to [default: `topics.input`].
    #[arg(long)]
    topic: Option<String>,
    /// Number of leads.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Leads per second; 0 for as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Random seed; the same seed gives the same leads.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of leads that repeat an earlier one.
    #[arg(long, default_value_t = 0.10)]
    duplicates: f64,
    /// Share of records that are malformed.
    #[arg(long, default_value_t = 0.02)]
    malformed: f64,
    /// Share of leads that are do-not-contact.
    #[arg(long, default_value_t = 0.01)]
    dnc: f64,
    /// Share of leads that are Microsoft test leads.
    #[arg(long, default_value_t = 0.005)]
    test_leads: f64,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    partitions: Option<i32>,
    /// Record encoding [default: `topics.input_format`].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Json,
    Avro,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the input, campaign, suppressed and dead-letter topics that do not exist yet.
    Create {
        #[arg(long, default_value_t = 12)]
        partitions: i32,
    },
    /// Print the number of records in each of leadflow's topics as JSON.
    Counts,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leadflow: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(servers) = &cli.bootstrap_servers {
        config.kafka.bootstrap_servers = servers.clone();
    }
    Ok(config)
}

fn execute(cli: Cli) -> anyhow::Result<()> {
    let mut config = load_config(&cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Run(args) => {
            if let Some(group) = args.group_id {
                config.kafka.group_id = group;
            }
            if let Some(input) = args.input_topic {
                config.topics.input = input;
            }
            if let Some(instance) = args.instance_id {
                config.kafka.instance_id = Some(instance);
            }
            config.validate("command line")?;
            let shutdown = Arc::new(AtomicBool::new(false));
            runtime.spawn(stop_on_signal(Arc::clone(&shutdown)));
            let options = RunOptions {
                until_drained: args.until_drained,
            };
            let tally = run(&config, options, &shutdown)?;
            println!("{}", serde_json::to_string(&tally)?);
            Ok(())
        }
        Command::Produce(args) => {
            let topic = args.topic.unwrap_or_else(|| config.topics.input.clone());
            if let Some(partitions) = args.partitions {
                runtime.block_on(topics::create(&config.kafka, &[&topic], partitions, &[]))?;
            }
            let options = ProduceOptions {
                topic,
                count: args.count,
                rate: (args.rate > 0.0).then_some(args.rate),
                generator: GeneratorOptions {
                    seed: args.seed,
                    duplicate_ratio: args.duplicates,
                    malformed_ratio: args.malformed,
                    dnc_ratio: args.dnc,
                    test_lead_ratio: args.test_leads,
                    format: match args.format {
                        Some(FormatArg::Json) => Format::Json,
                        Some(FormatArg::Avro) => Format::Avro,
                        None => config.topics.input_format,
                    },
                    ..GeneratorOptions::default()
                },
            };
            let expected = produce(&config.kafka, &options)?;
            println!("{}", serde_json::to_string(&expected)?);
            Ok(())
        }
        Command::Topics(TopicsCommand::Create { partitions }) => {
            let names = config.all_topics();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let changelog = config.changelog_topic();
            let created = runtime.block_on(topics::create(
                &config.kafka,
                &names,
                partitions,
                &[&changelog],
            ))?;
            for name in created {
                eprintln!("created {name}");
            }
            Ok(())
        }
        Command::Topics(TopicsCommand::Counts) => {
            let names = config.all_topics();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let counts = topics::counts(&config.kafka, &names)?;
            let map: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(counts)
                .map(|(name, count)| ((*name).to_owned(), count.into()))
                .collect();
            println!("{}", serde_json::Value::Object(map));
            Ok(())
        }
    }
}

/// Sets `shutdown` on SIGINT or SIGTERM so the loop finishes its batch,
/// commits and leaves the group. A second signal exits at once.
async fn stop_on_signal(shutdown: Arc<AtomicBool>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    for _ in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if shutdown.swap(true, Ordering::Relaxed) {
            eprintln!("leadflow: second signal, exiting without committing");
            std::process::exit(130);
        }
        tracing::info!("shutting down: finishing the current batch");
    }
}
