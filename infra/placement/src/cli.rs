//! The `coldpath` command line: argument parsing and the two commands, returning their output
//! and exit code so tests run them without a process.
//!
//! Paths default to the committed files relative to `--root` (the workspace root, `.` by
//! default, which is where `cargo run -p coldpath-placement` starts).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::check::{self, Template};
use crate::declaration;
use crate::measurements::Measurements;
use crate::plan::{self, Inputs};
use crate::prices::Prices;
use crate::profile::Profile;
use crate::stack;
use crate::workspace::Workspace;

pub const USAGE: &str = "usage:
  coldpath plan  --profile <file> [--measurements <toml|json>]... [--prices <file>] [--root <dir>] [--json]
  coldpath check [--template <file>] [--root <dir>]

plan   decides pinned warm / serverless / bulk GPU per workload and prices the options
check  verifies infra/template.yaml, the GPU worker's env and the pod (infra/pod) against the
       declarations, and the stack's alarm topics, access-log targets and log groups
";

/// Variables the GPU worker image must set; the rest of its configuration has defaults.
pub const GPU_REQUIRED_ENV: [&str; 14] = [
    "CAPTIONING_QUEUE_URL",
    "CAPTIONING_MAX_BATCH",
    "CAPTIONING_BULK_BATCH",
    "CAPTIONING_BULK_THRESHOLD",
    "CAPTIONING_IDLE_EXIT_SECS",
    "CAPTIONING_VISIBILITY_TIMEOUT_SECS",
    "CAPTIONING_WAIT_SECS",
    "CAPTIONING_MODEL_SOURCE",
    "CAPTIONING_MODEL_SHA256",
    "COLDPATH_RESULT_SINK",
    "COLDPATH_OBJECT_STORE",
    "COLDPATH_PROVIDER",
    "COLDPATH_ALLOW_CPU_FALLBACK",
    "ORT_DYLIB_PATH",
];

/// What a command printed and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

/// Runs one command line (without the program name).
pub fn run(args: &[String]) -> anyhow::Result<Outcome> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(usage_error("no command"));
    };
    let mut root = PathBuf::from(".");
    let mut profile = None;
    let mut measurements = Vec::new();
    let mut prices = None;
    let mut template = None;
    let mut json = false;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<PathBuf> {
            it.next()
                .map(PathBuf::from)
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--root" => root = value()?,
            "--profile" => profile = Some(value()?),
            "--measurements" => measurements.push(value()?),
            "--prices" => prices = Some(value()?),
            "--template" => template = Some(value()?),
            "--json" => json = true,
            "-h" | "--help" => {
                return Ok(Outcome {
                    stdout: USAGE.to_string(),
                    stderr: String::new(),
                    code: 0,
                });
            }
            other => return Ok(usage_error(&format!("unknown argument {other}"))),
        }
    }
    match command.as_str() {
        "plan" => {
            let Some(profile) = profile else {
                return Ok(usage_error("plan needs --profile"));
            };
            let prices = prices.unwrap_or_else(|| root.join("infra/placement/prices.toml"));
            run_plan(&root, &profile, &measurements, &prices, json)
        }
        "check" => {
            let template = template.unwrap_or_else(|| root.join("infra/template.yaml"));
            run_check(&root, &template)
        }
        "-h" | "--help" | "help" => Ok(Outcome {
            stdout: USAGE.to_string(),
            stderr: String::new(),
            code: 0,
        }),
        other => Ok(usage_error(&format!("unknown command {other}"))),
    }
}

fn usage_error(what: &str) -> Outcome {
    Outcome {
        stdout: String::new(),
        stderr: format!("coldpath: {what}\n{USAGE}"),
        code: 2,
    }
}

/// Reads everything the plan needs and renders it (text, or JSON with `--json`).
pub fn run_plan(
    root: &Path,
    profile: &Path,
    extra_measurements: &[PathBuf],
    prices: &Path,
    json: bool,
) -> anyhow::Result<Outcome> {
    let plan = plan_for(root, profile, extra_measurements, prices)?;
    let stdout = if json {
        serde_json::to_string_pretty(&plan).context("serialising the plan")? + "\n"
    } else {
        plan::render(&plan)
    };
    Ok(Outcome {
        stdout,
        stderr: String::new(),
        code: 0,
    })
}

/// The plan for a profile, from the committed measurements with `extra` laid over them.
pub fn plan_for(
    root: &Path,
    profile: &Path,
    extra: &[PathBuf],
    prices: &Path,
) -> anyhow::Result<plan::Plan> {
    let declarations = declaration::read_all(root)?;
    let mut measurements =
        Measurements::from_toml_file(&root.join("infra/placement/measurements.toml"))?;
    for m in extra {
        measurements.overlay(m)?;
    }
    let prices = Prices::from_file(prices)?;
    let profile = Profile::from_file(profile)?;
    Ok(plan::plan(&Inputs {
        declarations: &declarations,
        measurements: &measurements,
        prices: &prices,
        profile: &profile,
    })?)
}

