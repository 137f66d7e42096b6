//! Azurite's Table service for a test: started on a free port with its data
//! in a temporary directory, stopped when dropped; and Azure's own Python
//! Tables client (tests/interop/azure_table.py) to write lead entities.

use std::process::Command;
use std::time::Duration;

use super::ops::{free_port, wait_for_or};
use super::{Running, piped};

/// The emulator's well-known account and key (public, in Azure's docs).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    pub port: u16,
    _running: Running,
    _dir: tempfile::TempDir,
}

impl Azurite {
    /// Starts `azurite-table` (installed by `scripts/azurite.sh`) and waits
    /// until it takes connections.
    pub fn start() -> Azurite {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let bin = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.cache/azurite/node_modules/.bin/azurite-table"
        );
        let running = Running::start(
            Command::new(bin).args([
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                &port.to_string(),
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--inMemoryPersistence",
            ]),
            "azurite-table (scripts/azurite.sh install puts it in .cache/azurite)",
            dir.path().join("azurite.log"),
        );
        wait_for_or(
            "Azurite to take connections",
            || running.log(),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        Azurite {
            port,
            _running: running,
            _dir: dir,
        }
    }

    /// The connection string Partner Center would be given, with `key`.
    pub fn connection_string_with(&self, key: &str) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};TableEndpoint=http://127.0.0.1:{}/{ACCOUNT};",
            self.port
        )
    }

    pub fn connection_string(&self) -> String {
        self.connection_string_with(KEY)
    }

    /// Creates `table`.
    pub fn create(&self, table: &str) {
        self.python(&["create", &self.connection_string(), table], "");
    }

    /// Writes `entities` (JSON lines) to `table`, `apart` seconds apart.
    pub fn insert(&self, table: &str, entities: &[String], apart: f64) {
        let apart = apart.to_string();
        self.python(
            &["insert", &self.connection_string(), table, &apart],
            &entities.join("\n"),
        );
    }

    /// A read-only SAS for `table`, as a connection string.
    pub fn sas_connection_string(&self, table: &str) -> String {
        let out = self.python(&["sas", &self.connection_string(), table], "");
        let sas = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        format!(
            "TableEndpoint=http://127.0.0.1:{}/{ACCOUNT};SharedAccessSignature={sas}",
            self.port
        )
    }

    fn python(&self, args: &[&str], input: &str) -> std::process::Output {
        let root = env!("CARGO_MANIFEST_DIR");
        let out = piped(
            Command::new("python3")
                .arg(format!("{root}/tests/interop/azure_table.py"))
                .args(args)
                .env("PYTHONPATH", format!("{root}/.cache/python")),
            input,
            "tests/interop/azure_table.py",
        );
        assert!(
            out.status.success(),
            "azure_table.py {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// A lead entity as Microsoft writes one, for `email`, keyed `row`.
pub fn lead_entity(row: &str, email: &str) -> String {
    let info = serde_json::json!({
        "FirstName": "Ana", "LastName": "Silva", "Email": email, "Phone": "",
        "Country": "PT", "Company": "Fabrikam", "Title": "CTO"
    });
    serde_json::json!({
        "PartitionKey": "12:2F04:2F2026",
        "RowKey": row,
        "LeadSource": "SPZA-PLT|contoso.sales-insights",
        "ActionCode": "PLT",
        "CustomerInfo": info.to_string(),
        "OfferDisplayName": "Contoso Sales Insights",
        "Description": "",
        "CreatedTime": "12/4/2026 5:00:00 PM"
    })
    .to_string()
}

/// How long a test waits for the ingest to pick up what it wrote.
pub const PICK_UP: Duration = Duration::from_secs(60);
