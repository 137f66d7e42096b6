//! `leadflow ingest http`: serves the endpoint Microsoft's HTTPS-endpoint
//! lead destination posts to, until SIGINT or SIGTERM; then it answers
//! the requests in flight and exits. The work is `leadflow::ingest`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use leadflow::config::Config;
use leadflow::health::{Health, Observed};
use leadflow::ingest::http::{Ingest, serve};
use leadflow::metrics::Metrics;

use crate::cli::common::{on_signal, start_http};

#[derive(Subcommand)]
pub enum IngestCommand {
    /// Serve the endpoint for Microsoft's HTTPS-endpoint lead destination
    /// (`[ingest.http]`), writing each posted lead to the input topic and
    /// answering 200 once Kafka has acknowledged it.
    Http,
}

pub fn run(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    command: IngestCommand,
) -> anyhow::Result<()> {
    match command {
        IngestCommand::Http => http(config, runtime),
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
