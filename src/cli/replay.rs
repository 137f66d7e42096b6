//! `leadflow dlq replay`: re-drives the chosen dead letters to the input
//! topic and prints its report as JSON; SIGINT or SIGTERM ends it early.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use leadflow::config::Config;
use leadflow::kafka::replay::{self, ReplayOptions};

use crate::cli::common::stop_on_signal;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Re-drive dead letters to the input topic after a fix, with their
    /// original key, value, timestamp and headers, exactly once: a replay
    /// interrupted and run again under the same name doubles nothing.
    Replay(ReplayArgs),
}

#[derive(Args)]
pub struct ReplayArgs {
    /// Only this error class (`leadflow.error.class`); repeatable.
    #[arg(long = "class", value_name = "CLASS")]
    pub classes: Vec<String>,
    /// Only this stage (`leadflow.error.stage`); repeatable.
    #[arg(long = "stage", value_name = "STAGE")]
    pub stages: Vec<String>,
    /// Only records with a timestamp at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only records with a timestamp before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Records replayed per second at most.
    #[arg(long)]
    pub rate: Option<f64>,
    /// List what would be replayed; write and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The replay's consumer group and transactional.id
    /// [default: GROUP-dlq-replay]. Reuse it to resume; change it to
    /// replay the same dead letters again.
    #[arg(long)]
    pub name: Option<String>,
}

/// `leadflow dlq replay`; with `--dry-run`, one line per chosen dead letter.
pub fn run(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    args: ReplayArgs,
) -> anyhow::Result<()> {
    let options = ReplayOptions {
        since_ms: rfc3339_ms("--since", args.since.as_deref())?,
        until_ms: rfc3339_ms("--until", args.until.as_deref())?,
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
    let report = replay::replay(config, &options, &shutdown, |chosen| {
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

/// `value` of `flag`, an RFC 3339 time, in ms since the epoch.
fn rfc3339_ms(flag: &str, value: Option<&str>) -> anyhow::Result<Option<i64>> {
    value
        .map(|v| {
            let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("{flag} {v:?} is not an RFC 3339 time"))?;
            Ok(i64::try_from(at.unix_timestamp_nanos() / 1_000_000)?)
        })
        .transpose()
}
