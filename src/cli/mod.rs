//! The commands, one module each with its arguments and its body; `main.rs`
//! only parses and dispatches. What several commands share is in [`common`].

pub mod common;
pub mod config;
pub mod demo;
pub mod ingest;
pub mod produce;
pub mod replay;
pub mod run;
pub mod schemas;
pub mod tail;
pub mod topics;
pub mod validate;
