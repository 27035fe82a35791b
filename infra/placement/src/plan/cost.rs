//! The cost model: what each option costs a month for a workload's traffic (always on,
//! serverless on CPU or GPU, the bulk pool), the cost of one item on each, and the always-on
//! pod against provisioned Lambda.

use super::*;

pub(super) const SECONDS_PER_HOUR: f64 = 3600.0;

/// Provisioned concurrency is sized so that the average concurrency stays at this share of it:
/// the target AWS suggests for provisioned-concurrency auto scaling (0.7), which leaves room for
/// bursts above the average to be served warm. The pod's count is sized the same way, by its
/// declared CPU target.
pub const PROVISIONED_UTILIZATION_TARGET: f64 = 0.7;

/// The traffic range (multiples of the profile's) in which break-even points are looked for.
pub(super) const SCALE_MIN: f64 = 1e-6;

pub(super) const SCALE_MAX: f64 = 1e9;

/// The memory provisioned concurrency keeps for the workload, in GB: its own share of its
/// function (a host's less what its co-hosted workloads add; a co-hosted workload's addition).
pub(super) fn own_gb(declaration: &Declaration) -> f64 {
    f64::from(declaration.own_memory_mb()) / 1024.0
}

/// The memory its invocations are billed at, in GB: the whole function's.
pub(super) fn gb(declaration: &Declaration) -> f64 {
    f64::from(declaration.billed_memory_mb()) / 1024.0
}

/// Items processed in the month, the backlog included.
pub(super) fn items(traffic: &Traffic) -> f64 {
    traffic.requests_per_month * traffic.items_per_request + traffic.backlog as f64
}

/// Seconds of GPU time per item at `batch`, from the measured batch-1 time and the throughput
/// ratio at that batch size.
pub(super) fn gpu_seconds_per_item(
    declaration: &Declaration,
    measurement: &Measurement,
    batch: u32,
) -> Result<f64, InputError> {
    let (_, warm) = gpu_figures(declaration, measurement)?;
    let ratio = measurement
        .batch_ratio(batch)
        .ok_or_else(|| InputError::Invalid {
            path: measurement.source.clone().into(),
            what: format!(
                "{} has no measured batch_throughput at batch {batch}",
                declaration.workload
            ),
        })?;
    Ok(warm / 1000.0 / ratio)
}

/// Everything always on: provisioned concurrency for the whole month (CPU) or one instance per
/// GPU workload for the whole month (more if the month's work does not fit in one).
pub(super) fn always_on_cost(
    inputs: &Inputs<'_>,
    declaration: &Declaration,
    measurement: &Measurement,
    traffic: &Traffic,
) -> Result<f64, InputError> {
    let p = inputs.prices;
    let hours = inputs.profile.hours_per_month;
    match declaration.compute {
        Compute::Cpu => {
            let seconds = hours * SECONDS_PER_HOUR;
            let configured = f64::from(traffic.provisioned_concurrency)
                * own_gb(declaration)
                * seconds
                * p.lambda.provisioned_gb_second_usd;
            let duration = traffic.requests_per_month
                * (measurement.inference_ms * traffic.items_per_request / 1000.0)
                * gb(declaration);
            Ok(configured
                + duration * p.lambda.provisioned_duration_gb_second_usd
                + traffic.requests_per_month * p.lambda.request_usd)
        }
        Compute::Gpu => always_on_gpu_cost(inputs, declaration, measurement, traffic),
    }
}

/// One always-on GPU instance for the month (more if the month's work does not fit in one).
pub(super) fn always_on_gpu_cost(
    inputs: &Inputs<'_>,
    declaration: &Declaration,
    measurement: &Measurement,
    traffic: &Traffic,
) -> Result<f64, InputError> {
    let hours = inputs.profile.hours_per_month;
    let instance = inputs
        .prices
        .instance(&inputs.profile.always_on_instance, &inputs.profile.path)?;
    let busy_hours = items(traffic)
        * gpu_seconds_per_item(declaration, measurement, declaration.max_batch)?
        / SECONDS_PER_HOUR
        / f64::from(instance.gpus);
    let count = (busy_hours / hours).ceil().max(1.0);
    Ok(count * instance.hourly_usd * hours)
}

