//! The error vocabulary shared by stages and the runtime: which stage failed
//! and a stable short class name. The class is both the dead-letter header
//! `leadflow.error.class` and the metric label, so renaming one is a
//! breaking change for operators' alerts.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A pipeline stage, as named in dead-letter headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Decode,
    Enrich,
    Dedupe,
    Score,
    Route,
    Produce,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Decode,
        Stage::Enrich,
        Stage::Dedupe,
        Stage::Score,
        Stage::Route,
        Stage::Produce,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Enrich => "enrich",
            Stage::Dedupe => "dedupe",
            Stage::Score => "score",
            Stage::Route => "route",
            Stage::Produce => "produce",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable class name.
pub trait ErrorClass: std::error::Error {
    /// Short `snake_case` name, stable across releases.
    fn class(&self) -> &'static str;

    /// The registry id of the writer schema the record named, when the
    /// failure is about it.
    fn schema_id(&self) -> Option<u32> {
        None
    }
}

/// Why one record could not be processed: what goes into its dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub class: &'static str,
    pub message: String,
    /// See [`ErrorClass::schema_id`].
    pub schema_id: Option<u32>,
}

/// Longest `leadflow.error.message`, in bytes. Messages quote their input
/// (a bad action code, a bad field), and a dead letter must stay far below
/// any record size limit whatever the input was.
pub const MAX_MESSAGE_BYTES: usize = 1024;

impl Failure {
    pub fn new<E: ErrorClass>(stage: Stage, error: &E) -> Failure {
        Failure {
            stage,
            class: error.class(),
            message: capped(error.to_string()),
            schema_id: error.schema_id(),
        }
    }
}

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] on a character boundary,
/// marked with an ellipsis when cut.
pub fn capped(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_capped_on_a_character_boundary() {
        assert_eq!(capped("short".into()), "short");
        let exact = "x".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(capped(exact.clone()), exact);
        for filler in ["x", "é", "€", "𝄞"] {
            let long = filler.repeat(600_000);
            let cut = capped(long);
            assert!(cut.len() <= MAX_MESSAGE_BYTES, "{filler}: {}", cut.len());
            assert!(cut.len() > MAX_MESSAGE_BYTES - 8);
            assert!(cut.ends_with('…'));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}, key `{key}`: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
    #[error("config {origin}, key `{key}`: {reason}")]
    Override {
        origin: String,
        key: String,
        reason: String,
    },
    #[error("config {origin}, key `{key}`: {reason}")]
    Invalid {
        origin: String,
        key: String,
        reason: String,
    },
}

pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses TOML into `T`, turning a parse error into one line that names the
/// file, the line and the key.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |span| span.start);
        let before = text.get(..offset).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let key = text
            .lines()
            .nth(line - 1)
            .and_then(|l| l.split_once('='))
            .map_or_else(|| "?".to_owned(), |(k, _)| k.trim().to_owned());
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            key,
            reason: e.message().replace('\n', " "),
        }
    })
}
