//! leadflow on the test broker's secured listeners (`scripts/kafka.sh`):
//! SASL_SSL with SCRAM-SHA-512, SSL with client certificates (mTLS), and
//! SASL_SSL with OAUTHBEARER, both with Kafka's unsecured JWT validator and
//! with its JWKS validator, the token then fetched by librdkafka's OIDC
//! client-credentials mode from a token endpoint the test serves. In each
//! mode a mixed set of leads drains and the checker accounts for every
//! one. A wrong password, an untrusted CA and an expired broker
//! certificate each end start-up within the connect timeout with exit
//! code 1 and one line that names the cause, and no log line carries a
//! secret. The settings come the ways a deployment passes secrets:
//! environment variables for librdkafka's dotted keys, and `${VAR}` in
//! the file.

#![cfg(feature = "kafka-tests")]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::checker::{check, write_generated};
use common::faults::WINDOW_MS;
use common::{Env, OutputWithin as _};

/// The listeners `scripts/kafka.sh` serves beside PLAINTEXT, by their
/// offset from its port.
const SCRAM: u16 = 2;
const MTLS: u16 = 3;
const OAUTH: u16 = 4;
const EXPIRED: u16 = 5;
const OIDC: u16 = 6;

/// The test broker's port.
fn broker_port() -> u16 {
    common::bootstrap()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the test broker's port")
}

fn listener(offset: u16) -> String {
    format!("127.0.0.1:{}", broker_port() + offset)
}

/// The directory of the test CA, certificates and keys (`kafka.sh tls`).
fn tls() -> PathBuf {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
        .arg("tls")
        .env("LEADFLOW_KAFKA_PORT", broker_port().to_string())
        .output_within_patience("kafka.sh tls");
    assert!(out.status.success(), "kafka.sh tls failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn file(name: &str) -> String {
    tls().join(name).to_string_lossy().into_owned()
}

/// The SCRAM listener's settings, as environment variables (a Kubernetes
/// Secret's way in), with `password` and trusting the CA in `ca`.
fn scram(password: &str, ca: &str) -> Vec<(String, String)> {
    [
        ("LEADFLOW_KAFKA__BOOTSTRAP_SERVERS", listener(SCRAM)),
        (
            "LEADFLOW_KAFKA__CLIENT__SECURITY_PROTOCOL",
            "SASL_SSL".into(),
        ),
        (
            "LEADFLOW_KAFKA__CLIENT__SASL_MECHANISMS",
            "SCRAM-SHA-512".into(),
        ),
        ("LEADFLOW_KAFKA__CLIENT__SASL_USERNAME", "leadflow".into()),
        ("LEADFLOW_KAFKA__CLIENT__SASL_PASSWORD", password.into()),
        ("LEADFLOW_KAFKA__CLIENT__SSL_CA_LOCATION", file(ca)),
    ]
    .map(|(name, value)| (name.to_owned(), value))
    .to_vec()
}

/// `leadflow ARGS` with `env`'s configuration, or `config` instead, and
/// extra environment variables.
fn leadflow(
    env: &Env,
    config: Option<&PathBuf>,
    args: &[&str],
    vars: &[(String, String)],
) -> Output {
    let mut command = env.command(args);
    if let Some(config) = config {
        command = Command::new(env!("CARGO_BIN_EXE_leadflow"));
        command.arg("--config").arg(config).args(args);
    }
    command
        .env("RUST_LOG", "off")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output_within_patience(&format!("leadflow {}", args.join(" ")))
}

/// Writes a mixed set of leads on the plain listener, drains them through
/// a secured one, and has the checker account for every lead.
fn drains(name: &str, seed: u64, config: Option<&PathBuf>, env: &Env, vars: &[(String, String)]) {
    let written = write_generated(&env.input, 1_500, seed);
    let out = leadflow(env, config, &["run", "--until-drained"], vars);
    assert!(
        out.status.success(),
        "{name}: run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = check(env, &written, WINDOW_MS);
    eprintln!("{name}: {}", report.summary());
    report.assert_clean();
}

#[test]
fn scram_sha_512_over_tls_drains_every_lead() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("scram", 2, "");
    drains("scram", 71, None, &env, &scram("leadflow-secret", "ca.pem"));
}

/// mTLS, its settings in the file and its paths from `${VAR}`.
#[test]
fn client_certificates_drain_every_lead() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("mtls", 2, "");
    let text = std::fs::read_to_string(&env.config).expect("config");
    let config = env.config.with_file_name("mtls.toml");
    std::fs::write(
        &config,
        format!(
            "{text}\n[kafka.client]\n\"security.protocol\" = \"SSL\"\n\
             \"ssl.ca.location\" = \"${{LEADFLOW_TEST_TLS}}/ca.pem\"\n\
             \"ssl.certificate.location\" = \"${{LEADFLOW_TEST_TLS}}/client.pem\"\n\
             \"ssl.key.location\" = \"${{LEADFLOW_TEST_TLS}}/client-key.pem\"\n"
        ),
    )
    .expect("write config");
    let vars = [
        ("LEADFLOW_TEST_TLS", tls().to_string_lossy().into_owned()),
        ("LEADFLOW_KAFKA__BOOTSTRAP_SERVERS", listener(MTLS)),
    ]
    .map(|(name, value)| (name.to_owned(), value));
    drains("mtls", 73, Some(&config), &env, &vars);
}

