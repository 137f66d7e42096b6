//! The `leadflow` command line. Errors end here as one line on stderr and a
//! non-zero exit; everything below is the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use leadflow::config::{Config, LogConfig, LogFormat, Override};
use leadflow::generate::GeneratorOptions;
use leadflow::health::Health;
use leadflow::http::Observed;
use leadflow::kafka::produce::{ProduceOptions, produce};
use leadflow::kafka::replay::{self, ReplayOptions};
use leadflow::kafka::runner::{Controls, RunOptions, run};
use leadflow::kafka::tail::{self, TailError, TailOptions};
use leadflow::kafka::topics;
use leadflow::metrics::Metrics;
use leadflow::pipeline::{Pipeline, PipelineSettings};
use leadflow::reload::{self, ReloadSlot};
use leadflow::stages::decode::Format;

/// jemalloc, for Rust and (unprefixed) for librdkafka's C allocations too.
/// With glibc's malloc a soak's instance held 227 MiB resident of which
/// 126 MiB was free memory kept by its arenas (`malloc_trim` gave it
/// back), growing with every backlog and restart; jemalloc returns freed
/// pages to the system after a short decay, so resident memory follows
/// what is in use.
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
    Validate {
        /// JSON Lines, or one JSON lead; `-` reads standard input.
        file: PathBuf,
        /// One JSON object per lead, in input order.
        #[arg(long)]
        json: bool,
    },
    /// Print the records of a topic (campaign, suppressed, dead-letter or
    /// input), decoded as the topic's format says, with their headers.
    Tail {
        topic: String,
        /// Start at the oldest record [default: only new records].
        #[arg(long)]
        from_beginning: bool,
        /// Stop after N records.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
        /// Stop once every partition is read to its end.
        #[arg(long)]
        exit_at_end: bool,
        /// One JSON object per record.
        #[arg(long)]
        json: bool,
        /// Only when each record's lead entered leadflow (ms since the epoch:
        /// its `leadflow.source.timestamp` header, else its own timestamp),
        /// one per line, without reading values: for timing arrivals.
        #[arg(long, conflicts_with = "json")]
        timestamps: bool,
    },
    /// Consume raw leads, process them and produce campaign, suppressed and dead-letter records.
    Run(RunArgs),
    /// Produce generated raw leads; prints the outcome leadflow must reach as JSON.
    Produce(ProduceArgs),
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

#[derive(Subcommand)]
enum SchemasCommand {
    /// Whether each schema may be registered under its subject by the
    /// registry's compatibility rule. Exit code 1 if any may not.
    Check,
    /// Register each schema under its subject (a schema registered
    /// already keeps its id). Exit code 1 if the registry refuses any.
    Register,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Re-drive dead letters to the input topic after a fix, with their
    /// original key, value, timestamp and headers, exactly once: a replay
    /// interrupted and run again under the same name doubles nothing.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// Only this error class (`leadflow.error.class`); repeatable.
    #[arg(long = "class", value_name = "CLASS")]
    classes: Vec<String>,
    /// Only this stage (`leadflow.error.stage`); repeatable.
    #[arg(long = "stage", value_name = "STAGE")]
    stages: Vec<String>,
    /// Only records with a timestamp at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only records with a timestamp before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Records replayed per second at most.
    #[arg(long)]
    rate: Option<f64>,
    /// List what would be replayed; write and commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// The replay's consumer group and transactional.id
    /// [default: GROUP-dlq-replay]. Reuse it to resume; change it to
    /// replay the same dead letters again.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE (with `LEADFLOW_…` variables and `--set` over it) and
    /// print the effective configuration, every key with its value.
    Check { file: PathBuf },
}

