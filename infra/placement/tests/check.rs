//! Placement: `coldpath check` against the real template and against broken copies of it,
//! `coldpath plan` on the two shipped profiles, and declaration errors on broken manifests.
//!
//! These tests need no ONNX Runtime and no network: they read the committed declarations
//! (through `cargo metadata`), the hosts' `contract.json`, `infra/template.yaml`, `infra/gpu/`
//! and `infra/placement/`. (They lived in the root crate's integration suite, under the same
//! names, until they moved beside the crate they test.)

use std::path::{Path, PathBuf};

use coldpath_placement::cli::{self, Outcome};
use coldpath_placement::declaration;
use coldpath_placement::{DeclarationError, Placement, Plan, plan};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check(template: &Path) -> Outcome {
    cli::run_check(&repo_root(), template).expect("check runs")
}

/// A copy of the real template with `from` replaced by `to` (which must occur exactly once).
fn broken_template(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "the edit must hit exactly one place: {from}"
    );
    let path = dir.join("template.yaml");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

/// The lines of a failed check that name a mismatch.
fn mismatches(outcome: &Outcome) -> Vec<&str> {
    outcome
        .stderr
        .lines()
        .filter(|l| l.starts_with("MISMATCH"))
        .collect()
}

#[test]
fn check_passes_on_the_real_template() {
    let out = check(&repo_root().join("infra/template.yaml"));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for function in [
        "EmbeddingsFunction",
        "FacesFunction",
        "PhotoVectorsFunction",
        "CaptioningFunction",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("OK {function} "))),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("OK captioning worker (infra/gpu/Dockerfile)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("OK captioning worker (infra/gpu/batch.yaml)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("OK infra/pod/service.yaml (embeddings+faces+clip-text): "),
        "{}",
        out.stdout
    );
}

#[test]
fn check_fails_when_a_pinned_function_loses_provisioned_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "      ProvisionedConcurrencyConfig:\n        ProvisionedConcurrentExecutions: !Ref EmbeddingsProvisioned\n",
        "",
    );
    let out = check(&t);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let m = mismatches(&out);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with("MISMATCH EmbeddingsFunction (embeddings):"),
        "{m:?}"
    );
    assert!(
        m[0].contains("pinned_warm") && m[0].contains("ProvisionedConcurrencyConfig"),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_a_pinned_function_has_no_published_alias() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    // Faces' AutoPublishAlias is the second one in the file.
    let at = text
        .match_indices("      AutoPublishAlias: live\n")
        .nth(1)
        .unwrap()
        .0;
    let t = dir.path().join("template.yaml");
    let edited = format!(
        "{}{}",
        &text[..at],
        &text[at + "      AutoPublishAlias: live\n".len()..]
    );
    std::fs::write(&t, edited).unwrap();
    let out = check(&t);
    let m = mismatches(&out);
    assert_eq!(out.code, 1);
    assert!(
        m.len() == 1
            && m[0].starts_with("MISMATCH FacesFunction (faces):")
            && m[0].contains("AutoPublishAlias"),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_a_serverless_function_gets_provisioned_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "      Timeout: !Ref CaptioningTimeout\n",
        "      Timeout: !Ref CaptioningTimeout\n      AutoPublishAlias: live\n      ProvisionedConcurrencyConfig:\n        ProvisionedConcurrentExecutions: 1\n",
    );
    let out = check(&t);
    let m = mismatches(&out);
    assert_eq!(out.code, 1);
    assert!(
        m.len() == 1 && m[0].starts_with("MISMATCH CaptioningFunction (captioning):"),
        "{m:?}"
    );
    assert!(m[0].contains("declared serverless"), "{m:?}");
}

#[test]
fn check_fails_without_report_batch_item_failures() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "            FunctionResponseTypes: [ReportBatchItemFailures]\n",
        "",
    );
    let out = check(&t);
    let m = mismatches(&out);
    assert_eq!(out.code, 1);
    assert!(
        m.len() == 1 && m[0].starts_with("MISMATCH CaptioningFunction (captioning):"),
        "{m:?}"
    );
    assert!(m[0].contains("ReportBatchItemFailures"), "{m:?}");
}

#[test]
fn check_fails_without_a_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "      RedrivePolicy:\n        deadLetterTargetArn: !GetAtt CaptionDeadLetterQueue.Arn\n        maxReceiveCount: !Ref CaptionMaxReceiveCount\n",
        "",
    );
    let out = check(&t);
    let m = mismatches(&out);
    assert_eq!(out.code, 1);
    assert!(
        m.len() == 1 && m[0].starts_with("MISMATCH CaptioningFunction (captioning):"),
        "{m:?}"
    );
    assert!(m[0].contains("no dead-letter queue"), "{m:?}");
}

#[test]
fn check_fails_when_the_visibility_timeout_is_under_six_function_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "      VisibilityTimeout: !FindInMap [CaptionQueueTiming, !Ref CaptioningTimeout, VisibilityTimeout]\n",
        "      VisibilityTimeout: 600\n",
    );
    let out = check(&t);
    let m = mismatches(&out);
    assert_eq!(out.code, 1);
    assert!(
        m.len() == 1 && m[0].contains("VisibilityTimeout Some(600.0)"),
        "{m:?}"
    );
}

