//! One function of the template against its declaration: packaging, reserved concurrency,
//! sizes, warmth, the trigger, the variables the declaration requires or fixes, the layers and
//! the storage `/tmp` needs. (The SQS trigger's rules are in [`super::sqs`]; the variables a
//! function may be given at all, from its binary's contract, are checked by the CLI.)

use serde_norway::Value;

use super::FunctionCheck;
use super::eventbridge::check_eventbridge;
use super::sqs::check_sqs;
use super::template::{Template, ref_target};
use crate::declaration::{Declaration, Trigger};

pub(super) fn check_function(template: &Template, declaration: &Declaration) -> FunctionCheck {
    let mut c = FunctionCheck {
        function: declaration.function.clone(),
        workload: declaration.workload.clone(),
        ok: Vec::new(),
        mismatches: Vec::new(),
    };
    let Some(f) = template.resource(&declaration.function) else {
        c.mismatches.push(format!(
            "no resource {} in {}",
            declaration.function,
            template.path.display()
        ));
        return c;
    };
    if f.get("Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
        c.mismatches
            .push("is not an AWS::Serverless::Function".to_string());
        return c;
    }
    let prop = |name: &str| template.function_property(f, name);

    // Packaging: the binary is `bootstrap` on the OS-only runtime, deployed from the zip that
    // `make package` built and size-checked (a second build by `sam build` would deploy
    // something else).
    let runtime = prop("Runtime").and_then(|v| template.string(v));
    let handler = prop("Handler").and_then(|v| template.string(v));
    let code = f
        .get("Properties")
        .and_then(|p| p.get("CodeUri"))
        .and_then(|v| template.string(v));
    let zip = format!("target/lambda/{}.zip", declaration.binary);
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
            template.number(n)
        ));
    }

    check_env(template, declaration, f, &mut c);
    check_storage(template, declaration, f, &mut c);
    check_layers(template, f, &mut c);

    // Sizes agree with the declaration.
    let memory = prop("MemorySize").and_then(|v| template.number(v));
    let timeout = prop("Timeout").and_then(|v| template.number(v));
    match memory {
        Some(m) if m == f64::from(declaration.memory_mb) => {}
        other => c.mismatches.push(format!(
            "MemorySize is {other:?}, the declaration says memory_mb = {}",
            declaration.memory_mb
        )),
    }
    match timeout {
        Some(s) if s == f64::from(declaration.timeout_s) => {}
        other => c.mismatches.push(format!(
            "Timeout is {other:?}, the declaration says timeout_s = {}",
            declaration.timeout_s
        )),
    }

    // Warmth: provisioned concurrency on a published alias, or none at all.
    let alias = f.get("Properties").and_then(|p| p.get("AutoPublishAlias"));
    let provisioned = f
        .get("Properties")
        .and_then(|p| p.get("ProvisionedConcurrencyConfig"))
        .and_then(|p| p.get("ProvisionedConcurrentExecutions"));
    if declaration.pinned_warm {
        match (alias, provisioned.and_then(|v| template.number(v))) {
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
    match declaration.trigger {
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
        Trigger::Sqs => check_sqs(
            template,
            declaration,
            &of_type("SQS"),
            prop("Timeout"),
            &mut c,
        ),
        Trigger::EventBridge => {
            if !of_type("S3").is_empty() || !of_type("SQS").is_empty() {
                c.mismatches.push(
                    "is declared trigger = \"eventbridge\" but also has an S3 or SQS event"
                        .to_string(),
                );
            }
            check_eventbridge(template, declaration, f, &mut c);
        }
    }
    c
}

/// Variables whose value the declaration fixes: a template that sets one to something else
/// deploys a function that behaves unlike its declaration (and unlike what the plan priced).
pub fn declared_env_values(declaration: &Declaration) -> Vec<(String, u64)> {
    let prefix = &declaration.env_prefix;
    let mut out = vec![(
        format!("{prefix}_MAX_BATCH"),
        u64::from(declaration.max_batch),
    )];
    if declaration.workload == "embeddings" {
        out.push((
            "EMBEDDINGS_MAX_INPUTS".to_string(),
            u64::from(declaration.max_batch),
        ));
    }
    if let Some(b) = declaration.bulk_batch {
        out.push((format!("{prefix}_BULK_BATCH"), u64::from(b)));
    }
    if let Some(n) = declaration.bulk_threshold {
        out.push((format!("{prefix}_BULK_THRESHOLD"), n));
    }
    out
}

/// A function's `Environment.Variables` (its own over `Globals.Function`'s).
fn function_env<'a>(template: &'a Template, function: &'a Value) -> Vec<(&'a str, &'a Value)> {
    let mut out: Vec<(&str, &Value)> = Vec::new();
    for source in [
        template.root.get("Globals").and_then(|g| g.get("Function")),
        function.get("Properties"),
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

fn check_env(
    template: &Template,
    declaration: &Declaration,
    function: &Value,
    result: &mut FunctionCheck,
) {
    let env = function_env(template, function);
    // Its own required variables, and each co-hosted workload's (which the host needs for it).
    let required: Vec<(&str, &str)> = declaration
        .required_env
        .iter()
        .map(|n| (n.as_str(), declaration.workload.as_str()))
        .chain(declaration.cohosted.iter().flat_map(|c| {
            c.required_env
                .iter()
                .map(move |n| (n.as_str(), c.workload.as_str()))
        }))
        .collect();
    let missing: Vec<String> = required
        .iter()
        .filter(|(name, _)| !env.iter().any(|(n, _)| n == name))
        .map(|(name, w)| format!("{name} ({w})"))
        .collect();
    if missing.is_empty() {
        if !required.is_empty() {
            result
                .ok
                .push(format!("sets the {} required variables", required.len()));
        }
    } else {
        result.mismatches.push(format!(
            "does not set {}, which the declaration lists in required_env: the function would fail at init",
            missing.join(", ")
        ));
    }
    // The switch that makes the host load a co-hosted workload, at exactly its value: a
    // literal, or `!If [Condition, value, other]` (on once its model is published), which the
    // check reports with its condition.
    for c in &declaration.cohosted {
        for (name, want) in &c.env {
            let found = env.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            match found.map(|v| (template.string(v), if_branches(v))) {
                Some((Some(s), _)) if s == want => {}
                Some((None, Some((condition, then, _))))
                    if template.string(then) == Some(want.as_str()) =>
                {
                    result.ok.push(format!(
                        "{name} is {want:?} for the co-hosted {} once {condition} holds",
                        c.workload
                    ));
                }
                _ => result.mismatches.push(format!(
                    "{name} is {:?}, the co-hosted {} needs {want:?}",
                    found.map(|v| template
                        .string(v)
                        .map_or_else(|| format!("{v:?}"), str::to_string)),
                    c.workload
                )),
            }
        }
    }
    for (name, want) in declared_env_values(declaration) {
        let Some((_, v)) = env.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        match template.number(v) {
            Some(x) if x == want as f64 => {}
            found => result
                .mismatches
                .push(format!("{name} is {found:?}, the declaration says {want}")),
        }
    }
}

/// The condition and both values of an `!If [Condition, then, else]` (or `{Fn::If: [...]}`).
fn if_branches(value: &Value) -> Option<(&str, &Value, &Value)> {
    let args = match value {
        Value::Tagged(t) if super::tag_is(&t.tag, "If") => &t.value,
        Value::Mapping(m) if m.len() == 1 => m.get("Fn::If")?,
        _ => return None,
    };
    match args.as_sequence()?.as_slice() {
        [condition, then, other] => Some((condition.as_str()?, then, other)),
        _ => None,
    }
}

/// The layers a function runs with: `Globals.Function`'s and then its own (SAM appends the
/// function's list to the global one, unlike the other properties, which it overrides).
fn function_layers<'a>(template: &'a Template, function: &'a Value) -> Vec<&'a Value> {
    [
        template.root.get("Globals").and_then(|g| g.get("Function")),
        function.get("Properties"),
    ]
    .into_iter()
    .filter_map(|p| p?.get("Layers")?.as_sequence())
    .flatten()
    .collect()
}

/// Every layer is one of this template's `AWS::Serverless::LayerVersion`s, deployed from the
/// zip `make package` built and counted in the function's 250 MB
/// (`target/lambda/layers/<name>.zip`), and none comes twice.
pub(super) fn check_layers(template: &Template, function: &Value, result: &mut FunctionCheck) {
    let mut names = Vec::new();
    for layer in function_layers(template, function) {
        let Some(id) = ref_target(layer) else {
            result.mismatches.push(format!(
                "layer {layer:?} is not a !Ref to a layer of this template (an ARN from elsewhere was not size-checked with the function)"
            ));
            continue;
        };
        let resource = template.resource(id).filter(|r| {
            r.get("Type").and_then(Value::as_str) == Some("AWS::Serverless::LayerVersion")
        });
        let content = resource
            .and_then(|r| r.get("Properties"))
            .and_then(|p| p.get("ContentUri"))
            .and_then(|v| template.string(v));
        match content {
            _ if names.contains(&id) => result
                .mismatches
                .push(format!("layer {id} is attached twice")),
            Some(uri) if uri.contains("target/lambda/layers/") && uri.ends_with(".zip") => {}
            _ if resource.is_none() => result.mismatches.push(format!(
                "layer {id} is not an AWS::Serverless::LayerVersion in this template"
            )),
            other => result.mismatches.push(format!(
                "layer {id} must be deployed from ContentUri .../target/lambda/layers/<name>.zip (the layer make package built), found {other:?}"
            )),
        }
        names.push(id);
    }
    if !names.is_empty() {
        result.ok.push(format!(
            "layers {} from the packaged zips",
            names.join(", ")
        ));
    }
}

/// `/tmp` holds what the sandbox fetches (a model from S3) and what it writes (the optimised
/// graphs, when the cache is under `/tmp`); Lambda gives 512 MB unless `EphemeralStorage` says
/// more. 10% headroom covers the temporary file of an atomic rename and the logs.
fn check_storage(
    template: &Template,
    declaration: &Declaration,
    function: &Value,
    result: &mut FunctionCheck,
) {
    let env = function_env(template, function);
    let value = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| template.string(v).unwrap_or("<computed>"))
    };
    // A model is fetched when its `<PREFIX>*_SOURCE` is not in the zip or a layer.
    let fetches = |prefix: &str| {
        env.iter().any(|(n, v)| {
            n.starts_with(prefix)
                && n.ends_with("_SOURCE")
                && !template
                    .string(v)
                    .is_some_and(|s| s.starts_with("/var/task/") || s.starts_with("/opt/"))
        })
    };
    let cache_in_tmp = value("COLDPATH_OPTIMIZED_MODEL_DIR").is_some_and(|s| s.starts_with("/tmp"));
    // The function's own model, and each co-hosted workload's (its engine's prefix).
    let mut models = vec![(
        declaration.workload.as_str(),
        fetches(&declaration.env_prefix),
        declaration.model_mb,
        declaration.optimized_graph_mb,
    )];
    models.extend(declaration.cohosted.iter().map(|c| {
        (
            c.workload.as_str(),
            fetches(&c.env_prefix),
            c.model_mb,
            c.optimized_graph_mb,
        )
    }));
    let fetched = models.iter().any(|m| m.1);
    let without_size: Vec<&str> = models
        .iter()
        .filter(|m| m.1 && m.2.is_none())
        .map(|m| m.0)
        .collect();
    let model: u32 = models
        .iter()
        .filter(|m| m.1)
        .map(|m| m.2.unwrap_or(0))
        .sum();
    let graphs: u32 = if cache_in_tmp {
        models.iter().map(|m| m.3.unwrap_or(0)).sum()
    } else {
        0
    };
    let need = (f64::from(model + graphs) * 1.1).ceil();
    let have = function
        .get("Properties")
        .and_then(|p| p.get("EphemeralStorage"))
        .and_then(|e| e.get("Size"))
        .and_then(|v| template.number(v))
        .unwrap_or(512.0);
    if fetched && !without_size.is_empty() {
        result.mismatches.push(format!(
            "fetches the model of {} into /tmp but the declaration has no model_mb to size the storage by",
            without_size.join(", ")
        ));
    } else if have >= need {
        if need > 0.0 {
            result.ok.push(format!(
                "/tmp {have} MB holds {need} MB of model and graphs"
            ));
        }
    } else {
        result.mismatches.push(format!(
            "EphemeralStorage is {have} MB, but /tmp must hold {need} MB: model_mb {model} fetched, \
             optimized_graph_mb {graphs} cached, plus 10%"
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

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
