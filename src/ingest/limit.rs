//! A per-client rate limit: a token bucket per client address, refilled
//! at the configured rate and holding at most a second's worth. Memory is
//! bounded: buckets that are full again (idle for a second or more) are
//! the same as none, and are dropped when the table grows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Most clients tracked before idle ones are dropped.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_second` requests a second per client, in bursts of as many.
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `client` may make a request at `now`; takes a token if so.
    pub fn admit(&self, client: IpAddr, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client) {
            let full = |b: &Bucket| now.saturating_duration_since(b.updated).as_secs_f64() >= 1.0;
            buckets.retain(|_, b| !full(b));
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.per_second,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.per_second);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_apart() {
        let limiter = RateLimiter::new(5);
        let t0 = Instant::now();
        let admitted = (0..8).filter(|_| limiter.admit(ip(1), t0)).count();
        assert_eq!(admitted, 5, "a burst of a second's worth");
        assert!(
            limiter.admit(ip(2), t0),
            "another client has its own bucket"
        );
        assert!(!limiter.admit(ip(1), t0 + Duration::from_millis(100)));
        assert!(
            limiter.admit(ip(1), t0 + Duration::from_millis(200)),
            "one token per 200 ms"
        );
        assert!(!limiter.admit(ip(1), t0 + Duration::from_millis(210)));
        let later = t0 + Duration::from_secs(60);
        let admitted = (0..8).filter(|_| limiter.admit(ip(1), later)).count();
        assert_eq!(admitted, 5, "never more than a second's worth saved up");
    }

    #[test]
    fn idle_clients_are_forgotten_when_the_table_is_full() {
        let limiter = RateLimiter::new(1);
        let t0 = Instant::now();
        for n in 0..MAX_TRACKED as u32 {
            limiter.admit(ip(n), t0);
        }
        assert_eq!(limiter.tracked(), MAX_TRACKED);
        // Still limited while not idle: nothing is dropped.
        assert!(limiter.admit(ip(u32::MAX), t0));
        assert_eq!(limiter.tracked(), MAX_TRACKED + 1);
        limiter.admit(ip(u32::MAX - 1), t0 + Duration::from_secs(2));
        assert!(limiter.tracked() <= 2, "{}", limiter.tracked());
    }
}
