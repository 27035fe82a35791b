//! Typed errors of the placement library: every message names the file, the crate or the
//! function, and the field, so the fix is obvious from the message alone.

use std::path::PathBuf;

/// A workload declaration (`[package.metadata.coldpath]`) that is missing, malformed or
/// contradicts itself.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeclarationError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not valid TOML: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("crate {crate_name} has no [package.metadata.coldpath] section in {path}")]
    Missing { crate_name: String, path: PathBuf },
    #[error("crate {crate_name}: field `{field}` is missing from [{section}]")]
    MissingField {
        crate_name: String,
        section: String,
        field: &'static str,
    },
    #[error("crate {crate_name}: field `{field}` {expected}, found {found}")]
    Invalid {
        crate_name: String,
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error(
        "crate {crate_name}: field `{field}` contradicts the rest of the declaration: {reason}"
    )]
    Contradiction {
        crate_name: String,
        field: &'static str,
        reason: String,
    },
}

/// An input of `coldpath plan` other than the declarations (measurements, prices, profile).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not valid {format}: {reason}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("no measurements for workload {workload} (looked in {sources})")]
    NoMeasurement { workload: String, sources: String },
    #[error("the prices file has no [{table}] table, which pricing {what} needs")]
    MissingPrice {
        table: &'static str,
        what: &'static str,
    },
}

/// A template that cannot be read at all (as opposed to one that disagrees with the
/// declarations, which `check` reports as a list of mismatches).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not valid YAML: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: {what}")]
    Shape { path: PathBuf, what: String },
}
