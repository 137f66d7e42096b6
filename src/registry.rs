//! registry: a small blocking client of the Confluent schema-registry REST
//! API (Confluent Schema Registry, Apicurio's `ccompat/v7`, Karapace), at
//! leadflow's edge. It fetches writer schemas by id, and registers, looks
//! up or checks leadflow's own schemas under a subject. Every request has
//! a timeout; what a retry can fix (no connection, a timeout, HTTP 5xx or
//! 429) is retried with doubling backoff. An id or subject the registry
//! does not know is an answer (`Ok(None)`), never an error, because
//! leadflow dead-letters a record with an unknown schema id but pauses,
//! without dead-lettering anything, while the registry is unreachable.
//!
//! Written here rather than taken from `schema_registry_converter`: that
//! crate reports HTTP statuses only inside its error text, counts 500 and
//! 429 as final, and caches errors in its decoder, while leadflow has to
//! tell "no such schema" from "registry down" exactly. The API surface
//! leadflow needs is four calls.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::RegistryConfig;
use crate::error::ErrorClass;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("schema registry {url} refused {what}: HTTP {status}: {message}")]
    Refused {
        url: String,
        what: String,
        status: u16,
        message: String,
    },
    #[error("schema registry {url} answered {what} with something else than its API: {reason}")]
    BadAnswer {
        url: String,
        what: String,
        reason: String,
    },
    #[error("schema registry settings: {0}")]
    Config(String),
}

impl ErrorClass for RegistryError {
    fn class(&self) -> &'static str {
        match self {
            RegistryError::Unreachable { .. } => "registry_unreachable",
            RegistryError::Refused { .. } => "registry_refused",
            RegistryError::BadAnswer { .. } => "registry_bad_answer",
            RegistryError::Config(_) => "registry_config",
        }
    }
}

/// A registered schema's id, or why it cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    Registered(u32),
    /// The registry's compatibility rule refuses it (HTTP 409).
    Incompatible(String),
}

/// What the registry says of a schema against a subject's latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compatibility {
    Compatible,
    Incompatible(Vec<String>),
    /// The subject has no version yet: anything may be registered.
    NoSubject,
}

/// A schema as the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    /// The schema text (Avro JSON).
    pub schema: String,
    /// `AVRO` unless the registry says otherwise.
    pub schema_type: String,
}

