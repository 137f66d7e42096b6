//! What several commands share: serving the HTTP endpoints (`run`, `demo`)
//! and stopping on SIGINT or SIGTERM (`run`, `dlq replay`).

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
