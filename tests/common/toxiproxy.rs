//! A Toxiproxy server of a test's own (`scripts/toxiproxy.sh`, on a free
//! port), driven with its CLI: proxies between leadflow and the broker, and
//! toxics (latency, bandwidth limits) on them. Stopped when dropped.

use std::process::Command;

use super::deadline::{self, Registered};
use super::{PATIENCE, output_within};

/// The two ways through a proxy: requests to the server, answers to the
/// client.
const WAYS: [&str; 2] = ["--upstream", "--downstream"];

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
        self.both_ways(proxy, "latency", &format!("latency={ms}"));
    }

    /// Ends [`Toxiproxy::delay`] on proxy `proxy`.
    pub fn undelay(&self, proxy: &str) {
        self.clear(proxy, "latency");
    }

    /// Limits proxy `proxy` to `kb_per_s` KB/s each way, until
    /// [`Toxiproxy::unthrottle`].
    pub fn throttle(&self, proxy: &str, kb_per_s: u64) {
        self.both_ways(proxy, "bandwidth", &format!("rate={kb_per_s}"));
    }

    /// Ends [`Toxiproxy::throttle`] on proxy `proxy`.
    pub fn unthrottle(&self, proxy: &str) {
        self.clear(proxy, "bandwidth");
    }

    /// A toxic of type `kind` with `attribute` on proxy `proxy`, one each
    /// way (requests to the server, answers to the client), named after
    /// the type and the way.
    fn both_ways(&self, proxy: &str, kind: &str, attribute: &str) {
        for way in WAYS {
            self.cli(&[
                "toxic",
                "add",
                "--type",
                kind,
                "--toxicName",
                &format!("{kind}{way}"),
                way,
                "--attribute",
                attribute,
                proxy,
            ]);
        }
    }

    /// Removes the toxics of [`Toxiproxy::both_ways`] of type `kind`.
    fn clear(&self, proxy: &str, kind: &str) {
        for way in WAYS {
            self.cli(&[
                "toxic",
                "remove",
                "--toxicName",
                &format!("{kind}{way}"),
                proxy,
            ]);
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
