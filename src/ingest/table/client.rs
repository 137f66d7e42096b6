//! A reader of one storage table over the Table service's REST API: the
//! entities written since a time, every page of them. Small on purpose:
//! leadflow only reads (Query Entities), and the maintained Azure SDK for
//! Rust has no Tables crate (docs/ingest.md says why this is not
//! `azure_data_tables`).

use std::io::Read as _;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::account::Account;

/// The service version the Azure SDKs' Tables clients send.
const SERVICE_VERSION: &str = "2019-02-02";
/// Most bytes of one page read: 1,000 entities of a few KiB at most.
const MAX_PAGE_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("table {0:?} does not exist (yet: Microsoft creates it with the first lead)")]
    NotFound(String),
    #[error("the storage account refused the credentials ({status}): {reason}")]
    Denied { status: u16, reason: String },
    #[error("the Table service answered {status}: {reason}")]
    Service { status: u16, reason: String },
    #[error("cannot reach the Table service at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the Table service's answer is not what Query Entities returns: {0}")]
    Answer(String),
}

impl TableError {
    /// Whether waiting and asking again may help (it may not for bad
    /// credentials, though a rotated key is fixed by a restart).
    pub fn is_retriable(&self) -> bool {
        !matches!(self, TableError::Denied { .. })
    }
}

/// Where the next page starts: `NextPartitionKey` and, if given, `NextRowKey`.
type Continuation = (String, Option<String>);

/// Entities as the service returns them, without type annotations.
pub type Entities = Vec<Map<String, Value>>;

/// Reads one table.
pub struct TableClient {
    account: Account,
    table: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for TableClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableClient")
            .field("account", &self.account)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl TableClient {
    pub fn new(account: Account, table: &str, timeout: Duration) -> TableClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Statuses are answers: 404 is a table not made yet.
            .http_status_as_error(false)
            .build()
            .new_agent();
        TableClient {
            account,
            table: table.to_owned(),
            agent,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Every entity whose `Timestamp` is at or after `since_ms`, following
    /// continuations to the last page.
    pub fn since(&self, since_ms: i64) -> Result<Entities, TableError> {
        let filter = format!(
            "Timestamp ge datetime'{}'",
            crate::domain::rfc3339(since_ms)
        );
        let mut entities = Vec::new();
        let mut continuation: Option<Continuation> = None;
        loop {
            let (page, next) = self.page(&filter, continuation.as_ref())?;
            entities.extend(page);
            match next {
                // The same continuation again would loop for ever.
                Some(next) if continuation.as_ref() == Some(&next) => {
                    return Err(TableError::Answer(format!(
                        "the continuation {next:?} came back unchanged"
                    )));
                }
                Some(next) => continuation = Some(next),
                None => return Ok(entities),
            }
        }
    }

    /// The path of the table's entity set, as sent and as signed.
    fn path(&self) -> String {
        let endpoint = &self.account.endpoint;
        let after_scheme = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, r)| r);
        let prefix = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
        format!("{prefix}/{}()", self.table)
    }

    /// The URL of a page, and its path as signed.
    fn url(&self, filter: &str, continuation: Option<&Continuation>) -> (String, String) {
        let path = self.path();
        let base = self.account.endpoint.split_once("://").map_or_else(
            || self.account.endpoint.clone(),
            |(scheme, rest)| {
                let host = rest.split('/').next().unwrap_or(rest);
                format!("{scheme}://{host}")
            },
        );
        let mut query = vec![format!("$filter={}", encode(filter))];
        if let Some((partition, row)) = continuation {
            query.push(format!("NextPartitionKey={}", encode(partition)));
            if let Some(row) = row {
                query.push(format!("NextRowKey={}", encode(row)));
            }
        }
        if let Some(sas) = self.account.sas() {
            query.push(sas.to_owned());
        }
        (format!("{base}{path}?{}", query.join("&")), path)
    }

    /// GETs `url`, signed for `path` unless a SAS is in it.
    fn get(&self, url: &str, path: &str) -> Result<ureq::http::Response<ureq::Body>, TableError> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut request = self
            .agent
            .get(url)
            .header("x-ms-date", &date)
            .header("x-ms-version", SERVICE_VERSION)
            .header("Accept", "application/json;odata=nometadata")
            .header("DataServiceVersion", "3.0;NetFx")
            .header("MaxDataServiceVersion", "3.0;NetFx");
        if let Some(authorization) = self.account.authorization("GET", path, &date) {
            request = request.header("Authorization", &authorization);
        }
        request.call().map_err(|e| TableError::Unreachable {
            endpoint: self.account.endpoint.clone(),
            reason: e.to_string(),
        })
    }

    /// One page, and the continuation to the next if there is one.
    fn page(
        &self,
        filter: &str,
        continuation: Option<&Continuation>,
    ) -> Result<(Entities, Option<Continuation>), TableError> {
        let (url, path) = self.url(filter, continuation);
        let mut response = self.get(&url, &path)?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let next = header("x-ms-continuation-NextPartitionKey")
            .map(|partition| (partition, header("x-ms-continuation-NextRowKey")));
        let mut body = String::new();
        response
            .body_mut()
            .as_reader()
            .take(MAX_PAGE_BYTES)
            .read_to_string(&mut body)
            .map_err(|e| TableError::Answer(e.to_string()))?;
        match status {
            200 => {}
            404 => return Err(TableError::NotFound(self.table.clone())),
            401 | 403 => {
                let reason = reason(&body);
                return Err(TableError::Denied { status, reason });
            }
            _ => {
                let reason = reason(&body);
                return Err(TableError::Service { status, reason });
            }
        }
        let page: Value =
            serde_json::from_str(&body).map_err(|e| TableError::Answer(e.to_string()))?;
        let Some(Value::Array(entities)) = page.get("value") else {
            return Err(TableError::Answer("no \"value\" array".into()));
        };
        let entities = entities
            .iter()
            .filter_map(|e| e.as_object().cloned())
            .collect();
        Ok((entities, next))
    }
}

/// The service's own words for an error: `odata.error.message.value`, or
/// the start of the body.
fn reason(body: &str) -> String {
    let json: Option<Value> = serde_json::from_str(body).ok();
    json.as_ref()
        .and_then(|j| j.pointer("/odata.error/message/value"))
        .and_then(Value::as_str)
        .map_or_else(
            || body.chars().take(200).collect(),
            |m| m.lines().next().unwrap_or(m).to_owned(),
        )
}

/// Percent-encodes a query value: everything but unreserved characters.
fn encode(value: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, KEEP).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_keeps_a_path_style_endpoints_account() {
        let dev = Account::parse("UseDevelopmentStorage=true").expect("dev");
        let client = TableClient::new(dev, "Leads", Duration::from_secs(1));
        assert_eq!(client.path(), "/devstoreaccount1/Leads()");
        let cloud = Account::parse("AccountName=contoso;AccountKey=a2V5").expect("cloud");
        let client = TableClient::new(cloud, "Leads", Duration::from_secs(1));
        assert_eq!(client.path(), "/Leads()");
    }

    #[test]
    fn errors_say_what_the_service_said() {
        let body = r#"{"odata.error":{"code":"AuthenticationFailed","message":{"lang":"en-US","value":"Server failed to authenticate the request.\nRequestId:1"}}}"#;
        assert_eq!(reason(body), "Server failed to authenticate the request.");
        assert_eq!(
            encode("Timestamp ge datetime'x'"),
            "Timestamp%20ge%20datetime%27x%27"
        );
    }
}
