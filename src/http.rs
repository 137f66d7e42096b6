//! The operations endpoint: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive: 200 while it serves at all) and
//! `/readyz` (200 when [`Health`] says ready, else 503 with the reason).
//!
//! It runs on tokio, apart from the processing loop's thread, and only
//! reads shared state, so a slow scrape never slows processing.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::health::Health;
use crate::metrics::Metrics;

/// What the endpoint reports on.
#[derive(Debug, Clone)]
pub struct Observed {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Serves connections until the runtime stops. Errors on one connection
/// are that connection's; the server goes on.
pub async fn serve(listener: TcpListener, observed: Observed) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let observed = observed.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &observed);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
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
    use crate::health::Phase;

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
