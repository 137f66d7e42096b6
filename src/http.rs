//! The operations endpoint: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive: 200 while it serves at all) and
//! `/readyz` (200 when [`crate::health::Health`] says ready, else 503 with the reason).
//!
//! It runs on tokio, apart from the processing loop's thread, and only
//! reads shared state, so a slow scrape never slows processing. Clients
//! get bounded room ([`Limits`]): a few slow or idle connections cannot
//! take the endpoint, or the process's file descriptors, away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::health::Observed;

/// How much of the process the endpoint may take, whoever connects: it
/// often listens on every interface, and a scraper is a client like any.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog, so
    /// clients that never finish cannot use up the file descriptors.
    pub connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_read: Duration,
    /// How long a connection may stay open at all, kept alive or not.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 64,
            header_read: Duration::from_secs(5),
            lifetime: Duration::from_secs(60),
        }
    }
}

/// Serves connections until the runtime stops, within [`Limits::default`].
pub async fn serve(listener: TcpListener, observed: Observed) {
    serve_within(listener, observed, Limits::default()).await;
}

/// [`serve`] within `limits`. Errors on one connection are that
/// connection's; the server goes on.
pub async fn serve_within(listener: TcpListener, observed: Observed, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    loop {
        // A slot before accepting: at the cap, clients wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let observed = observed.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &observed);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.lifetime, connection).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended with an error"),
                Err(_) => tracing::debug!("HTTP connection closed at its lifetime"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

fn respond<B>(request: &Request<B>, observed: &Observed) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => {
            let ready = observed.health.readiness().is_ok();
            observed.metrics.ready.set(i64::from(ready));
            let openmetrics = request
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.contains("application/openmetrics-text"))
                });
            let body = observed.metrics.encode();
            let (body, content_type) = if openmetrics {
                (
                    body,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                (
                    prometheus_text(&body),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            };
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(content_type),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match observed.health.readiness() {
            Ok(reason) => text(StatusCode::OK, reason + "\n"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason + "\n"),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// OpenMetrics text turned into the older Prometheus text format (0.0.4),
/// for scrapers and tools that do not ask for OpenMetrics (`curl`,
/// `promtool check metrics` before 2.47). The two differ in where a
/// counter's `_total` goes, in `# UNIT` and in `# EOF`; the samples are the
/// same.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|prefix| Some((*prefix, line.strip_prefix(prefix)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(&name) {
                    "_total"
                } else {
                    ""
                };
                let tail = if tail == "unknown" { "untyped" } else { tail };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Health, Phase};
    use crate::metrics::Metrics;

    fn get(path: &str, observed: &Observed) -> (StatusCode, String) {
        get_accepting(path, "*/*", observed)
    }

    fn get_accepting(path: &str, accept: &str, observed: &Observed) -> (StatusCode, String) {
        let request = Request::get(path)
            .header(hyper::header::ACCEPT, accept)
            .body(())
            .expect("request");
        let response = respond(&request, observed);
        let status = response.status();
        let body = futures_body(response.into_body());
        (status, body)
    }

    fn futures_body(body: Full<Bytes>) -> String {
        use http_body_util::BodyExt as _;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let bytes = runtime
            .block_on(body.collect())
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Clients that connect and never send a request take every slot:
    /// the server closes each after the header timeout, and a scrape that
    /// waited in the backlog is answered then.
    #[test]
    fn idle_clients_are_closed_and_cannot_lock_out_a_scrape() {
        use std::io::{Read as _, Write as _};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let observed = Observed {
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
        };
        let limits = Limits {
            connections: 4,
            header_read: Duration::from_millis(300),
            lifetime: Duration::from_secs(30),
        };
        runtime.spawn(serve_within(listener, observed, limits));
        let started = std::time::Instant::now();
        let mut idle: Vec<std::net::TcpStream> = (0..limits.connections)
            .map(|_| std::net::TcpStream::connect(address).expect("connect"))
            .collect();
        let mut scrape = std::net::TcpStream::connect(address).expect("connect");
        scrape
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        scrape
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut answer = String::new();
        scrape
            .read_to_string(&mut answer)
            .expect("the scrape is answered");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            started.elapsed() >= limits.header_read,
            "answered before any slot was free: the cap did not hold"
        );
        for stream in &mut idle {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut rest = Vec::new();
            // The server's answer to a silent client, if any, then its close.
            stream.read_to_end(&mut rest).expect("closed by the server");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn endpoints_answer_by_path_and_readiness() {
        let observed = Observed {
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
        };
        assert_eq!(get("/healthz", &observed).0, StatusCode::OK);
        let (status, body) = get("/readyz", &observed);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");
        observed.health.set_phase(Phase::Running);
        assert_eq!(get("/readyz", &observed).0, StatusCode::OK);
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        let (status, body) = get_accepting("/metrics", accept, &observed);
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("# TYPE leadflow_leads counter"), "{body}");
        assert!(body.contains("leadflow_ready 1"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (_, body) = get("/metrics", &observed);
        assert!(
            body.contains("# TYPE leadflow_leads_total counter"),
            "{body}"
        );
        assert!(body.contains("# HELP leadflow_leads_total "), "{body}");
        assert!(body.contains("# TYPE leadflow_ready gauge"), "{body}");
        assert!(
            !body.contains("# EOF") && !body.contains("# UNIT"),
            "{body}"
        );
        assert_eq!(get("/nope", &observed).0, StatusCode::NOT_FOUND);
    }
}
