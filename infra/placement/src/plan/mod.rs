//! The placement rule behind `coldpath plan`, with the cost model in [`cost`] and the text in
//! [`render`].
//!
//! The rule: a workload goes serverless only if its cold start lands off the user's perceived
//! path. A cold start on the perceived path, or a cold start plus one inference over the latency
//! budget, keeps the workload pinned warm; a backlog over the declared threshold sends it to a
//! bulk GPU with a larger batch; everything else runs on demand and scales to zero.

use serde::Serialize;

use crate::declaration::{self, Compute, Declaration, PodDeclaration};
use crate::error::InputError;
use crate::measurements::{Measurement, Measurements};
use crate::prices::Prices;
use crate::profile::{BulkOption, Profile, Traffic};

mod cost;
mod render;

pub use cost::PROVISIONED_UTILIZATION_TARGET;
use cost::*;
pub use render::render;

/// Where a workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Kept initialised: provisioned concurrency on Lambda (CPU), an always-on pod (GPU).
    PinnedWarm,
    /// Started on demand, scaled to zero: Lambda (CPU) or a per-second GPU platform.
    ServerlessOnDemand,
    /// A large GPU with large batches, started for a backlog and stopped when it is drained.
    BulkGpu,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::PinnedWarm => "pinned warm",
            Placement::ServerlessOnDemand => "serverless on demand",
            Placement::BulkGpu => "bulk GPU",
        })
    }
}

/// The decision for one workload, with its reason and its monthly cost under each option.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub workload: String,
    pub function: String,
    pub compute: String,
    pub placement: Placement,
    /// Inference batch size in this placement.
    pub batch: u32,
    /// One sentence saying why.
    pub reason: String,
    /// Declarations the measured figures contradict, and estimated figures relied on.
    pub flags: Vec<String>,
    pub cost_chosen_usd: f64,
    pub cost_always_on_usd: f64,
    pub cost_serverless_usd: f64,
    /// What 1000 items cost on demand this month, cold starts included, for a workload placed
    /// serverless on Lambda's CPUs (a photo's vector on upload); `None` otherwise.
    pub usd_per_1000_items: Option<f64>,
    /// The function that hosts the workload beside its own (a co-hosted workload's host).
    pub hosted_by: Option<String>,
}

/// A deployment from the profile, priced.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioCost {
    pub name: String,
    pub monthly_usd: f64,
}

/// One way to drain a bulk arrival, priced.
#[derive(Debug, Clone, Serialize)]
pub struct BulkCost {
    pub name: String,
    pub instance: String,
    pub gpus: u32,
    pub batch: u32,
    pub wall_hours: f64,
    pub gpu_hours: f64,
    pub usd: f64,
}

/// What one item costs on Lambda's CPUs, on a serverless GPU and on an always-on GPU, for a
/// workload measured on both (captioning), and the monthly volumes where the cheapest changes.
#[derive(Debug, Clone, Serialize)]
pub struct UnitCosts {
    pub workload: String,
    /// Items in the profile's month, the backlog included.
    pub items_per_month: f64,
    /// One item on a warm Lambda (CPU, declared memory, measured CPU time) with its request fee.
    pub lambda_item_usd: f64,
    /// One Lambda cold start (the CPU cold start billed at the declared memory).
    pub lambda_cold_start_usd: f64,
    /// One item on a running GPU at the declared batch size (per-second GPU price).
    pub gpu_item_usd: f64,
    /// One serverless GPU container start: GPU cold start plus the idle exit, billed.
    pub gpu_start_usd: f64,
    /// One caption alone on a GPU started from zero: start, idle exit and one batch-1 item.
    pub gpu_from_zero_usd: f64,
    /// The month's cost per item on each: Lambda on demand, serverless GPU, always-on GPU.
    pub lambda_per_item_usd: f64,
    pub serverless_gpu_per_item_usd: f64,
    pub always_on_gpu_per_item_usd: f64,
    /// Monthly items above which the serverless GPU costs less than Lambda (at the profile's
    /// starts per month); `None` when Lambda stays cheaper at any volume.
    pub serverless_gpu_crossover_items: Option<f64>,
    /// Monthly items above which one always-on GPU costs less than Lambda.
    pub always_on_gpu_crossover_items: Option<f64>,
}

impl UnitCosts {
    /// The compute with the lowest cost per item over the profile's month.
    pub fn cheapest(&self) -> &'static str {
        let options = [
            ("Lambda CPU", self.lambda_per_item_usd),
            ("serverless GPU", self.serverless_gpu_per_item_usd),
            ("always-on GPU", self.always_on_gpu_per_item_usd),
        ];
        options
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("", |o| o.0)
    }
}

/// The whole plan for one profile.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub profile: String,
    pub decisions: Vec<Decision>,
    pub total_chosen_usd: f64,
    pub total_always_on_usd: f64,
    pub total_serverless_usd: f64,
    pub scenarios: Vec<ScenarioCost>,
    pub bulk: Vec<BulkCost>,
    pub unit_costs: Vec<UnitCosts>,
    /// The always-on pod against provisioned Lambda for the workloads it hosts.
    pub pod: Option<PodComparison>,
}

/// One workload the pod hosts, at the profile's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct PodHost {
    pub workload: String,
    pub requests_per_month: f64,
    /// Average vCPUs it keeps busy: requests per second × the measured CPU time per request.
    pub load_vcpu: f64,
    /// Its provisioned Lambda cost this month (what the template deploys today).
    pub lambda_usd: f64,
    /// Whether it rides free: the pod count with it equals the pod count without it, so its
    /// load fits in the pod's spare capacity and hosting it costs nothing more.
    pub rides_free: bool,
    /// The multiple of the profile's traffic above which it no longer rides free (a further pod
    /// is needed for it); `None` for the first host, which the pod is kept for.
    pub rides_free_until_scale: Option<f64>,
}

