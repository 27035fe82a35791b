//! Workload declarations: what each function crate says about itself in
//! `[package.metadata.coldpath]` of its own `Cargo.toml`.
//!
//! The declaration is the product's intent (a latency budget, whether a cold start lands on a
//! path somebody waits on, where it should run); the measured figures live apart
//! (`measurements`), so `plan` can flag a declaration the figures contradict. The host crates and
//! their tables come from `cargo metadata` ([`crate::workspace`]): every crate under
//! `functions/hosts/` declares a function (`workload = ...`) or the always-on pod (`[...pod]`).

use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::error::DeclarationError;

/// A serverless GPU container (image pull, CUDA context, session build) does not start in less
/// than this; a GPU workload behind a synchronous trigger needs a budget at least this large
/// or must be pinned warm. Ten seconds is the low end of what serverless GPU platforms quote
/// for a cached image, so the rule errs towards allowing.
pub const SERVERLESS_GPU_COLD_START_FLOOR_MS: u64 = 10_000;

/// Where inference runs when the workload is not on Lambda's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compute {
    Cpu,
    Gpu,
}

/// What starts an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A synchronous request (Function URL or HTTP API): the caller waits.
    Http,
    /// An S3 `ObjectCreated` notification: asynchronous, retried by Lambda.
    S3,
    /// An SQS event source mapping: batches, partial failures, a dead-letter queue.
    Sqs,
    /// An EventBridge rule whose target is the function: asynchronous invokes (S3's `Object
    /// Created` events from a bucket with EventBridge enabled), with the rule's retry policy
    /// and dead-letter queue, and the function's own on-failure queue.
    EventBridge,
}

impl fmt::Display for Compute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compute::Cpu => "cpu",
            Compute::Gpu => "gpu",
        })
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Http => "http",
            Trigger::S3 => "s3",
            Trigger::Sqs => "sqs",
            Trigger::EventBridge => "eventbridge",
        })
    }
}

/// One workload's declaration, checked for internal consistency.
#[derive(Debug, Clone, PartialEq)]
pub struct Declaration {
    /// The package name (`coldpath-embeddings`), used in every message.
    pub crate_name: String,
    /// The short workload name (`embeddings`), the key in measurements and profiles.
    pub workload: String,
    /// The function's logical id in `infra/template.yaml`.
    pub function: String,
    /// The binary, whose zip is `target/lambda/<binary>.zip` (`binary`; the workload's name
    /// by default: `clip-vision` runs the `clip` binary).
    pub binary: String,
    /// The prefix of the variables the function's own engine reads (`env_prefix`; the
    /// binary's name in capitals by default): `<PREFIX>_MAX_BATCH` and the `<PREFIX>*_SOURCE`
    /// a model is fetched from.
    pub env_prefix: String,
    /// The most a user may wait for one result, cold start included when it is on the path.
    pub latency_budget_ms: u64,
    /// Whether a cold start would be felt by somebody waiting.
    pub cold_start_on_perceived_path: bool,
    /// Whether the workload is kept initialised (provisioned concurrency or an always-on pod).
    pub pinned_warm: bool,
    pub compute: Compute,
    pub trigger: Trigger,
    /// Items per invocation in steady state (texts per request, photos per event, SQS batch).
    pub max_batch: u32,
    /// Items per inference batch in bulk mode; only workloads that can drain a backlog have it.
    pub bulk_batch: Option<u32>,
    /// Queue backlog (messages) above which bulk mode is chosen.
    pub bulk_threshold: Option<u64>,
    pub memory_mb: u32,
    pub timeout_s: u32,
    /// Variables the deployed function cannot start without (`required_env`); `coldpath check`
    /// fails a template that leaves one out, since the function would only find out at init.
    pub required_env: Vec<String>,
    /// Size of the model bundle on disk (`model_mb`), for the storage a sandbox needs when it
    /// fetches the model into `/tmp`.
    pub model_mb: Option<u32>,
    /// Size of the optimised graphs ONNX Runtime writes to the cache (`optimized_graph_mb`);
    /// an int8 model dequantised at optimisation grows (all-MiniLM: 23 MB to 90 MB).
    pub optimized_graph_mb: Option<u32>,
    /// Host memory one GPU worker needs at `bulk_batch` (`worker_memory_mb`), which the Batch
    /// job definitions must request.
    pub worker_memory_mb: Option<u32>,
    /// Workloads the function also serves, each with its own latency budget and the memory
    /// it adds (`[package.metadata.coldpath.cohosted.<workload>]`): the CLIP text tower inside
    /// the embeddings function.
    pub cohosted: Vec<CohostedDeclaration>,
    /// Set only on the declaration the plan derives for a co-hosted workload
    /// ([`CohostedDeclaration::as_declaration`]): the function that hosts it.
    pub hosted_by: Option<HostedBy>,
    /// The always-on pod that can host this workload instead of provisioned Lambda, when the
    /// pod's declaration lists it (set by [`read_all`]; `None` from a manifest alone).
    pub pod: Option<PodDeclaration>,
}

/// The function a co-hosted workload runs inside.
#[derive(Debug, Clone, PartialEq)]
pub struct HostedBy {
    /// The host's workload (`embeddings`).
    pub workload: String,
    /// The host function's whole `memory_mb`, at which every invocation is billed.
    pub memory_mb: u32,
}

