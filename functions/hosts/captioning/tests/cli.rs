//! The `captioning` binary's local mode, as a user runs it: `captioning invoke <EVENT_FILE>` on
//! the sample SQS event, and its usage errors.
//!
//! Needs the setup's library and model (`make test` exports their paths). Model: the tiny
//! ViT-GPT2 from `tests/fixtures/captioning/gen_tiny_model.py`; photos: `events/data/photos/`.

use std::path::Path;
use std::process::{Command, Output};

use coldpath_test_support::{assert_invocation_metrics, emf_documents, repo_root, stdout_json};
use serde_json::Value;

/// The binary as these tests run it: local object store, results under `results`, not in Lambda.
fn command(args: &[&str], results: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_captioning"));
    cmd.current_dir(repo_root())
        .args(args)
        .env("COLDPATH_INTRA_THREADS", "1")
        .env("COLDPATH_OBJECT_STORE", "local:events/data")
        .env(
            "COLDPATH_RESULT_SINK",
            format!("local:{}", results.display()),
        )
        .env_remove("AWS_LAMBDA_FUNCTION_NAME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(args: &[&str], results: &Path, env: &[(&str, &str)]) -> Output {
    command(args, results, env)
        .output()
        .expect("run captioning")
}

/// The messageIds in the sample event whose body is not valid JSON.
fn malformed_ids(event: &Path) -> Vec<String> {
    let event: Value = serde_json::from_str(&std::fs::read_to_string(event).unwrap()).unwrap();
    event["Records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| serde_json::from_str::<Value>(r["body"].as_str().unwrap()).is_err())
        .map(|r| r["messageId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn invoke_prints_the_batch_response_and_writes_the_results() {
    assert!(
        std::env::var("ORT_DYLIB_PATH").is_ok(),
        "run with `make test` so ORT_DYLIB_PATH is set"
    );
    let results = tempfile::tempdir().unwrap();
    let out = run(
        &["invoke", "events/captioning/sqs-batch.json"],
        results.path(),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout_json(&out);
    let failures = json["batchItemFailures"].as_array().unwrap();
    let reported: Vec<&str> = failures
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    let malformed = malformed_ids(&repo_root().join("events/captioning/sqs-batch.json"));
    assert_eq!(reported, malformed, "exactly the malformed record fails");
    assert_eq!(json.as_object().unwrap().len(), 1, "{json}");

    let mut written: Vec<String> = std::fs::read_dir(results.path().join("captioning"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    written.sort();
    assert_eq!(
        written,
        ["astronaut.json", "cat.json", "grey.json", "kafka.json"]
    );
    let kafka: Value = serde_json::from_str(
        &std::fs::read_to_string(results.path().join("captioning/kafka.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kafka["id"], "kafka");
    assert_eq!(kafka["message_id"], "5d3b1c0e-8f2a-4c1e-9b7a-1f0e2d3c4b5a");
    assert!(kafka["caption"].as_str().is_some_and(|c| !c.is_empty()));
    // Logs, including the cold-start record, go to stderr.
    assert!(String::from_utf8_lossy(&out.stderr).contains("cold start"));
}

#[test]
fn an_event_that_is_not_sqs_is_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"id": "x", "image": {"s3": "s3://photos/kafka.jpg"}}"#,
    )
    .unwrap();
    let out = run(&["invoke", bad.to_str().unwrap()], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "InvalidInput");
    assert!(
        json["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("expected an SQS event"),
        "{json}"
    );
}

#[test]
fn bad_config_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["invoke", "events/captioning/sqs-batch.json"],
        dir.path(),
        &[("CAPTIONING_MAX_BATCH", "lots")],
    );
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "Config");
    assert!(
        json["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("CAPTIONING_MAX_BATCH"),
        "{json}"
    );
}

#[test]
fn wrong_arguments_print_usage_with_every_mode_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["invoke"][..], &["worker", "now"], &["serve"]] {
        let out = run(args, dir.path(), &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "usage: captioning [invoke <EVENT_FILE> | prepare <OUT_DIR> | worker | contract]"
            ),
            "{args:?}: {stderr}"
        );
    }
}

/// With metrics on (`COLDPATH_METRICS=emf`, the default inside Lambda), the EMF lines go to
/// stderr beside the logs and stdout still holds only the response; S3 uploads routed by
/// EventBridge are captioned under `<bucket>/<key>`.
#[test]
fn metric_lines_go_to_stderr_and_stdout_keeps_only_the_response() {
    let results = tempfile::tempdir().unwrap();
    let out = run(
        &["invoke", "events/captioning/sqs-eventbridge-s3.json"],
        results.path(),
        &[("COLDPATH_METRICS", "emf"), ("COLDPATH_LOG_FORMAT", "json")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout_json(&out),
        serde_json::json!({"batchItemFailures": []})
    );
    let docs = emf_documents(&out);
    let names: Vec<&str> = docs
        .iter()
        .map(|d| {
            d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, ["ColdStart", "Latency"], "{docs:?}");
    assert_invocation_metrics(&out, "captioning", 2.0);
    for photo in ["family photo.jpg", "cat.jpg"] {
        let file = results
            .path()
            .join("captioning/photos")
            .join(format!("{photo}.json"));
        assert!(file.is_file(), "{} is missing", file.display());
    }
}

/// What the binary really reads (every variable through `ProcessEnv`, logged by the debug build)
/// is in its committed `contract.json`, the list `coldpath check` holds the template and the
/// worker's image to: a reader called from `main` and missing from the contract fails here.
#[test]
fn a_local_invoke_reads_only_variables_its_contract_lists() {
    let results = tempfile::tempdir().unwrap();
    let cmd = command(
        &["invoke", "events/captioning/sqs-batch.json"],
        results.path(),
        &[],
    );
    let out = coldpath_test_support::assert_reads_within_contract(
        cmd,
        &repo_root().join("functions/hosts/captioning/contract.json"),
        // The pause the process tests set; read only by fault-injection builds.
        if cfg!(feature = "fault-injection") {
            &["CAPTIONING_FAULT_BATCH_DELAY_MS"]
        } else {
            &[]
        },
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
