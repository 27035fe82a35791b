//! `coldpath check`: does `infra/template.yaml` deploy each function the way its declaration
//! says? And does the GPU worker's packaging set exactly the variables the worker reads? And do
//! the always-on pod's template and images (`infra/pod/`) deploy the pod as declared?
//!
//! The template is CloudFormation YAML with short-form intrinsics (`!Ref`, `!GetAtt`, `!Sub`);
//! `serde_norway` keeps those as tagged values, and a `!Ref` to a template parameter resolves to
//! the parameter's `Default`, which is what a deployment without overrides gets (a
//! `!FindInMap` keyed by such a `!Ref` too). The rules about the stack as a whole rather than
//! one function (alarm topics, access-log targets, log groups) are in [`crate::stack`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_norway::Value;

use crate::declaration::{self, Declaration, PodDeclaration, Trigger};
use crate::error::{DeclarationError, TemplateError};
use crate::workspace::{BinaryContract, Workspace};

/// An SQS queue's visibility timeout must be at least this many times the function's timeout
/// (AWS's guidance for Lambda event source mappings), so a message is not handed to a second
/// consumer while the first is still working on it, retries included. The event source's
/// batching window comes on top: messages gathered into a batch are already received.
pub const VISIBILITY_TIMEOUT_FACTOR: f64 = 6.0;

/// The fewest receives before SQS moves a message to its dead-letter queue (AWS's advice for a
/// Lambda consumer): a receive the poller makes while the function is throttled counts too, so
/// fewer sends healthy messages to the dead-letter queue under load.
pub const MIN_MAX_RECEIVE_COUNT: f64 = 5.0;

/// One function's result: what was verified, or every mismatch found.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCheck {
    pub function: String,
    pub workload: String,
    pub ok: Vec<String>,
    pub mismatches: Vec<String>,
}

/// The parsed template and its parameters' defaults.
pub struct Template {
    path: PathBuf,
    root: Value,
}

impl Template {
    pub fn from_file(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|e| TemplateError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_str(&text, path)
    }

