//! `leadflow ingest http`: the endpoint for Microsoft's HTTPS-endpoint lead
//! destination. Each POST of one lead is checked (the secret in the URL,
//! the size, the rate, the lead itself), wrapped in the envelope, and
//! written to the input topic by an idempotent producer with `acks=all`.
//! The answer is 2xx only once Kafka has acknowledged the record, so a
//! sender that got one can forget the lead; every other answer tells it
//! why, and 503 and 429 when to try again.
//!
//! | status | when |
//! |---|---|
//! | 200 | written and acknowledged; the body names the event id |
//! | 400 | not JSON, or not a lead: the body says why |
//! | 404 | a path other than the endpoint's, or a wrong or missing secret |
//! | 405 | not a POST |
//! | 408 | a body that took longer than 10 s to arrive |
//! | 413 | a body over `max_body_bytes` |
//! | 429 | over the client's rate limit, with `Retry-After` |
//! | 503 | Kafka did not acknowledge in time, with `Retry-After` |
//!
//! On shutdown it goes on taking connections for half a second (a load
//! balancer in front may not have noticed yet), then stops accepting,
//! answers the requests under way, and closes idle kept-alive connections.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::Envelope;
use super::limit::RateLimiter;
use crate::config::{Config, HttpIngestConfig};
use crate::error::{ConfigError, ErrorClass};
use crate::health::{Observed, Phase};
use crate::kafka::{DeliveryTracker, Role, SetupError, check_topics, client_config};
use crate::metrics::TopicLabels;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// What every request needs: the settings, the envelope, the producer.
pub struct Ingest {
    settings: HttpIngestConfig,
    topic: String,
    envelope: Envelope,
    producer: FutureProducer<DeliveryTracker>,
    limiter: Option<RateLimiter>,
    observed: Observed,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Most connections served at once that `max_connections` may allow.
const MAX_CONNECTIONS: usize = 65_535;

/// Room a lead's envelope takes beside the posted body.
const ENVELOPE_BYTES: usize = 256;

/// Checks the settings `ingest http` needs, naming the key at fault.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let http = &config.ingest.http;
    let invalid = |key: &str, reason: String| {
        Err(ConfigError::Invalid {
            origin: "config".into(),
            key: format!("ingest.http.{key}"),
            reason,
        })
    };
    let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    if http.secret.chars().count() < 16 || !http.secret.chars().all(unreserved) {
        return invalid(
            "secret",
            "must be at least 16 letters, digits, '-', '.', '_' or '~' (e.g. from `openssl rand -hex 24`)"
                .into(),
        );
    }
    if !http.path.starts_with('/') || http.path.ends_with('/') {
        return invalid(
            "path",
            format!(
                "{:?} must start and not end with '/' (e.g. \"/leads\")",
                http.path
            ),
        );
    }
    if http.max_connections > MAX_CONNECTIONS {
        return invalid(
            "max_connections",
            format!("must be at most {MAX_CONNECTIONS}"),
        );
    }
    let most = config
        .pipeline
        .max_record_bytes
        .saturating_sub(ENVELOPE_BYTES);
    if http.max_body_bytes == 0 || http.max_body_bytes > most {
        let reason =
            format!("must be 1 to {most}: what pipeline.max_record_bytes leaves for the envelope");
        return invalid("max_body_bytes", reason);
    }
    for (key, value) in [
        ("ack_timeout_ms", http.ack_timeout_ms),
        ("shutdown_timeout_ms", http.shutdown_timeout_ms),
        ("max_connections", http.max_connections as u64),
    ] {
        if value == 0 {
            return invalid(key, "must be greater than 0".into());
        }
    }
    Ok(())
}