/// A workload served by another workload's function (and perhaps by the pod), declared in the
/// host crate's `[package.metadata.coldpath.cohosted.<workload>]`: it has its own latency budget
/// and perceived path, and adds its memory, its variables and its model's storage to the host's.
/// It shares the host's warmth: a co-hosted workload whose cold start is on the perceived path
/// needs a pinned-warm host.
#[derive(Debug, Clone, PartialEq)]
pub struct CohostedDeclaration {
    /// The host's package name, used in every message.
    pub crate_name: String,
    /// The workload's name (the table's key), the key in measurements and profiles.
    pub workload: String,
    pub latency_budget_ms: u64,
    pub cold_start_on_perceived_path: bool,
    /// Items per request.
    pub max_batch: u32,
    /// The memory it adds to the host function (`memory_mb`): the host's own share is the
    /// host's `memory_mb` less every co-hosted workload's.
    pub memory_mb: u32,
    /// Variables the host must be given for it (its model's source and pins, the switch).
    pub required_env: Vec<String>,
    /// Variables whose value the host must be given exactly (`env = { EMBEDDINGS_CLIP = "true" }`):
    /// the switch that makes the host load it.
    pub env: Vec<(String, String)>,
    /// The prefix of its engine's variables (`CLIP`): its `<PREFIX>*_SOURCE` is its model.
    pub env_prefix: String,
    /// Its model on disk, fetched into the host's `/tmp` when its source is remote.
    pub model_mb: Option<u32>,
    /// Its optimised graphs, written to the host's graph cache.
    pub optimized_graph_mb: Option<u32>,
}

impl CohostedDeclaration {
    /// Parses `[package.metadata.coldpath.cohosted.<workload>]` of the crate `crate_name`.
    pub fn from_table(
        crate_name: &str,
        workload: &str,
        table: &Table,
    ) -> Result<Self, DeclarationError> {
        let section = format!("package.metadata.coldpath.cohosted.{workload}");
        let fields = Fields {
            crate_name,
            section: &section,
            table,
        };
        let mut env = Vec::new();
        if let Some(v) = table.get("env") {
            let t = v.as_table().ok_or_else(|| {
                fields.invalid(
                    "env",
                    "must be a table of variable = \"value\"",
                    &v.to_string(),
                )
            })?;
            for (k, v) in t {
                let value = v.as_str().ok_or_else(|| {
                    fields.invalid("env", "must map each variable to a string", &v.to_string())
                })?;
                env.push((k.clone(), value.to_string()));
            }
        }
        let c = CohostedDeclaration {
            crate_name: crate_name.to_string(),
            workload: workload.to_string(),
            latency_budget_ms: fields.uint("latency_budget_ms")?,
            cold_start_on_perceived_path: fields.boolean("cold_start_on_perceived_path")?,
            max_batch: fields.u32("max_batch")?,
            memory_mb: fields.u32("memory_mb")?,
            required_env: fields.optional_strings("required_env")?,
            env,
            env_prefix: fields.string("env_prefix")?,
            model_mb: fields.optional_u32("model_mb")?,
            optimized_graph_mb: fields.optional_u32("optimized_graph_mb")?,
        };
        if c.memory_mb == 0 {
            return Err(fields.invalid(
                "memory_mb",
                "must be the memory it adds to its host, at least 1",
                "0",
            ));
        }
        if c.max_batch == 0 {
            return Err(fields.invalid("max_batch", "must be at least 1", "0"));
        }
        Ok(c)
    }

    /// The declaration the plan decides and prices it by: the host's function, warmth, compute
    /// and trigger, its own budget, path and memory share, billed at the host's whole memory.
    pub fn as_declaration(&self, host: &Declaration) -> Declaration {
        Declaration {
            // Messages about it name the host crate and the workload.
            crate_name: format!("{} ({})", self.crate_name, self.workload),
            workload: self.workload.clone(),
            function: host.function.clone(),
            binary: host.binary.clone(),
            env_prefix: self.env_prefix.clone(),
            latency_budget_ms: self.latency_budget_ms,
            cold_start_on_perceived_path: self.cold_start_on_perceived_path,
            pinned_warm: host.pinned_warm,
            compute: host.compute,
            trigger: host.trigger,
            max_batch: self.max_batch,
            bulk_batch: None,
            bulk_threshold: None,
            memory_mb: self.memory_mb,
            timeout_s: host.timeout_s,
            required_env: self.required_env.clone(),
            model_mb: self.model_mb,
            optimized_graph_mb: self.optimized_graph_mb,
            worker_memory_mb: None,
            cohosted: Vec::new(),
            hosted_by: Some(HostedBy {
                workload: host.workload.clone(),
                memory_mb: host.memory_mb,
            }),
            pod: None,
        }
    }
}

/// The always-on pod (`coldpath-serve`): which workloads it hosts and how it is sized and
/// served, as `infra/pod/service.yaml` must deploy it and as `coldpath plan` prices it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodDeclaration {
    /// The package name (`coldpath-serve`), used in every message.
    pub crate_name: String,
    /// The workspace root the paths below are relative to.
    pub root: PathBuf,
    /// The hosted workloads, the one the pod is kept for first (`["embeddings", "faces"]`).
    pub hosts: Vec<String>,
    /// The CloudFormation template that deploys the pod.
    pub service: PathBuf,
    /// The image of the CPU variant (Fargate) and of the GPU variant (EC2 GPU capacity).
    pub dockerfile_cpu: PathBuf,
    pub dockerfile_gpu: PathBuf,
    /// Fargate task size of the CPU variant.
    pub vcpu: f64,
    pub memory_mb: u32,
    /// The instance type of the GPU variant, one task per instance.
    pub gpu_instance: String,
    /// What the server listens on (`PORT`).
    pub port: u16,
    /// The liveness route (container health check) and the readiness route (load balancer).
    pub health_path: String,
    pub ready_path: String,
    /// The Fargate service's target tracking on average CPU; the plan sizes the pod count by it.
    pub target_cpu_percent: u32,
    /// Tasks that always run: the pod is warm, never scaled to zero.
    pub min_tasks: u32,
    /// Variables the server cannot start without, set by the image or the task definition.
    pub required_env: Vec<String>,
    /// Each host's name in the server's `COLDPATH_SERVE_WORKLOADS` where it is not the
    /// workload's own (`workload_names = { clip-text = "clip" }`).
    pub workload_names: std::collections::BTreeMap<String, String>,
}

