//! A TCP proxy that answers late: each response (the first bytes back from
//! the upstream after a pause) waits `delay` before it is passed on. It
//! stands for a slow dependency (a registry answering 15 s late) without
//! changing what is said.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A running proxy; stops accepting when dropped.
pub struct DelayProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`
    /// (`host:port`), holding each response back for `delay`.
    pub fn start(upstream: &str, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking accept");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let upstream = upstream.to_owned();
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(&upstream) {
                            forward(client, server, delay);
                        }
                    }
                    // Polling interval of the accept loop, which checks `stop`.
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        DelayProxy { port, stop }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn forward(client: TcpStream, server: TcpStream, delay: Duration) {
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    thread::spawn(move || {
        let (mut server_in, mut client_out) = (server, client);
        let mut buffer = [0_u8; 16 * 1024];
        let mut last: Option<Instant> = None;
        loop {
            let n = match server_in.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // A response starts after a pause: hold it back.
            if last.is_none_or(|at| at.elapsed() > Duration::from_millis(500)) {
                thread::sleep(delay);
            }
            if client_out.write_all(&buffer[..n]).is_err() {
                break;
            }
            last = Some(Instant::now());
        }
        let _ = client_out.shutdown(Shutdown::Write);
    });
}