/// Everything on demand: Lambda requests and GB-seconds, cold starts included (CPU), or
/// per-second GPU time, container starts and idle exits included (GPU).
pub(super) fn serverless_cost(
    inputs: &Inputs<'_>,
    declaration: &Declaration,
    measurement: &Measurement,
    traffic: &Traffic,
) -> Result<f64, InputError> {
    let p = inputs.prices;
    match declaration.compute {
        Compute::Cpu => {
            let busy =
                traffic.requests_per_month * measurement.inference_ms * traffic.items_per_request
                    / 1000.0
                    + traffic.cold_starts_per_month * measurement.cold_start_ms / 1000.0;
            Ok(busy * gb(declaration) * p.lambda.gb_second_usd
                + traffic.requests_per_month * p.lambda.request_usd)
        }
        Compute::Gpu => serverless_gpu_cost(
            inputs,
            declaration,
            measurement,
            traffic,
            declaration.max_batch,
        ),
    }
}

pub(super) fn serverless_gpu_cost(
    inputs: &Inputs<'_>,
    declaration: &Declaration,
    measurement: &Measurement,
    traffic: &Traffic,
    batch: u32,
) -> Result<f64, InputError> {
    let (cold, _) = gpu_figures(declaration, measurement)?;
    let seconds = items(traffic) * gpu_seconds_per_item(declaration, measurement, batch)?
        + traffic.cold_starts_per_month * (cold / 1000.0 + traffic.idle_exit_s);
    Ok(seconds * inputs.prices.serverless_gpu.per_second_usd)
}

/// One item's cost on each compute for a workload measured on both CPU and GPU.
pub(super) fn unit_costs_for(
    inputs: &Inputs<'_>,
    declaration: &Declaration,
    measurement: &Measurement,
    traffic: &Traffic,
) -> Result<UnitCosts, InputError> {
    let p = inputs.prices;
    let gpu_second = p.serverless_gpu.per_second_usd;
    let (gpu_cold, gpu_warm) = gpu_figures(declaration, measurement)?;
    let n = items(traffic);
    let lambda_item_usd =
        measurement.inference_ms / 1000.0 * gb(declaration) * p.lambda.gb_second_usd
            + p.lambda.request_usd / traffic.items_per_request;
    let lambda_cold_start_usd =
        measurement.cold_start_ms / 1000.0 * gb(declaration) * p.lambda.gb_second_usd;
    let gpu_item_usd =
        gpu_seconds_per_item(declaration, measurement, declaration.max_batch)? * gpu_second;
    let gpu_start_usd = (gpu_cold / 1000.0 + traffic.idle_exit_s) * gpu_second;
    let lambda_fixed = traffic.cold_starts_per_month * lambda_cold_start_usd;
    let gpu_fixed = traffic.cold_starts_per_month * gpu_start_usd;
    let lambda_month = n * lambda_item_usd + lambda_fixed;
    let always_on = {
        let instance = p.instance(&inputs.profile.always_on_instance, &inputs.profile.path)?;
        instance.hourly_usd * inputs.profile.hours_per_month
    };
    let per_item = |usd: f64| if n > 0.0 { usd / n } else { f64::NAN };
    // Both costs are linear in the month's items: fixed starts plus a price per item. The
    // crossover is where the lines meet, when the GPU's price per item is the lower one.
    let crossover = |fixed: f64, item: f64| {
        (lambda_item_usd > item)
            .then(|| ((fixed - lambda_fixed) / (lambda_item_usd - item)).max(0.0))
    };
    Ok(UnitCosts {
        workload: declaration.workload.clone(),
        items_per_month: n,
        lambda_item_usd,
        lambda_cold_start_usd,
        gpu_item_usd,
        gpu_start_usd,
        gpu_from_zero_usd: gpu_start_usd + gpu_warm / 1000.0 * gpu_second,
        lambda_per_item_usd: per_item(lambda_month),
        serverless_gpu_per_item_usd: per_item(serverless_gpu_cost(
            inputs,
            declaration,
            measurement,
            traffic,
            declaration.max_batch,
        )?),
        always_on_gpu_per_item_usd: per_item(always_on_gpu_cost(
            inputs,
            declaration,
            measurement,
            traffic,
        )?),
        serverless_gpu_crossover_items: crossover(gpu_fixed, gpu_item_usd),
        always_on_gpu_crossover_items: crossover(always_on, 0.0),
    })
}

