//! `leadflow ingest http` in tests: its settings, a running endpoint, and a
//! load of distinct leads posted from several threads, remembering which
//! ones got a 2xx.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::ops::{NoAnswer, Reply, exchange, free_port, get, wait_for_or};
use super::{Env, Running, event_id, read_all};

/// The secret in the endpoint's URL.
pub const SECRET: &str = "ingest-test-secret-0123456789";

/// The test lead Partner Center sends when a publisher saves the endpoint
/// (Microsoft's lead-management FAQ, made valid JSON).
pub const PARTNER_CENTER_TEST_LEAD: &str = r#"{"UserDetails":{"FirstName":"MSFT_TEST_636573304831318844","LastName":"MSFT_TEST_636573304831318844","Email":"MSFT_TEST_636573304831318844@test.com","Phone":"1234567890","Country":"US","Company":"MSFT_TEST_636573304831318844","Title":"MSFT_TEST_636573304831318844"},"LeadSource":"AzureMarketplace","ActionCode":"INS","OfferTitle":"Contoso Test","Description":"MSFT_TEST_636573304831318844"}"#;

/// The `[ingest.http]` table with the test's secret and `more` settings,
/// for the start of an [`Env`]'s config file.
pub fn settings(more: &str) -> String {
    format!("[ingest.http]\nsecret = {SECRET:?}\n{more}\n")
}

/// A running `leadflow ingest http`, ready.
pub struct Door {
    pub port: u16,
    /// The operations endpoint's port.
    pub ops: u16,
    running: Running,
}

impl Door {
    /// Starts it with `args` added, and waits until `/readyz` says ready.
    pub fn open(env: &Env, name: &str, args: &[&str]) -> Door {
        let (port, ops) = (free_port(), free_port());
        let listen = format!("ingest.http.listen=127.0.0.1:{port}");
        let ops_listen = format!("http.listen=127.0.0.1:{ops}");
        let mut all = vec!["ingest", "http", "--set", &listen, "--set", &ops_listen];
        all.extend_from_slice(args);
        let running = env.spawn(name, &all, Stdio::null());
        wait_for_or(
            "the ingest endpoint to be ready",
            || running.log(),
            || (get(ops, "/readyz")?.0 == 200).then_some(()),
        );
        Door { port, ops, running }
    }

    /// The URL Microsoft would be given.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/leads/{SECRET}", self.port)
    }

    pub fn log(&self) -> String {
        self.running.log()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.running.0.kill().expect("kill -9 the endpoint");
        let _ = self.running.0.wait();
    }

    /// SIGTERM, then its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        super::signal(&self.running.0, "TERM");
        self.running.0.wait().expect("wait for the endpoint")
    }
}

/// A lead of its own for each `(prefix, thread, n)`: its event id is
/// `prefix-thread-n`, and so is its email's local part.
pub fn distinct_lead(id: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","UserDetails":{{"Email":"{id}@fabrikam.com","Company":"Fabrikam"}},"LeadSource":"SPZA-INS|contoso.sales-insights"}}"#
    )
}

/// Leads posted from several threads until told to stop or until the
/// endpoint stops answering.
pub struct Load {
    acked: Arc<Mutex<Vec<String>>>,
    unavailable: Arc<AtomicU64>,
    retry_after: Arc<Mutex<Option<String>>>,
    /// Requests whose connection ended without an answer.
    broken: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts posting distinct leads to the endpoint on `port` from `threads`
/// threads; `prefix` starts their event ids.
pub fn load(port: u16, prefix: &str, threads: usize) -> Load {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let unavailable = Arc::new(AtomicU64::new(0));
    let retry_after = Arc::new(Mutex::new(None));
    let broken = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..threads)
        .map(|t| {
            let (acked, unavailable, retry_after, broken, stop) = (
                Arc::clone(&acked),
                Arc::clone(&unavailable),
                Arc::clone(&retry_after),
                Arc::clone(&broken),
                Arc::clone(&stop),
            );
            let prefix = prefix.to_owned();
            std::thread::spawn(move || {
                let path = format!("/leads/{SECRET}");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{prefix}-{t}-{n}");
                    n += 1;
                    match exchange(port, "POST", &path, &[], distinct_lead(&id).as_bytes()) {
                        Ok(Reply { status: 200, .. }) => {
                            acked.lock().expect("acked").push(id);
                        }
                        Ok(reply) if reply.status == 503 => {
                            unavailable.fetch_add(1, Ordering::Relaxed);
                            *retry_after.lock().expect("retry-after") =
                                reply.header("retry-after").map(str::to_owned);
                        }
                        Ok(reply) => panic!("unexpected answer {reply:?}"),
                        // The endpoint is gone.
                        Err(NoAnswer::Refused) => break,
                        Err(NoAnswer::Broken) => {
                            broken.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    Load {
        acked,
        unavailable,
        retry_after,
        broken,
        stop,
        threads,
    }
}

impl Load {
    pub fn acked(&self) -> usize {
        self.acked.lock().map_or(0, |a| a.len())
    }

    /// Answers 503 so far, and the last one's `Retry-After`.
    pub fn unavailable(&self) -> (u64, Option<String>) {
        let retry_after = self.retry_after.lock().ok().and_then(|r| r.clone());
        (self.unavailable.load(Ordering::Relaxed), retry_after)
    }

    /// Waits until at least `n` leads are acknowledged in all.
    pub fn wait_for_acks(&self, n: usize, context: impl FnOnce() -> String) {
        wait_for_or(&format!("{n} acknowledged leads"), context, || {
            (self.acked() >= n).then_some(())
        });
    }

    /// Requests whose connection ended without an answer so far.
    pub fn broken(&self) -> u64 {
        self.broken.load(Ordering::Relaxed)
    }

    /// Starts no more requests; those under way go on to their answers.
    pub fn stop_posting(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops posting; the event ids that got a 2xx.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a load thread");
        }
        Arc::try_unwrap(self.acked)
            .map(|m| m.into_inner().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Fails unless every acknowledged lead is in `topic`; the records there.
pub fn assert_all_written(acked: &[String], topic: &str) -> usize {
    let written: std::collections::BTreeSet<String> =
        read_all(topic).iter().map(event_id).collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !written.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged leads are not in {topic}: {missing:?}",
        missing.len()
    );
    written.len()
}
