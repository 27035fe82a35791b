//! The pod as `infra/pod/service.yaml` deploys it on Fargate: the worst case its settings allow in
//! flight (`ServeConfig::memory_bound`), plus the models it loads, fits the task's memory. The
//! settings are read from the template itself, so a change there that lets more in is caught
//! here.

use coldpath_core::MapEnv;
use coldpath_serve::{ServeConfig, TextShapes};
use coldpath_test_support::repo_root;
use serde_norway::Value;

const MIB: u64 = 1 << 20;
/// The resident memory of the loaded embeddings and faces models with the server, measured idle
/// (`make bench-serve-hostile`, functions/hosts/serve/BENCHMARKS.md).
const IDLE_BYTES: u64 = 175 * 1_000_000;
/// CLIP's text tower loaded (ViT-B-32's fp32 graph and arena), as the pod's README estimates it.
const CLIP_TEXT_TOWER_BYTES: u64 = 420 * MIB;
/// The shapes of the models the pod loads: MiniLM's 384 dimensions, CLIP ViT-B-32's text tower
/// (512 dimensions, a context of 77).
const SHAPES: TextShapes = TextShapes {
    embeddings_dims: Some(384),
    clip: Some((512, 77)),
};

fn template() -> Value {
    let text = std::fs::read_to_string(repo_root().join("infra/pod/service.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// A parameter's default, as a number.
fn default_of(template: &Value, parameter: &str) -> u64 {
    let v = &template["Parameters"][parameter]["Default"];
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{parameter} has no numeric default"))
}

/// The Fargate task's container environment; values computed by CloudFormation (`!Ref`, `!Sub`)
/// are model locations and pins, which the bound does not read: a placeholder stands in.
fn cpu_task_env(template: &Value) -> MapEnv {
    let container =
        &template["Resources"]["CpuTaskDefinition"]["Properties"]["ContainerDefinitions"][0];
    let pairs: Vec<(String, String)> = container["Environment"]
        .as_sequence()
        .expect("the task's Environment list")
        .iter()
        .map(|e| {
            let name = e["Name"].as_str().expect("Name").to_string();
            let value = match &e["Value"] {
                Value::String(s) => s.clone(),
                _ if name.ends_with("_SHA256") => format!("textual/model.onnx={}", "0".repeat(64)),
                _ => "s3://computed/by-cloudformation".to_string(),
            };
            (name, value)
        })
        .collect();
    MapEnv::new(pairs)
}

#[test]
fn the_pods_worst_case_in_flight_fits_its_fargate_task() {
    let template = template();
    let config = ServeConfig::from_env(&cpu_task_env(&template)).unwrap();
    assert_eq!(config.workloads(), ["embeddings", "faces", "clip"]);
    // One worker thread a vCPU (the server's runtime), which bounds the JSON trees and
    // tokenizer working sets held at once.
    let workers = usize::try_from(default_of(&template, "CpuTaskCpu") / 1024).unwrap();
    let task = default_of(&template, "CpuTaskMemory") * MIB;
    let in_flight = config.memory_bound(&SHAPES, workers);
    let worst = in_flight + IDLE_BYTES + CLIP_TEXT_TOWER_BYTES;
    assert!(
        worst <= task,
        "the pod's worst case is {} MiB ({} MiB in flight, models {} MiB) against its task's {} MiB",
        worst / MIB,
        in_flight / MIB,
        (IDLE_BYTES + CLIP_TEXT_TOWER_BYTES) / MIB,
        task / MIB
    );
    eprintln!(
        "pod worst case {} MiB of {} MiB ({} MiB in flight)",
        worst / MIB,
        task / MIB,
        in_flight / MIB
    );
}
