//! The storage account a lead table lives in, from the connection string
//! Partner Center asks for, and how requests to its Table service are
//! authorized: Shared Key (the account key) or a shared access signature.
//! The rules are Azure Storage's (docs/lead-destinations.md, appendix):
//! keys of the connection string in any case, `UseDevelopmentStorage=true`
//! for the emulator, and an explicit `TableEndpoint` over the one built
//! from the account name and endpoint suffix.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The emulator's well-known account and key (public, in Azure's docs).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_ENDPOINT: &str = "http://127.0.0.1:10002/devstoreaccount1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the storage connection string {0}")]
pub struct ConnectionError(String);

/// How requests prove they may read.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The account key, decoded.
    SharedKey(Vec<u8>),
    /// A shared access signature: the query string to add to each URL.
    Sas(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret, even in a debug dump.
        f.write_str(match self {
            Credential::SharedKey(_) => "SharedKey(********)",
            Credential::Sas(_) => "Sas(********)",
        })
    }
}

/// A storage account's Table service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// The Table service's base URL, without a trailing `/`, e.g.
    /// `https://contoso.table.core.windows.net` or, path-style,
    /// `http://127.0.0.1:10002/devstoreaccount1`.
    pub endpoint: String,
    pub credential: Credential,
}

impl Account {
    /// Reads a connection string: `Key=Value` pairs separated by `;`.
    pub fn parse(text: &str) -> Result<Account, ConnectionError> {
        let mut pairs = std::collections::HashMap::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                ConnectionError(format!("has {:?}, which is not Key=Value", redact(part)))
            })?;
            pairs.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        let get = |key: &str| pairs.get(key).filter(|v| !v.is_empty()).cloned();
        if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Account {
                name: DEV_ACCOUNT.into(),
                endpoint: DEV_ENDPOINT.into(),
                credential: Credential::SharedKey(STANDARD.decode(DEV_KEY).unwrap_or_default()),
            });
        }
        let name = get("accountname");
        let endpoint = match (get("tableendpoint"), &name) {
            (Some(endpoint), _) => {
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return Err(ConnectionError(
                        "has a TableEndpoint that does not start with https:// or http://".into(),
                    ));
                }
                endpoint.trim_end_matches('/').to_owned()
            }
            (None, Some(name)) => {
                let protocol = get("defaultendpointsprotocol").unwrap_or_else(|| "https".into());
                let suffix = get("endpointsuffix").unwrap_or_else(|| "core.windows.net".into());
                format!("{protocol}://{name}.table.{suffix}")
            }
            (None, None) => {
                return Err(ConnectionError(
                    "names neither AccountName nor TableEndpoint".into(),
                ));
            }
        };
        let credential = match (get("accountkey"), get("sharedaccesssignature")) {
            (Some(key), _) => Credential::SharedKey(
                STANDARD
                    .decode(key.as_bytes())
                    .map_err(|_| ConnectionError("has an AccountKey that is not Base64".into()))?,
            ),
            (None, Some(sas)) => Credential::Sas(sas.trim_start_matches('?').to_owned()),
            (None, None) => {
                return Err(ConnectionError(
                    "has neither AccountKey nor SharedAccessSignature".into(),
                ));
            }
        };
        let name = match (name, &credential) {
            (Some(name), _) => name,
            // A SAS needs no account name to sign with.
            (None, Credential::Sas(_)) => String::new(),
            (None, Credential::SharedKey(_)) => {
                return Err(ConnectionError(
                    "has an AccountKey but no AccountName".into(),
                ));
            }
        };
        Ok(Account {
            name,
            endpoint,
            credential,
        })
    }

    /// The `Authorization` header of a request for `path` (the URL's path
    /// exactly as sent, query excluded) at `date` (RFC 1123), under Shared
    /// Key; `None` under a SAS, which travels in the query.
    pub fn authorization(&self, verb: &str, path: &str, date: &str) -> Option<String> {
        let Credential::SharedKey(key) = &self.credential else {
            return None;
        };
        // Table service Shared Key: no Content-MD5 or Content-Type on a
        // GET, the date, and the account followed by the path as sent.
        let to_sign = format!("{verb}\n\n\n{date}\n/{}{path}", self.name);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let signature = STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()));
        Some(format!("SharedKey {}:{signature}", self.name))
    }

    /// The query string a SAS adds, if the credential is one.
    pub fn sas(&self) -> Option<&str> {
        match &self.credential {
            Credential::Sas(sas) => Some(sas),
            Credential::SharedKey(_) => None,
        }
    }
}

/// A connection-string part with any value hidden, for an error message.
fn redact(part: &str) -> String {
    match part.split_once('=') {
        Some((key, _)) => format!("{key}=…"),
        None if part.len() > 12 => format!("{}…", part.chars().take(12).collect::<String>()),
        None => part.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_connection_string_partner_center_asks_for() {
        let account = Account::parse(
            "DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .expect("parsed");
        assert_eq!(account.name, "contoso");
        assert_eq!(account.endpoint, "https://contoso.table.core.windows.net");
        assert_eq!(account.credential, Credential::SharedKey(b"key".to_vec()));
        let cased = Account::parse("accountname=contoso;ACCOUNTKEY=a2V5").expect("any case");
        assert_eq!(cased, account);
    }

    #[test]
    fn reads_the_emulators_forms_and_a_sas() {
        let dev = Account::parse("UseDevelopmentStorage=true").expect("dev");
        assert_eq!(dev.endpoint, DEV_ENDPOINT);
        let explicit = Account::parse(&format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};TableEndpoint=http://127.0.0.1:10002/devstoreaccount1/"
        ))
        .expect("explicit");
        assert_eq!(explicit, dev);
        let sas = Account::parse(
            "TableEndpoint=https://contoso.table.core.windows.net;SharedAccessSignature=?sv=2019-02-02&sp=r&sig=x%3D",
        )
        .expect("sas");
        assert_eq!(sas.sas(), Some("sv=2019-02-02&sp=r&sig=x%3D"));
        assert_eq!(sas.authorization("GET", "/t()", "date"), None);
    }

    #[test]
    fn says_what_is_missing_without_printing_secrets() {
        let error = |text: &str| Account::parse(text).expect_err("refused").to_string();
        assert!(error("AccountKey=a2V5").contains("AccountName"));
        assert!(error("AccountName=x").contains("AccountKey"));
        assert!(error("AccountName=x;AccountKey=not base64!").contains("Base64"));
        assert!(
            error("TableEndpoint=contoso.table.core.windows.net;SharedAccessSignature=sig=x")
                .contains("https://")
        );
        let leaky = error("AccountName=x;secretvaluewithoutequals");
        assert!(!leaky.contains("secretvaluewithoutequals"), "{leaky}");
    }

    /// The signature Azure's own SDK computes for the same request (the
    /// Python SDK's `_add_authorization_header`, on the emulator's account:
    /// HMAC-SHA256 of "GET\n\n\n<date>\n/devstoreaccount1/devstoreaccount1/Leads()"
    /// with the well-known key), checked with Python's `hmac` module.
    #[test]
    fn signs_as_the_table_service_checks() {
        let dev = Account::parse("UseDevelopmentStorage=true").expect("dev");
        let header = dev
            .authorization(
                "GET",
                "/devstoreaccount1/Leads()",
                "Fri, 04 Dec 2026 17:00:00 GMT",
            )
            .expect("shared key");
        assert_eq!(
            header,
            "SharedKey devstoreaccount1:9XBgjVfoBcp+CJBcYY/Uy4xSPzt9ozJi/Z81hzyzCFM="
        );
    }
}