#[derive(Args)]
struct DemoArgs {
    /// Number of generated leads.
    #[arg(long, default_value_t = 100_000)]
    leads: u64,
    /// Random seed; the same seed gives the same leads.
    #[arg(long, default_value_t = 42)]
    seed: u64,
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
    /// Benchmark baseline: copy input records unchanged to the first
    /// route's topic, with the same clients and transactions, and no
    /// processing.
    #[arg(long)]
    passthrough: bool,
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
    /// Share of hostile records (JSON only): just over and under
    /// `pipeline.max_record_bytes`, dated far ahead, huge or garbage fields,
    /// control characters.
    #[arg(long, default_value_t = 0.0)]
    hostile: f64,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    partitions: Option<i32>,
    /// Record encoding [default: `topics.input_format`].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Stamp each record with its lead's event time instead of the time of
    /// producing (for experiments: on a broker with time-based retention,
    /// records older than it are deleted at its next retention check).
    #[arg(long)]
    event_time_timestamps: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Json,
    Avro,
    ConfluentAvro,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the input, campaign, suppressed and dead-letter topics that do not exist yet.
    Create {
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Replicas of each partition [default: the broker's
        /// `default.replication.factor`]. 3 on a production cluster.
        #[arg(long)]
        replication_factor: Option<i32>,
        /// The topics' `min.insync.replicas` [default: the broker's]. 2 with
        /// 3 replicas: a write survives the loss of one broker.
        #[arg(long)]
        min_insync_replicas: Option<u32>,
    },
    /// Print the number of records in each of leadflow's topics as JSON.
    Counts,
}

mod cli;

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

/// `leadflow validate`.
fn validate(config: &Config, file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    let mut settings = PipelineSettings::from_config(config)?;
    // Lead exports are JSON, whatever the input topic carries.
    settings.input_format = Format::Json;
    let mut pipeline = Pipeline::new(settings);
    let verdicts =
        leadflow::validate::validate(config, &mut pipeline, &bytes, leadflow::metrics::now_ms());
    let mut out = std::io::stdout().lock();
    for verdict in &verdicts {
        if json {
            writeln!(out, "{}", serde_json::to_string(verdict)?)?;
        } else {
            writeln!(out, "{}", leadflow::validate::describe(verdict))?;
        }
    }
    let dead = verdicts
        .iter()
        .filter(|v| v.outcome == "dead_letter")
        .count();
    if dead > 0 {
        anyhow::bail!("{dead} of {} leads would be dead-lettered", verdicts.len());
    }
    Ok(())
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener`.
fn serve_http(
    runtime: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    observed: &Observed,
) -> anyhow::Result<std::net::SocketAddr> {
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    runtime.spawn(leadflow::http::serve(listener, observed.clone()));
    Ok(address)
}

/// A value that stays a string whatever it looks like.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

/// Log lines go to stderr: JSON lines from `run` unless stderr is a
/// terminal (or `log.format` says otherwise), human-readable text from
/// the other commands. `RUST_LOG` wins over `log.level`.
fn init_logging(config: &Config, command: &Command) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let run = matches!(command, Command::Run(_));
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
        Command::Run(args) => {
            let observed = Observed {
                metrics: Arc::new(Metrics::new()),
                health: Arc::new(Health::default()),
            };
            let http_address = if config.http.listen.trim().is_empty() {
                None
            } else {
                let listen = config.http.listen.trim();
                let listener = std::net::TcpListener::bind(listen).with_context(|| {
                    format!("cannot listen on {listen} (config key `http.listen`)")
                })?;
                Some(serve_http(&runtime, listener, &observed)?)
            };
            let shutdown = Arc::new(AtomicBool::new(false));
            let grace = Duration::from_millis(config.pipeline.shutdown_timeout_ms);
            runtime.spawn(stop_on_signal(Arc::clone(&shutdown), grace));
            let reloads = Arc::new(ReloadSlot::default());
            runtime.spawn(watch_for_reloads(
                sources,
                config.clone(),
                Arc::clone(&reloads),
                Arc::clone(&observed.metrics),
            ));
            let options = RunOptions {
                until_drained: args.until_drained,
                http_address,
                passthrough: args.passthrough,
                mock_cluster: false,
            };
            let controls = Controls {
                shutdown: &shutdown,
                observed: &observed,
                reloads: &reloads,
            };
            let tally = run(&config, options, controls)?;
            println!("{}", serde_json::to_string(&tally)?);
            Ok(())
        }
        Command::Validate { file, json } => validate(&config, &file, json),
        Command::Dlq(DlqCommand::Replay(args)) => {
            let rfc3339 = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<i64>> {
                value
                    .as_deref()
                    .map(|v| {
                        let at = time::OffsetDateTime::parse(
                            v,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .with_context(|| format!("{flag} {v:?} is not an RFC 3339 time"))?;
                        Ok(i64::try_from(at.unix_timestamp_nanos() / 1_000_000)?)
                    })
                    .transpose()
            };
            let options = ReplayOptions {
                since_ms: rfc3339("--since", &args.since)?,
                until_ms: rfc3339("--until", &args.until)?,
                classes: args.classes,
                stages: args.stages,
                rate: args.rate,
                dry_run: args.dry_run,
                name: args
                    .name
                    .unwrap_or_else(|| format!("{}-dlq-replay", config.kafka.group_id)),
            };
            let shutdown = Arc::new(AtomicBool::new(false));
            let grace = Duration::from_millis(config.pipeline.shutdown_timeout_ms);
            runtime.spawn(stop_on_signal(Arc::clone(&shutdown), grace));
            let dry_run = options.dry_run;
            let report = replay::replay(&config, &options, &shutdown, |chosen| {
                if dry_run {
                    println!(
                        "{}/{}/{} {}/{}",
                        config.topics.dead_letter,
                        chosen.partition,
                        chosen.offset,
                        chosen.stage.as_deref().unwrap_or("?"),
                        chosen.class.as_deref().unwrap_or("?")
                    );
                }
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Tail {
            topic,
            from_beginning,
            max,
            exit_at_end,
            json,
            timestamps,
        } => {
            use std::io::Write as _;
            let options = TailOptions {
                from_beginning,
                max,
                exit_at_end,
                positions_only: timestamps,
            };
            let mut out = std::io::stdout().lock();
            let printed = tail::tail(&config, &topic, options, |record| {
                if timestamps {
                    writeln!(out, "{}", record.timestamp_ms.unwrap_or(-1))
                } else if json {
                    let line = serde_json::to_string(&record).map_err(std::io::Error::other)?;
                    writeln!(out, "{line}")
                } else {
                    writeln!(out, "{}", tail::describe(&record))
                }
            });
            match printed {
                // A reader that stopped reading (`| head`) is no failure.
                Err(TailError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.map(|_| ()).map_err(Into::into),
            }
        }
        Command::Schemas(command) => schemas(&config, command),
        Command::Config(ConfigCommand::Check { file }) => {
            print!("{}", config.to_toml());
            eprintln!("{}: valid", file.display());
            Ok(())
        }
        Command::Produce(args) => {
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
                raw_lead_schema_id(&config, &topic)?
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
        Command::Topics(TopicsCommand::Create {
            partitions,
            replication_factor,
            min_insync_replicas,
        }) => {
            let roles = topics::roles(&config);
            let named: Vec<(&str, topics::TopicRole)> = roles
                .iter()
                .map(|(name, role)| (name.as_str(), *role))
                .collect();
            let layout = topics::Layout {
                partitions,
                replication_factor,
                min_insync_replicas,
            };
            let created = runtime.block_on(topics::create(
                &config.kafka,
                &named,
                layout,
                config.pipeline.max_record_bytes,
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

/// `leadflow schemas check|register`: one line per subject.
fn schemas(config: &Config, command: SchemasCommand) -> anyhow::Result<()> {
    use leadflow::registry::{Compatibility, Registration, RegistryClient, topic_schemas};
    let schemas = topic_schemas(config);
    if schemas.is_empty() {
        anyhow::bail!("no topic uses the confluent-avro format, so no schema needs the registry");
    }
    let client = RegistryClient::new(&config.schema_registry)?;
    let mut refused = 0;
    for topic in &schemas {
        let verdict = match command {
            SchemasCommand::Check => match client.check(&topic.subject, topic.schema)? {
                Compatibility::Compatible => "compatible".to_owned(),
                Compatibility::NoSubject => {
                    "compatible (the subject has no version yet)".to_owned()
                }
                Compatibility::Incompatible(messages) => {
                    refused += 1;
                    format!("INCOMPATIBLE: {}", messages.join("; "))
                }
            },
            SchemasCommand::Register => match client.register(&topic.subject, topic.schema)? {
                Registration::Registered(id) => format!("registered, id {id}"),
                Registration::Incompatible(message) => {
                    refused += 1;
                    format!("REFUSED: {message}")
                }
            },
        };
        println!(
            "{} ({} for {}): {verdict}",
            topic.subject, topic.file, topic.topic
        );
    }
    if refused > 0 {
        anyhow::bail!(
            "{refused} of {} schemas refused by {}",
            schemas.len(),
            client.url()
        );
    }
    Ok(())
}

/// Reloads the configuration on SIGHUP or when the config file or the
/// rules file changes (polled every second), and offers it to the loop.
/// One that does not load or validate is refused here.
async fn watch_for_reloads(
    (path, overrides): Sources,
    config: Config,
    slot: Arc<ReloadSlot>,
    metrics: Arc<Metrics>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; rules reload on file change only");
            return;
        }
    };
    let mut files = reload::watched_files(path.as_deref(), &config);
    let mut seen = reload::modified(&files);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let trigger = tokio::select! {
            _ = hangup.recv() => "SIGHUP",
            _ = tick.tick() => {
                let now = reload::modified(&files);
                if now == seen {
                    continue;
                }
                seen = now;
                "file change"
            }
        };
        match Config::load_with(path.as_deref(), &overrides) {
            Ok(config) => {
                tracing::info!(trigger, "configuration loaded for reload");
                files = reload::watched_files(path.as_deref(), &config);
                seen = reload::modified(&files);
                slot.offer(config);
            }
            Err(error) => {
                metrics.reloaded("refused");
                tracing::warn!(trigger, %error, "reload refused; the rules in use stay");
            }
        }
    }
}

/// Sets `shutdown` on SIGINT or SIGTERM so the loop finishes its batch,
/// commits and leaves the group. A second signal, or `grace` passing,
/// exits at once: nothing uncommitted is visible, so nothing is lost, but
/// the next owner of the partitions processes the open batch again.
async fn stop_on_signal(shutdown: Arc<AtomicBool>, grace: Duration) {
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
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            eprintln!(
                "leadflow: error: shutdown took longer than pipeline.shutdown_timeout_ms ({} ms); exiting without committing",
                grace.as_millis()
            );
            std::process::exit(1);
        });
    }
}
