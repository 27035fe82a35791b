//! Traffic profiles: how much each workload is asked to do in a month, the deployments a team
//! actually ran (to compare with the plan), and bulk arrivals with the GPU options for them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::InputError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Billing hours in a month (730 = 365 × 24 / 12).
    #[serde(default = "default_hours")]
    pub hours_per_month: f64,
    /// The instance that "everything always-on" gives each GPU workload.
    pub always_on_instance: String,
    pub traffic: BTreeMap<String, Traffic>,
    /// Deployments to price side by side with the plan (e.g. before and after a migration).
    #[serde(default)]
    pub scenarios: Vec<Scenario>,
    #[serde(default)]
    pub bulk: Option<Bulk>,
    /// Where the file was read from, for messages.
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_hours() -> f64 {
    730.0
}

/// One workload's steady traffic in the month.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Invocations (requests, S3 events, SQS messages).
    pub requests_per_month: f64,
    /// Items per invocation (texts, photos, images).
    #[serde(default = "one")]
    pub items_per_request: f64,
    /// Concurrency kept warm when the workload is pinned on Lambda.
    #[serde(default = "one_u32")]
    pub provisioned_concurrency: u32,
    /// New execution environments or containers started in the month when on demand.
    #[serde(default)]
    pub cold_starts_per_month: f64,
    /// Seconds a serverless GPU container stays up with nothing to do before it exits
    /// (`CAPTIONING_IDLE_EXIT_SECS`); billed after every burst.
    #[serde(default)]
    pub idle_exit_s: f64,
    /// Messages waiting at the peak of the month; above the declaration's `bulk_threshold`
    /// the plan switches to bulk mode.
    #[serde(default)]
    pub backlog: u64,
}

fn one() -> f64 {
    1.0
}
fn one_u32() -> u32 {
    1
}

/// A deployment somebody ran: always-on pods hosting some workloads, the rest on serverless GPU.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub pods: Vec<Pod>,
    #[serde(default)]
    pub serverless_gpu: Vec<String>,
    /// Workloads of the traffic this deployment did not have (it ran before they existed), so
    /// it hosts them nowhere and its cost leaves them out.
    #[serde(default)]
    pub predates: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    pub instance: String,
    pub count: u32,
    pub hosts: Vec<String>,
}

/// N items arriving at once and the GPU options to drain them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bulk {
    pub workload: String,
    pub items: u64,
    pub options: Vec<BulkOption>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkOption {
    pub name: String,
    pub instance: String,
    pub batch: u32,
}

impl Profile {
    pub fn from_file(path: &Path) -> Result<Self, InputError> {
        let text = std::fs::read_to_string(path).map_err(|e| InputError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_str(&text, path)
    }

    /// Parses a profile; `path` is only used in messages.
    pub fn from_str(text: &str, path: &Path) -> Result<Self, InputError> {
        let mut profile: Profile = toml::from_str(text).map_err(|e| InputError::Parse {
            path: path.to_path_buf(),
            format: "TOML",
            reason: e.message().to_string(),
        })?;
        profile.path = path.to_path_buf();
        profile.validate()?;
        Ok(profile)
    }

    fn validate(&self) -> Result<(), InputError> {
        let invalid = |what: String| InputError::Invalid {
            path: self.path.clone(),
            what,
        };
        for (w, t) in &self.traffic {
            let numbers = [
                ("requests_per_month", t.requests_per_month),
                ("items_per_request", t.items_per_request),
                ("cold_starts_per_month", t.cold_starts_per_month),
                ("idle_exit_s", t.idle_exit_s),
            ];
            if let Some((field, x)) = numbers.iter().find(|(_, x)| !(x.is_finite() && *x >= 0.0)) {
                return Err(invalid(format!(
                    "traffic.{w}.{field} must be a non-negative number, found {x}"
                )));
            }
        }
        for s in &self.scenarios {
            let mut hosted: Vec<&String> = s.pods.iter().flat_map(|p| &p.hosts).collect();
            hosted.extend(&s.serverless_gpu);
            for w in self.traffic.keys() {
                let n = hosted.iter().filter(|h| **h == w).count();
                if s.predates.contains(w) {
                    if n != 0 {
                        return Err(invalid(format!(
                            "scenario \"{}\" predates workload {w} but hosts it",
                            s.name
                        )));
                    }
                    continue;
                }
                if n != 1 {
                    return Err(invalid(format!(
                        "scenario \"{}\" must host workload {w} exactly once (in a pod or on serverless GPU), found {n}",
                        s.name
                    )));
                }
            }
            if let Some(unknown) = hosted.iter().find(|h| !self.traffic.contains_key(**h)) {
                return Err(invalid(format!(
                    "scenario \"{}\" hosts {unknown}, which has no [traffic.{unknown}]",
                    s.name
                )));
            }
        }
        if let Some(b) = &self.bulk {
            if b.options.is_empty() {
                return Err(invalid("bulk.options is empty".to_string()));
            }
            if !self.traffic.contains_key(&b.workload) {
                return Err(invalid(format!(
                    "bulk.workload {} has no [traffic.{}]",
                    b.workload, b.workload
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "t"
description = "t"
always_on_instance = "g5.xlarge"
[traffic.a]
requests_per_month = 10
[traffic.b]
requests_per_month = 10
"#;

    #[test]
    fn a_scenario_must_host_each_workload_exactly_once() {
        let twice = format!(
            "{BASE}[[scenarios]]\nname = \"s\"\npods = [{{ instance = \"x\", count = 1, hosts = [\"a\", \"b\"] }}]\nserverless_gpu = [\"a\"]\n"
        );
        let err = Profile::from_str(&twice, Path::new("p.toml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("must host workload a exactly once"),
            "{err}"
        );
        let missing = format!("{BASE}[[scenarios]]\nname = \"s\"\nserverless_gpu = [\"a\"]\n");
        let err = Profile::from_str(&missing, Path::new("p.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("workload b exactly once") && msg.ends_with("found 0"),
            "{msg}"
        );
    }

    #[test]
    fn negative_traffic_and_unknown_fields_are_rejected() {
        let err = Profile::from_str(
            &BASE.replace("= 10\n[traffic.b]", "= -1\n[traffic.b]"),
            Path::new("p.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("traffic.a.requests_per_month"),
            "{err}"
        );
        let err =
            Profile::from_str(&format!("{BASE}requets = 3\n"), Path::new("p.toml")).unwrap_err();
        assert!(matches!(err, InputError::Parse { .. }), "{err}");
    }

    #[test]
    fn a_scenario_may_predate_a_workload_but_then_hosts_it_nowhere() {
        let predates = format!(
            "{BASE}[[scenarios]]\nname = \"s\"\nserverless_gpu = [\"a\"]\npredates = [\"b\"]\n"
        );
        assert!(Profile::from_str(&predates, Path::new("p.toml")).is_ok());
        let hosted = format!(
            "{BASE}[[scenarios]]\nname = \"s\"\nserverless_gpu = [\"a\", \"b\"]\npredates = [\"b\"]\n"
        );
        let err = Profile::from_str(&hosted, Path::new("p.toml")).unwrap_err();
        assert!(
            err.to_string().contains("predates workload b but hosts it"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_profiles_parse() {
        for name in ["founding.toml", "bulk.toml"] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("profiles")
                .join(name);
            let p = Profile::from_file(&path).unwrap();
            assert_eq!(p.traffic.len(), 5, "{name}");
        }
    }
}