impl PodDeclaration {
    /// Parses the pod's `Cargo.toml` text; `path` is only used in messages and `root` is where
    /// the declared paths start.
    pub fn from_manifest_str(
        text: &str,
        path: &Path,
        root: &Path,
    ) -> Result<Self, DeclarationError> {
        let (crate_name, table) = metadata_table(text, path, &["coldpath", "pod"])?;
        Self::from_table(&crate_name, &table, root)
    }

    /// Parses the pod's `[package.metadata.coldpath.pod]` table of the crate `crate_name`;
    /// `root` is where the declared paths start.
    pub fn from_table(
        crate_name: &str,
        table: &Table,
        root: &Path,
    ) -> Result<Self, DeclarationError> {
        let crate_name = crate_name.to_string();
        let fields = Fields {
            crate_name: &crate_name,
            section: "package.metadata.coldpath.pod",
            table,
        };
        let port = fields.u32("port")?;
        let pod = PodDeclaration {
            root: root.to_path_buf(),
            hosts: fields.optional_strings("hosts")?,
            service: PathBuf::from(fields.string("service")?),
            dockerfile_cpu: PathBuf::from(fields.string("dockerfile_cpu")?),
            dockerfile_gpu: PathBuf::from(fields.string("dockerfile_gpu")?),
            vcpu: fields.number("vcpu")?,
            memory_mb: fields.u32("memory_mb")?,
            gpu_instance: fields.string("gpu_instance")?,
            port: u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
                fields.invalid("port", "must be a port from 1 to 65535", &port.to_string())
            })?,
            health_path: fields.string("health_path")?,
            ready_path: fields.string("ready_path")?,
            target_cpu_percent: fields.u32("target_cpu_percent")?,
            min_tasks: fields.u32("min_tasks")?,
            required_env: fields.optional_strings("required_env")?,
            workload_names: match table.get("workload_names") {
                None => Default::default(),
                Some(v) => v
                    .as_table()
                    .and_then(|t| {
                        t.iter()
                            .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect::<Option<_>>()
                    })
                    .ok_or_else(|| {
                        fields.invalid(
                            "workload_names",
                            "must map hosts to the server's workload names (strings)",
                            &v.to_string(),
                        )
                    })?,
            },
            crate_name: crate_name.clone(),
        };
        let invalid =
            |field, expected: &str, found: String| fields.invalid(field, expected, &found);
        if pod.hosts.is_empty() {
            return Err(invalid(
                "hosts",
                "must name at least one workload",
                "[]".to_string(),
            ));
        }
        if !(pod.vcpu.is_finite() && pod.vcpu > 0.0) {
            return Err(invalid(
                "vcpu",
                "must be a positive number",
                pod.vcpu.to_string(),
            ));
        }
        if !(1..=100).contains(&pod.target_cpu_percent) {
            return Err(invalid(
                "target_cpu_percent",
                "must be between 1 and 100",
                pod.target_cpu_percent.to_string(),
            ));
        }
        if pod.min_tasks == 0 {
            return Err(invalid(
                "min_tasks",
                "must be at least 1 (the pod keeps the warm set warm)",
                "0".to_string(),
            ));
        }
        if let Some(name) = pod.workload_names.keys().find(|k| !pod.hosts.contains(k)) {
            return Err(invalid(
                "workload_names",
                "must name only hosts of the pod",
                name.clone(),
            ));
        }
        for (field, p) in [
            ("health_path", &pod.health_path),
            ("ready_path", &pod.ready_path),
        ] {
            if !p.starts_with('/') {
                return Err(invalid(field, "must be a path starting with /", p.clone()));
            }
        }
        Ok(pod)
    }

    /// Checks the pod against the declarations of the workloads it hosts: each is declared (a
    /// function's workload or one co-hosted in a function) and pinned warm (the pod is a home
    /// for the warm set only), and the task's memory holds them all at their declared sizes.
    pub(crate) fn validate_hosts(
        &self,
        declarations: &[Declaration],
    ) -> Result<(), DeclarationError> {
        let contradiction = |field, reason: String| DeclarationError::Contradiction {
            crate_name: self.crate_name.clone(),
            field,
            reason,
        };
        let workloads: Vec<Declaration> = declarations
            .iter()
            .flat_map(Declaration::workloads)
            .collect();
        for host in &self.hosts {
            let Some(d) = workloads.iter().find(|d| &d.workload == host) else {
                return Err(contradiction(
                    "hosts",
                    format!("{host} is not a declared workload"),
                ));
            };
            if !d.pinned_warm {
                return Err(contradiction(
                    "hosts",
                    format!(
                        "{host} is declared pinned_warm = false; the always-on pod hosts only the warm set"
                    ),
                ));
            }
        }
        let memory = self.hosted_memory_mb(declarations);
        if self.memory_mb < memory {
            return Err(contradiction(
                "memory_mb",
                format!(
                    "{} MB cannot hold the hosted workloads' declared memory_mb together ({memory} MB)",
                    self.memory_mb
                ),
            ));
        }
        Ok(())
    }

    /// The memory the hosted workloads need together: each function's own share (its
    /// `memory_mb` less what its co-hosted workloads add) and each co-hosted workload's
    /// `memory_mb`, so a workload co-hosted in a function and in the pod is counted once.
    pub fn hosted_memory_mb(&self, declarations: &[Declaration]) -> u32 {
        declarations
            .iter()
            .flat_map(Declaration::workloads)
            .filter(|d| self.hosts.contains(&d.workload))
            .map(|d| d.own_memory_mb())
            .sum()
    }

    /// The name the server knows `host` by in `COLDPATH_SERVE_WORKLOADS`.
    pub fn serve_name<'a>(&'a self, host: &'a str) -> &'a str {
        self.workload_names.get(host).map_or(host, String::as_str)
    }

    /// A declared path under the workspace root.
    pub fn path(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }
}

