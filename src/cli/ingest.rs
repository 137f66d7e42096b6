//! `leadflow ingest http`: serves the endpoint Microsoft's HTTPS-endpoint
//! lead destination posts to, until SIGINT or SIGTERM; then it answers
//! the requests in flight and exits. `leadflow ingest azure-table`: polls
//! the storage table of the Azure-table destination until SIGINT or
//! SIGTERM, then exits after the poll under way. The work is
//! `leadflow::ingest`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use leadflow::config::Config;
use leadflow::health::{Health, Observed, Phase};
use leadflow::ingest::http::{Ingest, serve};
use leadflow::ingest::table::{Recovery, TableIngest};
use leadflow::metrics::Metrics;

use crate::cli::common::{on_signal, start_http, stop_on_signal};

#[derive(Subcommand)]
pub enum IngestCommand {
    /// Serve the endpoint for Microsoft's HTTPS-endpoint lead destination
    /// (`[ingest.http]`), writing each posted lead to the input topic and
    /// answering 200 once Kafka has acknowledged it.
    Http,
    /// Read the leads Microsoft's Azure-table lead destination writes to a
    /// storage table (`[ingest.azure_table]`) into the input topic, exactly
    /// once: the read position is written in the same transaction.
    AzureTable,
}

pub fn run(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    command: IngestCommand,
) -> anyhow::Result<()> {
    match command {
        IngestCommand::Http => http(config, runtime),
        IngestCommand::AzureTable => azure_table(config, runtime),
    }
}

fn http(config: &Config, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let observed = Observed {
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::default()),
    };
    let ingest = Arc::new(Ingest::start(config, observed.clone())?);
    let operations = start_http(config, runtime, &observed)?;
    let settings = &config.ingest.http;
    let listen = settings.listen.trim();
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (config key `ingest.http.listen`)"))?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    ingest.listening();
    tracing::info!(
        %address,
        path = %format!("{}/<secret>", settings.path),
        topic = config.topics.input,
        operations = ?operations,
        "ingest: taking leads"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let grace = Duration::from_millis(settings.shutdown_timeout_ms);
    runtime.spawn(async move {
        let stop = move || {
            let _ = stop.send(true);
        };
        on_signal(
            stop,
            grace,
            "ingest.http.shutdown_timeout_ms",
            "answering the requests in flight",
        )
        .await;
    });
    runtime.block_on(serve(listener, Arc::clone(&ingest), stopped));
    ingest.flush(Duration::from_secs(5));
    tracing::info!("ingest: stopped");
    Ok(())
}

fn azure_table(config: &Config, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let observed = Observed {
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::default()),
    };
    let mut reader = TableIngest::start(config, observed.clone())?;
    start_http(config, runtime, &observed)?;
    reader.reading();
    let stop = Arc::new(AtomicBool::new(false));
    let grace = Duration::from_millis(config.pipeline.shutdown_timeout_ms);
    runtime.spawn(stop_on_signal(Arc::clone(&stop), grace));
    let interval = Duration::from_millis(config.ingest.azure_table.poll_interval_ms);
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let error = match reader.poll() {
            Ok(written) => {
                if written > 0 {
                    tracing::info!(written, "ingest: leads written from the table");
                }
                backoff = Duration::from_secs(1);
                pause(interval, &stop);
                continue;
            }
            Err(error) => error,
        };
        let recovery = error.recovery();
        let retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(%error, ?recovery, retry_in_ms, "ingest: poll failed");
        match recovery {
            Recovery::Exit => return Err(error.into()),
            Recovery::Retry => pause(backoff, &stop),
            Recovery::Restart => {
                observed.health.set_phase(Phase::Starting);
                pause(backoff, &stop);
                // The old producer goes first: its transactional id is the
                // new one's.
                drop(reader);
                reader = loop {
                    match TableIngest::start(config, observed.clone()) {
                        Ok(reader) => break reader,
                        Err(error) if stop.load(Ordering::Relaxed) => return Err(error.into()),
                        Err(error) if error.recovery() == Recovery::Exit => {
                            return Err(error.into());
                        }
                        Err(error) => {
                            tracing::warn!(%error, "ingest: cannot start the reader again");
                            backoff = (backoff * 2).min(interval.max(Duration::from_secs(1)));
                            pause(backoff, &stop);
                        }
                    }
                };
                reader.reading();
            }
        }
        backoff = (backoff * 2).min(interval.max(Duration::from_secs(1)));
    }
    tracing::info!("ingest: stopped");
    Ok(())
}

/// Waits `wait`, or less once `stop` is set.
fn pause(wait: Duration, stop: &AtomicBool) {
    let until = std::time::Instant::now() + wait;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        // Short steps, so that a stop is seen within a tenth of a second.
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}