/// What the pod needs to know of one host: its traffic, CPU time per request, and Lambda size.
pub(super) struct HostLoad<'a> {
    d: &'a Declaration,
    t: &'a Traffic,
    /// CPU seconds one request takes (the measured warm inference × items per request).
    cpu_s: f64,
}

impl HostLoad<'_> {
    /// Average vCPUs busy at `scale` × the profile's traffic.
    fn load(&self, seconds: f64, scale: f64) -> f64 {
        scale * self.t.requests_per_month * self.cpu_s / seconds
    }

    /// Provisioned Lambda at `scale`: enough concurrency that the average stays at
    /// [`PROVISIONED_UTILIZATION_TARGET`] (never less than the profile's), its duration and
    /// requests. At the profile's traffic this is the plan's always-on cost for the workload.
    fn lambda(&self, prices: &Prices, seconds: f64, scale: f64) -> f64 {
        let concurrency = f64::from(self.t.provisioned_concurrency)
            .max((self.load(seconds, scale) / PROVISIONED_UTILIZATION_TARGET).ceil());
        let requests = scale * self.t.requests_per_month;
        concurrency * own_gb(self.d) * seconds * prices.lambda.provisioned_gb_second_usd
            + requests * self.cpu_s * gb(self.d) * prices.lambda.provisioned_duration_gb_second_usd
            + requests * prices.lambda.request_usd
    }
}

/// Pods needed for a load: the load at the declared CPU target, never fewer than `min_tasks`.
pub(super) fn pods_for(pod: &PodDeclaration, load_vcpu: f64) -> u32 {
    let capacity = pod.vcpu * f64::from(pod.target_cpu_percent) / 100.0;
    // A hair under a whole pod is a whole pod: float noise must not add one.
    let needed = (load_vcpu / capacity - 1e-9).ceil().max(0.0) as u32;
    needed.max(pod.min_tasks)
}

/// The smallest scale in [SCALE_MIN, SCALE_MAX] at which `holds` is true, found on a geometric
/// grid and refined by bisection (the costs are step functions of the scale); `Some(0.0)` when
/// it already holds at the smallest traffic.
pub(super) fn first_scale_where(holds: impl Fn(f64) -> bool) -> Option<f64> {
    if holds(SCALE_MIN) {
        return Some(0.0);
    }
    let mut below = SCALE_MIN;
    while below < SCALE_MAX {
        let above = below * 1.02;
        if holds(above) {
            let (mut lo, mut hi) = (below, above);
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if holds(mid) { hi = mid } else { lo = mid }
            }
            return Some(hi);
        }
        below = above;
    }
    None
}

