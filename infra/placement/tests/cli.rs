//! The `coldpath` binary as a user runs it: exit codes and where the output goes.

use std::path::PathBuf;
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn coldpath(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coldpath"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("coldpath runs")
}

#[test]
fn check_exits_zero_with_one_ok_line_per_function() {
    let out = coldpath(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok: Vec<&str> = stdout.lines().filter(|l| l.starts_with("OK ")).collect();
    assert_eq!(
        ok.len(),
        9,
        "four functions, the pod, the stack rules, two worker files and the worker jobs: {stdout}"
    );
}

#[test]
fn check_exits_one_naming_the_function_on_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    let broken = text.replace(
        "            FunctionResponseTypes: [ReportBatchItemFailures]\n",
        "",
    );
    assert_ne!(broken, text);
    let path = dir.path().join("template.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = coldpath(&["check", "--template", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("MISMATCH CaptioningFunction (captioning):"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// `coldpath check` on a copy of the real template with `from` (which must occur once) replaced.
fn check_edited(from: &str, to: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    assert_eq!(text.matches(from).count(), 1, "{from}");
    let path = dir.path().join("template.yaml");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    let out = coldpath(&["check", "--template", path.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_fails_when_a_function_that_decodes_no_image_gets_the_decoders_path() {
    // The variable is read by coldpath-image, which faces, clip and captioning are built from
    // and embeddings is not (its CLIP text tower reads no photo): given to embeddings it would
    // be ignored.
    let (code, stderr) = check_edited(
        "          EMBEDDINGS_MODEL_SOURCE: /var/task/models/embeddings\n",
        "          EMBEDDINGS_MODEL_SOURCE: /var/task/models/embeddings\n          COLDPATH_LIBHEIF_PATH: /opt/lib/libheif.so.1\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    let m: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("MISMATCH"))
        .collect();
    assert_eq!(
        m,
        [
            "MISMATCH EmbeddingsFunction (embeddings): sets environment variables the function never reads: COLDPATH_LIBHEIF_PATH"
        ]
    );
}

#[test]
fn check_fails_when_the_image_codecs_layer_is_not_the_packaged_zip() {
    let (code, stderr) = check_edited(
        "      ContentUri: ../target/lambda/layers/image-codecs.zip\n",
        "      ContentUri: ../.cache/lib/\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    let m: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("MISMATCH"))
        .collect();
    assert_eq!(m.len(), 3, "faces, clip and captioning: {m:?}");
    for (line, function) in m.iter().zip([
        "FacesFunction",
        "PhotoVectorsFunction",
        "CaptioningFunction",
    ]) {
        assert!(
            line.starts_with(&format!("MISMATCH {function} "))
                && line.contains("layer ImageCodecsLayer must be deployed from ContentUri"),
            "{line}"
        );
    }
}

/// The MISMATCH lines of `coldpath check` on the real template with one edit.
fn mismatches_when_edited(from: &str, to: &str) -> Vec<String> {
    let (code, stderr) = check_edited(from, to);
    assert_eq!(code, Some(1), "{stderr}");
    stderr
        .lines()
        .filter(|l| l.starts_with("MISMATCH"))
        .map(str::to_string)
        .collect()
}

#[test]
fn check_fails_when_the_caption_queue_visibility_is_under_six_timeouts_and_the_window() {
    // The mapping's value for the default CaptioningTimeout (120 s) is what is deployed:
    // 6 x 120 s is 720 s, but the 20 s batching window comes on top.
    let m = mismatches_when_edited(
        "\"120\": {VisibilityTimeout: 740}",
        "\"120\": {VisibilityTimeout: 720}",
    );
    assert!(
        m.len() == 1
            && m[0].starts_with("MISMATCH CaptioningFunction (captioning): queue CaptionQueue VisibilityTimeout Some(720.0) s")
            && m[0].contains("MaximumBatchingWindowInSeconds Some(20.0) s"),
        "{m:?}"
    );
    // A literal in place of the lookup is held to the same rule.
    let m = mismatches_when_edited(
        "VisibilityTimeout: !FindInMap [CaptionQueueTiming, !Ref CaptioningTimeout, VisibilityTimeout]",
        "VisibilityTimeout: 600",
    );
    assert!(
        m.len() == 1 && m[0].contains("VisibilityTimeout Some(600.0) s"),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_a_timeout_the_parameter_allows_has_a_short_or_missing_visibility() {
    // Not the default's row: a deployment that overrides CaptioningTimeout to 600 s would get it.
    let m = mismatches_when_edited(
        "\"600\": {VisibilityTimeout: 3620}",
        "\"600\": {VisibilityTimeout: 3600}",
    );
    assert!(
        m.len() == 1
            && m[0].contains("with CaptioningTimeout 600, queue CaptionQueue VisibilityTimeout is 3600 s (Mappings CaptionQueueTiming)"),
        "{m:?}"
    );
    let m = mismatches_when_edited("    \"900\": {VisibilityTimeout: 5420}\n", "");
    assert!(
        m.len() == 1
            && m[0].contains("CaptioningTimeout allows 900, but Mappings CaptionQueueTiming has no VisibilityTimeout for it"),
        "{m:?}"
    );
}

#[test]
fn check_fails_when_the_caption_queue_dead_letters_after_fewer_than_five_receives() {
    let m = mismatches_when_edited(
        "    Default: 5\n    MinValue: 5\n",
        "    Default: 4\n    MinValue: 1\n",
    );
    assert!(
        m.len() == 1
            && m[0].starts_with("MISMATCH CaptioningFunction (captioning): queue CaptionQueue moves a message to its dead-letter queue after maxReceiveCount 4 receives, under 5"),
        "{m:?}"
    );
}

#[test]
fn check_fails_naming_the_stack_when_alarms_cannot_notify() {
    let m = mismatches_when_edited(
        "KmsMasterKeyId: !Ref AlarmTopicKey",
        "KmsMasterKeyId: alias/aws/sns",
    );
    assert!(
        m.len() == 1
            && m[0].contains(
                "(stack): topic AlarmTopic is encrypted with the AWS-managed key alias/aws/sns"
            ),
        "{m:?}"
    );
}

#[test]
fn plan_prints_a_decision_per_workload_and_json_on_request() {
    let out = coldpath(&[
        "plan",
        "--profile",
        "infra/placement/profiles/founding.toml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("embeddings (EmbeddingsFunction) -> pinned warm"),
        "{stdout}"
    );
    let out = coldpath(&[
        "plan",
        "--profile",
        "infra/placement/profiles/founding.toml",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    // embeddings, clip-text (co-hosted in it), faces, clip-vision, captioning.
    assert_eq!(v["decisions"][1]["workload"], "clip-text");
    assert_eq!(v["decisions"][1]["hosted_by"], "embeddings");
    assert_eq!(v["decisions"][3]["placement"], "serverless_on_demand");
}

#[test]
fn plan_takes_make_bench_json_over_the_committed_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("embeddings.json");
    // A cold start of 2 s would still be pinned (on the path) but shows in the sentence.
    std::fs::write(
        &json,
        r#"{"benchmark": "embeddings", "cold_start_in_process": {"total_ms": 2000.0}}"#,
    )
    .unwrap();
    let out = coldpath(&[
        "plan",
        "--profile",
        "infra/placement/profiles/founding.toml",
        "--measurements",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("its cold start (2000 ms)"), "{stdout}");
}

#[test]
fn usage_errors_exit_two() {
    for args in [
        &[][..],
        &["plan"][..],
        &["deploy"][..],
        &["check", "--bogus"][..],
    ] {
        let out = coldpath(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage:"),
            "{args:?}"
        );
    }
    let out = coldpath(&["plan", "--profile", "no/such/profile.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/profile.toml"));
}

#[test]
fn check_fails_when_a_function_may_disable_a_queue_consumer_with_no_schedule() {
    // captioning itself allowed to switch event source mappings, with only its SQS event: a
    // mapping it disables stays disabled until an event comes, and none may.
    let (code, stderr) = check_edited(
        "            - Sid: WriteCaptions\n",
        "            - Sid: SwitchConsumers\n              Effect: Allow\n              Action: lambda:UpdateEventSourceMapping\n              Resource: \"*\"\n            - Sid: WriteCaptions\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    let m: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("MISMATCH"))
        .collect();
    assert!(
        m.len() == 1
            && m[0].contains("(stack): CaptioningFunction may call lambda:UpdateEventSourceMapping but runs on no schedule"),
        "{m:?}"
    );
}
