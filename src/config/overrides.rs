//! Overrides of the configuration file: `LEADFLOW_…` environment
//! variables and `--set` flags, and `${VAR}` interpolation of secrets into
//! the file's strings.

use crate::error::ConfigError;

/// One setting that overrides the file, from an environment variable or a
/// `--set` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Where it came from, for errors: `LEADFLOW_…` or `--set`.
    pub origin: String,
    /// A dotted TOML key, e.g. `pipeline.commit_interval_ms` or
    /// `kafka.client."linger.ms"`.
    pub key: String,
    /// A TOML value, or else taken as a string.
    pub value: String,
}

/// Environment variables that override keys start with this and separate
/// the levels of a key with `__`: `LEADFLOW_PIPELINE__COMMIT_INTERVAL_MS`.
pub const ENV_PREFIX: &str = "LEADFLOW_";

/// The tables of librdkafka properties, whose keys have dots.
const PROPERTY_TABLES: [&str; 3] = ["kafka.client", "kafka.consumer", "kafka.producer"];

/// The TOML key an environment variable's name (without the prefix)
/// stands for. Below a table of librdkafka properties the rest of the name
/// is one property, its `_` standing for `.`:
/// `KAFKA__CLIENT__SASL_PASSWORD` is `kafka.client."sasl.password"`.
/// librdkafka's string properties have no `_` of their own, and a name
/// cannot hold a dot.
fn env_key(name: &str) -> String {
    let key = name.to_lowercase().replace("__", ".");
    for table in PROPERTY_TABLES {
        if let Some(property) = key.strip_prefix(table).and_then(|k| k.strip_prefix('.')) {
            return format!("{table}.\"{}\"", property.replace(['.', '_'], "."));
        }
    }
    key
}

/// Replaces `${NAME}` with environment variable `NAME`, and `${NAME:-word}`
/// with it or, when it is unset or empty, with `word` (Vector's syntax);
/// `$$` is one `$`. An unset variable without a default is an error, so a
/// secret missing from the environment is never an empty password.
pub fn interpolate(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| "`${` without its `}` (write `$$` for a `$`)".to_owned())?;
        let expression = &body[..end];
        let (name, default) = match expression.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expression, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{expression}}}` names no environment variable"));
        }
        match (var(name).filter(|value| !value.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// [`interpolate`] in every string of `value`, `key` naming it for errors.
/// Only strings: a value is never parsed again as TOML, so a secret with
/// quotes or line breaks in it cannot change the file's structure.
pub(super) fn interpolate_all(
    value: &mut toml::Value,
    key: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(text) => {
            *text = interpolate(text, var).map_err(|reason| (key.to_owned(), reason))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_all(item, &format!("{key}[{i}]"), var)?;
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table.iter_mut() {
                let key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                interpolate_all(item, &key, var)?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl Override {
    /// The overrides among environment variables: `LEADFLOW_` names with a
    /// `__` in them, so `LEADFLOW_CONFIG` and the like are not keys.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
        let mut overrides: Vec<Override> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let key = name.strip_prefix(ENV_PREFIX)?;
                key.contains("__").then(|| Override {
                    key: env_key(key),
                    origin: name.clone(),
                    value,
                })
            })
            .collect();
        // Environment order is arbitrary; a stable order gives stable errors.
        overrides.sort_by(|a, b| a.origin.cmp(&b.origin));
        overrides
    }

    /// A `--set KEY=VALUE` flag.
    pub fn from_flag(text: &str) -> Result<Override, ConfigError> {
        let (key, value) = text.split_once('=').ok_or_else(|| ConfigError::Override {
            origin: "--set".to_owned(),
            key: text.to_owned(),
            reason: "expected KEY=VALUE".to_owned(),
        })?;
        Ok(Override {
            origin: "--set".to_owned(),
            key: key.trim().to_owned(),
            value: value.trim().to_owned(),
        })
    }

    /// The override as a TOML table with just this key: the value as
    /// TOML if it is valid TOML and `as_string` is false, else as a string.
    pub(super) fn table(&self, as_string: bool) -> Result<toml::Table, ConfigError> {
        let string = format!("{} = {}", self.key, toml::Value::String(self.value.clone()));
        let parsed = if as_string {
            toml::from_str(&string)
        } else {
            toml::from_str(&format!("{} = {}", self.key, self.value))
                .or_else(|_| toml::from_str(&string))
        };
        parsed.map_err(|e: toml::de::Error| self.error(e.message()))
    }

    pub(super) fn is_quoted(&self) -> bool {
        self.value.starts_with('"') || self.value.starts_with('\'')
    }

    pub(super) fn error(&self, reason: &str) -> ConfigError {
        ConfigError::Override {
            origin: self.origin.clone(),
            key: self.key.clone(),
            reason: reason.replace('\n', " "),
        }
    }
}

/// Sets every key of `patch` in `table`, descending into tables both have.
pub(super) fn merge(table: &mut toml::Table, patch: toml::Table) {
    for (key, value) in patch {
        match (table.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(patch)) => merge(inner, patch),
            (_, value) => {
                table.insert(key, value);
            }
        }
    }
}