    pub fn from_str(text: &str, path: &Path) -> Result<Self, TemplateError> {
        let root: Value = serde_norway::from_str(text).map_err(|e| TemplateError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if root.get("Resources").and_then(Value::as_mapping).is_none() {
            return Err(TemplateError::Shape {
                path: path.to_path_buf(),
                what: "no Resources mapping".to_string(),
            });
        }
        Ok(Template {
            path: path.to_path_buf(),
            root,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn resource(&self, id: &str) -> Option<&Value> {
        self.root.get("Resources")?.get(id)
    }

    /// The logical ids and bodies of the resources of one type, in template order.
    pub(crate) fn resources_of_type<'a>(
        &'a self,
        resource_type: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.root
            .get("Resources")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .filter(move |(_, r)| r.get("Type").and_then(Value::as_str) == Some(resource_type))
            .filter_map(|(id, r)| Some((id.as_str()?, r)))
    }

    /// A property of a function, falling back to `Globals.Function`.
    fn function_property<'a>(&'a self, function: &'a Value, name: &str) -> Option<&'a Value> {
        function
            .get("Properties")
            .and_then(|p| p.get(name))
            .or_else(|| self.root.get("Globals")?.get("Function")?.get(name))
    }

    /// A number, or a `!Ref` / `{Ref: ...}` to a parameter whose `Default` is a number, or a
    /// `!FindInMap` whose value is one.
    pub(crate) fn number(&self, v: &Value) -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => match ref_target(v) {
                Some(parameter) => self.number(self.parameter_default(parameter)?),
                None => self.number(self.find_in_map(v)?),
            },
        }
    }

    pub(crate) fn string<'a>(&'a self, v: &'a Value) -> Option<&'a str> {
        match v {
            Value::String(s) => Some(s),
            _ => self.parameter_default(ref_target(v)?)?.as_str(),
        }
    }

    /// The value a `!FindInMap [Map, TopKey, SecondKey]` (or `{Fn::FindInMap: [...]}`) selects,
    /// each key a literal or a `!Ref` to a parameter (its default). Mapping keys are strings,
    /// so a number key is looked up as its text (a Number parameter's default 120 is "120").
    fn find_in_map(&self, v: &Value) -> Option<&Value> {
        let [map_name, top_key, second_key] = find_in_map_args(v)?;
        let key_text = |key: &Value| -> Option<String> {
            let key = match ref_target(key) {
                Some(parameter) => self.parameter_default(parameter)?,
                None => key,
            };
            match key {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        self.root
            .get("Mappings")?
            .get(map_name.as_str()?)?
            .get(key_text(top_key)?)?
            .get(key_text(second_key)?)
    }

    pub(crate) fn parameter_default(&self, name: &str) -> Option<&Value> {
        self.root.get("Parameters")?.get(name)?.get("Default")
    }
}

/// The logical id a `!Ref X` or `{Ref: X}` points at.
pub(crate) fn ref_target(v: &Value) -> Option<&str> {
    match v {
        Value::Tagged(t) if tag_is(&t.tag, "Ref") => t.value.as_str(),
        Value::Mapping(m) if m.len() == 1 => m.get("Ref")?.as_str(),
        _ => None,
    }
}

/// The logical id a `!GetAtt X.Arn`, `!GetAtt [X, Arn]` or `{Fn::GetAtt: [X, Arn]}` points at.
pub(crate) fn get_att_target(v: &Value) -> Option<String> {
    let inner = match v {
        Value::Tagged(t) if tag_is(&t.tag, "GetAtt") => &t.value,
        Value::Mapping(m) if m.len() == 1 => m.get("Fn::GetAtt")?,
        _ => return None,
    };
    match inner {
        Value::String(s) => s.split('.').next().map(str::to_string),
        Value::Sequence(seq) => seq.first()?.as_str().map(str::to_string),
        _ => None,
    }
}

pub(crate) fn tag_is(tag: &serde_norway::value::Tag, name: &str) -> bool {
    tag.to_string().trim_start_matches('!') == name
}

/// Checks every declared function against the template, then, when the declarations carry the
/// always-on pod, the pod's service template and images against the pod's declaration (one more
/// result, after the functions').
pub fn check_template(
    template: &Template,
    declarations: &[Declaration],
    workspace: &Workspace,
) -> Vec<FunctionCheck> {
    let mut results: Vec<FunctionCheck> = declarations
        .iter()
        .map(|d| check_function(template, d))
        .collect();
    if let Some(pod) = declaration::pod_of(declarations) {
        results.push(check_pod(
            pod,
            declarations,
            workspace.contract(&pod.crate_name),
        ));
    }
    results
}

fn check_function(t: &Template, d: &Declaration) -> FunctionCheck {
    let mut c = FunctionCheck {
        function: d.function.clone(),
        workload: d.workload.clone(),
        ok: Vec::new(),
        mismatches: Vec::new(),
    };
    let Some(f) = t.resource(&d.function) else {
        c.mismatches.push(format!(
            "no resource {} in {}",
            d.function,
            t.path.display()
        ));
        return c;
    };
    if f.get("Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
        c.mismatches
            .push("is not an AWS::Serverless::Function".to_string());
        return c;
    }
    let prop = |name: &str| t.function_property(f, name);

    // Packaging: the binary is `bootstrap` on the OS-only runtime, deployed from the zip that
    // `make package` built and size-checked (a second build by `sam build` would deploy
    // something else).
    let runtime = prop("Runtime").and_then(|v| t.string(v));
    let handler = prop("Handler").and_then(|v| t.string(v));
    let code = f
        .get("Properties")
        .and_then(|p| p.get("CodeUri"))
        .and_then(|v| t.string(v));
    let zip = format!("target/lambda/{}.zip", d.workload);
    if runtime != Some("provided.al2023")
        || handler != Some("bootstrap")
        || !code.is_some_and(|c| c.ends_with(&zip))
    {
        c.mismatches.push(format!(
            "must run on Runtime provided.al2023 with Handler bootstrap from CodeUri .../{zip} (the packaged zip), \
             found {runtime:?}, {handler:?}, {code:?}"
        ));
    }

    // Reserved concurrency subtracts from the account's unreserved pool, which must stay at 100
    // or more: on a new account (quota 10 to 1000) a stack that reserves any fails to deploy.
    if let Some(n) = prop("ReservedConcurrentExecutions") {
        c.mismatches.push(format!(
            "sets ReservedConcurrentExecutions ({:?}): a new account's concurrency quota may not allow it; \
             cap SQS consumers with ScalingConfig.MaximumConcurrency and keep warm with provisioned concurrency",
            t.number(n)
        ));
    }

    check_env(t, d, f, &mut c);
    check_storage(t, d, f, &mut c);
    check_layers(t, f, &mut c);

    // Sizes agree with the declaration.
    let memory = prop("MemorySize").and_then(|v| t.number(v));
    let timeout = prop("Timeout").and_then(|v| t.number(v));
    match memory {
        Some(m) if m == f64::from(d.memory_mb) => {}
        other => c.mismatches.push(format!(
            "MemorySize is {other:?}, the declaration says memory_mb = {}",
            d.memory_mb
        )),
    }
    match timeout {
        Some(s) if s == f64::from(d.timeout_s) => {}
        other => c.mismatches.push(format!(
            "Timeout is {other:?}, the declaration says timeout_s = {}",
            d.timeout_s
        )),
    }

    // Warmth: provisioned concurrency on a published alias, or none at all.
    let alias = f.get("Properties").and_then(|p| p.get("AutoPublishAlias"));
    let provisioned = f
        .get("Properties")
        .and_then(|p| p.get("ProvisionedConcurrencyConfig"))
        .and_then(|p| p.get("ProvisionedConcurrentExecutions"));
    if d.pinned_warm {
        match (alias, provisioned.and_then(|v| t.number(v))) {
            (Some(_), Some(n)) if n >= 1.0 => c.ok.push(format!("pinned warm ({n} provisioned on the published alias)")),
            (None, _) => c.mismatches.push(
                "is declared pinned_warm but has no AutoPublishAlias, so provisioned concurrency has no version to keep warm"
                    .to_string(),
            ),
            (Some(_), n) => c.mismatches.push(format!(
                "is declared pinned_warm but has no ProvisionedConcurrencyConfig with ProvisionedConcurrentExecutions >= 1 (found {n:?})"
            )),
        }
    } else if provisioned.is_some() {
        c.mismatches.push(
            "is declared serverless (pinned_warm = false) but has ProvisionedConcurrencyConfig"
                .to_string(),
        );
    } else {
        c.ok.push("serverless on demand (no provisioned concurrency)".to_string());
    }

    // The trigger the declaration names.
    let events: Vec<&Value> = f
        .get("Properties")
        .and_then(|p| p.get("Events"))
        .and_then(Value::as_mapping)
        .map(|m| m.values().collect())
        .unwrap_or_default();
    let of_type = |ty: &str| -> Vec<&Value> {
        events
            .iter()
            .copied()
            .filter(|e| e.get("Type").and_then(Value::as_str) == Some(ty))
            .collect()
    };
    match d.trigger {
        Trigger::Http => {
            let url = f
                .get("Properties")
                .and_then(|p| p.get("FunctionUrlConfig"))
                .is_some();
            if url || !of_type("HttpApi").is_empty() || !of_type("Api").is_empty() {
                c.ok.push("http trigger".to_string());
            } else {
                c.mismatches
                    .push("is declared trigger = \"http\" but has no FunctionUrlConfig and no HttpApi/Api event".to_string());
            }
        }
        Trigger::S3 => {
            if of_type("S3").is_empty() {
                c.mismatches
                    .push("is declared trigger = \"s3\" but has no S3 event".to_string());
            } else {
                c.ok.push("s3 trigger".to_string());
            }
        }
        Trigger::Sqs => check_sqs(t, d, &of_type("SQS"), prop("Timeout"), &mut c),
    }
    c
}

/// `timeout_value` is the function's `Timeout` as written (a number or a `!Ref`).
fn check_sqs(
    t: &Template,
    d: &Declaration,
    events: &[&Value],
    timeout_value: Option<&Value>,
    c: &mut FunctionCheck,
) {
    let timeout = timeout_value.and_then(|v| t.number(v));
    let Some(event) = events.first() else {
        c.mismatches
            .push("is declared trigger = \"sqs\" but has no SQS event".to_string());
        return;
    };
    let props = event.get("Properties");
    let reports_partial = props
        .and_then(|p| p.get("FunctionResponseTypes"))
        .and_then(Value::as_sequence)
        .is_some_and(|s| {
            s.iter()
                .any(|v| v.as_str() == Some("ReportBatchItemFailures"))
        });
    if !reports_partial {
        c.mismatches.push(
            "SQS event lacks FunctionResponseTypes: [ReportBatchItemFailures], so one bad message would retry the whole batch"
                .to_string(),
        );
    }
    match props.and_then(|p| p.get("BatchSize")).and_then(|v| t.number(v)) {
        Some(n) if n <= f64::from(d.max_batch) => {}
        other => c.mismatches.push(format!(
            "SQS event BatchSize is {other:?}, it must be set and at most the declared max_batch = {}",
            d.max_batch
        )),
    }
    let Some(queue_id) = props.and_then(|p| p.get("Queue")).and_then(get_att_target) else {
        c.mismatches.push(
            "SQS event Queue is not a !GetAtt <queue>.Arn of a queue in this template".to_string(),
        );
        return;
    };
    let Some(queue) = t
        .resource(&queue_id)
        .filter(|q| q.get("Type").and_then(Value::as_str) == Some("AWS::SQS::Queue"))
    else {
        c.mismatches.push(format!(
            "SQS event Queue {queue_id} is not an AWS::SQS::Queue in this template"
        ));
        return;
    };
    let qprops = queue.get("Properties");
    let redrive = qprops.and_then(|p| p.get("RedrivePolicy"));
    let dlq = redrive.and_then(|r| r.get("deadLetterTargetArn"));
    let max_receive = redrive
        .and_then(|r| r.get("maxReceiveCount"))
        .and_then(|v| t.number(v));
    match (dlq, max_receive) {
        (Some(_), Some(n)) if n >= MIN_MAX_RECEIVE_COUNT => c.ok.push(format!("queue {queue_id} has a DLQ after {n} receives")),
        (Some(_), Some(n)) if n >= 1.0 => c.mismatches.push(format!(
            "queue {queue_id} moves a message to its dead-letter queue after maxReceiveCount {n} receives, \
             under {MIN_MAX_RECEIVE_COUNT}: receives while the function is throttled count too, so healthy messages would be dead-lettered under load"
        )),
        _ => c.mismatches.push(format!(
            "queue {queue_id} has no dead-letter queue (RedrivePolicy with deadLetterTargetArn and maxReceiveCount >= 1), \
             so a poison message would be retried until it expires"
        )),
    }
    let visibility_value = qprops.and_then(|p| p.get("VisibilityTimeout"));
    let visibility = visibility_value.and_then(|v| t.number(v));
    // No batching window is 0 s; one that cannot be resolved fails the check below.
    let batching_window = match props.and_then(|p| p.get("MaximumBatchingWindowInSeconds")) {
        None => Some(0.0),
        Some(v) => t.number(v),
    };
    match (visibility, timeout, batching_window) {
        (Some(v), Some(to), Some(window)) if v >= VISIBILITY_TIMEOUT_FACTOR * to + window => {
            c.ok.push(format!(
                "visibility timeout {v} s >= {VISIBILITY_TIMEOUT_FACTOR} x {to} s + {window} s batching window"
            ));
        }
        (v, to, window) => c.mismatches.push(format!(
            "queue {queue_id} VisibilityTimeout {v:?} s must be at least {VISIBILITY_TIMEOUT_FACTOR} x the function Timeout {to:?} s \
             plus the event source's MaximumBatchingWindowInSeconds {window:?} s"
        )),
    }
    if let (Some(visibility_value), Some(timeout_value), Some(window)) =
        (visibility_value, timeout_value, batching_window)
    {
        c.mismatches.extend(visibility_rows_problems(
            t,
            &queue_id,
            visibility_value,
            timeout_value,
            window,
        ));
    }
    if reports_partial {
        c.ok.push("reports partial batch failures".to_string());
    }
}

/// When the visibility is looked up by the same parameter the function's `Timeout` is, every
/// timeout that parameter allows must find a row, and each row must hold the visibility rule,
/// not only the row of the default: a deployment may override the timeout.
fn visibility_rows_problems(
    t: &Template,
    queue_id: &str,
    visibility_value: &Value,
    timeout_value: &Value,
    window: f64,
) -> Vec<String> {
    let Some((map_name, parameter, attribute)) = find_in_map_by_parameter(visibility_value) else {
        return Vec::new();
    };
    if ref_target(timeout_value) != Some(parameter) {
        return Vec::new();
    }
    let Some(rows) = t
        .root
        .get("Mappings")
        .and_then(|m| m.get(map_name))
        .and_then(Value::as_mapping)
    else {
        return vec![format!(
            "queue {queue_id} VisibilityTimeout looks up Mappings {map_name}, which does not exist"
        )];
    };
    let key_text = |key: &Value| match key {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    // The timeouts a deployment may choose: the parameter's AllowedValues, or else every row.
    let allowed: Vec<String> = match t
        .root
        .get("Parameters")
        .and_then(|p| p.get(parameter))
        .and_then(|p| p.get("AllowedValues"))
        .and_then(Value::as_sequence)
    {
        Some(values) => values.iter().filter_map(key_text).collect(),
        None => rows.keys().filter_map(key_text).collect(),
    };
    // The default's row is the one checked above, as deployed without overrides.
    let default = t.parameter_default(parameter).and_then(key_text);
    let mut problems = Vec::new();
    for timeout_text in allowed {
        if default.as_ref() == Some(&timeout_text) {
            continue;
        }
        let visibility = rows
            .get(timeout_text.as_str())
            .and_then(|row| row.get(attribute))
            .and_then(|v| t.number(v));
        let Ok(timeout) = timeout_text.parse::<f64>() else {
            problems.push(format!(
                "{parameter} allows {timeout_text:?}, which is not a number of seconds"
            ));
            continue;
        };
        match visibility {
            Some(v) if v >= VISIBILITY_TIMEOUT_FACTOR * timeout + window => {}
            Some(v) => problems.push(format!(
                "with {parameter} {timeout_text}, queue {queue_id} VisibilityTimeout is {v} s (Mappings {map_name}), \
                 under {VISIBILITY_TIMEOUT_FACTOR} x {timeout_text} s + the {window} s batching window"
            )),
            None => problems.push(format!(
                "{parameter} allows {timeout_text}, but Mappings {map_name} has no {attribute} for it: that deployment would fail"
            )),
        }
    }
    problems
}

/// The three arguments of a `!FindInMap [map, top key, second key]` (or `{Fn::FindInMap: [...]}`).
fn find_in_map_args(v: &Value) -> Option<&[Value; 3]> {
    let args = match v {
        Value::Tagged(t) if tag_is(&t.tag, "FindInMap") => &t.value,
        Value::Mapping(m) if m.len() == 1 => m.get("Fn::FindInMap")?,
        _ => return None,
    };
    args.as_sequence()?.as_slice().try_into().ok()
}

/// `(map, parameter, attribute)` of a `!FindInMap [map, !Ref parameter, attribute]`.
fn find_in_map_by_parameter(v: &Value) -> Option<(&str, &str, &str)> {
    let [map_name, top_key, second_key] = find_in_map_args(v)?;
    Some((
        map_name.as_str()?,
        ref_target(top_key)?,
        second_key.as_str()?,
    ))
}

/// Variables whose value the declaration fixes: a template that sets one to something else
/// deploys a function that behaves unlike its declaration (and unlike what the plan priced).
pub fn declared_env_values(d: &Declaration) -> Vec<(String, u64)> {
    let prefix = d.workload.to_uppercase();
    let mut out = vec![(format!("{prefix}_MAX_BATCH"), u64::from(d.max_batch))];
    if d.workload == "embeddings" {
        out.push(("EMBEDDINGS_MAX_INPUTS".to_string(), u64::from(d.max_batch)));
    }
    if let Some(b) = d.bulk_batch {
        out.push((format!("{prefix}_BULK_BATCH"), u64::from(b)));
    }
    if let Some(n) = d.bulk_threshold {
        out.push((format!("{prefix}_BULK_THRESHOLD"), n));
    }
    out
}

/// A function's `Environment.Variables` (its own over `Globals.Function`'s).
fn function_env<'a>(t: &'a Template, f: &'a Value) -> Vec<(&'a str, &'a Value)> {
    let mut out: Vec<(&str, &Value)> = Vec::new();
    for source in [
        t.root.get("Globals").and_then(|g| g.get("Function")),
        f.get("Properties"),
    ] {
        if let Some(vars) = source
            .and_then(|p| p.get("Environment"))
            .and_then(|e| e.get("Variables"))
            .and_then(Value::as_mapping)
        {
            for (k, v) in vars {
                if let Some(k) = k.as_str() {
                    out.retain(|(name, _)| *name != k);
                    out.push((k, v));
                }
            }
        }
    }
    out
}

fn check_env(t: &Template, d: &Declaration, f: &Value, c: &mut FunctionCheck) {
    let env = function_env(t, f);
    let missing: Vec<&str> = d
        .required_env
        .iter()
        .map(String::as_str)
        .filter(|name| !env.iter().any(|(n, _)| n == name))
        .collect();
    if missing.is_empty() {
        if !d.required_env.is_empty() {
            c.ok.push(format!(
                "sets the {} required variables",
                d.required_env.len()
            ));
        }
    } else {
        c.mismatches.push(format!(
            "does not set {}, which the declaration lists in required_env: the function would fail at init",
            missing.join(", ")
        ));
    }
    for (name, want) in declared_env_values(d) {
        let Some((_, v)) = env.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        match t.number(v) {
            Some(x) if x == want as f64 => {}
            found => c
                .mismatches
                .push(format!("{name} is {found:?}, the declaration says {want}")),
        }
    }
}

/// The layers a function runs with: `Globals.Function`'s and then its own (SAM appends the
/// function's list to the global one, unlike the other properties, which it overrides).
fn function_layers<'a>(t: &'a Template, f: &'a Value) -> Vec<&'a Value> {
    [
        t.root.get("Globals").and_then(|g| g.get("Function")),
        f.get("Properties"),
    ]
    .into_iter()
    .filter_map(|p| p?.get("Layers")?.as_sequence())
    .flatten()
    .collect()
}

/// Every layer is one of this template's `AWS::Serverless::LayerVersion`s, deployed from the
/// zip `make package` built and counted in the function's 250 MB
/// (`target/lambda/layers/<name>.zip`), and none comes twice.
fn check_layers(t: &Template, f: &Value, c: &mut FunctionCheck) {
    let mut names = Vec::new();
    for layer in function_layers(t, f) {
        let Some(id) = ref_target(layer) else {
            c.mismatches.push(format!(
                "layer {layer:?} is not a !Ref to a layer of this template (an ARN from elsewhere was not size-checked with the function)"
            ));
            continue;
        };
        let resource = t.resource(id).filter(|r| {
            r.get("Type").and_then(Value::as_str) == Some("AWS::Serverless::LayerVersion")
        });
        let content = resource
            .and_then(|r| r.get("Properties"))
            .and_then(|p| p.get("ContentUri"))
            .and_then(|v| t.string(v));
        match content {
            _ if names.contains(&id) => c
                .mismatches
                .push(format!("layer {id} is attached twice")),
            Some(uri) if uri.contains("target/lambda/layers/") && uri.ends_with(".zip") => {}
            _ if resource.is_none() => c.mismatches.push(format!(
                "layer {id} is not an AWS::Serverless::LayerVersion in this template"
            )),
            other => c.mismatches.push(format!(
                "layer {id} must be deployed from ContentUri .../target/lambda/layers/<name>.zip (the layer make package built), found {other:?}"
            )),
        }
        names.push(id);
    }
    if !names.is_empty() {
        c.ok.push(format!(
            "layers {} from the packaged zips",
            names.join(", ")
        ));
    }
}

/// `/tmp` holds what the sandbox fetches (a model from S3) and what it writes (the optimised
/// graphs, when the cache is under `/tmp`); Lambda gives 512 MB unless `EphemeralStorage` says
/// more. 10% headroom covers the temporary file of an atomic rename and the logs.
fn check_storage(t: &Template, d: &Declaration, f: &Value, c: &mut FunctionCheck) {
    let env = function_env(t, f);
    let value = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| t.string(v).unwrap_or("<computed>"))
    };
    let prefix = d.workload.to_uppercase();
    let fetched = env.iter().any(|(n, v)| {
        n.starts_with(&prefix)
            && n.ends_with("_SOURCE")
            && !t
                .string(v)
                .is_some_and(|s| s.starts_with("/var/task/") || s.starts_with("/opt/"))
    });
    let cache_in_tmp = value("COLDPATH_OPTIMIZED_MODEL_DIR").is_some_and(|s| s.starts_with("/tmp"));
    let model = if fetched { d.model_mb.unwrap_or(0) } else { 0 };
    let graphs = if cache_in_tmp {
        d.optimized_graph_mb.unwrap_or(0)
    } else {
        0
    };
    let need = (f64::from(model + graphs) * 1.1).ceil();
    let have = f
        .get("Properties")
        .and_then(|p| p.get("EphemeralStorage"))
        .and_then(|e| e.get("Size"))
        .and_then(|v| t.number(v))
        .unwrap_or(512.0);
    if fetched && d.model_mb.is_none() {
        c.mismatches.push(
            "fetches its model into /tmp but the declaration has no model_mb to size the storage by"
                .to_string(),
        );
    } else if have >= need {
        if need > 0.0 {
            c.ok.push(format!(
                "/tmp {have} MB holds {need} MB of model and graphs"
            ));
        }
    } else {
        c.mismatches.push(format!(
            "EphemeralStorage is {have} MB, but /tmp must hold {need} MB: model_mb {model} fetched, \
             optimized_graph_mb {graphs} cached, plus 10%"
        ));
    }
}

/// Each AWS Batch job definition in `batch` runs the captioning worker as declared: the batch
/// sizes and bulk threshold it sets equal the declaration's, it takes one GPU (the worker drives
/// one device), and it asks for at least `worker_memory_mb` of host memory. Returns one line per
/// problem.
pub fn check_batch_jobs(batch: &Template, d: &Declaration) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(resources) = batch.root.get("Resources").and_then(Value::as_mapping) else {
        return problems;
    };
    let wanted = declared_env_values(d);
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
        if let Some(need) = d.worker_memory_mb {
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
    let hosted_mb: u32 = declarations
        .iter()
        .filter(|d| pod.hosts.contains(&d.workload))
        .map(|d| d.memory_mb)
        .sum();
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

/// `ENV` names and values of a Dockerfile's final stage (what the image runs with; an earlier
/// stage's settings stay in that stage).
pub fn dockerfile_final_env(text: &str) -> BTreeMap<String, String> {
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().collect();
    let last = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("FROM "))
        .unwrap_or(0);
    let mut env = BTreeMap::new();
    for line in &lines[last..] {
        let Some(rest) = line.trim().strip_prefix("ENV ") else {
            continue;
        };
        if rest.contains('=') {
            for token in rest.split_whitespace() {
                if let Some((name, value)) = token.split_once('=') {
                    env.insert(name.to_string(), value.trim_matches('"').to_string());
                }
            }
        } else if let Some((name, value)) = rest.trim().split_once(char::is_whitespace) {
            env.insert(name.to_string(), value.trim().to_string());
        }
    }
    env
}

/// `ENV NAME=value` / `ENV NAME value` names of a Dockerfile, continuation lines included.
pub fn dockerfile_env_names(text: &str) -> BTreeSet<String> {
    let joined = text.replace("\\\n", " ");
    let mut names = BTreeSet::new();
    for line in joined.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("ENV ") else {
            continue;
        };
        for token in rest.split_whitespace() {
            if let Some((name, _)) = token.split_once('=') {
                names.insert(name.to_string());
            }
        }
        if !rest.contains('=')
            && let Some(name) = rest.split_whitespace().next()
        {
            names.insert(name.to_string());
        }
    }
    names
}

