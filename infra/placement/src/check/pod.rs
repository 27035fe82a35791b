//! The always-on pod: `infra/pod/service.yaml` and its images against the pod's declaration
//! and the server's committed contract (the variables it reads, the routes it serves).

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;

use super::FunctionCheck;
use super::env::dockerfile_final_env;
use super::template::Template;
use crate::declaration::{Declaration, PodDeclaration};
use crate::error::DeclarationError;
use crate::workspace::BinaryContract;

/// `infra/pod/service.yaml` and both images deploy the pod as declared: the server's port in the
/// image, the task and the load balancer; the health checks on routes the server has (the
/// container on `health_path`, the target group on `ready_path`); only variables the server and
/// its engines read, and every one it needs; task memory that holds the hosted workloads at their
/// declared sizes; the Fargate size, CPU target, warm floor and GPU instance the plan priced.
pub fn check_pod(
    pod: &PodDeclaration,
    declarations: &[Declaration],
    server: Result<BinaryContract, DeclarationError>,
) -> FunctionCheck {
    let mut c = FunctionCheck {
        function: pod.service.display().to_string(),
        workload: pod.hosts.join("+"),
        ok: Vec::new(),
        mismatches: Vec::new(),
    };
    let t = match Template::from_file(&pod.path(&pod.service)) {
        Ok(t) => t,
        Err(e) => {
            c.mismatches.push(e.to_string());
            return c;
        }
    };
    // What the server reads and routes, from its committed contract.
    let server = match server {
        Ok(contract) => contract,
        Err(e) => {
            c.mismatches.push(e.to_string());
            return c;
        }
    };
    let hosted_mb = pod.hosted_memory_mb(declarations);
    let Some(resources) = t.root.get("Resources").and_then(Value::as_mapping) else {
        return c;
    };
    let of_type = |ty: &str| -> Vec<(&str, &Value)> {
        resources
            .iter()
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(ty))
            .map(|(id, r)| (id.as_str().unwrap_or("?"), r))
            .collect()
    };
    let port = f64::from(pod.port);

    let tasks = of_type("AWS::ECS::TaskDefinition");
    if tasks.is_empty() {
        c.mismatches
            .push("has no AWS::ECS::TaskDefinition".to_string());
    }
    for (id, task) in &tasks {
        let props = task.get("Properties");
        let fargate = props
            .and_then(|p| p.get("RequiresCompatibilities"))
            .and_then(Value::as_sequence)
            .is_some_and(|s| s.iter().any(|v| v.as_str() == Some("FARGATE")));
        let dockerfile = if fargate {
            &pod.dockerfile_cpu
        } else {
            &pod.dockerfile_gpu
        };
        let image_env = match std::fs::read_to_string(pod.path(dockerfile)) {
            Ok(text) => dockerfile_final_env(&text),
            Err(e) => {
                c.mismatches
                    .push(format!("{id}: cannot read {}: {e}", dockerfile.display()));
                continue;
            }
        };
        let Some(container) = props
            .and_then(|p| p.get("ContainerDefinitions"))
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
        else {
            c.mismatches
                .push(format!("{id}: has no ContainerDefinitions"));
            continue;
        };
        let mut task_env = BTreeMap::new();
        for e in container
            .get("Environment")
            .and_then(Value::as_sequence)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(name) = e.get("Name").and_then(Value::as_str) {
                let value = e
                    .get("Value")
                    .and_then(|v| t.string(v))
                    .unwrap_or("<computed>");
                task_env.insert(name.to_string(), value.to_string());
            }
        }
        let names: BTreeSet<&String> = image_env.keys().chain(task_env.keys()).collect();
        let unread: Vec<&str> = names
            .iter()
            .filter(|n| !server.reads(n))
            .map(|n| n.as_str())
            .collect();
        if !unread.is_empty() {
            c.mismatches.push(format!(
                "{id} with {}: sets variables the server never reads: {}",
                dockerfile.display(),
                unread.join(", ")
            ));
        }
        let missing: Vec<&str> = pod
            .required_env
            .iter()
            .map(String::as_str)
            .chain(["PORT"])
            .filter(|n| !names.iter().any(|m| m.as_str() == *n))
            .collect();
        if !missing.is_empty() {
            c.mismatches.push(format!(
                "{id} with {}: does not set {}, which the server needs (neither the image nor the task definition)",
                dockerfile.display(),
                missing.join(", ")
            ));
        }
        // The task's own value wins over the image's, as ECS applies them.
        let workloads = task_env
            .get("COLDPATH_SERVE_WORKLOADS")
            .or_else(|| image_env.get("COLDPATH_SERVE_WORKLOADS"));
        if let Some(value) = workloads {
            let served: Vec<&str> = value.split(',').map(str::trim).collect();
            let unserved: Vec<String> = pod
                .hosts
                .iter()
                .filter(|h| !served.contains(&pod.serve_name(h)))
                .map(|h| format!("{h} ({})", pod.serve_name(h)))
                .collect();
            if !unserved.is_empty() {
                c.mismatches.push(format!(
                    "{id} with {}: COLDPATH_SERVE_WORKLOADS is {value:?}, so the server would not host {}, which the pod declares",
                    dockerfile.display(),
                    unserved.join(", ")
                ));
            }
        }
        let env_port = task_env.get("PORT").or_else(|| image_env.get("PORT"));
        if let Some(v) = env_port.filter(|v| v.parse::<f64>().ok() != Some(port)) {
            c.mismatches.push(format!(
                "{id}: PORT is {v}, the pod's declaration says port = {}",
                pod.port
            ));
        }
        let container_port = container
            .get("PortMappings")
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .and_then(|m| m.get("ContainerPort"))
            .and_then(|v| t.number(v));
        if container_port != Some(port) {
            c.mismatches.push(format!(
                "{id}: ContainerPort is {container_port:?}, the server listens on PORT {}",
                pod.port
            ));
        }
        let command: Vec<&str> = container
            .get("HealthCheck")
            .and_then(|h| h.get("Command"))
            .and_then(Value::as_sequence)
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let wanted = format!(":{}{}", pod.port, pod.health_path);
        if !server.routes(&pod.health_path) {
            c.mismatches.push(format!(
                "health_path {} is not a route of the server ({})",
                pod.health_path,
                server.routes.join(", ")
            ));
        } else if !command.iter().any(|a| a.contains(&wanted)) {
            c.mismatches.push(format!(
                "{id}: the container HealthCheck {command:?} does not request {wanted} (the declared health_path on PORT)"
            ));
        }
        let memory = props
            .and_then(|p| p.get("Memory"))
            .and_then(|v| t.number(v));
        match memory {
            Some(m) if m >= f64::from(hosted_mb) => {}
            m => c.mismatches.push(format!(
                "{id}: Memory is {m:?} MiB, under the hosted workloads' declared memory_mb together ({hosted_mb})"
            )),
        }
        if fargate {
            let cpu = props.and_then(|p| p.get("Cpu")).and_then(|v| t.number(v));
            let want_cpu = pod.vcpu * 1024.0;
            if cpu != Some(want_cpu) || memory != Some(f64::from(pod.memory_mb)) {
                c.mismatches.push(format!(
                    "{id}: Fargate size is Cpu {cpu:?}, Memory {memory:?}; the pod's declaration (what the plan prices) says {want_cpu} and {}",
                    pod.memory_mb
                ));
            }
        } else {
            let gpus = container
                .get("ResourceRequirements")
                .and_then(Value::as_sequence)
                .and_then(|s| {
                    s.iter()
                        .find(|r| r.get("Type").and_then(Value::as_str) == Some("GPU"))
                })
                .and_then(|r| r.get("Value"))
                .and_then(|v| t.number(v));
            if gpus != Some(1.0) {
                c.mismatches.push(format!(
                    "{id}: ResourceRequirements GPU is {gpus:?}; the GPU variant runs one task per GPU"
                ));
            }
        }
    }
    if c.mismatches.is_empty() {
        c.ok.push(format!(
            "{} task definitions: PORT {}, /health checked, variables read by the server, memory for the hosts ({hosted_mb} MB)",
            tasks.len(),
            pod.port
        ));
    }

    let groups = of_type("AWS::ElasticLoadBalancingV2::TargetGroup");
    if groups.is_empty() {
        c.mismatches
            .push("has no load balancer target group".to_string());
    }
    for (id, g) in groups {
        let props = g.get("Properties");
        let path = props
            .and_then(|p| p.get("HealthCheckPath"))
            .and_then(|v| t.string(v));
        if path != Some(pod.ready_path.as_str()) || !server.routes(&pod.ready_path) {
            c.mismatches.push(format!(
                "{id}: HealthCheckPath is {path:?}; it must be the declared ready_path {}, a route of the server",
                pod.ready_path
            ));
        }
        let p = props.and_then(|p| p.get("Port")).and_then(|v| t.number(v));
        if p != Some(port) {
            c.mismatches.push(format!(
                "{id}: Port is {p:?}, the server listens on {}",
                pod.port
            ));
        }
    }
    for (id, service) in of_type("AWS::ECS::Service") {
        for lb in service
            .get("Properties")
            .and_then(|p| p.get("LoadBalancers"))
            .and_then(Value::as_sequence)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let p = lb.get("ContainerPort").and_then(|v| t.number(v));
            if p != Some(port) {
                c.mismatches.push(format!(
                    "{id}: LoadBalancers ContainerPort is {p:?}, the server listens on {}",
                    pod.port
                ));
            }
        }
    }

    let cpu_targets: Vec<Option<f64>> = of_type("AWS::ApplicationAutoScaling::ScalingPolicy")
        .into_iter()
        .filter_map(|(_, policy)| {
            let config = policy
                .get("Properties")?
                .get("TargetTrackingScalingPolicyConfiguration")?;
            let metric = config
                .get("PredefinedMetricSpecification")?
                .get("PredefinedMetricType")?
                .as_str()?;
            (metric == "ECSServiceAverageCPUUtilization")
                .then(|| config.get("TargetValue").and_then(|v| t.number(v)))
        })
        .collect();
    let want = f64::from(pod.target_cpu_percent);
    match cpu_targets.as_slice() {
        [Some(x)] if *x == want => c.ok.push(format!("scales on CPU at {x}%")),
        found => c.mismatches.push(format!(
            "needs one target-tracking policy on ECSServiceAverageCPUUtilization at the declared \
             target_cpu_percent {want}, found {found:?}"
        )),
    }
    for (id, target) in of_type("AWS::ApplicationAutoScaling::ScalableTarget") {
        let min = target
            .get("Properties")
            .and_then(|p| p.get("MinCapacity"))
            .and_then(|v| t.number(v));
        if !min.is_some_and(|m| m >= f64::from(pod.min_tasks)) {
            c.mismatches.push(format!(
                "{id}: MinCapacity is {min:?}; the pod keeps at least min_tasks = {} warm",
                pod.min_tasks
            ));
        }
    }
    for (id, lt) in of_type("AWS::EC2::LaunchTemplate") {
        let instance = lt
            .get("Properties")
            .and_then(|p| p.get("LaunchTemplateData"))
            .and_then(|d| d.get("InstanceType"))
            .and_then(|v| t.string(v));
        if instance != Some(pod.gpu_instance.as_str()) {
            c.mismatches.push(format!(
                "{id}: InstanceType is {instance:?}, the pod's declaration (what the plan prices) says {}",
                pod.gpu_instance
            ));
        }
    }
    if c.mismatches.is_empty() {
        c.ok.push(format!(
            "the load balancer checks {} on PORT {}; warm floor {}",
            pod.ready_path, pod.port, pod.min_tasks
        ));
    }
    c
}