pub struct RegistryClient {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
    retries: u32,
    backoff: Duration,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .field("authorization", &self.authorization.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The registry's answer to one request, after retries.
struct Answer {
    status: u16,
    body: String,
}

/// Bodies larger than this are no registry answer leadflow needs.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

impl RegistryClient {
    pub fn new(config: &RegistryConfig) -> Result<RegistryClient, RegistryError> {
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| RegistryError::Config("schema_registry.url is not set".into()))?;
        let (base, credentials) = split_credentials(url.trim_end_matches('/'));
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RegistryError::Config(format!(
                "schema_registry.url {:?} is not an http:// or https:// URL",
                crate::config::without_password(url)
            )));
        }
        // An empty path (`--set schema_registry.ca_file=`) is no file.
        let tls = trusting(config.ca_file.as_deref().filter(|p| !p.is_empty()))
            .map_err(|e| RegistryError::Config(format!("schema_registry.ca_file {e}")))?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(config.timeout_ms.max(1))))
            // Statuses are answers here: 404 means "no such schema".
            .http_status_as_error(false)
            .tls_config(tls)
            .build()
            .new_agent();
        // `username` and `password` win over credentials in the URL.
        let credentials = match &config.username {
            Some(user) => Some((user.clone(), config.password.clone().unwrap_or_default())),
            None => credentials,
        };
        let authorization = credentials.map(|(user, password)| {
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
        });
        Ok(RegistryClient {
            agent,
            base,
            authorization,
            retries: config.retries,
            backoff: Duration::from_millis(config.retry_backoff_ms.max(1)),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema registered under `id`; `None` if the registry has none.
    pub fn schema_by_id(&self, id: u32) -> Result<Option<RegisteredSchema>, RegistryError> {
        let what = format!("schema id {id}");
        let answer = self.call(&what, &format!("/schemas/ids/{id}"), None)?;
        match answer.status {
            200 => {
                #[derive(Deserialize)]
                struct Body {
                    schema: String,
                    #[serde(rename = "schemaType")]
                    schema_type: Option<String>,
                }
                let body: Body = self.parse(&what, &answer.body)?;
                Ok(Some(RegisteredSchema {
                    schema: body.schema,
                    schema_type: body.schema_type.unwrap_or_else(|| "AVRO".into()),
                }))
            }
            404 => Ok(None),
            status => Err(self.refused(&what, status, &answer.body)),
        }
    }

    /// Registers `schema` under `subject` (or finds it there already) and
    /// returns its id; the registry's compatibility rule may refuse it.
    pub fn register(&self, subject: &str, schema: &str) -> Result<Registration, RegistryError> {
        let what = format!("registering under subject {subject:?}");
        let body = serde_json::json!({ "schema": schema }).to_string();
        let answer = self.call(&what, &format!("/subjects/{subject}/versions"), Some(&body))?;
        match answer.status {
            200 => Ok(Registration::Registered(self.id_of(&what, &answer.body)?)),
            409 => Ok(Registration::Incompatible(message_of(&answer.body))),
            status => Err(self.refused(&what, status, &answer.body)),
        }
    }

    /// The id of `schema` if it is registered under `subject`.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        let what = format!("looking up a schema under subject {subject:?}");
        let body = serde_json::json!({ "schema": schema }).to_string();
        let answer = self.call(&what, &format!("/subjects/{subject}"), Some(&body))?;
        match answer.status {
            200 => Ok(Some(self.id_of(&what, &answer.body)?)),
            404 => Ok(None),
            status => Err(self.refused(&what, status, &answer.body)),
        }
    }

    /// Whether `schema` may be registered under `subject` by the
    /// registry's compatibility rule, against the latest version.
    pub fn check(&self, subject: &str, schema: &str) -> Result<Compatibility, RegistryError> {
        let what = format!("checking compatibility under subject {subject:?}");
        let body = serde_json::json!({ "schema": schema }).to_string();
        let path = format!("/compatibility/subjects/{subject}/versions/latest?verbose=true");
        let answer = self.call(&what, &path, Some(&body))?;
        match answer.status {
            200 => {
                #[derive(Deserialize)]
                struct Body {
                    is_compatible: bool,
                    #[serde(default)]
                    messages: Vec<String>,
                }
                let body: Body = self.parse(&what, &answer.body)?;
                Ok(if body.is_compatible {
                    Compatibility::Compatible
                } else {
                    Compatibility::Incompatible(body.messages)
                })
            }
            404 => Ok(Compatibility::NoSubject),
            // Some registries answer an incompatible schema with 409.
            409 => Ok(Compatibility::Incompatible(vec![message_of(&answer.body)])),
            status => Err(self.refused(&what, status, &answer.body)),
        }
    }

    /// One request, retried while the failure is one a retry can fix.
    fn call(&self, what: &str, path: &str, body: Option<&str>) -> Result<Answer, RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            let result = self.send(&url, body);
            let retry = match &result {
                Ok(answer) => answer.status >= 500 || answer.status == 429,
                Err(_) => true,
            };
            if !retry || attempt >= self.retries {
                return match result {
                    Ok(answer) if answer.status >= 500 || answer.status == 429 => {
                        Err(RegistryError::Unreachable {
                            url: self.base.clone(),
                            reason: format!(
                                "{what}: HTTP {}: {}",
                                answer.status,
                                message_of(&answer.body)
                            ),
                        })
                    }
                    Ok(answer) => Ok(answer),
                    Err(reason) => Err(RegistryError::Unreachable {
                        url: self.base.clone(),
                        reason: format!("{what}: {reason}"),
                    }),
                };
            }
            attempt += 1;
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    fn send(&self, url: &str, body: Option<&str>) -> Result<Answer, ureq::Error> {
        const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
        let mut response = match body {
            None => {
                let mut request = self.agent.get(url).header("Accept", CONTENT_TYPE);
                if let Some(authorization) = &self.authorization {
                    request = request.header("Authorization", authorization);
                }
                request.call()?
            }
            Some(body) => {
                let mut request = self
                    .agent
                    .post(url)
                    .header("Accept", CONTENT_TYPE)
                    .header("Content-Type", CONTENT_TYPE);
                if let Some(authorization) = &self.authorization {
                    request = request.header("Authorization", authorization);
                }
                request.send(body)?
            }
        };
        let status = response.status().as_u16();
        let mut text = String::new();
        response
            .body_mut()
            .as_reader()
            .take(MAX_ANSWER_BYTES)
            .read_to_string(&mut text)
            .map_err(ureq::Error::Io)?;
        Ok(Answer { status, body: text })
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        body: &str,
    ) -> Result<T, RegistryError> {
        serde_json::from_str(body).map_err(|e| RegistryError::BadAnswer {
            url: self.base.clone(),
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    fn id_of(&self, what: &str, body: &str) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Body {
            id: u32,
        }
        Ok(self.parse::<Body>(what, body)?.id)
    }

    fn refused(&self, what: &str, status: u16, body: &str) -> RegistryError {
        RegistryError::Refused {
            url: self.base.clone(),
            what: what.to_owned(),
            status,
            message: message_of(body),
        }
    }
}

/// The `message` of a registry error body, else the body itself, short.
fn message_of(body: &str) -> String {
    #[derive(Deserialize)]
    struct Body {
        message: String,
    }
    let message = serde_json::from_str::<Body>(body)
        .map(|b| b.message)
        .unwrap_or_else(|_| body.trim().to_owned());
    message.chars().take(500).collect()
}

/// Standard base64 with padding, for the basic-authentication header.
/// TLS that trusts the certificate authorities in the PEM file `ca_file`,
/// or the built-in web roots without one. Errors name the file.
pub fn trusting(ca_file: Option<&str>) -> Result<ureq::tls::TlsConfig, String> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{path:?}: {e}"))?;
        let certificates = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(certificate)) => Some(Ok(certificate)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{path:?}: {e}"))?;
        if certificates.is_empty() {
            return Err(format!("{path:?} holds no certificate"));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certificates)));
    }
    Ok(tls.build())
}

