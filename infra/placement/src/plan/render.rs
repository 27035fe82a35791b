//! The plan as text: a sentence per decision, the scenario costs, the bulk options, the unit
//! costs and the pod comparison (`coldpath plan`; `--json` serialises [`super::Plan`] instead).

use std::fmt::Write as _;

use super::*;

/// The plan as text: one sentence per workload, flags, then the cost table.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "profile: {}", plan.profile);
    for d in &plan.decisions {
        let _ = writeln!(
            out,
            "  {} ({}) -> {} [batch {}]",
            d.workload, d.function, d.placement, d.batch
        );
        let _ = writeln!(out, "    {}", d.reason);
        if let Some(k) = d.usd_per_1000_items {
            let _ = writeln!(
                out,
                "    {}: {k:.4} USD per 1000 items on demand, cold starts included",
                d.workload
            );
        }
        for f in &d.flags {
            let _ = writeln!(out, "    FLAG {f}");
        }
    }
    let _ = writeln!(
        out,
        "monthly cost (USD)        chosen   always-on  serverless"
    );
    for d in &plan.decisions {
        let _ = writeln!(
            out,
            "  {:<20} {:>10.2} {:>11.2} {:>11.2}",
            d.workload, d.cost_chosen_usd, d.cost_always_on_usd, d.cost_serverless_usd
        );
    }
    let _ = writeln!(
        out,
        "  {:<20} {:>10.2} {:>11.2} {:>11.2}",
        "total", plan.total_chosen_usd, plan.total_always_on_usd, plan.total_serverless_usd
    );
    if !plan.scenarios.is_empty() {
        let _ = writeln!(out, "deployments in the profile (USD/month)");
        for s in &plan.scenarios {
            let _ = writeln!(out, "  {:>10.2}  {}", s.monthly_usd, s.name);
        }
    }
    if let Some(pod) = &plan.pod {
        render_pod(&mut out, pod);
    }
    for u in &plan.unit_costs {
        // Per thousand items: one item's cost is a fraction of a cent.
        let k = |usd: f64| usd * 1000.0;
        let _ = writeln!(
            out,
            "{} cost per 1000 items (USD), {:.0} items this month: warm | per 1000 starts | this month",
            u.workload, u.items_per_month
        );
        let _ = writeln!(
            out,
            "  Lambda CPU      {:>9.4} {:>9.4} {:>9.4}",
            k(u.lambda_item_usd),
            k(u.lambda_cold_start_usd),
            k(u.lambda_per_item_usd)
        );
        let _ = writeln!(
            out,
            "  serverless GPU  {:>9.4} {:>9.4} {:>9.4}   (one item alone on a GPU started from zero: {:.4})",
            k(u.gpu_item_usd),
            k(u.gpu_start_usd),
            k(u.serverless_gpu_per_item_usd),
            u.gpu_from_zero_usd
        );
        let _ = writeln!(
            out,
            "  always-on GPU   {:>9} {:>9} {:>9.4}",
            "-",
            "-",
            k(u.always_on_gpu_per_item_usd)
        );
        let crossover = |x: Option<f64>| {
            x.map_or_else(
                || "never (Lambda costs less per item)".to_string(),
                |n| format!("above {n:.0} items a month"),
            )
        };
        let _ = writeln!(
            out,
            "  cheapest this month: {}; cheaper than Lambda CPU: serverless GPU {}; always-on GPU {}",
            u.cheapest(),
            crossover(u.serverless_gpu_crossover_items),
            crossover(u.always_on_gpu_crossover_items)
        );
    }
    if !plan.bulk.is_empty() {
        let _ = writeln!(out, "bulk arrival options");
        for b in &plan.bulk {
            let _ = writeln!(
                out,
                "  {:>8.2} USD  {:>6.2} GPU-h  {:>6.2} h wall  {}",
                b.usd, b.gpu_hours, b.wall_hours, b.name
            );
        }
    }
    out
}

