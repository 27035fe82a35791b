//! Reading configuration from the environment, once, into typed values.
//!
//! Functions read every setting through an [`EnvSource`] so that tests can hand in a map instead of
//! mutating the process environment. A malformed value is a [`ConfigError`] that names the variable,
//! what was found and what was expected; nothing here panics on user settings.

use std::collections::HashMap;
use std::str::FromStr;

/// Where settings come from.
pub trait EnvSource {
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        #[cfg(debug_assertions)]
        record_read(name);
        std::env::var(name).ok()
    }
}

/// Debug builds only: names a file to which every variable read through [`ProcessEnv`] is
/// appended, one name a line, so the hosts' process tests can hold what a binary really reads to
/// its committed deploy contract (a reader called from `main` but missing from the contract
/// shows there). Release builds have no such hook.
pub const ENV_READS_VAR: &str = "COLDPATH_ENV_READS";

#[cfg(debug_assertions)]
fn record_read(name: &str) {
    use std::io::Write;
    if let Some(path) = std::env::var_os(ENV_READS_VAR) {
        // Best effort: a failed write loses a line of a test log, never a setting.
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{name}"));
    }
}

/// A fixed set of settings, for tests and for callers that assemble config themselves.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        MapEnv(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl EnvSource for MapEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name}: expected {expected}, found {found:?}")]
    Invalid {
        name: String,
        expected: String,
        found: String,
    },
    #[error("{name}: required but not set ({hint})")]
    Missing { name: String, hint: String },
}

impl ConfigError {
    pub fn invalid(name: &str, expected: impl Into<String>, found: impl Into<String>) -> Self {
        ConfigError::Invalid {
            name: name.to_string(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}

impl crate::Classify for ConfigError {
    fn error_type(&self) -> crate::ErrorType {
        crate::ErrorType::Config
    }
}

/// A setting, with empty values treated as unset so that `NAME=` in a template means "default".
pub fn get(env: &impl EnvSource, name: &str) -> Option<String> {
    env.get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A setting parsed with [`FromStr`], or `default` when unset.
pub fn parse_or<T: FromStr>(
    env: &impl EnvSource,
    name: &str,
    expected: &str,
    default: T,
) -> Result<T, ConfigError> {
    match get(env, name) {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|_| ConfigError::invalid(name, expected, raw)),
    }
}

/// A positive integer setting, or `default` when unset.
pub fn positive_or(env: &impl EnvSource, name: &str, default: usize) -> Result<usize, ConfigError> {
    let value: usize = parse_or(env, name, "a positive integer", default)?;
    if value == 0 {
        return Err(ConfigError::invalid(name, "a positive integer", "0"));
    }
    Ok(value)
}

/// A boolean setting (`true/false`, `1/0`, `yes/no`, `on/off`), or `default` when unset.
pub fn bool_or(env: &impl EnvSource, name: &str, default: bool) -> Result<bool, ConfigError> {
    match get(env, name) {
        None => Ok(default),
        Some(raw) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::invalid(name, "true or false", raw)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_mean_default() {
        let env = MapEnv::new([("A", "  ")]);
        assert_eq!(positive_or(&env, "A", 7), Ok(7));
        assert_eq!(bool_or(&env, "A", true), Ok(true));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let env = MapEnv::new([("THREADS", "many"), ("ZERO", "0"), ("FLAG", "maybe")]);
        let err = positive_or(&env, "THREADS", 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "THREADS: expected a positive integer, found \"many\""
        );
        assert!(positive_or(&env, "ZERO", 1).is_err());
        assert_eq!(
            bool_or(&env, "FLAG", false).unwrap_err().to_string(),
            "FLAG: expected true or false, found \"maybe\""
        );
    }

    #[test]
    fn booleans_accept_common_spellings() {
        for (raw, want) in [("TRUE", true), ("on", true), ("0", false), ("No", false)] {
            let env = MapEnv::new([("F", raw)]);
            assert_eq!(bool_or(&env, "F", !want), Ok(want), "{raw}");
        }
    }
}
