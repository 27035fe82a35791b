//! The deploy contract as data: the environment variables a reader reads, as a typed list that
//! sits beside the reader, and a binary's whole contract, the union of the lists of the readers
//! it calls (and, for a server, its routes).
//!
//! Each `from_env` that reads variables has a list (`SessionConfig::ENV`, `ImageLimits::ENV`,
//! ...). A binary prints its [`Contract`] (`<binary> contract`), each host crate commits that
//! output as `contract.json`, and `coldpath check` holds the deployment templates to those files,
//! so what a template may set is what the code reads, never a guess from source text. Each
//! crate's tests run its readers through a [`RecordingEnv`], which fails them when they read a
//! variable their list leaves out or leave one of it unread.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::EnvSource;

/// Whether a deployment must set a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Unset, a default applies.
    Optional,
    /// Unset, the binary refuses to start (in the mode `what` names, when only one needs it).
    Required,
    /// Set by the platform the binary runs on (Lambda, AWS Batch), never by a template: the
    /// binary reads it to tell where it runs.
    Platform,
}

/// One environment variable a reader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    pub name: &'static str,
    pub need: Need,
    /// What it sets, in a few words.
    pub what: &'static str,
}

impl EnvVar {
    pub const fn optional(name: &'static str, what: &'static str) -> Self {
        EnvVar {
            name,
            need: Need::Optional,
            what,
        }
    }

    pub const fn required(name: &'static str, what: &'static str) -> Self {
        EnvVar {
            name,
            need: Need::Required,
            what,
        }
    }

    pub const fn platform(name: &'static str, what: &'static str) -> Self {
        EnvVar {
            name,
            need: Need::Platform,
            what,
        }
    }
}

/// The union of several readers' lists, one entry per name (the strongest need wins: a variable
/// one reader requires is required), sorted by name.
pub fn union(lists: &[&[EnvVar]]) -> Vec<EnvVar> {
    let mut out: Vec<EnvVar> = Vec::new();
    for var in lists.iter().flat_map(|list| list.iter()) {
        match out.iter_mut().find(|v| v.name == var.name) {
            Some(seen) if var.need == Need::Required => seen.need = Need::Required,
            Some(_) => {}
            None => out.push(*var),
        }
    }
    out.sort_by_key(|v| v.name);
    out
}

/// What a deployed binary reads and serves: what `<binary> contract` prints and the host
/// crate's committed `contract.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contract {
    /// The binary's name (`embeddings`, `coldpath-serve`).
    pub binary: &'static str,
    /// Every variable the binary reads, sorted by name.
    pub env: Vec<EnvVar>,
    /// The paths a server routes (empty for a binary that serves no HTTP).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<&'static str>,
}

impl Contract {
    pub fn new(binary: &'static str, lists: &[&[EnvVar]]) -> Self {
        Contract {
            binary,
            env: union(lists),
            routes: Vec::new(),
        }
    }

    pub fn with_routes(self, routes: impl IntoIterator<Item = &'static str>) -> Self {
        Contract {
            routes: routes.into_iter().collect(),
            ..self
        }
    }

    /// The JSON `<binary> contract` prints and `contract.json` holds, with a final newline.
    pub fn to_json(&self) -> String {
        // A struct of strings and enums always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// An [`EnvSource`] that records every name asked for, set or not: a test runs a reader through
/// it and compares what was read with the reader's list.
#[derive(Debug, Default)]
pub struct RecordingEnv<E> {
    inner: E,
    read: RefCell<BTreeSet<String>>,
}

/// How what a reader read differs from its list; both empty when they agree.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EnvDifference {
    /// Read, but not in the list: a template could not be checked against it.
    pub unlisted: Vec<String>,
    /// In the list, but not read (with the settings the test gave).
    pub unread: Vec<&'static str>,
}

impl EnvDifference {
    pub fn is_empty(&self) -> bool {
        self.unlisted.is_empty() && self.unread.is_empty()
    }
}

impl<E: EnvSource> RecordingEnv<E> {
    pub fn new(inner: E) -> Self {
        RecordingEnv {
            inner,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    /// The names read so far.
    pub fn read(&self) -> BTreeSet<String> {
        self.read.borrow().clone()
    }

    /// Compares what was read with `lists` taken together.
    pub fn difference(&self, lists: &[&[EnvVar]]) -> EnvDifference {
        let listed = union(lists);
        let read = self.read.borrow();
        EnvDifference {
            unlisted: read
                .iter()
                .filter(|name| !listed.iter().any(|v| v.name == name.as_str()))
                .cloned()
                .collect(),
            unread: listed
                .iter()
                .map(|v| v.name)
                .filter(|name| !read.contains(*name))
                .collect(),
        }
    }
}

impl<E: EnvSource> EnvSource for RecordingEnv<E> {
    fn get(&self, name: &str) -> Option<String> {
        self.read.borrow_mut().insert(name.to_string());
        self.inner.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapEnv;
    use crate::config;

    const A: &[EnvVar] = &[EnvVar::optional("A", "a"), EnvVar::optional("B", "b")];
    const B: &[EnvVar] = &[EnvVar::required("B", "b"), EnvVar::platform("C", "c")];

    #[test]
    fn the_union_keeps_one_entry_per_name_and_the_strongest_need() {
        let u = union(&[A, B]);
        let got: Vec<(&str, Need)> = u.iter().map(|v| (v.name, v.need)).collect();
        assert_eq!(
            got,
            [
                ("A", Need::Optional),
                ("B", Need::Required),
                ("C", Need::Platform)
            ]
        );
    }

    #[test]
    fn a_recording_env_names_what_was_read_unlisted_and_what_was_listed_unread() {
        let env = RecordingEnv::new(MapEnv::new([("A", "1")]));
        assert_eq!(config::get(&env, "A").as_deref(), Some("1"));
        assert_eq!(config::get(&env, "D"), None);
        assert_eq!(
            env.difference(&[A]),
            EnvDifference {
                unlisted: vec!["D".to_string()],
                unread: vec!["B"],
            }
        );
        let _ = config::get(&env, "B");
        let _ = config::get(&env, "C");
        assert!(
            env.difference(&[A, B, &[EnvVar::optional("D", "d")]])
                .is_empty()
        );
    }

    #[test]
    fn the_contract_json_lists_variables_and_routes() {
        let c = Contract::new("x", &[B]).with_routes(["/health"]);
        let json: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(json["binary"], "x");
        assert_eq!(json["env"][0]["name"], "B");
        assert_eq!(json["env"][0]["need"], "required");
        assert_eq!(json["env"][1]["need"], "platform");
        assert_eq!(json["routes"][0], "/health");
        assert!(!Contract::new("y", &[A]).to_json().contains("routes"));
    }
}