#[test]
fn oauthbearer_over_tls_drains_every_lead() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::new("oauth", 2, "");
    let mut vars = oauthbearer(OAUTH);
    vars.extend(
        [
            (
                "LEADFLOW_KAFKA__CLIENT__ENABLE_SASL_OAUTHBEARER_UNSECURE_JWT",
                "true".into(),
            ),
            (
                "LEADFLOW_KAFKA__CLIENT__SASL_OAUTHBEARER_CONFIG",
                "principal=leadflow".into(),
            ),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    drains("oauth", 79, None, &env, &vars);
}

/// SASL_SSL with OAUTHBEARER on the listener at `offset`, trusting the
/// test CA: what the token is and where it comes from is the caller's.
fn oauthbearer(offset: u16) -> Vec<(String, String)> {
    [
        ("LEADFLOW_KAFKA__BOOTSTRAP_SERVERS", listener(offset)),
        (
            "LEADFLOW_KAFKA__CLIENT__SECURITY_PROTOCOL",
            "SASL_SSL".into(),
        ),
        (
            "LEADFLOW_KAFKA__CLIENT__SASL_MECHANISMS",
            "OAUTHBEARER".into(),
        ),
        ("LEADFLOW_KAFKA__CLIENT__SSL_CA_LOCATION", file("ca.pem")),
    ]
    .map(|(name, value)| (name.to_owned(), value))
    .to_vec()
}

/// An identity provider's token endpoint, as OAuth 2.0's client-credentials
/// grant has it: a POST with the client's id and secret in HTTP basic
/// authentication gets the test provider's signed token (`kafka.sh tls`),
/// anything else a 401. Counts the tokens it hands out.
struct TokenEndpoint {
    url: String,
    issued: Arc<AtomicUsize>,
}

/// `Basic` authentication of client `leadflow` with secret `oidc-secret`.
const CLIENT_AUTHORIZATION: &str = "Basic bGVhZGZsb3c6b2lkYy1zZWNyZXQ=";

impl TokenEndpoint {
    fn start() -> TokenEndpoint {
        let token = std::fs::read_to_string(tls().join("oidc.jwt")).expect("oidc.jwt");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token endpoint");
        let url = format!(
            "http://{}/oauth2/token",
            listener.local_addr().expect("address")
        );
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&issued);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let (mut authorized, mut length, mut post) = (false, 0, false);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let header = line.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    post |= header.starts_with("POST /oauth2/token ");
                    if let Some((name, value)) = header.split_once(':') {
                        let value = value.trim();
                        match name.to_ascii_lowercase().as_str() {
                            "authorization" => authorized = value == CLIENT_AUTHORIZATION,
                            "content-length" => length = value.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                let grant = reader.read_exact(&mut body).is_ok()
                    && String::from_utf8_lossy(&body).contains("grant_type=client_credentials");
                let (status, json) = if post && authorized && grant {
                    counter.fetch_add(1, Ordering::SeqCst);
                    (
                        "200 OK",
                        format!(
                            r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#
                        ),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"error":"invalid_client"}"#.to_owned(),
                    )
                };
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                );
            }
        });
        TokenEndpoint { url, issued }
    }

    /// The OIDC listener's settings, with the client secret `secret`.
    fn settings(&self, secret: &str) -> Vec<(String, String)> {
        let mut settings = oauthbearer(OIDC);
        settings.extend(
            [
                (
                    "LEADFLOW_KAFKA__CLIENT__SASL_OAUTHBEARER_METHOD",
                    "oidc".into(),
                ),
                (
                    "LEADFLOW_KAFKA__CLIENT__SASL_OAUTHBEARER_CLIENT_ID",
                    "leadflow".into(),
                ),
                (
                    "LEADFLOW_KAFKA__CLIENT__SASL_OAUTHBEARER_CLIENT_SECRET",
                    secret.into(),
                ),
                (
                    "LEADFLOW_KAFKA__CLIENT__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
                    self.url.clone(),
                ),
                (
                    "LEADFLOW_KAFKA__CLIENT__SASL_OAUTHBEARER_SCOPE",
                    "kafka".into(),
                ),
            ]
            .map(|(name, value)| (name.to_owned(), value)),
        );
        settings
    }
}