impl Ingest {
    /// Checks the settings, reads the catalog, and connects to Kafka:
    /// within `kafka.connect_timeout_ms`, the input topic must be there.
    pub fn start(config: &Config, observed: Observed) -> Result<Ingest, IngestError> {
        check(config)?;
        let settings = config.ingest.http.clone();
        let catalog = config.catalog()?;
        let timeout = settings.ack_timeout_ms.to_string();
        // A lead in flight is in librdkafka's queue for a moment: a short
        // linger keeps latency low and still batches at high rates.
        let defaults = [
            ("linger.ms", "5"),
            ("partitioner", "murmur2_random"),
            ("statistics.interval.ms", "5000"),
        ];
        let mut client = client_config(&config.kafka, Role::Producer, &defaults);
        // What "acknowledged means durable" rests on, over any setting.
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &timeout);
        let tracker = DeliveryTracker::with_health(Arc::clone(&observed.health));
        let producer: FutureProducer<DeliveryTracker> = client
            .create_with_context(tracker)
            .map_err(SetupError::Client)?;
        check_topics(producer.client(), &config.kafka, &[&config.topics.input])?;
        Ok(Ingest {
            limiter: (settings.rate_limit_per_client > 0)
                .then(|| RateLimiter::new(settings.rate_limit_per_client)),
            envelope: Envelope::new(config.pipeline.max_record_bytes, catalog),
            topic: config.topics.input.clone(),
            settings,
            producer,
            observed,
        })
    }

    /// Ready from now on: the endpoint listens.
    pub fn listening(&self) {
        self.observed.health.set_phase(Phase::Taking);
    }

    /// Waits up to `timeout` for every lead handed to the producer to be
    /// acknowledged or failed (each request has its answer by then).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "ingest: leads still unacknowledged at exit");
        }
    }
}

/// How long after the stop signal connections are still taken and idle
/// kept-alive ones kept: a load balancer in front may take a moment to
/// notice, and a connection accepted just before the signal may not have
/// sent its request yet.
const DRAIN: Duration = Duration::from_millis(500);

