//! The `leadflow` command line. Errors end here as one line on stderr and a
//! non-zero exit; everything below is the library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use leadflow::config::{Config, LogConfig, LogFormat, Override};

use crate::cli::config::ConfigCommand;
use crate::cli::demo::DemoArgs;
use crate::cli::ingest::IngestCommand;
use crate::cli::produce::ProduceArgs;
use crate::cli::replay::DlqCommand;
use crate::cli::run::RunArgs;
use crate::cli::schemas::SchemasCommand;
use crate::cli::tail::TailArgs;
use crate::cli::topics::TopicsCommand;
use crate::cli::validate::ValidateArgs;

/// jemalloc, for Rust and (unprefixed) for librdkafka's C allocations too.
/// With glibc's malloc a soak's instance held 227 MiB resident of which
/// 126 MiB was free memory kept by its arenas (`malloc_trim` gave it
/// back), growing with every backlog and restart; jemalloc returns freed
/// pages to the system after a short decay, so resident memory follows
/// what is in use. Its settings are built in from `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Set a configuration key, over the file and `LEADFLOW_…` variables,
    /// e.g. `--set pipeline.commit_interval_ms=50`. Repeatable.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on an in-process mock Kafka cluster, with no
    /// broker to install: generate leads, process them, and show where
    /// every one of them went.
    Demo(DemoArgs),
    /// Run decode, enrich, dedupe, score and route offline over a file of
    /// raw JSON leads, with the configuration and rules `run` would use,
    /// and print where each lead would go, or why it would be
    /// dead-lettered. Exit code 1 if any would be.
    Validate(ValidateArgs),
    /// Print the records of a topic (campaign, suppressed, dead-letter or
    /// input), decoded as the topic's format says, with their headers.
    Tail(TailArgs),
    /// Consume raw leads, process them and produce campaign, suppressed and dead-letter records.
    Run(RunArgs),
    /// Produce generated raw leads; prints the outcome leadflow must reach as JSON.
    Produce(ProduceArgs),
    /// Take leads from Microsoft's lead destinations into the input topic.
    #[command(subcommand)]
    Ingest(IngestCommand),
    /// Create or count leadflow's topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with the dead-letter topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Check or register leadflow's Avro schemas (`schemas/`) in the
    /// schema registry, under the subjects of the topics that use the
    /// `confluent-avro` format, for deploy pipelines.
    #[command(subcommand)]
    Schemas(SchemasCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = config_sources(&cli).and_then(|sources| {
        let config = Config::load_with(sources.0.as_deref(), &sources.1)?;
        init_logging(&config, &cli.command)?;
        execute(cli, config, sources)
    });
    match loaded {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leadflow: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the configuration comes from: the file (`config check`'s
/// argument, else `--config`), then `LEADFLOW_…` variables, then flags.
type Sources = (Option<PathBuf>, Vec<Override>);

fn config_sources(cli: &Cli) -> anyhow::Result<Sources> {
    let mut overrides = Override::from_env(std::env::vars());
    if let Some(servers) = &cli.bootstrap_servers {
        overrides.push(Override {
            origin: "--bootstrap-servers".into(),
            key: "kafka.bootstrap_servers".into(),
            value: toml_string(servers),
        });
    }
    if let Command::Run(args) = &cli.command {
        for (flag, key, value) in [
            ("--group-id", "kafka.group_id", &args.group_id),
            ("--input-topic", "topics.input", &args.input_topic),
            ("--instance-id", "kafka.instance_id", &args.instance_id),
        ] {
            if let Some(value) = value {
                overrides.push(Override {
                    origin: flag.into(),
                    key: key.into(),
                    value: toml_string(value),
                });
            }
        }
    }
    for flag in &cli.set {
        overrides.push(Override::from_flag(flag)?);
    }
    let path = match &cli.command {
        Command::Config(ConfigCommand::Check { file }) => Some(file.clone()),
        _ => cli.config.clone(),
    };
    Ok((path, overrides))
}

/// A value that stays a string whatever it looks like.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

/// Log lines go to stderr: JSON lines from `run` and `ingest` unless stderr is a
/// terminal (or `log.format` says otherwise), human-readable text from
/// the other commands. `RUST_LOG` wins over `log.level`.
fn init_logging(config: &Config, command: &Command) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let run = matches!(command, Command::Run(_) | Command::Ingest(_));
    // The demo's progress bar and summary are its output: only warnings
    // interrupt them, unless asked otherwise.
    let level = match command {
        Command::Demo(_) if config.log.level == LogConfig::default().level => "warn",
        _ => config.log.level.as_str(),
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&filter)
            .with_context(|| format!("RUST_LOG={filter:?} is not a valid log filter"))?,
        _ => tracing_subscriber::EnvFilter::try_new(level).with_context(|| {
            format!("config key `log.level`: {level:?} is not a valid log filter")
        })?,
    };
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => run && !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
    Ok(())
}

fn execute(cli: Cli, config: Config, sources: Sources) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Demo(args) => cli::demo::run_demo(&config, &runtime, args.leads, args.seed),
        Command::Run(args) => cli::run::run(&config, &runtime, args, sources),
        Command::Validate(args) => cli::validate::run(&config, args),
        Command::Dlq(DlqCommand::Replay(args)) => cli::replay::run(&config, &runtime, args),
        Command::Tail(args) => cli::tail::run(&config, args),
        Command::Schemas(command) => cli::schemas::run(&config, command),
        Command::Config(ConfigCommand::Check { file }) => cli::config::check(&config, &file),
        Command::Produce(args) => cli::produce::run(&config, &runtime, args),
        Command::Ingest(command) => cli::ingest::run(&config, &runtime, command),
        Command::Topics(TopicsCommand::Create {
            partitions,
            replication_factor,
            min_insync_replicas,
        }) => cli::topics::create(
            &config,
            &runtime,
            partitions,
            replication_factor,
            min_insync_replicas,
        ),
        Command::Topics(TopicsCommand::Counts) => cli::topics::counts(&config),
    }
}