#[test]
fn check_fails_on_an_environment_variable_the_function_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "          FACES_MIN_SCORE: !Ref FacesMinScore\n",
        "          FACES_MINSCORE: !Ref FacesMinScore\n",
    );
    let out = check(&t);
    let m = mismatches(&out);
    assert_eq!(out.code, 1);
    assert!(
        m.len() == 1
            && m[0].starts_with("MISMATCH FacesFunction (faces):")
            && m[0].contains("FACES_MINSCORE"),
        "{m:?}"
    );
}

/// A variable only a test build reads (the fault-injection pause) is in no deployed binary's
/// contract, so a template that sets it is refused, naming it. (Read from source text, it
/// would pass: the literal is in the captioning engine's sources.)
#[test]
fn check_fails_on_a_variable_only_a_test_reads() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "          CAPTIONING_MAX_BATCH: !Ref CaptioningBatchSize\n",
        "          CAPTIONING_MAX_BATCH: !Ref CaptioningBatchSize\n          CAPTIONING_FAULT_BATCH_DELAY_MS: \"50\"\n",
    );
    let out = check(&t);
    let m = mismatches(&out);
    assert_eq!(out.code, 1);
    assert_eq!(
        m,
        [
            "MISMATCH CaptioningFunction (captioning): sets environment variables the function never reads: CAPTIONING_FAULT_BATCH_DELAY_MS"
        ]
    );
}

#[test]
fn check_fails_when_memory_disagrees_with_the_declaration() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(dir.path(), "    Default: 3008\n", "    Default: 2048\n");
    let out = check(&t);
    let m = mismatches(&out);
    assert_eq!(out.code, 1);
    assert!(
        m.len() == 1
            && m[0].contains("MemorySize is Some(2048.0)")
            && m[0].contains("memory_mb = 3008"),
        "{m:?}"
    );
}

/// One mismatch, naming `function` and containing every one of `needles`.
fn assert_one_mismatch(out: &Outcome, function: &str, needles: &[&str]) {
    let m = mismatches(out);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        m.len() == 1 && m[0].starts_with(&format!("MISMATCH {function}")),
        "{m:?}"
    );
    for needle in needles {
        assert!(m[0].contains(needle), "{needle:?} not in {m:?}");
    }
}

#[test]
fn check_fails_when_a_required_variable_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "          # The sink adds the function's name: results land at captioning/<id>.json.\n          COLDPATH_RESULT_SINK: !Sub \"s3://${ResultsBucket}\"\n",
        "",
    );
    assert_one_mismatch(
        &check(&t),
        "CaptioningFunction",
        &["COLDPATH_RESULT_SINK", "required_env"],
    );
}

#[test]
fn check_fails_when_an_environment_value_drifts_from_the_declaration() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "          CAPTIONING_MAX_BATCH: !Ref CaptioningBatchSize\n",
        "          CAPTIONING_MAX_BATCH: \"16\"\n",
    );
    assert_one_mismatch(
        &check(&t),
        "CaptioningFunction",
        &["CAPTIONING_MAX_BATCH is Some(16.0)", "declaration says 8"],
    );
}

#[test]
fn check_fails_when_tmp_cannot_hold_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(dir.path(), "    Default: 3072\n", "    Default: 1024\n");
    assert_one_mismatch(
        &check(&t),
        "CaptioningFunction",
        &[
            "EphemeralStorage is 1024 MB",
            "1166 MB",
            "model_mb 1060",
            "optimized_graph_mb 0",
        ],
    );
}

#[test]
fn check_fails_on_reserved_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "      Timeout: !Ref CaptioningTimeout\n",
        "      Timeout: !Ref CaptioningTimeout\n      ReservedConcurrentExecutions: 10\n",
    );
    assert_one_mismatch(
        &check(&t),
        "CaptioningFunction",
        &["ReservedConcurrentExecutions", "new account"],
    );
}

#[test]
fn check_fails_when_the_deployed_code_is_not_the_packaged_zip() {
    let dir = tempfile::tempdir().unwrap();
    let t = broken_template(
        dir.path(),
        "      CodeUri: ../target/lambda/faces.zip\n",
        "      CodeUri: ../functions/hosts/faces\n",
    );
    assert_one_mismatch(
        &check(&t),
        "FacesFunction",
        &["target/lambda/faces.zip", "../functions/hosts/faces"],
    );
}

/// A copy of the repository's `infra/` and declarations with `batch.yaml` edited, so the
/// worker checks run on the broken copy.
fn root_with_broken_batch(dir: &Path, from: &str, to: &str) -> PathBuf {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("infra/gpu/batch.yaml")).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "the edit must hit exactly one place: {from}"
    );
    copy_root(dir);
    std::fs::write(dir.join("infra/gpu/batch.yaml"), text.replace(from, to)).unwrap();
    dir.to_path_buf()
}

