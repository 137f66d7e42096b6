//! The pipeline stages: plain, synchronous Rust over domain types. No stage
//! knows about Kafka, tokio or metrics, so each is tested exhaustively and
//! benchmarked alone.

pub mod decode;
pub mod dedupe;
pub mod encode;
pub mod enrich;
pub mod route;
pub mod score;
