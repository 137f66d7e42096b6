//! What `leadflow ingest` reports: requests by status, how long they took
//! (from the first byte read to the answer, Kafka's acknowledgement
//! included), and bodies refused as not a lead, by class.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{ClassLabels, StatusLabels};

/// The statuses `ingest http` answers with; any other counts as `other`.
const STATUSES: [(u16, &str); 9] = [
    (200, "200"),
    (400, "400"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (413, "413"),
    (429, "429"),
    (503, "503"),
    (0, "other"),
];

#[derive(Debug)]
pub struct IngestMetrics {
    requests: Family<StatusLabels, Counter>,
    duration: Histogram,
    invalid: Family<ClassLabels, Counter>,
}

impl IngestMetrics {
    pub(super) fn new() -> IngestMetrics {
        IngestMetrics {
            requests: Family::default(),
            // 0.5 ms to about 8 s.
            duration: Histogram::new(exponential_buckets(0.000_5, 2.0, 15)),
            invalid: Family::default(),
        }
    }

    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "ingest_requests",
            "Requests to `leadflow ingest http`, by the status answered",
            self.requests.clone(),
        );
        r.register_with_unit(
            "ingest_request_duration",
            "From a request's arrival to its answer, Kafka's acknowledgement included",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register(
            "ingest_invalid",
            "Bodies `leadflow ingest` refused as not a lead, by error class",
            self.invalid.clone(),
        );
    }

    /// A request answered with `status` after `elapsed`.
    pub fn request(&self, status: u16, elapsed: Duration) {
        let status = STATUSES
            .iter()
            .find(|(code, _)| *code == status)
            .map_or("other", |(_, label)| label);
        self.requests.get_or_create(&StatusLabels { status }).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// A body refused as not a lead, for this error class.
    pub fn invalid(&self, class: &'static str) {
        self.invalid.get_or_create(&ClassLabels { class }).inc();
    }

    #[cfg(test)]
    pub(super) fn requests_with(&self, status: &'static str) -> u64 {
        self.requests.get_or_create(&StatusLabels { status }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_counted_by_code_and_strays_as_other() {
        let metrics = IngestMetrics::new();
        metrics.request(200, Duration::from_millis(3));
        metrics.request(200, Duration::from_millis(4));
        metrics.request(418, Duration::from_millis(1));
        assert_eq!(metrics.requests_with("200"), 2);
        assert_eq!(metrics.requests_with("other"), 1);
    }
}