/// Prices the pod the declarations carry against provisioned Lambda for its hosts.
pub(super) fn pod_comparison(
    inputs: &Inputs<'_>,
    pod: &PodDeclaration,
) -> Result<PodComparison, InputError> {
    let p = inputs.prices;
    let profile = inputs.profile;
    let fargate = p.fargate.as_ref().ok_or(InputError::MissingPrice {
        table: "fargate",
        what: "the always-on pod on Fargate",
    })?;
    let lb = p.load_balancer.as_ref().ok_or(InputError::MissingPrice {
        table: "load_balancer",
        what: "the always-on pod's load balancer",
    })?;
    let hours = profile.hours_per_month;
    let seconds = hours * SECONDS_PER_HOUR;
    let mut hosts = Vec::new();
    let mut flags = Vec::new();
    for w in &pod.hosts {
        let d = find_declaration(inputs, w)?;
        let m = inputs.measurements.get(w)?;
        let t = profile.traffic.get(w).ok_or_else(|| InputError::Invalid {
            path: profile.path.clone(),
            what: format!("no [traffic.{w}] for {w}, which the pod hosts"),
        })?;
        let estimated = m.estimated_among(&["inference_ms"]);
        if !estimated.is_empty() {
            flags.push(format!(
                "{w}: the pod's load relies on an estimated inference_ms from {}",
                m.source
            ));
        }
        hosts.push(HostLoad {
            d,
            t,
            cpu_s: m.inference_ms * t.items_per_request / 1000.0,
        });
    }
    let load = |scale: f64, without: Option<&str>| -> f64 {
        hosts
            .iter()
            .filter(|h| Some(h.d.workload.as_str()) != without)
            .map(|h| h.load(seconds, scale))
            .sum()
    };
    let lambda = |scale: f64| -> f64 { hosts.iter().map(|h| h.lambda(p, seconds, scale)).sum() };
    let lb_usd = lb.cost(hours);
    let pod_month =
        pod.vcpu * fargate.vcpu_hour_usd + f64::from(pod.memory_mb) / 1024.0 * fargate.gb_hour_usd;
    let fargate_at = |scale: f64| -> f64 {
        f64::from(pods_for(pod, load(scale, None))) * pod_month * hours + lb_usd
    };
    let instance = p.instance(&pod.gpu_instance, &profile.path)?;
    let gpu_usd = f64::from(pod.min_tasks) * instance.hourly_usd * hours + lb_usd;

    let host_rows = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let w = h.d.workload.as_str();
            let extra_pod =
                |scale: f64| pods_for(pod, load(scale, None)) > pods_for(pod, load(scale, Some(w)));
            PodHost {
                workload: w.to_string(),
                requests_per_month: h.t.requests_per_month,
                load_vcpu: h.load(seconds, 1.0),
                lambda_usd: h.lambda(p, seconds, 1.0),
                rides_free: !extra_pod(1.0),
                rides_free_until_scale: (i > 0).then(|| first_scale_where(extra_pod)).flatten(),
            }
        })
        .collect();
    Ok(PodComparison {
        service: pod.service.display().to_string(),
        vcpu: pod.vcpu,
        memory_gb: f64::from(pod.memory_mb) / 1024.0,
        target_cpu_percent: pod.target_cpu_percent,
        capacity_vcpu: pod.vcpu * f64::from(pod.target_cpu_percent) / 100.0,
        fargate_pods: pods_for(pod, load(1.0, None)),
        fargate_usd: fargate_at(1.0),
        gpu_instance: pod.gpu_instance.clone(),
        gpu_instances: pod.min_tasks,
        gpu_usd,
        load_balancer_usd: lb_usd,
        lambda_usd: lambda(1.0),
        breakeven_scale: first_scale_where(|k| fargate_at(k) <= lambda(k)),
        gpu_breakeven_scale: first_scale_where(|k| gpu_usd <= lambda(k)),
        requests_per_month: hosts.iter().map(|h| h.t.requests_per_month).sum(),
        hours_per_month: hours,
        hosts: host_rows,
        flags,
    })
}

pub(super) fn bulk_cost(
    inputs: &Inputs<'_>,
    declaration: &Declaration,
    measurement: &Measurement,
    option: &BulkOption,
    backlog: u64,
) -> Result<BulkCost, InputError> {
    let instance = inputs
        .prices
        .instance(&option.instance, &inputs.profile.path)?;
    // The instance is billed from its launch: the pool's start from zero (launch, image pull,
    // model, sessions) before the first item, and the workers' idle exit after the last.
    let (gpu_cold, _) = gpu_figures(declaration, measurement)?;
    let start_s = measurement.gpu_pool_start_ms.unwrap_or(gpu_cold) / 1000.0;
    let idle_s = inputs
        .profile
        .traffic
        .get(&declaration.workload)
        .map_or(0.0, |t| t.idle_exit_s);
    let wall_s = backlog as f64 * gpu_seconds_per_item(declaration, measurement, option.batch)?
        / f64::from(instance.gpus)
        + start_s
        + idle_s;
    let wall_hours = wall_s / SECONDS_PER_HOUR;
    Ok(BulkCost {
        name: option.name.clone(),
        instance: option.instance.clone(),
        gpus: instance.gpus,
        batch: option.batch,
        wall_hours,
        gpu_hours: wall_hours * f64::from(instance.gpus),
        usd: wall_hours * instance.hourly_usd,
    })
}