/// What `check` reads: the workspace `cargo metadata` describes (every member's manifest and
/// sources, and the hosts' `contract.json`), the GPU worker's packaging and the pod's.
fn copy_root(dir: &Path) {
    let root = repo_root();
    for member in ["functions", "shared", "tests", "infra/placement"] {
        copy_tree(&root.join(member), &dir.join(member));
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root.join(file), dir.join(file)).unwrap();
    }
    std::fs::create_dir_all(dir.join("infra/gpu")).unwrap();
    for f in ["Dockerfile", "batch.yaml"] {
        std::fs::copy(
            root.join("infra/gpu").join(f),
            dir.join("infra/gpu").join(f),
        )
        .unwrap();
    }
    copy_pod(dir);
}

/// The pod's template and images, which `check` reads beside the functions'.
fn copy_pod(dir: &Path) {
    std::fs::create_dir_all(dir.join("infra/pod")).unwrap();
    for f in ["service.yaml", "Dockerfile", "Dockerfile.cuda"] {
        std::fs::copy(
            repo_root().join("infra/pod").join(f),
            dir.join("infra/pod").join(f),
        )
        .unwrap();
    }
}

/// `check` on a copy of the repository where `file` has `from` replaced by `to` (exactly once):
/// the mismatch lines, all of which must be the pod's.
fn check_pod_with(file: &str, from: &str, to: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    copy_root(dir.path());
    let root = dir.path();
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "the edit must hit exactly one place: {from}"
    );
    std::fs::write(&path, text.replace(from, to)).unwrap();
    let out = cli::run_check(root, &repo_root().join("infra/template.yaml")).expect("check runs");
    assert_eq!(out.code, 1, "{}", out.stdout);
    let m: Vec<String> = mismatches(&out).into_iter().map(str::to_string).collect();
    assert!(
        !m.is_empty()
            && m.iter()
                .all(|l| l
                    .starts_with("MISMATCH infra/pod/service.yaml (embeddings+faces+clip-text): ")),
        "{m:?}"
    );
    m
}