/// The URL without the `user:password@` some registries' URLs carry (as
/// Confluent's clients take them), and those credentials, percent-decoded:
/// the URL is then safe to print in errors and logs.
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return (url.to_owned(), None);
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let (user, password) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    let base = format!("{}{}", &url[..scheme_end], &rest[at + 1..]);
    (
        base,
        Some((percent_decoded(user), percent_decoded(password))),
    )
}

/// `%XX` sequences decoded; anything else, malformed ones included, kept.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A record schema's full name, e.g. `dev.leadflow.RawLead`, for
/// [`crate::config::SubjectNameStrategy::RecordName`].
pub fn record_name(schema: Option<&apache_avro::Schema>) -> String {
    match schema {
        Some(apache_avro::Schema::Record(record)) => record.name.fullname(None),
        _ => String::new(),
    }
}

/// One of leadflow's schemas under the subject a topic gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSchema {
    pub topic: String,
    pub subject: String,
    /// The file in `schemas/`, for messages.
    pub file: &'static str,
    pub schema: &'static str,
}

/// The schemas leadflow reads and writes under the registry's subjects:
/// `schemas/raw-lead.avsc` for the input topic and
/// `schemas/campaign-lead.avsc` for each campaign topic and the
/// suppressed topic, wherever the topic is in the `confluent-avro` format.
pub fn topic_schemas(config: &crate::config::Config) -> Vec<TopicSchema> {
    use crate::stages::decode::{Format, RAW_LEAD_SCHEMA, raw_lead_schema};
    use crate::stages::encode::{CAMPAIGN_LEAD_SCHEMA, campaign_lead_schema};
    let strategy = config.schema_registry.subject_name_strategy;
    let raw_lead = record_name(raw_lead_schema());
    let campaign_lead = record_name(campaign_lead_schema());
    let mut schemas = Vec::new();
    if config.topics.input_format == Format::ConfluentAvro {
        schemas.push(TopicSchema {
            topic: config.topics.input.clone(),
            subject: strategy.subject(&config.topics.input, &raw_lead),
            file: "schemas/raw-lead.avsc",
            schema: RAW_LEAD_SCHEMA,
        });
    }
    let output = config.topics.output_format;
    let outputs = std::iter::once((&config.topics.suppressed, output)).chain(
        config
            .routes
            .iter()
            .map(|route| (&route.topic, route.format.unwrap_or(output))),
    );
    for (topic, format) in outputs {
        let subject = strategy.subject(topic, &campaign_lead);
        if format == Format::ConfluentAvro && !schemas.iter().any(|s| s.subject == subject) {
            schemas.push(TopicSchema {
                topic: topic.clone(),
                subject,
                file: "schemas/campaign-lead.avsc",
                schema: CAMPAIGN_LEAD_SCHEMA,
            });
        }
    }
    schemas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SubjectNameStrategy;

    #[test]
    fn confluent_topics_get_their_schemas_subjects() {
        use crate::stages::decode::Format;
        let mut config = crate::config::Config::default();
        assert!(topic_schemas(&config).is_empty(), "JSON topics need none");
        config.topics.input_format = Format::ConfluentAvro;
        config.topics.output_format = Format::ConfluentAvro;
        let subjects: Vec<String> = topic_schemas(&config)
            .into_iter()
            .map(|s| format!("{} {}", s.subject, s.file))
            .collect();
        assert_eq!(
            subjects,
            [
                "leads.raw-value schemas/raw-lead.avsc",
                "leads.suppressed-value schemas/campaign-lead.avsc",
                "campaign.appsource.nurture-value schemas/campaign-lead.avsc",
                "campaign.azure-marketplace.demand-gen-value schemas/campaign-lead.avsc",
            ]
        );
        // By record name, every output topic shares one subject.
        config.schema_registry.subject_name_strategy = SubjectNameStrategy::RecordName;
        let subjects: Vec<String> = topic_schemas(&config)
            .into_iter()
            .map(|s| s.subject)
            .collect();
        assert_eq!(subjects.len(), 2, "{subjects:?}");
        assert!(
            subjects
                .iter()
                .all(|s| s.contains('.') && !s.ends_with("-value"))
        );
    }

    #[test]
    fn basic_authentication_is_base64_of_user_and_password() {
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn subjects_follow_the_strategy() {
        let record = "dev.leadflow.CampaignLead";
        assert_eq!(
            SubjectNameStrategy::TopicName.subject("campaign.appsource.nurture", record),
            "campaign.appsource.nurture-value"
        );
        assert_eq!(
            SubjectNameStrategy::RecordName.subject("campaign.appsource.nurture", record),
            record
        );
    }

    #[test]
    fn credentials_in_the_url_authenticate_and_leave_the_url() {
        let client = RegistryClient::new(&RegistryConfig {
            url: Some("https://key:s%40cret@registry.example:8081/apis/".into()),
            ..RegistryConfig::default()
        })
        .expect("client");
        assert_eq!(client.url(), "https://registry.example:8081/apis");
        assert_eq!(
            client.authorization.as_deref(),
            Some(format!("Basic {}", base64(b"key:s@cret")).as_str())
        );
        let explicit = RegistryClient::new(&RegistryConfig {
            url: Some("https://key:url-secret@registry.example".into()),
            username: Some("other".into()),
            password: Some("given".into()),
            ..RegistryConfig::default()
        })
        .expect("client");
        assert_eq!(explicit.url(), "https://registry.example");
        assert_eq!(
            explicit.authorization.as_deref(),
            Some(format!("Basic {}", base64(b"other:given")).as_str())
        );
        let error = RegistryClient::new(&RegistryConfig {
            url: Some("ftp://key:ftp-secret@registry".into()),
            ..RegistryConfig::default()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(!error.contains("ftp-secret"), "{error}");
    }

    #[test]
    fn a_bad_url_is_a_config_error() {
        let config = |url: Option<&str>| RegistryConfig {
            url: url.map(str::to_owned),
            ..RegistryConfig::default()
        };
        for url in [None, Some("registry:8081"), Some("ftp://registry")] {
            let error = RegistryClient::new(&config(url)).err();
            assert!(matches!(error, Some(RegistryError::Config(_))), "{url:?}");
        }
        assert!(RegistryClient::new(&config(Some("http://127.0.0.1:1/"))).is_ok());
    }

    #[test]
    fn an_unreachable_registry_is_told_apart_from_an_unknown_id() {
        // Nothing listens on port 1; one retry, short waits.
        let client = RegistryClient::new(&RegistryConfig {
            url: Some("http://127.0.0.1:1".into()),
            retries: 1,
            retry_backoff_ms: 1,
            timeout_ms: 500,
            ..RegistryConfig::default()
        });
        let error = client.and_then(|c| c.schema_by_id(1)).err();
        assert_eq!(
            error.as_ref().map(ErrorClass::class),
            Some("registry_unreachable"),
            "{error:?}"
        );
    }
}
