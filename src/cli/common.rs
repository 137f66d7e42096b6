//! What several commands share: serving the HTTP endpoints (`run`, `demo`,
//! `ingest`) and stopping on SIGINT or SIGTERM (`run`, `dlq replay`,
//! `ingest`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leadflow::health::Observed;

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener`.
pub fn serve_http(
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

/// Sets `shutdown` on SIGINT or SIGTERM so the loop finishes its batch,
/// commits and leaves the group. A second signal, or `grace` passing,
/// exits at once: nothing uncommitted is visible, so nothing is lost, but
/// the next owner of the partitions processes the open batch again.
pub async fn stop_on_signal(shutdown: Arc<AtomicBool>, grace: Duration) {
    let stop = move || shutdown.store(true, Ordering::Relaxed);
    on_signal(
        stop,
        grace,
        "pipeline.shutdown_timeout_ms",
        "finishing the current batch",
    )
    .await;
}

/// Calls `stop` on the first SIGINT or SIGTERM; exits with code 130 on a
/// second, and with code 1 if `grace` (the value of config key
/// `grace_key`) passes first. `doing` says what the process finishes.
pub async fn on_signal(stop: impl Fn(), grace: Duration, grace_key: &'static str, doing: &str) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    for signal in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if signal > 0 {
            eprintln!("leadflow: second signal, exiting at once");
            std::process::exit(130);
        }
        stop();
        tracing::info!("shutting down: {doing}");
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            eprintln!(
                "leadflow: error: shutdown took longer than {grace_key} ({} ms); exiting",
                grace.as_millis()
            );
            std::process::exit(1);
        });
    }
}

/// Serves the HTTP endpoints on `http.listen`, unless it is empty, and
/// says where.
pub fn start_http(
    config: &leadflow::config::Config,
    runtime: &tokio::runtime::Runtime,
    observed: &Observed,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    use anyhow::Context as _;
    if config.http.listen.trim().is_empty() {
        return Ok(None);
    }
    let listen = config.http.listen.trim();
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (config key `http.listen`)"))?;
    Ok(Some(serve_http(runtime, listener, observed)?))
}
