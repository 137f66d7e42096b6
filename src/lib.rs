//! leadflow: a stream processor for software-marketplace leads.
//!
//! Raw leads are read from Kafka, passed through decode → enrich → dedupe →
//! score → route ([`stages`], composed in [`pipeline`]), and fanned out by
//! storefront to campaign topics, with a dead-letter topic for what cannot
//! be processed. The stages are plain Rust; Kafka I/O lives in [`kafka`].

#![deny(rustdoc::broken_intra_doc_links)]

pub mod catalog;
pub mod config;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod error;
#[cfg(feature = "kafka-tests")]
pub mod failpoint;
pub mod generate;
pub mod health;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod reference;
pub mod registry;
pub mod reload;
pub mod stages;
pub mod testkit;
pub mod validate;

/// leadflow's name and version, the first half of `leadflow.pipeline.version`.
pub const LEADFLOW_VERSION: &str = concat!("leadflow/", env!("CARGO_PKG_VERSION"));
