//! Unit prices for the cost estimate, read from `infra/placement/prices.toml`, which cites the
//! public price pages each figure was read from, and on which date, and marks the figures that
//! could not be confirmed as assumptions.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::InputError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Where the figures come from; kept in the file for people, checked to be present here.
    pub sources: Vec<Source>,
    pub lambda: LambdaPrices,
    pub serverless_gpu: ServerlessGpuPrice,
    /// EC2 instances by type name (`g5.xlarge`), billed per second while running.
    pub instances: BTreeMap<String, Instance>,
    /// Fargate, for the always-on pod's CPU variant.
    #[serde(default)]
    pub fargate: Option<FargatePrices>,
    /// The load balancer in front of the pod, billed whichever variant runs behind it.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerPrice>,
}

/// AWS Fargate, Linux on x86, on demand: per vCPU-hour and per GB-hour of the task's size,
/// whether the task is busy or not.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FargatePrices {
    pub region: String,
    pub vcpu_hour_usd: f64,
    pub gb_hour_usd: f64,
    #[serde(default)]
    pub assumption: Option<String>,
}

/// An Application Load Balancer: its hourly fee plus load balancer capacity units (LCUs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerPrice {
    pub hourly_usd: f64,
    pub lcu_hour_usd: f64,
    /// LCUs billed each hour at the profiles' traffic.
    pub lcus: f64,
    #[serde(default)]
    pub assumption: Option<String>,
}

impl LoadBalancerPrice {
    /// The load balancer's cost over `hours`.
    pub fn cost(&self, hours: f64) -> f64 {
        (self.hourly_usd + self.lcu_hour_usd * self.lcus) * hours
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub url: String,
    pub read_on: String,
    pub figures: String,
}

/// AWS Lambda, x86_64, first price tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaPrices {
    pub region: String,
    pub request_usd: f64,
    pub gb_second_usd: f64,
    /// Provisioned concurrency: per GB-second configured, whether used or not.
    pub provisioned_gb_second_usd: f64,
    /// Duration of invocations served by provisioned concurrency.
    pub provisioned_duration_gb_second_usd: f64,
    #[serde(default)]
    pub assumption: Option<String>,
}

/// A serverless GPU platform billing per second of container time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerlessGpuPrice {
    pub platform: String,
    pub gpu: String,
    pub per_second_usd: f64,
    #[serde(default)]
    pub assumption: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub hourly_usd: f64,
    pub gpus: u32,
    pub gpu: String,
    #[serde(default)]
    pub assumption: Option<String>,
}

impl Prices {
    pub fn from_file(path: &Path) -> Result<Self, InputError> {
        let text = std::fs::read_to_string(path).map_err(|e| InputError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_str(&text, path)
    }

    /// Parses a prices file; `path` is only used in messages.
    pub fn from_str(text: &str, path: &Path) -> Result<Self, InputError> {
        let prices: Prices = toml::from_str(text).map_err(|e| InputError::Parse {
            path: path.to_path_buf(),
            format: "TOML",
            reason: e.message().to_string(),
        })?;
        let invalid = |what: String| InputError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        if prices.sources.is_empty() {
            return Err(invalid(
                "no [[sources]]: every price must cite where it was read".to_string(),
            ));
        }
        let l = &prices.lambda;
        let mut all = vec![
            ("lambda.request_usd", l.request_usd),
            ("lambda.gb_second_usd", l.gb_second_usd),
            (
                "lambda.provisioned_gb_second_usd",
                l.provisioned_gb_second_usd,
            ),
            (
                "lambda.provisioned_duration_gb_second_usd",
                l.provisioned_duration_gb_second_usd,
            ),
            (
                "serverless_gpu.per_second_usd",
                prices.serverless_gpu.per_second_usd,
            ),
        ];
        if let Some(f) = &prices.fargate {
            all.push(("fargate.vcpu_hour_usd", f.vcpu_hour_usd));
            all.push(("fargate.gb_hour_usd", f.gb_hour_usd));
        }
        if let Some(lb) = &prices.load_balancer {
            all.push(("load_balancer.hourly_usd", lb.hourly_usd));
            all.push(("load_balancer.lcu_hour_usd", lb.lcu_hour_usd));
            if !(lb.lcus.is_finite() && lb.lcus >= 0.0) {
                return Err(invalid(format!(
                    "load_balancer.lcus must be a non-negative number, found {}",
                    lb.lcus
                )));
            }
        }
        for (name, i) in &prices.instances {
            if i.gpus == 0 {
                return Err(invalid(format!("instances.{name}.gpus must be at least 1")));
            }
            all.push(("instances.*.hourly_usd", i.hourly_usd));
        }
        if let Some((name, x)) = all.iter().find(|(_, x)| !(x.is_finite() && *x > 0.0)) {
            return Err(invalid(format!(
                "{name} must be a positive price, found {x}"
            )));
        }
        Ok(prices)
    }

    pub fn instance(&self, name: &str, path: &Path) -> Result<&Instance, InputError> {
        self.instances.get(name).ok_or_else(|| InputError::Invalid {
            path: path.to_path_buf(),
            what: format!("instance type {name} has no price in the prices file"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/prices.toml")).unwrap()
    }

    #[test]
    fn the_committed_prices_parse_and_cite_their_sources() {
        let p = Prices::from_str(&committed(), Path::new("prices.toml")).unwrap();
        assert!(p.sources.len() >= 3);
        assert!(
            p.sources
                .iter()
                .all(|s| s.url.starts_with("https://") && !s.read_on.is_empty())
        );
        assert_eq!(p.instance("g5.xlarge", Path::new("x")).unwrap().gpus, 1);
        let fargate = p.fargate.as_ref().unwrap();
        assert!(fargate.vcpu_hour_usd > fargate.gb_hour_usd);
        assert!(p.load_balancer.is_some());
        assert!(p.instance("p5.48xlarge", Path::new("x")).is_err());
    }

    #[test]
    fn uncited_or_non_positive_prices_are_rejected() {
        let text = committed();
        let start = text.find("[[sources]]").unwrap();
        let end = text.find("[lambda]").unwrap();
        let uncited = format!("sources = []\n{}", &text[end..]);
        let err = Prices::from_str(&uncited, Path::new("p.toml")).unwrap_err();
        assert!(err.to_string().contains("every price must cite"), "{err}");
        assert!(start < end);
        let free_fargate = text.replace("vcpu_hour_usd = 0.04048", "vcpu_hour_usd = -0.04048");
        let err = Prices::from_str(&free_fargate, Path::new("p.toml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("fargate.vcpu_hour_usd must be a positive price"),
            "{err}"
        );
        let free = text.replace("gb_second_usd = 0.0000166667", "gb_second_usd = 0.0");
        let err = Prices::from_str(&free, Path::new("p.toml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("lambda.gb_second_usd must be a positive price"),
            "{err}"
        );
    }
}