#[test]
fn check_fails_when_a_pod_image_sets_a_variable_the_server_never_reads() {
    let m = check_pod_with(
        "infra/pod/Dockerfile",
        "    PORT=8080 \\\n",
        "    PORT=8080 \\\n    COLDPATH_SERVE_BATCH=4 \\\n",
    );
    assert!(
        m.len() == 1
            && m[0].contains("CpuTaskDefinition with infra/pod/Dockerfile: sets variables the server never reads: COLDPATH_SERVE_BATCH"),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_the_gpu_image_leaves_out_a_model_the_server_needs() {
    let m = check_pod_with(
        "infra/pod/Dockerfile.cuda",
        "    EMBEDDINGS_MODEL_SOURCE=/opt/coldpath/models/embeddings \\\n",
        "",
    );
    assert!(
        m.len() == 1
            && m[0].contains("GpuTaskDefinition with infra/pod/Dockerfile.cuda: does not set EMBEDDINGS_MODEL_SOURCE"),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_the_load_balancer_sends_to_another_port() {
    let m = check_pod_with(
        "infra/pod/service.yaml",
        "          ContainerPort: 8080\n",
        "          ContainerPort: 8081\n",
    );
    assert!(
        m.len() == 1
            && m[0].contains(
                "Service: LoadBalancers ContainerPort is Some(8081.0), the server listens on 8080"
            ),
        "{m:?}"
    );
    let m = check_pod_with(
        "infra/pod/service.yaml",
        "\n      Port: 8080\n",
        "\n      Port: 80\n",
    );
    assert!(
        m.len() == 1 && m[0].contains("TargetGroup: Port is Some(80.0)"),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_a_health_check_names_no_route_of_the_server() {
    let m = check_pod_with(
        "infra/pod/service.yaml",
        "HealthCheckPath: /ready\n",
        "HealthCheckPath: /readyz\n",
    );
    assert!(
        m.len() == 1
            && m[0].contains("TargetGroup: HealthCheckPath is Some(\"/readyz\"); it must be the declared ready_path /ready"),
        "{m:?}"
    );
    // The declaration moved to a path the server does not have: both task definitions fail.
    let m = check_pod_with(
        "functions/hosts/serve/Cargo.toml",
        "health_path = \"/health\"",
        "health_path = \"/healthz\"",
    );
    assert!(
        m.len() == 2
            && m.iter()
                .all(|l| l.contains("health_path /healthz is not a route of the server")),
        "{m:?}"
    );
}

/// The pod declares CLIP's text tower among its hosts; a task that leaves `clip` out of the
/// server's workloads would start without it (and the images' default hosts only two).
#[test]
fn check_fails_when_a_task_does_not_host_a_declared_workload() {
    let m = check_pod_with(
        "infra/pod/service.yaml",
        "            - {Name: COLDPATH_SERVE_WORKLOADS, Value: \"embeddings,faces,clip\"}\n            - {Name: CLIP_MODEL_NAME, Value: !Ref ClipModelName}\n            - {Name: CLIP_MODEL_SOURCE, Value: !Sub \"s3://${ModelBucketName}/${ClipModelPrefix}/${ClipModelVersion}\"}\n            - {Name: CLIP_MODEL_SHA256, Value: !Ref ClipModelSha256}\n            - {Name: COLDPATH_OBJECT_STORE, Value: s3}\n            - {Name: COLDPATH_SERVE_READ_TIMEOUT_MS, Value: \"65000\"}\n            - {Name: COLDPATH_SERVE_FACES_QUEUE",
        "            - {Name: CLIP_MODEL_NAME, Value: !Ref ClipModelName}\n            - {Name: CLIP_MODEL_SOURCE, Value: !Sub \"s3://${ModelBucketName}/${ClipModelPrefix}/${ClipModelVersion}\"}\n            - {Name: CLIP_MODEL_SHA256, Value: !Ref ClipModelSha256}\n            - {Name: COLDPATH_OBJECT_STORE, Value: s3}\n            - {Name: COLDPATH_SERVE_READ_TIMEOUT_MS, Value: \"65000\"}\n            - {Name: COLDPATH_SERVE_FACES_QUEUE",
    );
    assert_eq!(
        m,
        [
            "MISMATCH infra/pod/service.yaml (embeddings+faces+clip-text): CpuTaskDefinition with infra/pod/Dockerfile: COLDPATH_SERVE_WORKLOADS is \"embeddings,faces\", so the server would not host clip-text (clip), which the pod declares"
        ]
    );
}

#[test]
fn check_fails_when_the_task_cannot_hold_the_hosted_workloads() {
    let m = check_pod_with(
        "infra/pod/service.yaml",
        "    Default: 5120\n",
        "    Default: 2048\n",
    );
    assert!(
        m.iter().any(|l| l.contains(
            "CpuTaskDefinition: Memory is Some(2048.0) MiB, under the hosted workloads' declared memory_mb together (3305)"
        )),
        "{m:?}"
    );
    // Also no longer the size the plan priced.
    assert!(
        m.iter()
            .any(|l| l.contains("Fargate size is Cpu Some(2048.0), Memory Some(2048.0)")),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_scaling_or_the_gpu_drift_from_the_declaration() {
    let m = check_pod_with(
        "infra/pod/service.yaml",
        "    Default: 60\n",
        "    Default: 80\n",
    );
    assert!(
        m.len() == 1 && m[0].contains("ECSServiceAverageCPUUtilization at the declared target_cpu_percent 60, found [Some(80.0)]"),
        "{m:?}"
    );
    let m = check_pod_with(
        "infra/pod/service.yaml",
        "    Default: g5.xlarge\n",
        "    Default: g5.2xlarge\n",
    );
    assert!(
        m.len() == 1 && m[0].contains("GpuLaunchTemplate: InstanceType is Some(\"g5.2xlarge\")"),
        "{m:?}"
    );
    let m = check_pod_with(
        "infra/pod/service.yaml",
        "            - {Type: GPU, Value: \"1\"}\n",
        "",
    );
    assert!(
        m.len() == 1 && m[0].contains("GpuTaskDefinition: ResourceRequirements GPU is None"),
        "{m:?}"
    );
    let m = check_pod_with(
        "infra/pod/service.yaml",
        "    Default: 1\n    MinValue: 1\n    Description: The warm floor",
        "    Default: 0\n    MinValue: 0\n    Description: The warm floor",
    );
    assert!(
        m.len() == 1 && m[0].contains("ScalableTarget: MinCapacity is Some(0.0)"),
        "{m:?}"
    );
}

/// Whether `.dockerignore` rules (`pattern` lines, `!pattern` re-includes, the last matching
/// line wins, as Docker reads them) leave `path` in the build context. A pattern matches the path
/// or any directory above it; `*` matches within one path segment, `**` any number of segments.
fn in_build_context(dockerignore: &str, path: &str) -> bool {
    fn segment(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                name.starts_with(head)
                    && (0..=name.len() - head.len()).any(|i| segment(tail, &name[head.len() + i..]))
            }
        }
    }
    fn matches(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.first(), path.first()) {
            // The pattern is used up: it named this path or a directory above it.
            (None, _) => true,
            (Some(&"**"), _) => (0..=path.len()).any(|i| matches(&pattern[1..], &path[i..])),
            (Some(p), Some(name)) => segment(p, name) && matches(&pattern[1..], &path[1..]),
            (Some(_), None) => false,
        }
    }
    let path: Vec<&str> = path.split('/').collect();
    let mut included = true;
    for line in dockerignore.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keep, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        if matches(&pattern, &path) {
            included = keep;
        }
    }
    included
}

#[test]
fn dockerignore_rules_are_read_in_order_with_re_includes() {
    let rules = ".cache/*\n!.cache/lib\n.cache/lib/*\n!.cache/lib/libheif.so.1\n**/node_modules\n";
    assert!(in_build_context(rules, ".cache/lib/libheif.so.1"));
    // Re-included directory, then its files excluded again: only the named one is back.
    assert!(!in_build_context(rules, ".cache/lib/libavif.so.16"));
    assert!(!in_build_context(rules, ".cache/models/x/model.onnx"));
    assert!(!in_build_context(rules, "web/node_modules/a.js"));
    assert!(in_build_context(rules, "shared/image/src/lib.rs"));
    assert!(!in_build_context(".venv-*\n", ".venv-deploy/bin/python"));
}

/// The COPY sources of the pod's images and the captioning GPU worker's: what `make setup` put
/// in .cache and the committed files. No container engine runs here, so this is what can be held
/// without a build: every path exists, and the image's `.dockerignore`, read in order, lets each
/// one into the build context.
#[test]
fn the_images_copy_only_paths_that_exist_and_reach_the_build_context() {
    let root = repo_root();
    for dockerfile in [
        "infra/pod/Dockerfile",
        "infra/pod/Dockerfile.cuda",
        "infra/gpu/Dockerfile",
    ] {
        let text = std::fs::read_to_string(root.join(dockerfile)).unwrap();
        let ignore =
            std::fs::read_to_string(root.join(format!("{dockerfile}.dockerignore"))).unwrap();
        let mut sources = 0;
        for line in text.lines() {
            let Some(args) = line.strip_prefix("COPY ") else {
                continue;
            };
            if args.starts_with("--from=") {
                continue;
            }
            let parts: Vec<&str> = args.split_whitespace().collect();
            for source in &parts[..parts.len() - 1] {
                if *source == "." {
                    continue;
                }
                sources += 1;
                assert!(
                    root.join(source).exists(),
                    "{dockerfile}: COPY source {source} does not exist (run make setup)"
                );
                assert!(
                    in_build_context(&ignore, source),
                    "{dockerfile}: {source} is excluded from the build context by {dockerfile}.dockerignore"
                );
            }
        }
        assert!(sources >= 3, "{dockerfile}: {sources} COPY sources found");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" {
                copy_tree(&path, &to.join(name));
            }
        } else if path.extension().is_some_and(|e| e == "rs" || e == "toml")
            || name == "contract.json"
        {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
}

fn check_batch(from: &str, to: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let root = root_with_broken_batch(dir.path(), from, to);
    let out = cli::run_check(&root, &repo_root().join("infra/template.yaml")).expect("check runs");
    assert_eq!(out.code, 1, "{}", out.stdout);
    mismatches(&out).into_iter().map(str::to_string).collect()
}

#[test]
fn check_fails_when_the_bulk_worker_batches_unlike_the_declaration() {
    let m = check_batch(
        "    Default: 32\n    Description: CAPTIONING_BULK_BATCH",
        "    Default: 64\n    Description: CAPTIONING_BULK_BATCH",
    );
    assert!(
        m.len() == 1
            && m[0].contains("BulkJobDefinition")
            && m[0].contains("CAPTIONING_BULK_BATCH is Some(64.0), the declaration says 32"),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_a_worker_asks_for_less_memory_than_declared() {
    let m = check_batch(
        "          - {Type: MEMORY, Value: \"44000\"}\n",
        "          - {Type: MEMORY, Value: \"4000\"}\n",
    );
    assert!(
        m.len() == 1 && m[0].contains("MEMORY is Some(4000.0) MiB") && m[0].contains("6144"),
        "{m:?}"
    );
}

fn shipped_plan(profile: &str) -> Plan {
    let root = repo_root();
    cli::plan_for(
        &root,
        &root.join("infra/placement/profiles").join(profile),
        &[],
        &root.join("infra/placement/prices.toml"),
    )
    .expect("plan")
}

fn placement_of(plan: &Plan, workload: &str) -> Placement {
    plan.decisions
        .iter()
        .find(|d| d.workload == workload)
        .unwrap()
        .placement
}

#[test]
fn founding_profile_pins_search_and_faces_and_scales_captioning_to_zero() {
    let p = shipped_plan("founding.toml");
    assert_eq!(placement_of(&p, "embeddings"), Placement::PinnedWarm);
    assert_eq!(placement_of(&p, "faces"), Placement::PinnedWarm);
    assert_eq!(
        placement_of(&p, "captioning"),
        Placement::ServerlessOnDemand
    );
    // Keeping the two waiting paths warm costs more than scaling everything to zero and less
    // than keeping everything on; the trickle of captions, kept warm, would cost 15 times more.
    assert!(p.total_serverless_usd < p.total_chosen_usd, "{p:?}");
    assert!(p.total_chosen_usd < p.total_always_on_usd, "{p:?}");
    let captioning = p
        .decisions
        .iter()
        .find(|d| d.workload == "captioning")
        .unwrap();
    // What the template ships: the trickle on Lambda's CPUs.
    assert_eq!(captioning.compute, "cpu");
    assert!(
        captioning.cost_chosen_usd * 10.0 < captioning.cost_always_on_usd,
        "{captioning:?}"
    );
    // Before (two pods 24/7) against after (one pod + serverless GPU captioning).
    let [before, after] = &p.scenarios[..] else {
        panic!("two scenarios: {:?}", p.scenarios)
    };
    assert!(before.name.starts_with("before") && after.name.starts_with("after"));
    assert!(
        after.monthly_usd < before.monthly_usd * 0.55,
        "{before:?} {after:?}"
    );
    assert!(p.total_chosen_usd < after.monthly_usd);
    // The trickle of captions: on measured CPU figures Lambda costs less per caption than GPU
    // containers started for bursts, and the serverless GPU overtakes it at a few hundred
    // thousand captions a month.
    let u = &p.unit_costs[0];
    assert_eq!(u.workload, "captioning");
    assert_eq!(u.cheapest(), "Lambda CPU", "{u:?}");
    let crossover = u.serverless_gpu_crossover_items.unwrap();
    assert!(
        crossover > u.items_per_month && crossover < 20.0 * u.items_per_month,
        "{u:?}"
    );
}

#[test]
fn bulk_profile_sends_the_backlog_to_a_large_gpu_with_large_batches() {
    let p = shipped_plan("bulk.toml");
    assert_eq!(placement_of(&p, "captioning"), Placement::BulkGpu);
    assert_eq!(placement_of(&p, "embeddings"), Placement::PinnedWarm);
    let captioning = p
        .decisions
        .iter()
        .find(|d| d.workload == "captioning")
        .unwrap();
    // The declared bulk_batch, which the bulk workers are deployed with.
    assert_eq!(captioning.batch, 32, "{captioning:?}");
    let small = p.bulk.iter().find(|b| b.instance == "g5.xlarge").unwrap();
    let large = p
        .bulk
        .iter()
        .filter(|b| b.instance == "g5.12xlarge")
        .min_by(|a, b| a.usd.total_cmp(&b.usd))
        .unwrap();
    assert!(
        large.usd < small.usd && large.gpu_hours < small.gpu_hours,
        "{small:?} {large:?}"
    );
    assert!(
        large.wall_hours * 4.0 < small.wall_hours,
        "{small:?} {large:?}"
    );
    // A million captions: the bulk GPU costs a small fraction of Lambda's CPUs.
    let u = &p.unit_costs[0];
    assert!(large.usd * 5.0 < 1e6 * u.lambda_item_usd, "{large:?} {u:?}");
    assert_ne!(u.cheapest(), "Lambda CPU", "{u:?}");
}

#[test]
fn founding_profile_prices_the_pod_against_provisioned_lambda() {
    let p = shipped_plan("founding.toml");
    let pod = p
        .pod
        .as_ref()
        .expect("the pod is declared in functions/hosts/serve/Cargo.toml");
    assert_eq!(
        pod.hosts
            .iter()
            .map(|h| h.workload.as_str())
            .collect::<Vec<_>>(),
        ["embeddings", "faces", "clip-text"]
    );
    // At the founding traffic the template's provisioned Lambda is cheaper than a pod ...
    assert_eq!(pod.fargate_pods, 1);
    assert!(pod.lambda_usd < pod.fargate_usd, "{pod:?}");
    assert!(pod.fargate_usd < pod.gpu_usd, "{pod:?}");
    let always_on: f64 = p
        .decisions
        .iter()
        .filter(|d| ["embeddings", "faces", "clip-text"].contains(&d.workload.as_str()))
        .map(|d| d.cost_always_on_usd)
        .sum();
    assert!((pod.lambda_usd - always_on).abs() < 1e-9, "{pod:?}");
    // ... and the pod wins at hundreds of times this traffic, with faces still riding free there.
    let k = pod.breakeven_scale.unwrap();
    assert!(k > 10.0 && k < 10_000.0, "{k}");
    let faces = &pod.hosts[1];
    assert!(faces.rides_free, "{faces:?}");
    assert!(faces.rides_free_until_scale.unwrap() > k, "{faces:?}");
    assert!(pod.gpu_breakeven_scale.unwrap() > k);
    let text = plan::render(&p);
    assert!(text.contains("faces rides free"), "{text}");
    assert!(text.contains("clip-text rides free"), "{text}");
}

/// Photo search by words: the query's vector is on the perceived path, so CLIP's text tower is
/// pinned warm inside the provisioned embeddings function and priced as the memory it adds
/// there; a photo's vector is off it, so the clip function scales to zero, priced per photo.
#[test]
fn founding_profile_pins_the_query_tower_and_scales_the_photo_tower_to_zero() {
    let p = shipped_plan("founding.toml");
    let text = p
        .decisions
        .iter()
        .find(|d| d.workload == "clip-text")
        .unwrap();
    assert_eq!(text.placement, Placement::PinnedWarm);
    assert_eq!(text.function, "EmbeddingsFunction");
    assert_eq!(text.hosted_by.as_deref(), Some("embeddings"));
    assert!(text.reason.contains("perceived path"), "{}", text.reason);
    assert!(
        text.reason
            .contains("its 512 MB are provisioned with that function"),
        "{}",
        text.reason
    );
    // Its share of the provisioned function: half of embeddings' own 1024 MB reserved.
    let embeddings = p
        .decisions
        .iter()
        .find(|d| d.workload == "embeddings")
        .unwrap();
    assert!(
        text.cost_chosen_usd > embeddings.cost_chosen_usd * 0.4
            && text.cost_chosen_usd < embeddings.cost_chosen_usd,
        "{text:?} {embeddings:?}"
    );
    let vision = p
        .decisions
        .iter()
        .find(|d| d.workload == "clip-vision")
        .unwrap();
    assert_eq!(vision.placement, Placement::ServerlessOnDemand);
    assert_eq!(vision.function, "PhotoVectorsFunction");
    let per_1000 = vision.usd_per_1000_items.expect("priced per photo");
    assert!(per_1000 > 0.0 && per_1000 < 1.0, "{vision:?}");
    assert!(
        vision.cost_chosen_usd * 10.0 < vision.cost_always_on_usd,
        "{vision:?}"
    );
    // Until bench/clip.json is committed both rest on estimates, and say so.
    if !repo_root().join("infra/placement/bench/clip.json").exists() {
        for d in [text, vision] {
            assert!(
                d.flags
                    .iter()
                    .any(|f| f.contains("relies on estimated figures")),
                "{d:?}"
            );
        }
    }
}

/// docs/placement.md shows both plans verbatim; regenerate them with
/// `cargo run -p coldpath-placement -- plan --profile infra/placement/profiles/<name>.toml`.
#[test]
fn the_documented_plans_match_the_plans() {
    let docs = std::fs::read_to_string(repo_root().join("docs/placement.md")).unwrap();
    for profile in ["founding.toml", "bulk.toml"] {
        let rendered = plan::render(&shipped_plan(profile));
        assert!(
            docs.contains(&rendered),
            "docs/placement.md is stale for {profile}; it should contain:\n{rendered}"
        );
    }
}

#[test]
fn declaration_errors_name_the_crate_and_field() {
    let dir = tempfile::tempdir().unwrap();
    copy_root(dir.path());
    assert_eq!(declaration::read_all(dir.path()).unwrap().len(), 4);

    let faces = dir.path().join("functions/hosts/faces/Cargo.toml");
    let original = std::fs::read_to_string(&faces).unwrap();
    std::fs::write(
        &faces,
        original.replace("pinned_warm = true", "pinned_warm = false"),
    )
    .unwrap();
    let err = declaration::read_all(dir.path()).unwrap_err();
    assert!(
        matches!(&err, DeclarationError::Contradiction { crate_name, field: "pinned_warm", .. } if crate_name == "coldpath-faces-function"),
        "{err}"
    );

    let cut = original.find("[package.metadata.coldpath]").unwrap();
    std::fs::write(&faces, &original[..cut]).unwrap();
    let err = declaration::read_all(dir.path()).unwrap_err();
    assert!(
        matches!(&err, DeclarationError::Missing { crate_name, .. } if crate_name == "coldpath-faces-function"),
        "{err}"
    );

    std::fs::write(&faces, original.replace("trigger = \"s3\"\n", "")).unwrap();
    let err = declaration::read_all(dir.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "crate coldpath-faces-function: field `trigger` is missing from [package.metadata.coldpath]"
    );
    std::fs::write(&faces, &original).unwrap();

    // A co-hosted workload's error names the host crate, the workload's table and the field.
    let embeddings = dir.path().join("functions/hosts/embeddings/Cargo.toml");
    let original = std::fs::read_to_string(&embeddings).unwrap();
    let broken = original.replace("memory_mb = 512\n", "memory_mb = \"512\"\n");
    assert_ne!(broken, original);
    std::fs::write(&embeddings, broken).unwrap();
    let err = declaration::read_all(dir.path()).unwrap_err();
    assert!(
        matches!(&err, DeclarationError::Invalid { crate_name, field: "memory_mb", .. } if crate_name == "coldpath-embeddings-function"),
        "{err}"
    );
    std::fs::write(
        &embeddings,
        original.replace("latency_budget_ms = 100 ", "latency_budget_ms_typo = 100 "),
    )
    .unwrap();
    assert_eq!(
        declaration::read_all(dir.path()).unwrap_err().to_string(),
        "crate coldpath-embeddings-function: field `latency_budget_ms` is missing from [package.metadata.coldpath.cohosted.clip-text]"
    );
}

/// The photo's vector (clip-vision): the EventBridge rule to the clip function, each part of
/// its wiring removed once; each is one mismatch of PhotoVectorsFunction.
#[test]
fn check_fails_when_the_upload_rule_cannot_invoke_the_clip_function() {
    let permission = "  PhotoVectorsRulePermission:\n    Type: AWS::Lambda::Permission\n    Properties:\n      Action: lambda:InvokeFunction\n      FunctionName: !GetAtt PhotoVectorsFunction.Arn\n      Principal: events.amazonaws.com\n      SourceAccount: !Ref AWS::AccountId\n      SourceArn: !GetAtt PhotoVectorsRule.Arn\n";
    let dir = tempfile::tempdir().unwrap();
    let out = check(&broken_template(dir.path(), permission, ""));
    assert_one_mismatch(
        &out,
        "PhotoVectorsFunction (clip-vision):",
        &[
            "PhotoVectorsRule: no AWS::Lambda::Permission",
            "events.amazonaws.com",
        ],
    );
    // The rule aimed at another function: the clip function has no trigger at all.
    let out = check(&broken_template(
        dir.path(),
        "          Arn: !GetAtt PhotoVectorsFunction.Arn\n",
        "          Arn: !GetAtt FacesFunction.Arn\n",
    ));
    let m = mismatches(&out);
    assert!(
        m.iter().any(
            |l| l.starts_with("MISMATCH PhotoVectorsFunction (clip-vision):")
                && l.contains("no AWS::Events::Rule has it as a target")
        ),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_an_upload_could_be_dropped_unseen() {
    let dir = tempfile::tempdir().unwrap();
    // The function's own on-failure queue removed.
    let out = check(&broken_template(
        dir.path(),
        "      DeadLetterQueue:\n        Type: SQS\n        TargetArn: !GetAtt PhotoVectorsDeadLetterQueue.Arn\n",
        "",
    ));
    assert_one_mismatch(
        &out,
        "PhotoVectorsFunction (clip-vision):",
        &["has no on-failure destination"],
    );
    // The rule's dead-letter queue removed.
    let out = check(&broken_template(
        dir.path(),
        "          DeadLetterConfig:\n            Arn: !GetAtt PhotoVectorsDeliveryDeadLetterQueue.Arn\n",
        "",
    ));
    assert_one_mismatch(
        &out,
        "PhotoVectorsFunction (clip-vision):",
        &["PhotoVectorsRule: its target PhotoVectorsFunction has no DeadLetterConfig"],
    );
    // Its alarm watching another queue.
    let out = check(&broken_template(
        dir.path(),
        "        - {Name: QueueName, Value: !GetAtt PhotoVectorsDeadLetterQueue.QueueName}\n",
        "        - {Name: QueueName, Value: !GetAtt FacesDeadLetterQueue.QueueName}\n",
    ));
    assert_one_mismatch(
        &out,
        "PhotoVectorsFunction (clip-vision):",
        &["no alarm watches PhotoVectorsDeadLetterQueue"],
    );
}

#[test]
fn check_fails_when_the_clip_function_gets_a_variable_outside_its_contract() {
    let dir = tempfile::tempdir().unwrap();
    // The vision host does not read the embeddings function's switch.
    let out = check(&broken_template(
        dir.path(),
        "          # The sink adds the function's name: vectors land at clip/<bucket>/<key>.json.\n",
        "          EMBEDDINGS_CLIP: \"true\"\n",
    ));
    assert_eq!(
        mismatches(&out),
        [
            "MISMATCH PhotoVectorsFunction (clip-vision): sets environment variables the function never reads: EMBEDDINGS_CLIP"
        ]
    );
    // Its required model pins left out.
    let out = check(&broken_template(
        dir.path(),
        "          CLIP_MODEL_SHA256: !Ref ClipModelSha256\n          # The sink adds",
        "          # The sink adds",
    ));
    assert_one_mismatch(
        &out,
        "PhotoVectorsFunction (clip-vision):",
        &["does not set CLIP_MODEL_SHA256 (clip-vision)"],
    );
}

/// The query's vector (clip-text), co-hosted in the embeddings function: its switch, its
/// variables and the /tmp its model needs are the host's to carry.
#[test]
fn check_fails_when_the_embeddings_function_cannot_host_the_text_tower() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(&broken_template(
        dir.path(),
        "          EMBEDDINGS_CLIP: !If [HasClipModelVersion, \"true\", \"false\"]\n",
        "          EMBEDDINGS_CLIP: \"false\"\n",
    ));
    assert_one_mismatch(
        &out,
        "EmbeddingsFunction (embeddings):",
        &["EMBEDDINGS_CLIP is Some(\"false\"), the co-hosted clip-text needs \"true\""],
    );
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    let at = text.find("  EmbeddingsFunction:").unwrap();
    let sha = "          CLIP_MODEL_SHA256: !Ref ClipModelSha256\n";
    let cut = at + text[at..].find(sha).unwrap();
    let t = dir.path().join("no-pins.yaml");
    std::fs::write(&t, format!("{}{}", &text[..cut], &text[cut + sha.len()..])).unwrap();
    assert_one_mismatch(
        &check(&t),
        "EmbeddingsFunction (embeddings):",
        &["does not set CLIP_MODEL_SHA256 (clip-text)"],
    );
    // Lambda's default /tmp cannot hold the text tower and its graphs beside MiniLM's cache.
    let out = check(&broken_template(
        dir.path(),
        "      EphemeralStorage:\n        Size: !Ref EmbeddingsStorage\n",
        "",
    ));
    assert_one_mismatch(
        &out,
        "EmbeddingsFunction (embeddings):",
        &["EphemeralStorage is 512 MB, but /tmp must hold 660 MB"],
    );
}