/// Checks the template and the GPU worker packaging; exit 1 on any mismatch.
pub fn run_check(root: &Path, template_path: &Path) -> anyhow::Result<Outcome> {
    let workspace = Workspace::load(root)?;
    let declarations = workspace.declarations()?;
    let template = Template::from_file(template_path)?;
    let mut results = check::check_template(&template, &declarations, &workspace);

    // Every variable the template sets must be one the function reads: a misspelt name is
    // silently ignored at run time and the default applies, and one only a test reads does
    // nothing in a deployment. What it reads is its binary's committed contract, the union of
    // the lists its config readers use: a variable of coldpath-image (the image decoders'
    // paths) is read by faces and captioning, not by embeddings.
    for (result, declaration) in results.iter_mut().zip(&declarations) {
        let contract = workspace.contract(&declaration.crate_name)?;
        let unread: Vec<String> = check::function_env_names(&template, &declaration.function)
            .into_iter()
            .filter(|name| !contract.reads(name))
            .collect();
        if unread.is_empty() {
            result
                .ok
                .push("every environment variable is read by the function".to_string());
        } else {
            result.mismatches.push(format!(
                "sets environment variables the function never reads: {}",
                unread.join(", ")
            ));
        }
        // A declaration (its own or a co-hosted workload's) requiring a variable the binary does
        // not read requires nothing: the declaration or the contract is stale.
        let required = declaration.required_env.iter().chain(
            declaration
                .cohosted
                .iter()
                .flat_map(|c| c.required_env.iter().chain(c.env.iter().map(|(n, _)| n))),
        );
        let stale: Vec<&str> = required
            .filter(|name| !contract.reads(name))
            .map(String::as_str)
            .collect();
        if !stale.is_empty() {
            result.mismatches.push(format!(
                "the declaration requires {}, which the binary's contract.json does not list",
                stale.join(", ")
            ));
        }
    }

    // The rules about the stack as a whole (alarm topics, access-log targets, log groups).
    results.push(stack::check_stack(&template));

    let mut lines = Vec::new();
    let mut failed = false;
    for r in &results {
        if r.mismatches.is_empty() {
            lines.push(format!(
                "OK {} ({}): {}",
                r.function,
                r.workload,
                r.ok.join("; ")
            ));
        } else {
            failed = true;
            for m in &r.mismatches {
                lines.push(format!("MISMATCH {} ({}): {m}", r.function, r.workload));
            }
        }
    }
    let captioning = declarations.iter().find(|d| d.workload == "captioning");
    let gpu = check_gpu_worker(root, &workspace, captioning)?;
    failed |= gpu.iter().any(|l| l.starts_with("MISMATCH"));
    lines.extend(gpu);
    let text = lines.join("\n") + "\n";
    Ok(if failed {
        Outcome {
            stdout: String::new(),
            stderr: text,
            code: 1,
        }
    } else {
        Outcome {
            stdout: text,
            stderr: String::new(),
            code: 0,
        }
    })
}

/// The GPU worker image and its Batch job definitions set the variables the worker needs, and
/// only variables it reads.
fn check_gpu_worker(
    root: &Path,
    workspace: &Workspace,
    declaration: Option<&declaration::Declaration>,
) -> anyhow::Result<Vec<String>> {
    let worker = match declaration {
        Some(captioning) => workspace.contract(&captioning.crate_name)?,
        None => return Ok(Vec::new()),
    };
    let dockerfile_path = root.join("infra/gpu/Dockerfile");
    let dockerfile = std::fs::read_to_string(&dockerfile_path)
        .with_context(|| format!("reading {}", dockerfile_path.display()))?;
    let in_image = check::dockerfile_env_names(&dockerfile);
    let batch = Template::from_file(&root.join("infra/gpu/batch.yaml"))?;
    let in_jobs = check::cloudformation_env_names(&batch);

    let mut lines = Vec::new();
    let mut report = |what: &str, names: &BTreeSet<String>, required: bool| {
        let unread: Vec<&str> = names
            .iter()
            .filter(|name| !worker.reads(name))
            .map(String::as_str)
            .collect();
        let missing: Vec<&str> = if required {
            GPU_REQUIRED_ENV
                .iter()
                .copied()
                .filter(|n| !names.contains(*n))
                .collect()
        } else {
            Vec::new()
        };
        if !unread.is_empty() {
            lines.push(format!(
                "MISMATCH captioning worker ({what}): sets variables the worker never reads: {}",
                unread.join(", ")
            ));
        }
        if !missing.is_empty() {
            lines.push(format!(
                "MISMATCH captioning worker ({what}): does not set {}",
                missing.join(", ")
            ));
        }
        if unread.is_empty() && missing.is_empty() {
            lines.push(format!(
                "OK captioning worker ({what}): {} variables, all read by the worker",
                names.len()
            ));
        }
    };
    report("infra/gpu/Dockerfile", &in_image, true);
    report("infra/gpu/batch.yaml", &in_jobs, false);
    if let Some(d) = declaration {
        let mut problems = check::check_batch_jobs(&batch, d);
        problems.extend(stack::batch_log_group_problems(&batch));
        problems.extend(stack::consumer_switch_problems(&batch));
        if problems.is_empty() {
            lines.push(
                "OK captioning worker (infra/gpu/batch.yaml jobs): batch sizes, threshold, one GPU and memory as declared; logs to a retained group; \
                 the Lambda consumer switched off only by something that also runs on a schedule"
                    .to_string(),
            );
        }
        lines.extend(
            problems
                .into_iter()
                .map(|p| format!("MISMATCH captioning worker (infra/gpu/batch.yaml jobs): {p}")),
        );
    }
    Ok(lines)
}
