//! The GPU pool's AWS Batch job definitions against the captioning declaration.

use serde_norway::Value;

use super::function::declared_env_values;
use super::template::Template;
use crate::declaration::Declaration;

/// Each AWS Batch job definition in `batch` runs the captioning worker as declared: the batch
/// sizes and bulk threshold it sets equal the declaration's, it takes one GPU (the worker drives
/// one device), and it asks for at least `worker_memory_mb` of host memory. Returns one line per
/// problem.
pub fn check_batch_jobs(batch: &Template, declaration: &Declaration) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(resources) = batch.root.get("Resources").and_then(Value::as_mapping) else {
        return problems;
    };
    let wanted = declared_env_values(declaration);
    for (id, r) in resources {
        if r.get("Type").and_then(Value::as_str) != Some("AWS::Batch::JobDefinition") {
            continue;
        }
        let id = id.as_str().unwrap_or("?");
        let container = r
            .get("Properties")
            .and_then(|p| p.get("ContainerProperties"));
        let env = container
            .and_then(|c| c.get("Environment"))
            .and_then(Value::as_sequence)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (name, want) in &wanted {
            let found = env
                .iter()
                .find(|e| e.get("Name").and_then(Value::as_str) == Some(name))
                .and_then(|e| e.get("Value"));
            match found.map(|v| batch.number(v)) {
                Some(Some(x)) if x == *want as f64 => {}
                Some(x) => problems.push(format!(
                    "{id}: {name} is {x:?}, the declaration says {want}"
                )),
                None => problems.push(format!(
                    "{id}: does not set {name} (the declaration says {want})"
                )),
            }
        }
        let requirement = |ty: &str| {
            container
                .and_then(|c| c.get("ResourceRequirements"))
                .and_then(Value::as_sequence)
                .and_then(|s| {
                    s.iter()
                        .find(|q| q.get("Type").and_then(Value::as_str) == Some(ty))
                })
                .and_then(|q| q.get("Value"))
                .and_then(|v| batch.number(v))
        };
        if requirement("GPU") != Some(1.0) {
            problems.push(format!(
                "{id}: ResourceRequirements GPU is {:?}; a worker drives one GPU, so it must be 1",
                requirement("GPU")
            ));
        }
        if let Some(need) = declaration.worker_memory_mb {
            match requirement("MEMORY") {
                Some(m) if m >= f64::from(need) => {}
                m => problems.push(format!(
                    "{id}: ResourceRequirements MEMORY is {m:?} MiB, under the declared worker_memory_mb = {need}"
                )),
            }
        }
    }
    problems
}