/// One always-on pod hosting the warm set (`coldpath-serve`) against provisioned Lambda for the
/// same workloads, and the traffic at which the pod becomes cheaper. Traffic is scaled in the
/// profile's mix: a scale of 2 is twice every hosted workload's requests.
#[derive(Debug, Clone, Serialize)]
pub struct PodComparison {
    pub service: String,
    pub hosts: Vec<PodHost>,
    pub vcpu: f64,
    pub memory_gb: f64,
    pub target_cpu_percent: u32,
    /// vCPUs of load one Fargate pod serves at its CPU target.
    pub capacity_vcpu: f64,
    pub fargate_pods: u32,
    /// Fargate pods and the load balancer, this month.
    pub fargate_usd: f64,
    pub gpu_instance: String,
    pub gpu_instances: u32,
    /// GPU instances (`min_tasks`) and the load balancer, this month.
    pub gpu_usd: f64,
    pub load_balancer_usd: f64,
    /// Provisioned Lambda for every host, this month.
    pub lambda_usd: f64,
    /// The multiple of the profile's traffic from which the Fargate pod costs no more than
    /// provisioned Lambda: 0 when it does at any traffic, `None` when never in 10⁹×.
    pub breakeven_scale: Option<f64>,
    /// The same for one GPU instance; its throughput is not measured, so the true break-even is
    /// at this traffic or above.
    pub gpu_breakeven_scale: Option<f64>,
    /// Hosted requests a month in the profile (the scale of 1).
    pub requests_per_month: f64,
    pub hours_per_month: f64,
    /// Estimated figures the comparison relies on.
    pub flags: Vec<String>,
}

impl PodComparison {
    /// Requests a month and per second at a traffic scale.
    pub fn traffic_at(&self, scale: f64) -> (f64, f64) {
        let month = scale * self.requests_per_month;
        (month, month / (self.hours_per_month * SECONDS_PER_HOUR))
    }
}

/// Everything the plan reads.
pub struct Inputs<'a> {
    pub declarations: &'a [Declaration],
    pub measurements: &'a Measurements,
    pub prices: &'a Prices,
    pub profile: &'a Profile,
}

/// Decides every workload and prices the options: each function's own workload and each
/// workload co-hosted in it, which is decided by its own budget and path and priced as the
/// memory it adds to its host.
pub fn plan(inputs: &Inputs<'_>) -> Result<Plan, InputError> {
    let units: Vec<Declaration> = inputs
        .declarations
        .iter()
        .flat_map(Declaration::workloads)
        .collect();
    let inputs = &Inputs {
        declarations: &units,
        measurements: inputs.measurements,
        prices: inputs.prices,
        profile: inputs.profile,
    };
    let profile = inputs.profile;
    let bulk = match &profile.bulk {
        Some(b) => {
            let d = find_declaration(inputs, &b.workload)?;
            let m = inputs.measurements.get(&b.workload)?;
            b.options
                .iter()
                .map(|o| bulk_cost(inputs, d, m, o, b.items))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => Vec::new(),
    };
    let mut decisions = Vec::new();
    let mut unit_costs = Vec::new();
    for d in inputs.declarations {
        let m = inputs.measurements.get(&d.workload)?;
        let t = profile
            .traffic
            .get(&d.workload)
            .ok_or_else(|| InputError::Invalid {
                path: profile.path.clone(),
                what: format!(
                    "no [traffic.{}] for declared workload {}",
                    d.workload, d.workload
                ),
            })?;
        let decision = decide(inputs, d, m, t, &bulk)?;
        if has_gpu_figures(m) {
            unit_costs.push(unit_costs_for(inputs, d, m, t)?);
        }
        decisions.push(decision);
    }
    memory_flags(inputs, &mut decisions)?;
    let scenarios = profile
        .scenarios
        .iter()
        .map(|s| {
            let mut usd = 0.0;
            for pod in &s.pods {
                let i = inputs.prices.instance(&pod.instance, &profile.path)?;
                usd += i.hourly_usd * f64::from(pod.count) * profile.hours_per_month;
            }
            for w in &s.serverless_gpu {
                let d = find_declaration(inputs, w)?;
                let m = inputs.measurements.get(w)?;
                usd += serverless_gpu_cost(inputs, d, m, &profile.traffic[w], d.max_batch)?;
            }
            Ok(ScenarioCost {
                name: s.name.clone(),
                monthly_usd: usd,
            })
        })
        .collect::<Result<Vec<_>, InputError>>()?;
    let pod = declaration::pod_of(inputs.declarations)
        .map(|p| pod_comparison(inputs, p))
        .transpose()?;
    Ok(Plan {
        profile: profile.name.clone(),
        pod,
        unit_costs,
        total_chosen_usd: decisions.iter().map(|d| d.cost_chosen_usd).sum(),
        total_always_on_usd: decisions.iter().map(|d| d.cost_always_on_usd).sum(),
        total_serverless_usd: decisions.iter().map(|d| d.cost_serverless_usd).sum(),
        decisions,
        scenarios,
        bulk,
    })
}

/// A function that co-hosts workloads must hold them all: the measured peak memory of its own
/// workload and of each co-hosted one, together, within its `memory_mb`. Flagged on the host's
/// decision, naming an estimated peak.
fn memory_flags(inputs: &Inputs<'_>, decisions: &mut [Decision]) -> Result<(), InputError> {
    for host in inputs
        .declarations
        .iter()
        .filter(|d| !d.cohosted.is_empty())
    {
        let mut parts = vec![(
            host.workload.as_str(),
            inputs.measurements.get(&host.workload)?,
        )];
        for c in &host.cohosted {
            parts.push((c.workload.as_str(), inputs.measurements.get(&c.workload)?));
        }
        let peak: f64 = parts.iter().filter_map(|(_, m)| m.peak_rss_mib).sum();
        let estimated: Vec<&str> = parts
            .iter()
            .filter(|(_, m)| !m.estimated_among(&["peak_rss_mib"]).is_empty())
            .map(|(w, _)| *w)
            .collect();
        let Some(d) = decisions.iter_mut().find(|d| d.workload == host.workload) else {
            continue;
        };
        let names: Vec<&str> = parts.iter().map(|(w, _)| *w).collect();
        if peak > f64::from(host.memory_mb) {
            d.flags.push(format!(
                "{}: {} together peak at {peak:.0} MiB, over its memory_mb = {}",
                host.crate_name,
                names.join(" + "),
                host.memory_mb
            ));
        }
        if !estimated.is_empty() {
            d.flags.push(format!(
                "{}: sized for {} with an estimated peak_rss_mib of {}; replace it with the benchmark's",
                host.crate_name,
                names.join(" + "),
                estimated.join(", ")
            ));
        }
    }
    Ok(())
}

fn find_declaration<'a>(
    inputs: &'a Inputs<'_>,
    workload: &str,
) -> Result<&'a Declaration, InputError> {
    inputs
        .declarations
        .iter()
        .find(|d| d.workload == workload)
        .ok_or_else(|| InputError::Invalid {
            path: inputs.profile.path.clone(),
            what: format!("workload {workload} has no declaration in any function crate"),
        })
}

