//! A Toxiproxy server of a test's own (`scripts/toxiproxy.sh`, on a free
//! port), driven with its CLI: proxies between leadflow and the broker, and
//! toxics (latency, cut connections) on them. Stopped when dropped.

use std::process::Command;

use super::deadline::{self, Registered};
use super::{PATIENCE, output_within};

pub struct Toxiproxy {
    pub port: u16,
    _stop: Registered,
}

impl Toxiproxy {
    pub fn start(port: u16) -> Toxiproxy {
        let toxiproxy = Toxiproxy {
            port,
            _stop: deadline::cleanup(move || stop(port)),
        };
        toxiproxy.script("start");
        toxiproxy
    }

    fn script(&self, command: &str) {
        let out = output_within(
            Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/toxiproxy.sh"))
                .arg(command)
                .env("LEADFLOW_TOXIPROXY_PORT", self.port.to_string()),
            PATIENCE,
            "scripts/toxiproxy.sh",
        );
        assert!(
            out.status.success(),
            "scripts/toxiproxy.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the CLI against this server; it must succeed.
    pub fn cli(&self, args: &[&str]) {
        let out = output_within(
            Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/.cache/toxiproxy/bin/cli"
            ))
            .arg("--host")
            .arg(format!("http://127.0.0.1:{}", self.port))
            .args(args),
            PATIENCE,
            "toxiproxy cli",
        );
        assert!(
            out.status.success(),
            "toxiproxy cli {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A proxy named `name` from 127.0.0.1:`listen` to 127.0.0.1:`upstream`.
    pub fn proxy(&self, name: &str, listen: u16, upstream: u16) {
        self.cli(&[
            "create",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--upstream",
            &format!("127.0.0.1:{upstream}"),
            name,
        ]);
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        stop(self.port);
    }
}

fn stop(port: u16) {
    let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/toxiproxy.sh"))
        .arg("stop")
        .env("LEADFLOW_TOXIPROXY_PORT", port.to_string())
        .status();
}