/// The token comes from the endpoint, and the broker checks its signature,
/// issuer and audience against the provider's published key.
#[test]
fn oidc_client_credentials_drain_every_lead() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let endpoint = TokenEndpoint::start();
    let env = Env::new("oidc", 2, "");
    drains("oidc", 83, None, &env, &endpoint.settings("oidc-secret"));
    assert!(
        endpoint.issued.load(Ordering::SeqCst) > 0,
        "no token was fetched"
    );
}

/// One line on stderr naming `cause`, exit code 1, within the connect
/// timeout (3 s) and the process's own start and stop.
fn refused(what: &str, vars: Vec<(String, String)>, cause: &[&str]) {
    let env = Env::new(what, 1, "");
    let mut vars = vars;
    vars.push((
        "LEADFLOW_KAFKA__CONNECT_TIMEOUT_MS".to_owned(),
        "3000".to_owned(),
    ));
    let started = Instant::now();
    let out = leadflow(&env, None, &["run"], &vars);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(took < Duration::from_secs(6), "{what}: took {took:?}");
    let line = stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "{what}: not one line: {stderr}");
    assert!(
        line.contains("cannot reach Kafka") && cause.iter().any(|c| line.contains(c)),
        "{what}: {line}"
    );
    eprintln!("{what}: {line}");
}

#[test]
fn a_wrong_password_is_named_in_one_line() {
    let _deadline = common::deadline(Duration::from_secs(60));
    refused(
        "wrong-password",
        scram("not-the-password", "ca.pem"),
        &["Authentication failed", "invalid credentials"],
    );
}

#[test]
fn an_untrusted_ca_is_named_in_one_line() {
    let _deadline = common::deadline(Duration::from_secs(60));
    refused(
        "untrusted-ca",
        scram("leadflow-secret", "other-ca.pem"),
        &["invalid peer certificate: UnknownIssuer"],
    );
}

#[test]
fn an_expired_certificate_is_named_in_one_line() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let vars = [
        ("LEADFLOW_KAFKA__BOOTSTRAP_SERVERS", listener(EXPIRED)),
        ("LEADFLOW_KAFKA__CLIENT__SECURITY_PROTOCOL", "SSL".into()),
        ("LEADFLOW_KAFKA__CLIENT__SSL_CA_LOCATION", file("ca.pem")),
    ]
    .map(|(name, value)| (name.to_owned(), value))
    .to_vec();
    refused("expired", vars, &["certificate expired"]);
}

#[test]
fn a_refused_client_secret_is_named_in_one_line() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let endpoint = TokenEndpoint::start();
    refused(
        "wrong-client-secret",
        endpoint.settings("not-the-secret"),
        &[r#"Failed to acquire SASL OAUTHBEARER token: {"error":"invalid_client"}"#],
    );
    assert_eq!(endpoint.issued.load(Ordering::SeqCst), 0);
}

/// With every log on, librdkafka's included, neither a refused password
/// nor a working one shows up anywhere in what leadflow prints.
#[test]
fn logs_never_print_a_password() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let env = Env::new("log-secrets", 1, "");
    let secret = "s3cret-that-must-not-leak";
    let mut vars = scram(secret, "ca.pem");
    vars.push(("LEADFLOW_KAFKA__CONNECT_TIMEOUT_MS".into(), "2000".into()));
    vars.push((
        "LEADFLOW_KAFKA__CLIENT__DEBUG".into(),
        "security,broker,conf".into(),
    ));
    let out = env
        .command(&["run"])
        .env("RUST_LOG", "debug")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output_within_patience("leadflow run");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        printed.contains("SCRAM-SHA-512"),
        "debug logs were on: {printed}"
    );
    assert!(!printed.contains(secret), "the password was printed");
    let file = env.config.to_string_lossy().into_owned();
    let checked = env
        .command(&["config", "check", &file])
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output_within_patience("leadflow config check");
    let shown = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{shown}");
    assert!(
        shown.contains("\"sasl.password\" = \"********\""),
        "{shown}"
    );
    assert!(!shown.contains(secret), "{shown}");
}