/// Cold start and one warm inference on the compute the workload declares, in ms.
fn latency_figures(
    declaration: &Declaration,
    measurement: &Measurement,
) -> Result<(f64, f64), InputError> {
    match declaration.compute {
        Compute::Cpu => Ok((measurement.cold_start_ms, measurement.inference_ms)),
        Compute::Gpu => match (measurement.gpu_cold_start_ms, measurement.gpu_inference_ms) {
            (Some(c), Some(i)) => Ok((c, i)),
            _ => Err(InputError::Invalid {
                path: measurement.source.clone().into(),
                what: format!(
                    "{} declares compute = \"gpu\" but its measurements have no gpu_cold_start_ms and gpu_inference_ms",
                    declaration.workload
                ),
            }),
        },
    }
}

/// Cold start and one warm batch-1 inference on a GPU, in ms, whatever compute the workload's
/// trickle runs on: a CPU workload may still drain its backlogs on a GPU pool.
fn gpu_figures(
    declaration: &Declaration,
    measurement: &Measurement,
) -> Result<(f64, f64), InputError> {
    match (measurement.gpu_cold_start_ms, measurement.gpu_inference_ms) {
        (Some(c), Some(i)) => Ok((c, i)),
        _ => Err(InputError::Invalid {
            path: measurement.source.clone().into(),
            what: format!(
                "{} is priced on a GPU but its measurements have no gpu_cold_start_ms and gpu_inference_ms",
                declaration.workload
            ),
        }),
    }
}

/// Whether the measurements can price the workload on a GPU.
fn has_gpu_figures(measurement: &Measurement) -> bool {
    measurement.gpu_cold_start_ms.is_some() && measurement.gpu_inference_ms.is_some()
}

