//! A Toxiproxy server of a test's own (`scripts/toxiproxy.sh`, on a free
//! port), driven with its CLI: proxies between leadflow and the broker, and
//! toxics (latency, cut connections) on them. Stopped when dropped.

use std::process::Command;

use super::deadline::{self, Registered};
use super::{PATIENCE, output_within};

/// The toxics of [`Toxiproxy::delay`]: requests reach the server late,
/// and answers reach the client late.
const DELAYS: [(&str, &str); 2] = [
    ("late-requests", "--upstream"),
    ("late-answers", "--downstream"),
];

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

    /// Holds everything through proxy `proxy`, both ways, for `ms` before
    /// passing it on, until [`Toxiproxy::undelay`], which passes on at once
    /// what it holds (nothing is dropped, as TCP drops nothing).
    pub fn delay(&self, proxy: &str, ms: u64) {
        for (name, way) in DELAYS {
            self.cli(&[
                "toxic",
                "add",
                "--type",
                "latency",
                "--toxicName",
                name,
                way,
                "--attribute",
                &format!("latency={ms}"),
                proxy,
            ]);
        }
    }

    /// Ends [`Toxiproxy::delay`] on proxy `proxy`.
    pub fn undelay(&self, proxy: &str) {
        for (name, _) in DELAYS {
            self.cli(&["toxic", "remove", "--toxicName", name, proxy]);
        }
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
