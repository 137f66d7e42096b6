//! The pipeline stages: plain, synchronous Rust over domain types. No stage
//! knows about Kafka, tokio or metrics, so each is tested exhaustively and
//! benchmarked alone.

pub mod decode;
pub mod dedupe;
pub mod encode;
pub mod enrich;
pub mod route;
pub mod score;

use crate::error::Stage;

/// Told as each stage ends, to time stages without the stages knowing.
/// `()` is the clock that does nothing, compiled away.
pub trait StageClock {
    /// `stage` has just finished (a stage may finish more than once per lead).
    fn lap(&mut self, stage: Stage);
}

impl StageClock for () {
    #[inline]
    fn lap(&mut self, _stage: Stage) {}
}