fn decide(
    inputs: &Inputs<'_>,
    declaration: &Declaration,
    measurement: &Measurement,
    traffic: &Traffic,
    bulk: &[BulkCost],
) -> Result<Decision, InputError> {
    let (cold, warm) = latency_figures(declaration, measurement)?;
    let budget = declaration.latency_budget_ms as f64;
    let cold_path = cold + warm;
    let over_budget = cold_path > budget;
    let backlog_over = declaration
        .bulk_threshold
        .is_some_and(|th| traffic.backlog > th);
    // In bulk mode the backlog goes to the cheapest option at the declaration's bulk_batch, which
    // is what the bulk workers are deployed with (coldpath check holds them to it); larger
    // batches are only priced beside it. Without such an option, the cheapest that batches more.
    let bulk_batch = declaration.bulk_batch.unwrap_or(declaration.max_batch);
    let cheapest = |keep: &dyn Fn(&BulkCost) -> bool| {
        bulk.iter()
            .filter(|b| keep(b))
            .min_by(|a, b| a.usd.total_cmp(&b.usd))
    };
    let bulk_choice =
        cheapest(&|b| b.batch == bulk_batch).or_else(|| cheapest(&|b| b.batch >= bulk_batch));
    let mut flags = Vec::new();

    let (placement, reason) = if declaration.cold_start_on_perceived_path {
        (
            Placement::PinnedWarm,
            format!(
                "{}: pinned warm, because its cold start ({cold:.0} ms) would land on the perceived path \
                 ({} trigger), so it is initialised before traffic and a warm request costs {warm:.1} ms \
                 of its {budget:.0} ms budget.",
                declaration.workload, declaration.trigger
            ),
        )
    } else if over_budget {
        (
            Placement::PinnedWarm,
            format!(
                "{}: pinned warm, because cold start {cold:.0} ms + inference {warm:.1} ms = {cold_path:.0} ms \
                 exceeds its {budget:.0} ms budget.",
                declaration.workload
            ),
        )
    } else if backlog_over {
        let on = bulk_choice.map_or_else(String::new, |b| {
            format!(" on {} x{} GPU", b.instance, b.gpus)
        });
        let batch = bulk_choice.map_or(bulk_batch, |b| b.batch);
        (
            Placement::BulkGpu,
            format!(
                "{}: bulk GPU{on} at batch {batch}, because a backlog of {} messages exceeds its bulk \
                 threshold of {} and nobody waits on it ({cold_path:.0} ms cold path within a {budget:.0} ms budget).",
                declaration.workload,
                traffic.backlog,
                declaration.bulk_threshold.unwrap_or_default()
            ),
        )
    } else {
        (
            Placement::ServerlessOnDemand,
            format!(
                "{}: serverless on demand ({}), because its cold start is off the perceived path and cold start \
                 {cold:.0} ms + inference {warm:.1} ms = {cold_path:.0} ms fits its {budget:.0} ms budget, so it \
                 scales to zero between bursts.",
                declaration.workload, declaration.compute
            ),
        )
    };

    let reason = match &declaration.hosted_by {
        Some(h) => format!(
            "{reason} It is co-hosted in {} beside {}: its {} MB are provisioned with that function \
             and its requests billed at the function's {} MB.",
            declaration.function,
            h.workload,
            declaration.own_memory_mb(),
            h.memory_mb
        ),
        None => reason,
    };
    if warm > budget {
        flags.push(format!(
            "{}: even warm, one inference ({warm:.1} ms) exceeds the {budget:.0} ms budget; no placement meets it",
            declaration.crate_name
        ));
    }
    let pinned = placement == Placement::PinnedWarm;
    if declaration.pinned_warm != pinned {
        flags.push(format!(
            "{}: declares pinned_warm = {} but the measured figures decide {placement} (cold start {cold:.0} ms, \
             inference {warm:.1} ms, budget {budget:.0} ms)",
            declaration.crate_name, declaration.pinned_warm
        ));
    }
    // Only the figures this decision and its prices use: a GPU workload's CPU figures may be
    // measured while its GPU figures still wait for a GPU.
    let mut used: Vec<&str> = match declaration.compute {
        Compute::Cpu => vec!["cold_start_ms", "inference_ms"],
        Compute::Gpu => vec!["gpu_cold_start_ms", "gpu_inference_ms", "batch_throughput"],
    };
    if placement == Placement::BulkGpu && declaration.compute == Compute::Cpu {
        used.extend(["gpu_inference_ms", "gpu_pool_start_ms", "batch_throughput"]);
    }
    let estimated = measurement.estimated_among(&used);
    if !estimated.is_empty() {
        flags.push(format!(
            "{}: relies on estimated figures ({}) from {}; replace them with the benchmark's",
            declaration.crate_name,
            estimated.join(", "),
            measurement.source
        ));
    }

    let batch = match placement {
        Placement::BulkGpu => bulk_choice.map_or(bulk_batch, |b| b.batch),
        _ => declaration.max_batch,
    };
    let always_on = always_on_cost(inputs, declaration, measurement, traffic)?;
    let serverless = serverless_cost(inputs, declaration, measurement, traffic)?;
    let chosen = match placement {
        Placement::PinnedWarm => always_on,
        Placement::ServerlessOnDemand => serverless,
        Placement::BulkGpu => {
            // The backlog goes to the bulk option; the steady traffic stays on demand. Without a
            // bulk option in the profile the backlog is priced on the serverless GPU at bulk_batch.
            let steady = Traffic {
                backlog: 0,
                ..traffic.clone()
            };
            let backlog = match bulk_choice {
                Some(b) => b.usd,
                None => {
                    let only_backlog = Traffic {
                        requests_per_month: 0.0,
                        cold_starts_per_month: 1.0,
                        ..traffic.clone()
                    };
                    serverless_gpu_cost(
                        inputs,
                        declaration,
                        measurement,
                        &only_backlog,
                        bulk_batch,
                    )?
                }
            };
            serverless_cost(inputs, declaration, measurement, &steady)? + backlog
        }
    };
    let n = items(traffic);
    let usd_per_1000_items = (placement == Placement::ServerlessOnDemand
        && declaration.compute == Compute::Cpu
        && n > 0.0)
        .then(|| chosen / n * 1000.0);
    Ok(Decision {
        workload: declaration.workload.clone(),
        function: declaration.function.clone(),
        compute: declaration.compute.to_string(),
        placement,
        batch,
        reason,
        flags,
        cost_chosen_usd: chosen,
        cost_always_on_usd: always_on,
        cost_serverless_usd: serverless,
        usd_per_1000_items,
        hosted_by: declaration.hosted_by.as_ref().map(|h| h.workload.clone()),
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    const PRICES: &str = r#"
[[sources]]
url = "https://example.test/prices"
read_on = "2026-11-28"
figures = "test figures"
[lambda]
region = "test"
request_usd = 0.0000002
gb_second_usd = 0.00001
provisioned_gb_second_usd = 0.000004
provisioned_duration_gb_second_usd = 0.000009
[serverless_gpu]
platform = "test"
gpu = "test"
per_second_usd = 0.001
[instances.small]
hourly_usd = 1.0
gpus = 1
gpu = "one"
[instances.big]
hourly_usd = 6.0
gpus = 4
gpu = "four"
[fargate]
region = "test"
vcpu_hour_usd = 0.01
gb_hour_usd = 0.001
[load_balancer]
hourly_usd = 0.02
lcu_hour_usd = 0.01
lcus = 1.0
"#;

    const MEASUREMENTS: &str = r#"
[api]
source = "test"
machine = "test"
cold_start_ms = 200.0
inference_ms = 10.0
[photo]
source = "test"
machine = "test"
cold_start_ms = 300.0
inference_ms = 100.0
[queue]
source = "test"
machine = "test"
cold_start_ms = 1000.0
inference_ms = 500.0
gpu_cold_start_ms = 10000.0
gpu_inference_ms = 100.0
[queue.batch_throughput]
8 = 4.0
32 = 8.0
"#;

    fn declaration(workload: &str, body: &str) -> Declaration {
        let text = format!(
            "[package]\nname = \"coldpath-{workload}\"\n[package.metadata.coldpath]\nworkload = \"{workload}\"\nfunction = \"F\"\nmemory_mb = 1024\ntimeout_s = 60\n{body}"
        );
        Declaration::from_manifest_str(&text, Path::new("Cargo.toml")).unwrap()
    }

    fn api(budget: u64, on_path: bool, pinned: bool) -> Declaration {
        declaration(
            "api",
            &format!(
                "latency_budget_ms = {budget}\ncold_start_on_perceived_path = {on_path}\npinned_warm = {pinned}\ncompute = \"cpu\"\ntrigger = \"http\"\nmax_batch = 1\n"
            ),
        )
    }

    fn queue() -> Declaration {
        declaration(
            "queue",
            "latency_budget_ms = 60000\ncold_start_on_perceived_path = false\npinned_warm = false\ncompute = \"gpu\"\ntrigger = \"sqs\"\nmax_batch = 8\nbulk_batch = 32\nbulk_threshold = 100\n",
        )
    }

    fn run(declarations: &[Declaration], profile: &str) -> Result<Plan, InputError> {
        run_with(declarations, profile, MEASUREMENTS)
    }

    fn run_with(
        declarations: &[Declaration],
        profile: &str,
        measurements: &str,
    ) -> Result<Plan, InputError> {
        let measurements = Measurements::from_toml_str(measurements, Path::new("m.toml")).unwrap();
        let prices = Prices::from_str(PRICES, Path::new("p.toml")).unwrap();
        let profile = Profile::from_str(profile, Path::new("profile.toml")).unwrap();
        plan(&Inputs {
            declarations,
            measurements: &measurements,
            prices: &prices,
            profile: &profile,
        })
    }

    const STEADY: &str = r#"
name = "t"
description = "t"
always_on_instance = "small"
[traffic.api]
requests_per_month = 1000000
cold_starts_per_month = 100
[traffic.queue]
requests_per_month = 10000
cold_starts_per_month = 10
idle_exit_s = 50
"#;

    #[test]
    fn on_path_cold_start_pins_and_off_path_scales_to_zero() {
        let p = run(&[api(50, true, true), queue()], STEADY).unwrap();
        assert_eq!(p.decisions[0].placement, Placement::PinnedWarm);
        assert!(
            p.decisions[0].reason.contains("perceived path"),
            "{}",
            p.decisions[0].reason
        );
        assert_eq!(p.decisions[1].placement, Placement::ServerlessOnDemand);
        assert!(
            p.decisions.iter().all(|d| d.flags.is_empty()),
            "{:?}",
            p.decisions
        );
    }

    #[test]
    fn over_budget_pins_and_flags_a_serverless_declaration() {
        // 200 ms cold + 10 ms warm > 150 ms budget, off the path, declared serverless.
        let p = run(&[api(150, false, false), queue()], STEADY).unwrap();
        let d = &p.decisions[0];
        assert_eq!(d.placement, Placement::PinnedWarm);
        assert!(
            d.reason.contains("exceeds its 150 ms budget"),
            "{}",
            d.reason
        );
        assert!(
            d.flags
                .iter()
                .any(|f| f.contains("declares pinned_warm = false")),
            "{:?}",
            d.flags
        );
        // Within budget and declared pinned: flagged the other way.
        let p = run(&[api(1000, false, true), queue()], STEADY).unwrap();
        assert_eq!(p.decisions[0].placement, Placement::ServerlessOnDemand);
        assert!(
            p.decisions[0]
                .flags
                .iter()
                .any(|f| f.contains("declares pinned_warm = true"))
        );
    }

    #[test]
    fn a_budget_no_placement_meets_is_flagged() {
        let p = run(&[api(5, true, true), queue()], STEADY).unwrap();
        assert!(
            p.decisions[0]
                .flags
                .iter()
                .any(|f| f.contains("no placement meets it"))
        );
    }

    #[test]
    fn costs_follow_the_unit_prices() {
        let p = run(&[api(50, true, true), queue()], STEADY).unwrap();
        let (api, queue) = (&p.decisions[0], &p.decisions[1]);
        // On demand: 1e6 × 10 ms + 100 cold starts × 200 ms = 10 020 GB-s at 1 GB.
        let serverless = 10_020.0 * 0.00001 + 1e6 * 0.0000002;
        assert!(
            (api.cost_serverless_usd - serverless).abs() < 1e-9,
            "{}",
            api.cost_serverless_usd
        );
        // Provisioned: 1 × 1 GB × 730 h, plus 10 000 GB-s of duration, plus requests.
        let pinned = 730.0 * 3600.0 * 0.000004 + 10_000.0 * 0.000009 + 1e6 * 0.0000002;
        assert!(
            (api.cost_always_on_usd - pinned).abs() < 1e-9,
            "{}",
            api.cost_always_on_usd
        );
        // GPU on demand at batch 8: 10 000 × 0.1 s / 4 + 10 starts × (10 s + 50 s idle).
        let gpu = (10_000.0 * 0.1 / 4.0 + 10.0 * 60.0) * 0.001;
        assert!(
            (queue.cost_serverless_usd - gpu).abs() < 1e-9,
            "{}",
            queue.cost_serverless_usd
        );
        assert!((queue.cost_always_on_usd - 730.0).abs() < 1e-9);
        assert!(
            p.total_serverless_usd < p.total_chosen_usd
                && p.total_chosen_usd < p.total_always_on_usd
        );
    }

    #[test]
    fn one_item_is_priced_on_each_compute_with_the_crossovers() {
        let p = run(&[api(50, true, true), queue()], STEADY).unwrap();
        assert_eq!(p.unit_costs.len(), 1, "only the GPU workload is compared");
        let u = &p.unit_costs[0];
        // Lambda: 0.5 s at 1 GB plus a request; a cold start is 1 s at 1 GB.
        let lambda_item = 0.5 * 0.00001 + 0.0000002;
        assert!((u.lambda_item_usd - lambda_item).abs() < 1e-15);
        assert!((u.lambda_cold_start_usd - 0.00001).abs() < 1e-15);
        // GPU: 0.1 s / 4 at batch 8; a start is 10 s + 50 s idle; alone from zero adds 0.1 s.
        assert!((u.gpu_item_usd - 0.000025).abs() < 1e-15);
        assert!((u.gpu_start_usd - 0.06).abs() < 1e-12);
        assert!((u.gpu_from_zero_usd - 0.0601).abs() < 1e-12);
        assert!((u.lambda_per_item_usd - (lambda_item + 10.0 * 0.00001 / 10_000.0)).abs() < 1e-15);
        // The GPU's price per item is higher here, so the serverless GPU never wins; the
        // always-on GPU ($730) wins once Lambda's items cost more than it.
        assert_eq!(u.serverless_gpu_crossover_items, None);
        let n = (730.0 - 10.0 * 0.00001) / lambda_item;
        let got = u.always_on_gpu_crossover_items.unwrap();
        assert!((got - n).abs() / n < 1e-12, "{got}");
        assert_eq!(u.cheapest(), "Lambda CPU");
        assert!(render(&p).contains("queue cost per 1000 items"));
    }

    #[test]
    fn an_estimated_gpu_figure_flags_only_the_decisions_that_use_it() {
        let estimated = MEASUREMENTS.replace(
            "gpu_inference_ms = 100.0",
            "gpu_inference_ms = 100.0\nestimated = [\"gpu_inference_ms\", \"peak_rss_mib\"]",
        );
        let measurements = Measurements::from_toml_str(&estimated, Path::new("m.toml")).unwrap();
        let prices = Prices::from_str(PRICES, Path::new("p.toml")).unwrap();
        let profile = Profile::from_str(STEADY, Path::new("profile.toml")).unwrap();
        let declarations = [api(50, true, true), queue()];
        let p = plan(&Inputs {
            declarations: &declarations,
            measurements: &measurements,
            prices: &prices,
            profile: &profile,
        })
        .unwrap();
        assert!(
            p.decisions[0].flags.is_empty(),
            "{:?}",
            p.decisions[0].flags
        );
        let flags = &p.decisions[1].flags;
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert!(
            flags[0].contains("estimated figures (gpu_inference_ms)"),
            "{}",
            flags[0]
        );
    }

    #[test]
    fn a_backlog_goes_to_the_cheapest_bulk_option_batching_enough() {
        let profile = format!(
            "{}backlog = 100000\n[bulk]\nworkload = \"queue\"\nitems = 100000\n\
             [[bulk.options]]\nname = \"small\"\ninstance = \"small\"\nbatch = 8\n\
             [[bulk.options]]\nname = \"big\"\ninstance = \"big\"\nbatch = 32\n",
            STEADY
        );
        let p = run(&[api(50, true, true), queue()], &profile).unwrap();
        let d = &p.decisions[1];
        assert_eq!(d.placement, Placement::BulkGpu);
        assert_eq!(d.batch, 32);
        // big: 100 000 × 0.1 s / 8 / 4 GPUs + 10 s start (no pool figure: the GPU cold start) +
        // 50 s idle exit = 372.5 s at $6/h; small: 2500 + 10 + 50 = 2560 s at $1/h.
        let big = &p.bulk[1];
        assert!(
            (big.wall_hours * 3600.0 - 372.5).abs() < 1e-6,
            "{}",
            big.wall_hours
        );
        assert!((big.gpu_hours - 4.0 * big.wall_hours).abs() < 1e-12);
        assert!((big.usd - 372.5 / 3600.0 * 6.0).abs() < 1e-9);
        assert!((p.bulk[0].usd - 2560.0 / 3600.0).abs() < 1e-9);
        assert!(d.reason.contains("backlog of 100000"), "{}", d.reason);
    }

    #[test]
    fn the_backlog_is_priced_at_the_declared_bulk_batch_from_the_pools_start() {
        // A batch-64 option would be cheaper, but the workers are deployed at bulk_batch 32.
        let profile = format!(
            "{}backlog = 100000\n[bulk]\nworkload = \"queue\"\nitems = 100000\n\
             [[bulk.options]]\nname = \"big\"\ninstance = \"big\"\nbatch = 32\n\
             [[bulk.options]]\nname = \"bigger batches\"\ninstance = \"big\"\nbatch = 64\n",
            STEADY
        );
        let measured = MEASUREMENTS
            .replace(
                "gpu_cold_start_ms = 10000.0",
                "gpu_cold_start_ms = 10000.0\ngpu_pool_start_ms = 300000.0",
            )
            .replace("32 = 8.0", "32 = 8.0\n64 = 20.0");
        let p = run_with(&[api(50, true, true), queue()], &profile, &measured).unwrap();
        assert!(p.bulk[1].usd < p.bulk[0].usd);
        assert_eq!(p.decisions[1].batch, 32);
        // 100 000 × 0.1 s / 8 / 4 GPUs + 300 s pool start + 50 s idle exit.
        assert!((p.bulk[0].wall_hours * 3600.0 - 662.5).abs() < 1e-6);
    }

    /// `api` (1 GB) co-hosting `words` (its 512 MB on top) and `vectors` (one photo per event
    /// off the path, serverless) beside it.
    fn cohosting() -> Vec<Declaration> {
        let host = declaration(
            "api",
            "latency_budget_ms = 50\ncold_start_on_perceived_path = true\npinned_warm = true\ncompute = \"cpu\"\ntrigger = \"http\"\nmax_batch = 1\n[package.metadata.coldpath.cohosted.words]\nlatency_budget_ms = 100\ncold_start_on_perceived_path = true\nmax_batch = 1\nmemory_mb = 512\nenv_prefix = \"WORDS\"\n",
        );
        let mut host = host;
        host.memory_mb = 1536;
        let vectors = declaration(
            "vectors",
            "latency_budget_ms = 60000\ncold_start_on_perceived_path = false\npinned_warm = false\ncompute = \"cpu\"\ntrigger = \"eventbridge\"\nmax_batch = 1\n",
        );
        vec![host, vectors]
    }

    const COHOSTING: &str = r#"
name = "t"
description = "t"
always_on_instance = "small"
[traffic.api]
requests_per_month = 1000000
[traffic.words]
requests_per_month = 100000
[traffic.vectors]
requests_per_month = 10000
cold_starts_per_month = 100
"#;

    const COHOSTING_MEASUREMENTS: &str = r#"
[api]
source = "test"
machine = "test"
cold_start_ms = 200.0
inference_ms = 10.0
peak_rss_mib = 100.0
[words]
source = "test"
machine = "test"
estimated = ["inference_ms", "peak_rss_mib"]
cold_start_ms = 900.0
inference_ms = 30.0
peak_rss_mib = 400.0
[vectors]
source = "test"
machine = "test"
cold_start_ms = 3000.0
inference_ms = 500.0
"#;

    #[test]
    fn a_cohosted_workload_is_decided_by_its_own_budget_and_priced_as_the_memory_it_adds() {
        let p = run_with(&cohosting(), COHOSTING, COHOSTING_MEASUREMENTS).unwrap();
        let workloads: Vec<&str> = p.decisions.iter().map(|d| d.workload.as_str()).collect();
        assert_eq!(workloads, ["api", "words", "vectors"]);
        let (api, words, vectors) = (&p.decisions[0], &p.decisions[1], &p.decisions[2]);
        assert_eq!(words.placement, Placement::PinnedWarm);
        assert_eq!(words.function, "F");
        assert_eq!(words.hosted_by.as_deref(), Some("api"));
        assert!(
            words.reason.contains("co-hosted in F beside api"),
            "{}",
            words.reason
        );
        // Each keeps its own share warm; both are billed at the function's 1.5 GB.
        let month_s = 730.0 * 3600.0;
        let api_usd = month_s * 0.000004 + 1e6 * 0.01 * 1.5 * 0.000009 + 1e6 * 0.0000002;
        let words_usd = 0.5 * month_s * 0.000004 + 1e5 * 0.03 * 1.5 * 0.000009 + 1e5 * 0.0000002;
        assert!(
            (api.cost_chosen_usd - api_usd).abs() < 1e-9,
            "{}",
            api.cost_chosen_usd
        );
        assert!(
            (words.cost_chosen_usd - words_usd).abs() < 1e-9,
            "{}",
            words.cost_chosen_usd
        );
        // Its estimates flag it, and the host is flagged for sizing on one.
        assert!(
            words
                .flags
                .iter()
                .any(|f| f.contains("estimated figures (inference_ms)")),
            "{:?}",
            words.flags
        );
        assert!(
            api.flags
                .iter()
                .any(|f| f.contains("estimated peak_rss_mib of words")),
            "{:?}",
            api.flags
        );
        assert!(
            !api.flags.iter().any(|f| f.contains("together peak")),
            "{:?}",
            api.flags
        );
        // The photo's vector: serverless, priced per item from its time and memory.
        assert_eq!(vectors.placement, Placement::ServerlessOnDemand);
        let per_item = (1e4 * 0.5 + 100.0 * 3.0) * 0.00001 + 1e4 * 0.0000002;
        assert!((vectors.usd_per_1000_items.unwrap() - per_item / 1e4 * 1000.0).abs() < 1e-12);
        assert_eq!(api.usd_per_1000_items, None);
        assert!(
            render(&p).contains("vectors: 0.0055 USD per 1000 items on demand"),
            "{}",
            render(&p)
        );
    }

    #[test]
    fn a_host_whose_workloads_outgrow_its_memory_is_flagged() {
        let big = COHOSTING_MEASUREMENTS.replace("peak_rss_mib = 400.0", "peak_rss_mib = 1500.0");
        let p = run_with(&cohosting(), COHOSTING, &big).unwrap();
        assert!(
            p.decisions[0]
                .flags
                .iter()
                .any(|f| f
                    .contains("api + words together peak at 1600 MiB, over its memory_mb = 1536")),
            "{:?}",
            p.decisions[0].flags
        );
    }

    /// A pod of 1 vCPU and 2 GB at a 50% CPU target hosting `api` and `photo`.
    fn pod() -> PodDeclaration {
        PodDeclaration {
            crate_name: "coldpath-serve".to_string(),
            root: PathBuf::from("."),
            hosts: vec!["api".to_string(), "photo".to_string()],
            service: PathBuf::from("infra/pod/service.yaml"),
            dockerfile_cpu: PathBuf::from("infra/pod/Dockerfile"),
            dockerfile_gpu: PathBuf::from("infra/pod/Dockerfile.cuda"),
            vcpu: 1.0,
            memory_mb: 2048,
            gpu_instance: "small".to_string(),
            port: 8080,
            health_path: "/health".to_string(),
            ready_path: "/ready".to_string(),
            target_cpu_percent: 50,
            min_tasks: 1,
            required_env: Vec::new(),
            workload_names: Default::default(),
        }
    }

    fn photo() -> Declaration {
        declaration(
            "photo",
            "latency_budget_ms = 2000\ncold_start_on_perceived_path = true\npinned_warm = true\ncompute = \"cpu\"\ntrigger = \"s3\"\nmax_batch = 1\n",
        )
    }

    const WARM_SET: &str = r#"
name = "t"
description = "t"
always_on_instance = "small"
[traffic.api]
requests_per_month = 1000000
[traffic.photo]
requests_per_month = 100000
"#;

    fn with_pod(pod: &PodDeclaration) -> Vec<Declaration> {
        let mut ds = vec![api(50, true, true), photo()];
        for d in &mut ds {
            d.pod = Some(pod.clone());
        }
        ds
    }

    #[test]
    fn the_pod_is_priced_against_provisioned_lambda_with_its_break_even() {
        let p = run(&with_pod(&pod()), WARM_SET).unwrap();
        let c = p.pod.as_ref().expect("a pod comparison");
        let month_s = 730.0 * 3600.0;
        // Provisioned Lambda, 1 GB each: the configured concurrency, duration and requests.
        let fixed = 2.0 * month_s * 0.000004;
        let per_scale = (1e6 * 0.01 + 1e5 * 0.1) * 0.000009 + 1.1e6 * 0.0000002;
        assert!((c.lambda_usd - (fixed + per_scale)).abs() < 1e-9, "{c:?}");
        // The same figure the decisions price as always-on.
        let always_on: f64 = p.decisions.iter().map(|d| d.cost_always_on_usd).sum();
        assert!((c.lambda_usd - always_on).abs() < 1e-9);
        // One pod (1 vCPU x $0.01 + 2 GB x $0.001 an hour) and the load balancer ($0.03 an hour).
        let pod_usd = 730.0 * (0.012 + 0.03);
        assert_eq!(c.fargate_pods, 1);
        assert!((c.fargate_usd - pod_usd).abs() < 1e-9, "{c:?}");
        assert!((c.gpu_usd - 730.0 * (1.0 + 0.03)).abs() < 1e-9);
        // Load: 1e6 x 10 ms + 1e5 x 100 ms of CPU in the month.
        let load = (1e6 * 0.01 + 1e5 * 0.1) / month_s;
        let total: f64 = c.hosts.iter().map(|h| h.load_vcpu).sum();
        assert!((total - load).abs() < 1e-12);
        // Both lines are linear while one pod and one provisioned instance each suffice.
        let k = c.breakeven_scale.unwrap();
        let expected = (pod_usd - fixed) / per_scale;
        assert!((k - expected).abs() / expected < 1e-9, "{k} vs {expected}");
        assert!(load * k < 0.5, "still one pod at the break-even");
        let (month, second) = c.traffic_at(k);
        assert!((month - k * 1.1e6).abs() < 1e-6 && (second - month / month_s).abs() < 1e-9);
        // photo rides free until the two together need more than one pod's 0.5 vCPU.
        let photo = &c.hosts[1];
        assert!(photo.rides_free, "{photo:?}");
        let until = photo.rides_free_until_scale.unwrap();
        assert!((until - 0.5 / load).abs() / until < 1e-6, "{until}");
        assert_eq!(c.hosts[0].rides_free_until_scale, None);
        // One GPU instance costs more, so it breaks even later.
        assert!(c.gpu_breakeven_scale.unwrap() > k);
        let text = render(&p);
        assert!(text.contains("photo rides free"), "{text}");
        assert!(
            text.contains("the pod on Fargate costs less than provisioned Lambda above"),
            "{text}"
        );
    }

    #[test]
    fn a_host_too_busy_for_the_spare_capacity_does_not_ride_free() {
        // At 20 000x the traffic, photo's load alone needs pods of its own.
        let busy = WARM_SET.replace("= 100000\n", "= 2000000000\n");
        let p = run(&with_pod(&pod()), &busy).unwrap();
        let c = p.pod.as_ref().unwrap();
        assert!(!c.hosts[1].rides_free, "{:?}", c.hosts[1]);
        assert!(c.hosts[1].rides_free_until_scale.unwrap() < 1.0);
        assert!(c.fargate_pods > 1);
        // This traffic is far past the break-even, and the plan says which is cheaper.
        assert!(c.breakeven_scale.unwrap() < 1.0, "{c:?}");
        assert!(c.fargate_usd < c.lambda_usd, "{c:?}");
        assert!(render(&p).contains("cheaper at this traffic: the pod on Fargate"));
    }

    #[test]
    fn a_pod_without_its_prices_is_a_typed_error() {
        let start = PRICES.find("[fargate]").unwrap();
        let end = PRICES.find("[load_balancer]").unwrap();
        let no_fargate = format!("{}{}", &PRICES[..start], &PRICES[end..]);
        let measurements = Measurements::from_toml_str(MEASUREMENTS, Path::new("m.toml")).unwrap();
        let prices = Prices::from_str(&no_fargate, Path::new("p.toml")).unwrap();
        let profile = Profile::from_str(WARM_SET, Path::new("profile.toml")).unwrap();
        let declarations = with_pod(&pod());
        let err = plan(&Inputs {
            declarations: &declarations,
            measurements: &measurements,
            prices: &prices,
            profile: &profile,
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                InputError::MissingPrice {
                    table: "fargate",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_figures_are_typed_errors() {
        let unknown = declaration(
            "other",
            "latency_budget_ms = 50\ncold_start_on_perceived_path = true\npinned_warm = true\ncompute = \"cpu\"\ntrigger = \"http\"\nmax_batch = 1\n",
        );
        let err = run(&[unknown], STEADY).unwrap_err();
        assert!(
            matches!(&err, InputError::NoMeasurement { workload, .. } if workload == "other"),
            "{err}"
        );
        // A batch size the benchmark never measured is not interpolated.
        let mut q = queue();
        q.max_batch = 16;
        let err = run(&[api(50, true, true), q], STEADY).unwrap_err();
        assert!(
            err.to_string()
                .contains("no measured batch_throughput at batch 16"),
            "{err}"
        );
    }
}