/// Serves until `shutdown` turns true and [`DRAIN`] has passed, then lets
/// the requests in flight finish and returns.
pub async fn serve(listener: TcpListener, ingest: Arc<Ingest>, shutdown: watch::Receiver<bool>) {
    let connections = ingest.settings.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(connections));
    let stopped = drained(shutdown.clone());
    tokio::pin!(stopped);
    loop {
        let slot = tokio::select! {
            () = &mut stopped => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::warn!(error = %e, "ingest: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ingest = Arc::clone(&ingest);
        let closing = drained(shutdown.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let ingest = Arc::clone(&ingest);
                async move { Ok::<_, Infallible>(handle(request, &ingest, peer).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = closing => {
                    // Answers the request under way, if any, then closes.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "ingest: connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Every connection gives its slot back once its requests are answered.
    let all = u32::try_from(connections).unwrap_or(u32::MAX);
    let _all = slots.acquire_many(all).await;
}

/// Done [`DRAIN`] after `shutdown` turns true.
async fn drained(mut shutdown: watch::Receiver<bool>) {
    // The guard `wait_for` gives must not live across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
    tokio::time::sleep(DRAIN).await;
}

/// One request, start to answer, counted in the metrics.
async fn handle(
    request: Request<Incoming>,
    ingest: &Ingest,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let answer = match admit(&request, ingest, peer.ip()) {
        Ok(()) => match read_body(request, ingest.settings.max_body_bytes).await {
            Ok(body) => write(ingest, &body).await,
            Err(refusal) => Err(refusal),
        },
        Err(refusal) => Err(refusal),
    };
    let response = match answer {
        Ok(written) => written.response(),
        Err(refusal) => refusal.response(&ingest.settings),
    };
    let metrics = &ingest.observed.metrics;
    metrics
        .ingest
        .request(response.status().as_u16(), started.elapsed());
    response
}

/// A lead written and acknowledged: where it is.
struct Written {
    event_id: String,
    partition: i32,
    offset: i64,
}

impl Written {
    fn response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "event_id": self.event_id,
            "partition": self.partition,
            "offset": self.offset,
        });
        answer(StatusCode::OK, "application/json", format!("{body}\n"))
    }
}

/// Every answer but 200, and why.
#[derive(Debug)]
enum Refusal {
    /// A path other than the endpoint's, or a wrong or missing secret:
    /// the same answer, so that the endpoint gives nothing away.
    NotFound,
    NotPost,
    RateLimited,
    TooLarge,
    /// The body did not arrive within [`BODY_READ`].
    SlowBody,
    Unreadable(String),
    NotALead(super::NotALead),
    /// Kafka did not take or acknowledge the lead (the reason, for the body).
    Unavailable(&'static str),
}

impl Refusal {
    fn response(self, settings: &HttpIngestConfig) -> Response<Full<Bytes>> {
        let retry = |status, body: &str, seconds: u64| {
            let mut response = text(status, body.to_owned());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            response
        };
        match self {
            Refusal::NotFound => text(StatusCode::NOT_FOUND, "not found\n".into()),
            Refusal::NotPost => {
                let mut response = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "POST one lead as JSON\n".into(),
                );
                response
                    .headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
                response
            }
            Refusal::RateLimited => retry(
                StatusCode::TOO_MANY_REQUESTS,
                "over this client's rate limit\n",
                1,
            ),
            Refusal::TooLarge => text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a lead is at most {} bytes\n", settings.max_body_bytes),
            ),
            Refusal::SlowBody => text(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body took longer than {} s\n", BODY_READ.as_secs()),
            ),
            Refusal::Unreadable(why) => text(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {why}\n"),
            ),
            Refusal::NotALead(refusal) => text(
                StatusCode::BAD_REQUEST,
                format!("{}: {refusal}\n", refusal.class()),
            ),
            Refusal::Unavailable(why) => {
                retry(StatusCode::SERVICE_UNAVAILABLE, why, settings.retry_after_s)
            }
        }
    }
}

/// Method, path and secret, rate and declared size: what is decided
/// before reading a byte of the body.
fn admit(request: &Request<Incoming>, ingest: &Ingest, peer: IpAddr) -> Result<(), Refusal> {
    let settings = &ingest.settings;
    let uri = request.uri();
    let secret = secret_in(uri.path(), uri.query(), &settings.path).ok_or(Refusal::NotFound)?;
    // Equal-length secrets compare in constant time; a length that
    // differs tells an attacker only that it differs.
    if !bool::from(secret.as_bytes().ct_eq(settings.secret.as_bytes())) {
        return Err(Refusal::NotFound);
    }
    if request.method() != Method::POST {
        return Err(Refusal::NotPost);
    }
    if let Some(limiter) = &ingest.limiter {
        let client = client_of(request, &settings.client_address_header, peer);
        if !limiter.admit(client, Instant::now()) {
            return Err(Refusal::RateLimited);
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > settings.max_body_bytes) {
        return Err(Refusal::TooLarge);
    }
    Ok(())
}

/// The secret a request presents: the path's last segment after the
/// endpoint's path, or the `key` query parameter on the endpoint's path.
fn secret_in<'a>(path: &'a str, query: Option<&'a str>, endpoint: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(endpoint)?;
    match rest.strip_prefix('/') {
        Some(segment) if !segment.is_empty() && !segment.contains('/') => Some(segment),
        Some(_) => None,
        None if rest.is_empty() => query?.split('&').find_map(|pair| pair.strip_prefix("key=")),
        None => None,
    }
}

/// The client a rate limit counts against: the last address in the
/// configured header, the one the reverse proxy in front added (those
/// before it are the client's to write), else the peer.
fn client_of(request: &Request<Incoming>, header_name: &str, peer: IpAddr) -> IpAddr {
    if header_name.is_empty() {
        return peer;
    }
    request
        .headers()
        .get(header_name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

/// How long a body may take to arrive: a lead is a few hundred bytes, and
/// a sender that stalls must not hold a connection slot for ever.
const BODY_READ: Duration = Duration::from_secs(10);

async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, Refusal> {
    let body = Limited::new(request.into_body(), limit).collect();
    match tokio::time::timeout(BODY_READ, body).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::TooLarge),
        Ok(Err(e)) => Err(Refusal::Unreadable(e.to_string())),
        Err(_) => Err(Refusal::SlowBody),
    }
}

/// Wraps the lead and writes it; answers once Kafka has, or has not in time.
async fn write(ingest: &Ingest, body: &[u8]) -> Result<Written, Refusal> {
    let now_ms = crate::metrics::now_ms();
    let accepted = ingest.envelope.wrap(body, now_ms).map_err(|refusal| {
        ingest.observed.metrics.ingest.invalid(refusal.class());
        Refusal::NotALead(refusal)
    })?;
    let record = FutureRecord::to(&ingest.topic)
        .key(accepted.key.as_str())
        .payload(accepted.value.as_slice());
    let delivery = ingest.producer.send_result(record).map_err(|(e, _)| {
        tracing::warn!(error = %e, "ingest: Kafka did not take a lead");
        Refusal::Unavailable("Kafka is not taking leads\n")
    })?;
    // librdkafka gives up at message.timeout.ms (the ack timeout); the
    // extra second only guards against a report that never comes.
    let patience = Duration::from_millis(ingest.settings.ack_timeout_ms) + Duration::from_secs(1);
    match tokio::time::timeout(patience, delivery).await {
        Ok(Ok(Ok(delivered))) => {
            let topic = TopicLabels {
                topic: ingest.topic.clone(),
            };
            ingest
                .observed
                .metrics
                .records_out
                .get_or_create(&topic)
                .inc();
            Ok(Written {
                event_id: accepted.event_id,
                partition: delivered.partition,
                offset: delivered.offset,
            })
        }
        Ok(Ok(Err((e, _)))) => {
            let event_id = accepted.event_id;
            tracing::warn!(error = %e, event_id, "ingest: Kafka did not acknowledge a lead");
            Err(Refusal::Unavailable("Kafka did not acknowledge the lead\n"))
        }
        Ok(Err(_)) | Err(_) => Err(Refusal::Unavailable(
            "Kafka did not acknowledge the lead in time\n",
        )),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    answer(status, "text/plain; charset=utf-8", body)
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_documented_status_and_retry_after() {
        let settings = HttpIngestConfig {
            retry_after_s: 7,
            ..HttpIngestConfig::default()
        };
        let cases = [
            (Refusal::NotFound, 404, None),
            (Refusal::NotPost, 405, None),
            (Refusal::RateLimited, 429, Some("1")),
            (Refusal::TooLarge, 413, None),
            (Refusal::Unreadable("reset".into()), 400, None),
            (Refusal::SlowBody, 408, None),
            (Refusal::Unavailable("down\n"), 503, Some("7")),
        ];
        for (refusal, status, retry_after) in cases {
            let what = format!("{refusal:?}");
            let response = refusal.response(&settings);
            assert_eq!(response.status().as_u16(), status, "{what}");
            let header = response.headers().get(header::RETRY_AFTER);
            assert_eq!(header.and_then(|v| v.to_str().ok()), retry_after, "{what}");
        }
    }

    #[test]
    fn the_secret_is_the_last_path_segment_or_the_key_parameter() {
        let endpoint = "/leads";
        assert_eq!(secret_in("/leads/s3cret", None, endpoint), Some("s3cret"));
        assert_eq!(
            secret_in("/leads", Some("a=1&key=s3cret"), endpoint),
            Some("s3cret")
        );
        assert_eq!(secret_in("/leads/", None, endpoint), None);
        assert_eq!(secret_in("/leads/a/b", None, endpoint), None);
        assert_eq!(secret_in("/leadsx/s3cret", None, endpoint), None);
        assert_eq!(secret_in("/leads", None, endpoint), None);
        assert_eq!(secret_in("/other/s3cret", None, endpoint), None);
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let with = |change: &dyn Fn(&mut Config)| {
            let mut config = Config::default();
            config.ingest.http.secret = "0123456789abcdef".into();
            change(&mut config);
            check(&config).err().map(|e| e.to_string())
        };
        assert_eq!(with(&|_| {}), None);
        let missing = with(&|c| c.ingest.http.secret.clear()).expect("refused");
        assert!(missing.contains("ingest.http.secret"), "{missing}");
        let unsafe_chars = with(&|c| c.ingest.http.secret = "0123456789abcdef/?#".into());
        assert!(unsafe_chars.is_some_and(|e| e.contains("ingest.http.secret")));
        for path in ["leads", "/", "/leads/"] {
            let refused = with(&|c| c.ingest.http.path = path.into()).expect("refused");
            assert!(refused.contains("ingest.http.path"), "{refused}");
        }
        let many = with(&|c| c.ingest.http.max_connections = 1 << 20).expect("refused");
        assert!(many.contains("ingest.http.max_connections"), "{many}");
        let big = with(&|c| c.ingest.http.max_body_bytes = 10_000_000).expect("refused");
        assert!(big.contains("ingest.http.max_body_bytes"), "{big}");
        let zero = with(&|c| c.ingest.http.ack_timeout_ms = 0).expect("refused");
        assert!(zero.contains("ingest.http.ack_timeout_ms"), "{zero}");
    }
}