/// A manifest's text; a failure to read it names the file.
pub(crate) fn read_manifest_text(path: &Path) -> Result<String, DeclarationError> {
    std::fs::read_to_string(path).map_err(|e| DeclarationError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A `Cargo.toml` text as a TOML table; `path` is only used in messages.
pub(crate) fn parse_manifest(text: &str, path: &Path) -> Result<Table, DeclarationError> {
    text.parse()
        .map_err(|e: toml::de::Error| DeclarationError::Parse {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })
}

/// The crate's name and its `[package.metadata.<keys>]` table, from a `Cargo.toml` text; `path`
/// is only used in messages. A manifest without that table is [`DeclarationError::Missing`].
fn metadata_table(
    text: &str,
    path: &Path,
    keys: &[&str],
) -> Result<(String, Table), DeclarationError> {
    let doc = parse_manifest(text, path)?;
    let package = doc.get("package");
    let crate_name = package
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| DeclarationError::Parse {
            path: path.to_path_buf(),
            reason: "no [package] name".to_string(),
        })?
        .to_string();
    let mut table = package.and_then(|p| p.get("metadata"));
    for key in keys {
        table = table.and_then(|t| t.get(*key));
    }
    let table =
        table
            .and_then(Value::as_table)
            .cloned()
            .ok_or_else(|| DeclarationError::Missing {
                crate_name: crate_name.clone(),
                path: path.to_path_buf(),
            })?;
    Ok((crate_name, table))
}

impl Declaration {
    /// Reads the declaration from one crate's `Cargo.toml`.
    pub fn from_manifest(path: &Path) -> Result<Self, DeclarationError> {
        Self::from_manifest_str(&read_manifest_text(path)?, path)
    }

    /// Parses a `Cargo.toml` text; `path` is only used in messages.
    pub fn from_manifest_str(text: &str, path: &Path) -> Result<Self, DeclarationError> {
        let (crate_name, section) = metadata_table(text, path, &["coldpath"])?;
        Self::from_table(crate_name, &section)
    }

    /// Parses the `[package.metadata.coldpath]` table of the crate `crate_name`.
    pub fn from_table(crate_name: String, section: &Table) -> Result<Self, DeclarationError> {
        let fields = Fields {
            crate_name: &crate_name,
            section: "package.metadata.coldpath",
            table: section,
        };
        let workload = fields.string("workload")?;
        let binary = match section.contains_key("binary") {
            true => fields.string("binary")?,
            false => workload.clone(),
        };
        let env_prefix = match section.contains_key("env_prefix") {
            true => fields.string("env_prefix")?,
            false => binary.to_uppercase().replace('-', "_"),
        };
        let mut cohosted = Vec::new();
        if let Some(v) = section.get("cohosted") {
            let t = v.as_table().ok_or_else(|| {
                fields.invalid(
                    "cohosted",
                    "must be a table of workloads ([package.metadata.coldpath.cohosted.<workload>])",
                    &v.to_string(),
                )
            })?;
            for (name, table) in t {
                let table = table.as_table().ok_or_else(|| {
                    fields.invalid(
                        "cohosted",
                        "must hold one table per workload",
                        &table.to_string(),
                    )
                })?;
                cohosted.push(CohostedDeclaration::from_table(&crate_name, name, table)?);
            }
        }
        let declaration = Declaration {
            workload,
            binary,
            env_prefix,
            cohosted,
            hosted_by: None,
            function: fields.string("function")?,
            latency_budget_ms: fields.uint("latency_budget_ms")?,
            cold_start_on_perceived_path: fields.boolean("cold_start_on_perceived_path")?,
            pinned_warm: fields.boolean("pinned_warm")?,
            compute: match fields.string("compute")?.as_str() {
                "cpu" => Compute::Cpu,
                "gpu" => Compute::Gpu,
                other => {
                    return Err(fields.invalid("compute", "must be \"cpu\" or \"gpu\"", other));
                }
            },
            trigger: match fields.string("trigger")?.as_str() {
                "http" => Trigger::Http,
                "s3" => Trigger::S3,
                "sqs" => Trigger::Sqs,
                "eventbridge" => Trigger::EventBridge,
                other => {
                    return Err(fields.invalid(
                        "trigger",
                        "must be \"http\", \"s3\", \"sqs\" or \"eventbridge\"",
                        other,
                    ));
                }
            },
            max_batch: fields.u32("max_batch")?,
            bulk_batch: fields.optional_u32("bulk_batch")?,
            bulk_threshold: fields.optional_uint("bulk_threshold")?,
            memory_mb: fields.u32("memory_mb")?,
            timeout_s: fields.u32("timeout_s")?,
            required_env: fields.optional_strings("required_env")?,
            model_mb: fields.optional_u32("model_mb")?,
            optimized_graph_mb: fields.optional_u32("optimized_graph_mb")?,
            worker_memory_mb: fields.optional_u32("worker_memory_mb")?,
            pod: None,
            crate_name,
        };
        declaration.validate()?;
        Ok(declaration)
    }

    /// Rejects declarations that cannot all be true at once, and values Lambda would refuse.
    fn validate(&self) -> Result<(), DeclarationError> {
        let contradiction = |field, reason: String| DeclarationError::Contradiction {
            crate_name: self.crate_name.clone(),
            field,
            reason,
        };
        if self.cold_start_on_perceived_path && !self.pinned_warm {
            return Err(contradiction(
                "pinned_warm",
                "false, but cold_start_on_perceived_path = true: a cold start somebody waits on \
                 must be kept off the path by keeping the workload warm"
                    .to_string(),
            ));
        }
        if self.compute == Compute::Gpu
            && self.trigger == Trigger::Http
            && !self.pinned_warm
            && self.latency_budget_ms < SERVERLESS_GPU_COLD_START_FLOOR_MS
        {
            return Err(contradiction(
                "latency_budget_ms",
                format!(
                    "{} ms cannot cover a serverless GPU cold start (at least {} ms) behind an http \
                     trigger; pin it warm or raise the budget",
                    self.latency_budget_ms, SERVERLESS_GPU_COLD_START_FLOOR_MS
                ),
            ));
        }
        if u64::from(self.timeout_s) * 1000 < self.latency_budget_ms
            && self.trigger == Trigger::Http
        {
            return Err(contradiction(
                "timeout_s",
                format!(
                    "{} s is shorter than the latency budget of {} ms; the function would be cut \
                     off before the budget runs out",
                    self.timeout_s, self.latency_budget_ms
                ),
            ));
        }
        match (self.bulk_batch, self.bulk_threshold) {
            (Some(bulk), _) if bulk < self.max_batch => {
                return Err(contradiction(
                    "bulk_batch",
                    format!("{bulk} is smaller than max_batch = {}", self.max_batch),
                ));
            }
            (Some(_), None) => {
                return Err(contradiction(
                    "bulk_threshold",
                    "missing while bulk_batch is set: bulk mode needs a backlog to start at"
                        .to_string(),
                ));
            }
            (None, Some(_)) => {
                return Err(contradiction(
                    "bulk_batch",
                    "missing while bulk_threshold is set".to_string(),
                ));
            }
            _ => {}
        }
        let fields = Fields {
            crate_name: &self.crate_name,
            section: "package.metadata.coldpath",
            table: &Table::new(),
        };
        if !(128..=10_240).contains(&self.memory_mb) {
            return Err(fields.invalid(
                "memory_mb",
                "must be between 128 and 10240 (Lambda's limits)",
                &self.memory_mb.to_string(),
            ));
        }
        if !(1..=900).contains(&self.timeout_s) {
            return Err(fields.invalid(
                "timeout_s",
                "must be between 1 and 900 (Lambda's limits)",
                &self.timeout_s.to_string(),
            ));
        }
        if self.max_batch == 0 {
            return Err(fields.invalid("max_batch", "must be at least 1", "0"));
        }
        self.validate_cohosted()
    }

    /// A co-hosted workload shares its host's warmth and memory: one whose cold start is on
    /// the perceived path needs a pinned-warm host, and the host keeps at least Lambda's
    /// smallest size (128 MB) for itself.
    fn validate_cohosted(&self) -> Result<(), DeclarationError> {
        let contradiction = |field, reason: String| DeclarationError::Contradiction {
            crate_name: self.crate_name.clone(),
            field,
            reason,
        };
        for c in &self.cohosted {
            if c.workload == self.workload {
                return Err(contradiction(
                    "cohosted",
                    format!("{} co-hosts a workload of its own name", self.workload),
                ));
            }
            if c.cold_start_on_perceived_path && !self.pinned_warm {
                return Err(contradiction(
                    "cohosted",
                    format!(
                        "{}'s cold start is on the perceived path, but its host {} is declared \
                         pinned_warm = false: a co-hosted workload is only as warm as its host",
                        c.workload, self.workload
                    ),
                ));
            }
        }
        let added: u32 = self.cohosted.iter().map(|c| c.memory_mb).sum();
        if self.memory_mb < added + 128 {
            return Err(contradiction(
                "memory_mb",
                format!(
                    "{} MB leaves {} its own share of less than 128 MB once its co-hosted \
                     workloads take their {added} MB",
                    self.memory_mb, self.workload
                ),
            ));
        }
        Ok(())
    }

    /// The memory the workload holds in its function: a host's own share (its `memory_mb`
    /// less its co-hosted workloads'), a co-hosted workload's `memory_mb`. Provisioned
    /// concurrency reserves this much for it.
    pub fn own_memory_mb(&self) -> u32 {
        match self.hosted_by {
            Some(_) => self.memory_mb,
            None => self.memory_mb - self.cohosted.iter().map(|c| c.memory_mb).sum::<u32>(),
        }
    }

    /// The memory each invocation is billed at: the whole function's.
    pub fn billed_memory_mb(&self) -> u32 {
        self.hosted_by
            .as_ref()
            .map_or(self.memory_mb, |h| h.memory_mb)
    }

    /// The workloads this function serves: its own and then each co-hosted one, as the plan
    /// decides them.
    pub fn workloads(&self) -> Vec<Declaration> {
        let mut out = vec![self.clone()];
        out.extend(self.cohosted.iter().map(|c| {
            let mut d = c.as_declaration(self);
            d.pod = self.pod.clone().filter(|p| p.hosts.contains(&c.workload));
            d
        }));
        out
    }
}

/// Reads the declarations of every host crate of the workspace at `root` (found by `cargo
/// metadata`, [`crate::workspace`]), and gives each workload the always-on pod declares it hosts.
/// A tree without the pod's crate has no pod; a pod whose declaration is broken, or contradicts
/// the workloads', is an error.
pub fn read_all(root: &Path) -> Result<Vec<Declaration>, DeclarationError> {
    crate::workspace::Workspace::load(root)?.declarations()
}

/// The functions' declarations, the strictest latency budget first (then by workload), with the
/// pod given to each workload it hosts after checking it against them.
pub(crate) fn with_pod(
    mut declarations: Vec<Declaration>,
    pod: Option<PodDeclaration>,
) -> Result<Vec<Declaration>, DeclarationError> {
    declarations.sort_by(|a, b| {
        (a.latency_budget_ms, &a.workload).cmp(&(b.latency_budget_ms, &b.workload))
    });
    if let Some(pod) = pod {
        pod.validate_hosts(&declarations)?;
        for declaration in &mut declarations {
            if pod.hosts.contains(&declaration.workload) {
                declaration.pod = Some(pod.clone());
            }
        }
    }
    Ok(declarations)
}

/// The pod the declarations carry, if any (every hosted workload carries the same one).
pub fn pod_of(declarations: &[Declaration]) -> Option<&PodDeclaration> {
    declarations.iter().find_map(|d| d.pod.as_ref())
}

/// Typed access to the fields of one `[package.metadata.coldpath]` table.
struct Fields<'a> {
    crate_name: &'a str,
    /// The table the fields are read from, for messages.
    section: &'a str,
    table: &'a Table,
}