/// The pod against provisioned Lambda: this month's costs, the load, whether each further host
/// rides free, and the traffic at which the pod becomes cheaper.
fn render_pod(out: &mut String, pod: &PodComparison) {
    let names: Vec<&str> = pod.hosts.iter().map(|h| h.workload.as_str()).collect();
    let names = names.join(" + ");
    let _ = writeln!(
        out,
        "the warm set on one always-on pod ({}) against provisioned Lambda (USD/month)",
        pod.service
    );
    let per_host: Vec<String> = pod
        .hosts
        .iter()
        .map(|h| format!("{} {:.2}", h.workload, h.lambda_usd))
        .collect();
    let _ = writeln!(
        out,
        "  {:>10.2}  provisioned Lambda for {names} ({})",
        pod.lambda_usd,
        per_host.join(", ")
    );
    let _ = writeln!(
        out,
        "  {:>10.2}  pod on Fargate: {} x {} vCPU, {} GB, plus the load balancer ({:.2})",
        pod.fargate_usd, pod.fargate_pods, pod.vcpu, pod.memory_gb, pod.load_balancer_usd
    );
    let _ = writeln!(
        out,
        "  {:>10.2}  pod on GPU: {} x {}, plus the load balancer",
        pod.gpu_usd, pod.gpu_instances, pod.gpu_instance
    );
    let loads: Vec<String> = pod
        .hosts
        .iter()
        .map(|h| format!("{} {:.4}", h.workload, h.load_vcpu))
        .collect();
    let _ = writeln!(
        out,
        "  load at this traffic (vCPU): {}; one pod serves {:.2} at its {}% CPU target",
        loads.join(", "),
        pod.capacity_vcpu,
        pod.target_cpu_percent
    );
    let cheapest = if pod.fargate_usd < pod.lambda_usd {
        "the pod on Fargate"
    } else {
        "provisioned Lambda"
    };
    let _ = writeln!(out, "  cheaper at this traffic: {cheapest}");
    let traffic = |scale: f64| {
        let (month, second) = pod.traffic_at(scale);
        format!("{month:.0} requests a month ({second:.1}/s, {scale:.0}x this traffic)")
    };
    let first = pod.hosts.first().map_or("", |h| h.workload.as_str());
    for h in pod.hosts.iter().skip(1) {
        let until = h.rides_free_until_scale.map_or_else(
            || "at any traffic up to 10^9x this one".to_string(),
            |k| format!("up to {}, where it needs a further pod", traffic(k)),
        );
        if h.rides_free {
            let _ = writeln!(
                out,
                "  {w} rides free: its {load:.4} vCPU fits in the spare capacity of the pod kept for {first}, so \
                 hosting it there adds nothing, where provisioned Lambda charges {usd:.2} a month for it; it \
                 rides free {until}",
                w = h.workload,
                load = h.load_vcpu,
                usd = h.lambda_usd,
            );
        } else {
            let _ = writeln!(
                out,
                "  {w} does not ride free: at this traffic its {load:.4} vCPU needs more pods than {first} alone",
                w = h.workload,
                load = h.load_vcpu,
            );
        }
    }
    let breakeven = |scale: Option<f64>| match scale {
        Some(0.0) => "at any traffic".to_string(),
        Some(k) => format!("above {}", traffic(k)),
        None => "never up to 10^9x this traffic".to_string(),
    };
    let _ = writeln!(
        out,
        "  the pod on Fargate costs less than provisioned Lambda {}",
        breakeven(pod.breakeven_scale)
    );
    // One instance is priced: a busier month may need more, so the true break-even is later.
    let gpu = match pod.gpu_breakeven_scale {
        Some(0.0) => "at any traffic".to_string(),
        Some(k) => format!("not below {}", traffic(k)),
        None => "never up to 10^9x this traffic".to_string(),
    };
    let _ = writeln!(
        out,
        "  the pod on {} costs less than provisioned Lambda {gpu}: its GPU throughput is not measured, so one instance is priced",
        pod.gpu_instance
    );
    for f in &pod.flags {
        let _ = writeln!(out, "  FLAG {f}");
    }
}