/// `Name:` entries of every `Environment` list in a CloudFormation template (Batch job
/// definitions use a list of `{Name, Value}`).
pub fn cloudformation_env_names(template: &Template) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Mapping(m) => {
                for (k, child) in m {
                    if k.as_str() == Some("Environment")
                        && let Some(seq) = child.as_sequence()
                    {
                        for item in seq {
                            if let Some(name) = item.get("Name").and_then(Value::as_str) {
                                out.insert(name.to_string());
                            }
                        }
                    }
                    walk(child, out);
                }
            }
            Value::Sequence(s) => s.iter().for_each(|c| walk(c, out)),
            Value::Tagged(t) => walk(&t.value, out),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(&template.root, &mut out);
    out
}

/// Names set by a Lambda function's `Environment.Variables` in the SAM template.
pub fn function_env_names(template: &Template, function: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for source in [
        template
            .resource(function)
            .and_then(|f| f.get("Properties")),
        template.root.get("Globals").and_then(|g| g.get("Function")),
    ] {
        if let Some(vars) = source
            .and_then(|p| p.get("Environment"))
            .and_then(|e| e.get("Variables"))
            .and_then(Value::as_mapping)
        {
            out.extend(vars.keys().filter_map(Value::as_str).map(str::to_string));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_form_refs_resolve_to_parameter_defaults() {
        let t = Template::from_str(
            "Parameters:\n  Mem: {Type: Number, Default: 1024}\nResources:\n  A:\n    Type: X\n    Properties:\n      M: !Ref Mem\n      N: {Ref: Mem}\n      Q: !GetAtt Queue.Arn\n      R: !GetAtt [Other, Arn]\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let props = t.resource("A").unwrap().get("Properties").unwrap();
        assert_eq!(t.number(props.get("M").unwrap()), Some(1024.0));
        assert_eq!(t.number(props.get("N").unwrap()), Some(1024.0));
        assert_eq!(
            get_att_target(props.get("Q").unwrap()).as_deref(),
            Some("Queue")
        );
        assert_eq!(
            get_att_target(props.get("R").unwrap()).as_deref(),
            Some("Other")
        );
    }

    #[test]
    fn a_template_without_resources_is_a_shape_error() {
        assert!(matches!(
            Template::from_str("Parameters: {}\n", Path::new("t.yaml")),
            Err(TemplateError::Shape { .. })
        ));
        assert!(matches!(
            Template::from_str("Resources: [\n", Path::new("t.yaml")),
            Err(TemplateError::Parse { .. })
        ));
    }

    #[test]
    fn dockerfile_env_names_cover_both_forms_and_continuations() {
        let names = dockerfile_env_names(
            "FROM x\nENV A=1 \\\n    B=\"two words\"\nENV C 3\nRUN echo D=4\n",
        );
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["A", "B", "C"]);
    }

    #[test]
    fn the_final_stage_env_leaves_earlier_stages_out() {
        let env = dockerfile_final_env(
            "FROM a AS b\nENV EARLY=1\nFROM c\nENV PORT=8080 \\\n    X=\"y\"\nENV Z 3\n",
        );
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("PORT", "8080"), ("X", "y"), ("Z", "3")]);
    }

    fn function_check(template: &str) -> FunctionCheck {
        let t = Template::from_str(template, Path::new("t.yaml")).unwrap();
        let mut c = FunctionCheck {
            function: "F".to_string(),
            workload: "f".to_string(),
            ok: Vec::new(),
            mismatches: Vec::new(),
        };
        check_layers(&t, t.resource("F").unwrap(), &mut c);
        c
    }

    const LAYERS: &str = "Globals:\n  Function:\n    Layers: [!Ref Ort]\nResources:\n  Ort:\n    Type: AWS::Serverless::LayerVersion\n    Properties: {ContentUri: ../target/lambda/layers/onnxruntime.zip}\n  Codecs:\n    Type: AWS::Serverless::LayerVersion\n    Properties: {ContentUri: ../target/lambda/layers/image-codecs.zip}\n  Queue:\n    Type: AWS::SQS::Queue\n";

    #[test]
    fn a_functions_layers_are_globals_then_its_own_each_packaged() {
        let c = function_check(&format!(
            "{LAYERS}  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Layers: [!Ref Codecs]\n"
        ));
        assert!(c.mismatches.is_empty(), "{:?}", c.mismatches);
        assert_eq!(c.ok, ["layers Ort, Codecs from the packaged zips"]);
    }

    #[test]
    fn a_layer_not_built_by_make_package_is_a_mismatch() {
        let unpackaged = LAYERS.replace("../target/lambda/layers/image-codecs.zip", "./codecs/");
        let c = function_check(&format!(
            "{unpackaged}  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Layers: [!Ref Codecs]\n"
        ));
        assert!(
            c.mismatches.len() == 1
                && c.mismatches[0].contains("layer Codecs must be deployed from ContentUri")
                && c.mismatches[0].contains("./codecs/"),
            "{:?}",
            c.mismatches
        );
    }

    #[test]
    fn a_layer_from_elsewhere_twice_or_not_a_layer_is_a_mismatch() {
        let c = function_check(&format!(
            "{LAYERS}  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Layers: [!Ref Ort, !Ref Queue, arn:aws:lambda:us-east-1:1:layer:x:1]\n"
        ));
        assert_eq!(c.mismatches.len(), 3, "{:?}", c.mismatches);
        assert!(c.mismatches[0].contains("layer Ort is attached twice"));
        assert!(c.mismatches[1].contains("layer Queue is not an AWS::Serverless::LayerVersion"));
        assert!(c.mismatches[2].contains("is not a !Ref to a layer of this template"));
    }
}