impl Fields<'_> {
    fn get(&self, field: &'static str) -> Result<&Value, DeclarationError> {
        self.table
            .get(field)
            .ok_or_else(|| DeclarationError::MissingField {
                crate_name: self.crate_name.to_string(),
                section: self.section.to_string(),
                field,
            })
    }

    fn invalid(&self, field: &'static str, expected: &str, found: &str) -> DeclarationError {
        DeclarationError::Invalid {
            crate_name: self.crate_name.to_string(),
            field,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    fn string(&self, field: &'static str) -> Result<String, DeclarationError> {
        let v = self.get(field)?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.invalid(field, "must be a string", &v.to_string()))
    }

    fn boolean(&self, field: &'static str) -> Result<bool, DeclarationError> {
        let v = self.get(field)?;
        v.as_bool()
            .ok_or_else(|| self.invalid(field, "must be true or false", &v.to_string()))
    }

    fn uint(&self, field: &'static str) -> Result<u64, DeclarationError> {
        let v = self.get(field)?;
        v.as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.invalid(field, "must be a non-negative integer", &v.to_string()))
    }

    fn u32(&self, field: &'static str) -> Result<u32, DeclarationError> {
        let v = self.get(field)?;
        v.as_integer()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                self.invalid(
                    field,
                    "must be a non-negative 32-bit integer",
                    &v.to_string(),
                )
            })
    }

    /// A number written as an integer or a float.
    fn number(&self, field: &'static str) -> Result<f64, DeclarationError> {
        let v = self.get(field)?;
        v.as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .ok_or_else(|| self.invalid(field, "must be a number", &v.to_string()))
    }

    fn optional_uint(&self, field: &'static str) -> Result<Option<u64>, DeclarationError> {
        match self.table.contains_key(field) {
            true => self.uint(field).map(Some),
            false => Ok(None),
        }
    }

    fn optional_u32(&self, field: &'static str) -> Result<Option<u32>, DeclarationError> {
        match self.table.contains_key(field) {
            true => self.u32(field).map(Some),
            false => Ok(None),
        }
    }

    /// A list of strings, empty when the field is absent.
    fn optional_strings(&self, field: &'static str) -> Result<Vec<String>, DeclarationError> {
        let Some(v) = self.table.get(field) else {
            return Ok(Vec::new());
        };
        let expected = "must be a list of strings";
        v.as_array()
            .ok_or_else(|| self.invalid(field, expected, &v.to_string()))?
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.invalid(field, expected, &item.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMBEDDINGS: &str = r#"
[package]
name = "coldpath-embeddings"

[package.metadata.coldpath]
workload = "embeddings"
function = "EmbeddingsFunction"
latency_budget_ms = 50
cold_start_on_perceived_path = true
pinned_warm = true
compute = "cpu"
trigger = "http"
max_batch = 32
memory_mb = 1024
timeout_s = 10
"#;

    /// The field a [`DeclarationError::Invalid`] names; `None` for any other error.
    fn invalid_field(err: &DeclarationError) -> Option<&'static str> {
        match err {
            DeclarationError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Declaration, DeclarationError> {
        Declaration::from_manifest_str(text, Path::new("functions/x/Cargo.toml"))
    }

    #[test]
    fn reads_a_complete_declaration() {
        let d = parse(EMBEDDINGS).unwrap();
        assert_eq!(d.crate_name, "coldpath-embeddings");
        assert_eq!(d.function, "EmbeddingsFunction");
        assert_eq!(d.latency_budget_ms, 50);
        assert!(d.pinned_warm && d.cold_start_on_perceived_path);
        assert_eq!((d.compute, d.trigger), (Compute::Cpu, Trigger::Http));
        assert_eq!((d.bulk_batch, d.bulk_threshold), (None, None));
        assert!(d.required_env.is_empty() && d.model_mb.is_none());
    }

    #[test]
    fn reads_required_env_and_sizes() {
        let text = format!(
            "{EMBEDDINGS}required_env = [\"EMBEDDINGS_MODEL_SOURCE\"]\nmodel_mb = 23\noptimized_graph_mb = 90\n"
        );
        let d = parse(&text).unwrap();
        assert_eq!(d.required_env, ["EMBEDDINGS_MODEL_SOURCE"]);
        assert_eq!((d.model_mb, d.optimized_graph_mb), (Some(23), Some(90)));
        let bad = parse(&format!("{EMBEDDINGS}required_env = [\"A\", 1]\n")).unwrap_err();
        assert_eq!(invalid_field(&bad), Some("required_env"), "{bad}");
    }

    #[test]
    fn missing_section_names_the_crate() {
        let err = parse("[package]\nname = \"coldpath-faces\"\n").unwrap_err();
        assert!(
            matches!(&err, DeclarationError::Missing { crate_name, .. } if crate_name == "coldpath-faces")
        );
        assert!(
            err.to_string().contains("[package.metadata.coldpath]"),
            "{err}"
        );
    }

    #[test]
    fn missing_field_names_crate_and_field() {
        let text = EMBEDDINGS.replace("latency_budget_ms = 50\n", "");
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err,
            DeclarationError::MissingField {
                crate_name: "coldpath-embeddings".to_string(),
                section: "package.metadata.coldpath".to_string(),
                field: "latency_budget_ms"
            }
        );
    }

    #[test]
    fn wrong_types_and_values_are_invalid() {
        let err =
            parse(&EMBEDDINGS.replace("pinned_warm = true", "pinned_warm = \"yes\"")).unwrap_err();
        assert_eq!(invalid_field(&err), Some("pinned_warm"), "{err}");
        let err =
            parse(&EMBEDDINGS.replace("trigger = \"http\"", "trigger = \"kafka\"")).unwrap_err();
        assert_eq!(invalid_field(&err), Some("trigger"), "{err}");
        let err = parse(&EMBEDDINGS.replace("latency_budget_ms = 50", "latency_budget_ms = -1"))
            .unwrap_err();
        assert_eq!(invalid_field(&err), Some("latency_budget_ms"), "{err}");
        let err = parse(&EMBEDDINGS.replace("memory_mb = 1024", "memory_mb = 64")).unwrap_err();
        assert_eq!(invalid_field(&err), Some("memory_mb"), "{err}");
    }

    #[test]
    fn cold_start_on_path_without_pinning_is_a_contradiction() {
        let err =
            parse(&EMBEDDINGS.replace("pinned_warm = true", "pinned_warm = false")).unwrap_err();
        assert!(
            matches!(&err, DeclarationError::Contradiction { crate_name, field: "pinned_warm", .. } if crate_name == "coldpath-embeddings"),
            "{err}"
        );
    }

    #[test]
    fn gpu_behind_http_without_budget_is_a_contradiction() {
        let text = EMBEDDINGS
            .replace("pinned_warm = true", "pinned_warm = false")
            .replace(
                "cold_start_on_perceived_path = true",
                "cold_start_on_perceived_path = false",
            )
            .replace("compute = \"cpu\"", "compute = \"gpu\"");
        let err = parse(&text).unwrap_err();
        assert!(
            matches!(
                err,
                DeclarationError::Contradiction {
                    field: "latency_budget_ms",
                    ..
                }
            ),
            "{err}"
        );
        // The same workload pinned warm is consistent: the cold start is paid before any request.
        let pinned = text.replace("pinned_warm = false", "pinned_warm = true");
        assert!(parse(&pinned).is_ok());
    }

    #[test]
    fn bulk_fields_come_together_and_grow_the_batch() {
        let with_bulk = |extra: &str| format!("{EMBEDDINGS}{extra}");
        let err = parse(&with_bulk("bulk_batch = 64\n")).unwrap_err();
        assert!(
            matches!(
                err,
                DeclarationError::Contradiction {
                    field: "bulk_threshold",
                    ..
                }
            ),
            "{err}"
        );
        let err = parse(&with_bulk("bulk_batch = 8\nbulk_threshold = 100\n")).unwrap_err();
        assert!(
            matches!(
                err,
                DeclarationError::Contradiction {
                    field: "bulk_batch",
                    ..
                }
            ),
            "{err}"
        );
        assert!(parse(&with_bulk("bulk_batch = 64\nbulk_threshold = 100\n")).is_ok());
    }

    const COHOSTED: &str = r#"
[package.metadata.coldpath.cohosted.clip-text]
latency_budget_ms = 100
cold_start_on_perceived_path = true
max_batch = 1
memory_mb = 512
env_prefix = "CLIP"
env = { EMBEDDINGS_CLIP = "true" }
required_env = ["CLIP_MODEL_SOURCE"]
model_mb = 256
"#;

    #[test]
    fn reads_a_cohosted_workload_with_its_share_of_the_host() {
        let text = EMBEDDINGS.replace("memory_mb = 1024", "memory_mb = 1536") + COHOSTED;
        let d = parse(&text).unwrap();
        assert_eq!(
            (d.binary.as_str(), d.env_prefix.as_str()),
            ("embeddings", "EMBEDDINGS")
        );
        assert_eq!(d.cohosted.len(), 1);
        let c = &d.cohosted[0];
        assert_eq!(
            (c.workload.as_str(), c.memory_mb, c.model_mb),
            ("clip-text", 512, Some(256))
        );
        assert_eq!(c.env, [("EMBEDDINGS_CLIP".to_string(), "true".to_string())]);
        assert_eq!((d.own_memory_mb(), d.billed_memory_mb()), (1024, 1536));
        let all = d.workloads();
        let text_tower = &all[1];
        assert_eq!(text_tower.workload, "clip-text");
        assert_eq!(text_tower.function, "EmbeddingsFunction");
        assert!(text_tower.pinned_warm, "it shares its host's warmth");
        assert_eq!(
            (text_tower.own_memory_mb(), text_tower.billed_memory_mb()),
            (512, 1536)
        );
    }

    #[test]
    fn a_broken_cohosted_declaration_names_the_crate_the_workload_and_the_field() {
        let host = EMBEDDINGS.replace("memory_mb = 1024", "memory_mb = 1536");
        let err = parse(&(host.clone() + &COHOSTED.replace("max_batch = 1\n", ""))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "crate coldpath-embeddings: field `max_batch` is missing from [package.metadata.coldpath.cohosted.clip-text]"
        );
        let err = parse(&(host.clone() + &COHOSTED.replace("memory_mb = 512", "memory_mb = 0")))
            .unwrap_err();
        assert_eq!(invalid_field(&err), Some("memory_mb"), "{err}");
        let err = parse(
            &(host.clone()
                + &COHOSTED.replace(
                    "{ EMBEDDINGS_CLIP = \"true\" }",
                    "{ EMBEDDINGS_CLIP = true }",
                )),
        )
        .unwrap_err();
        assert_eq!(invalid_field(&err), Some("env"), "{err}");
        // The host keeps less than Lambda's smallest size for itself.
        let err = parse(&(EMBEDDINGS.replace("memory_mb = 1024", "memory_mb = 600") + COHOSTED))
            .unwrap_err();
        assert!(
            matches!(&err, DeclarationError::Contradiction { crate_name, field: "memory_mb", .. } if crate_name == "coldpath-embeddings"),
            "{err}"
        );
        // A cold start on the perceived path in a host that scales to zero.
        let serverless = host
            .replace("pinned_warm = true", "pinned_warm = false")
            .replace(
                "cold_start_on_perceived_path = true",
                "cold_start_on_perceived_path = false",
            );
        let err = parse(&(serverless + COHOSTED)).unwrap_err();
        assert!(
            matches!(&err, DeclarationError::Contradiction { field: "cohosted", reason, .. } if reason.contains("only as warm as its host")),
            "{err}"
        );
    }

    #[test]
    fn an_eventbridge_function_names_its_binary_and_variables() {
        let text = EMBEDDINGS
            .replace(
                "workload = \"embeddings\"",
                "workload = \"clip-vision\"\nbinary = \"clip\"\nenv_prefix = \"CLIP\"",
            )
            .replace("trigger = \"http\"", "trigger = \"eventbridge\"")
            .replace("pinned_warm = true", "pinned_warm = false")
            .replace(
                "cold_start_on_perceived_path = true",
                "cold_start_on_perceived_path = false",
            );
        let d = parse(&text).unwrap();
        assert_eq!(d.trigger, Trigger::EventBridge);
        assert_eq!(
            (
                d.workload.as_str(),
                d.binary.as_str(),
                d.env_prefix.as_str()
            ),
            ("clip-vision", "clip", "CLIP")
        );
        // Without them, the binary is the workload and the prefix its capitals.
        let d = parse(&text.replace("binary = \"clip\"\nenv_prefix = \"CLIP\"", "")).unwrap();
        assert_eq!(
            (d.binary.as_str(), d.env_prefix.as_str()),
            ("clip-vision", "CLIP_VISION")
        );
    }

    #[test]
    fn the_pod_counts_a_cohosted_workload_once() {
        let host = parse(&(EMBEDDINGS.replace("memory_mb = 1024", "memory_mb = 1536") + COHOSTED))
            .unwrap();
        let p = pod(&POD.replace("[\"embeddings\"]", "[\"embeddings\", \"clip-text\"]")).unwrap();
        // embeddings' own 1024 MB and clip-text's 512, not the host's 1536 twice.
        assert_eq!(p.hosted_memory_mb(std::slice::from_ref(&host)), 1536);
        assert!(p.validate_hosts(std::slice::from_ref(&host)).is_ok());
        let small = pod(&POD
            .replace("[\"embeddings\"]", "[\"embeddings\", \"clip-text\"]")
            .replace("memory_mb = 2048", "memory_mb = 1200"))
        .unwrap();
        let err = small
            .validate_hosts(std::slice::from_ref(&host))
            .unwrap_err();
        assert!(err.to_string().contains("(1536 MB)"), "{err}");
    }

    const POD: &str = r#"
[package]
name = "coldpath-serve"

[package.metadata.coldpath.pod]
hosts = ["embeddings"]
service = "infra/pod/service.yaml"
dockerfile_cpu = "infra/pod/Dockerfile"
dockerfile_gpu = "infra/pod/Dockerfile.cuda"
vcpu = 0.5
memory_mb = 2048
gpu_instance = "g5.xlarge"
port = 8080
health_path = "/health"
ready_path = "/ready"
target_cpu_percent = 60
min_tasks = 1
"#;

    fn pod(text: &str) -> Result<PodDeclaration, DeclarationError> {
        PodDeclaration::from_manifest_str(
            text,
            Path::new("functions/hosts/serve/Cargo.toml"),
            Path::new("/r"),
        )
    }

    #[test]
    fn reads_the_pod_and_holds_it_to_its_hosts() {
        let p = pod(POD).unwrap();
        assert_eq!((p.vcpu, p.memory_mb, p.port), (0.5, 2048, 8080));
        assert_eq!(p.path(&p.service), Path::new("/r/infra/pod/service.yaml"));
        let embeddings = parse(EMBEDDINGS).unwrap();
        assert!(p.validate_hosts(std::slice::from_ref(&embeddings)).is_ok());
        // More memory declared for the hosts than the pod has.
        let small = pod(&POD.replace("memory_mb = 2048", "memory_mb = 512")).unwrap();
        let err = small
            .validate_hosts(std::slice::from_ref(&embeddings))
            .unwrap_err();
        assert!(
            matches!(&err, DeclarationError::Contradiction { crate_name, field: "memory_mb", .. } if crate_name == "coldpath-serve"),
            "{err}"
        );
        assert!(err.to_string().contains("(1024 MB)"), "{err}");
        // A host that is not declared, or not in the warm set.
        let unknown = pod(&POD.replace("[\"embeddings\"]", "[\"search\"]")).unwrap();
        let err = unknown
            .validate_hosts(std::slice::from_ref(&embeddings))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("search is not a declared workload"),
            "{err}"
        );
        let mut cold = embeddings.clone();
        cold.pinned_warm = false;
        let err = p.validate_hosts(&[cold]).unwrap_err();
        assert!(err.to_string().contains("hosts only the warm set"), "{err}");
    }

    #[test]
    fn a_broken_pod_declaration_names_the_field() {
        let err = pod(&POD.replace("port = 8080", "port = 0")).unwrap_err();
        assert_eq!(invalid_field(&err), Some("port"), "{err}");
        let err = pod(&POD.replace("min_tasks = 1", "min_tasks = 0")).unwrap_err();
        assert_eq!(invalid_field(&err), Some("min_tasks"), "{err}");
        let err = pod(&POD.replace("\"/ready\"", "\"ready\"")).unwrap_err();
        assert_eq!(invalid_field(&err), Some("ready_path"), "{err}");
        let err = pod(&POD.replace("vcpu = 0.5\n", "")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "crate coldpath-serve: field `vcpu` is missing from [package.metadata.coldpath.pod]"
        );
        let err = pod("[package]\nname = \"coldpath-serve\"\n").unwrap_err();
        assert!(matches!(err, DeclarationError::Missing { .. }), "{err}");
        // A host's name in COLDPATH_SERVE_WORKLOADS, only for hosts of the pod.
        let named = pod(&format!(
            "{POD}workload_names = {{ embeddings = \"text\" }}\n"
        ))
        .unwrap();
        assert_eq!(
            (named.serve_name("embeddings"), named.serve_name("faces")),
            ("text", "faces")
        );
        let err = pod(&format!("{POD}workload_names = {{ search = \"clip\" }}\n")).unwrap_err();
        assert_eq!(invalid_field(&err), Some("workload_names"), "{err}");
        let err = pod(&format!("{POD}workload_names = {{ embeddings = 1 }}\n")).unwrap_err();
        assert_eq!(invalid_field(&err), Some("workload_names"), "{err}");
    }
}
