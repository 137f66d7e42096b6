//! `leadflow run`: the pipeline against Kafka until SIGINT or SIGTERM (or,
//! with `--until-drained`, the end of the input), then its tally as JSON.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Args;
use leadflow::config::Config;
use leadflow::engine::{self, Controls, RunOptions};
use leadflow::health::{Health, Observed};
use leadflow::metrics::Metrics;
use leadflow::reload::{self, ReloadSlot};

use crate::Sources;
use crate::cli::common::{start_http, stop_on_signal};

#[derive(Args)]
pub struct RunArgs {
    /// Consumer group, overriding `kafka.group_id`.
    #[arg(long)]
    pub group_id: Option<String>,
    /// Input topic, overriding `topics.input`.
    #[arg(long)]
    pub input_topic: Option<String>,
    /// This process's stable name in the group, overriding `kafka.instance_id`.
    #[arg(long, env = "LEADFLOW_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Exit once every assigned partition is read to its end and committed.
    #[arg(long)]
    pub until_drained: bool,
    /// Benchmark baseline: copy input records unchanged to the first
    /// route's topic, with the same clients and transactions, and no
    /// processing.
    #[arg(long)]
    pub passthrough: bool,
}

/// `leadflow run`. `--group-id`, `--input-topic` and `--instance-id` are
/// configuration overrides, in `config` already.
pub fn run(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    args: RunArgs,
    sources: Sources,
) -> anyhow::Result<()> {
    let observed = Observed {
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::default()),
    };
    let http_address = start_http(config, runtime, &observed)?;
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
    let tally = engine::run(config, options, controls)?;
    println!("{}", serde_json::to_string(&tally)?);
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
