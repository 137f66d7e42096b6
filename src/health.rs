//! Liveness and readiness, as `/healthz` and `/readyz` report them.
//!
//! The processing loop sets the phase it is in and whether the broker
//! answers; the HTTP server only reads. Ready means: the loop runs, has
//! joined its consumer group, every partition assigned to it has its dedupe
//! state restored, and the broker is reachable. A process that joined and
//! was given no partitions (more processes than partitions) is ready: it
//! has nothing to restore and takes partitions over the moment a rebalance
//! gives it some.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use crate::metrics::Metrics;

/// What the process reports on: its metrics and its health, served by
/// `http` and fed by the engine.
#[derive(Debug, Clone)]
pub struct Observed {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Where the processing loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting, checking topics, fencing the previous transaction.
    Starting = 0,
    /// Subscribed, waiting for the group to assign partitions.
    Joining = 1,
    /// Restoring dedupe state of assigned partitions before processing them.
    Restoring = 2,
    /// Processing.
    Running = 3,
    /// Shutting down, or restarting after a failure.
    Stopping = 4,
    /// `leadflow ingest`: taking leads into the input topic.
    Taking = 5,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            1 => Phase::Joining,
            2 => Phase::Restoring,
            3 => Phase::Running,
            4 => Phase::Stopping,
            5 => Phase::Taking,
            _ => Phase::Starting,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Joining => "joining the consumer group",
            Phase::Restoring => "restoring dedupe state",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Taking => "taking leads",
        }
    }
}

/// Shared between the loop (writer) and the HTTP server (reader).
#[derive(Debug)]
pub struct Health {
    phase: AtomicU8,
    broker_reachable: AtomicBool,
    /// Partitions currently assigned, for the `/readyz` body.
    assigned: AtomicUsize,
    /// Offset resets since the process started, and the records they
    /// skipped, for the `/readyz` body.
    offset_resets: AtomicU64,
    skipped_records: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            phase: AtomicU8::new(Phase::Starting as u8),
            broker_reachable: AtomicBool::new(true),
            assigned: AtomicUsize::new(0),
            offset_resets: AtomicU64::new(0),
            skipped_records: AtomicU64::new(0),
        }
    }
}

impl Health {
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    pub fn set_broker_reachable(&self, reachable: bool) {
        self.broker_reachable.store(reachable, Ordering::Relaxed);
    }

    pub fn set_assigned(&self, partitions: usize) {
        self.assigned.store(partitions, Ordering::Relaxed);
    }

    /// An offset reset skipped `skipped` records (0 when unknown).
    pub fn record_offset_reset(&self, skipped: u64) {
        self.offset_resets.fetch_add(1, Ordering::Relaxed);
        self.skipped_records.fetch_add(skipped, Ordering::Relaxed);
    }

    /// `Ok` with a description when ready, else why not. Offset resets do
    /// not make the process unready (it processes what is there, and a
    /// restart brings nothing back), but every answer names them.
    pub fn readiness(&self) -> Result<String, String> {
        let phase = self.phase();
        let assigned = self.assigned.load(Ordering::Relaxed);
        let resets = self.offset_resets.load(Ordering::Relaxed);
        let note = match resets {
            0 => String::new(),
            _ => format!(
                "; {resets} offset resets skipped {} records deleted before they were read",
                self.skipped_records.load(Ordering::Relaxed)
            ),
        };
        if phase != Phase::Running && phase != Phase::Taking {
            return Err(format!("not ready: {}{note}", phase.as_str()));
        }
        if !self.broker_reachable.load(Ordering::Relaxed) {
            return Err(format!("not ready: the broker is unreachable{note}"));
        }
        match phase {
            Phase::Taking => Ok(format!("ready: {}", phase.as_str())),
            _ => Ok(format!("ready: {assigned} partitions assigned{note}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_running_with_the_broker_reachable() {
        let health = Health::default();
        for phase in [
            Phase::Starting,
            Phase::Joining,
            Phase::Restoring,
            Phase::Stopping,
        ] {
            health.set_phase(phase);
            let reason = health.readiness().expect_err("not ready");
            assert!(reason.contains(phase.as_str()), "{reason}");
        }
        health.set_phase(Phase::Running);
        health.set_assigned(3);
        assert_eq!(
            health.readiness().as_deref(),
            Ok("ready: 3 partitions assigned")
        );
        health.set_broker_reachable(false);
        assert!(health.readiness().is_err_and(|r| r.contains("unreachable")));
        health.set_broker_reachable(true);
        assert!(health.readiness().is_ok());
        health.set_phase(Phase::Taking);
        assert_eq!(health.readiness().as_deref(), Ok("ready: taking leads"));
        health.set_phase(Phase::Running);
        health.record_offset_reset(40);
        health.record_offset_reset(2);
        assert_eq!(
            health.readiness().as_deref(),
            Ok(
                "ready: 3 partitions assigned; 2 offset resets skipped 42 records deleted before they were read"
            )
        );
    }
}
