//! The `embeddings` binary's local mode, as a user runs it: `embeddings invoke <EVENT_FILE>`.
//!
//! Needs the setup's library and model (`make test` exports their paths).

use std::process::{Command, Output};

use coldpath_test_support::{assert_invocation_metrics, emf_documents, repo_root, stdout_json};

/// The binary as these tests run it, one intra-op thread.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embeddings"));
    cmd.current_dir(repo_root())
        .args(args)
        .env("COLDPATH_INTRA_THREADS", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn invoke(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("run embeddings")
}

#[test]
fn invoke_prints_only_the_response_json() {
    assert!(
        std::env::var("ORT_DYLIB_PATH").is_ok(),
        "run with `make test` so ORT_DYLIB_PATH is set"
    );
    let out = invoke(&["invoke", "events/embeddings/direct.json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout_json(&out);
    assert_eq!(json["data"].as_array().unwrap().len(), 3);
    assert_eq!(json["data"][0]["embedding"].as_array().unwrap().len(), 384);
    // Logs, including the cold-start record, go to stderr.
    assert!(String::from_utf8_lossy(&out.stderr).contains("cold start"));
}

#[test]
fn invoke_reports_errors_in_lambda_shape_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"input": []}"#).unwrap();
    let out = invoke(&["invoke", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "InvalidInput");
    assert!(
        json["errorMessage"]
            .as_str()
            .unwrap()
            .contains("empty array")
    );
}

#[test]
fn missing_runtime_library_is_a_clear_start_up_error() {
    let out = invoke(
        &["invoke", "events/embeddings/direct.json"],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "ModelLoad");
    let msg = json["errorMessage"].as_str().unwrap();
    assert!(
        msg.contains("ORT_DYLIB_PATH") && msg.contains("/nonexistent/libonnxruntime.so"),
        "{msg}"
    );
}

#[test]
fn a_file_that_is_not_onnx_runtime_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let out = invoke(
        &["invoke", "events/embeddings/direct.json"],
        &[("ORT_DYLIB_PATH", fake.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "ModelLoad");
    assert!(
        json["errorMessage"]
            .as_str()
            .unwrap()
            .contains("ORT_DYLIB_PATH")
    );
}

#[test]
fn bad_config_is_a_config_error() {
    let out = invoke(
        &["invoke", "events/embeddings/direct.json"],
        &[("EMBEDDINGS_MAX_TOKENS", "lots")],
    );
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "Config");
    assert!(
        json["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("EMBEDDINGS_MAX_TOKENS")
    );
}

#[test]
fn wrong_arguments_print_usage_and_exit_2() {
    let out = invoke(&["invoke"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("usage: embeddings [invoke <EVENT_FILE> | prepare <OUT_DIR> | contract]")
    );
}

/// With metrics on (`COLDPATH_METRICS=emf`, the default inside Lambda), the EMF lines go to
/// stderr beside the logs, and stdout still holds only the response JSON.
#[test]
fn metric_lines_go_to_stderr_and_stdout_keeps_only_the_response() {
    let out = invoke(
        &["invoke", "events/embeddings/direct.json"],
        &[("COLDPATH_METRICS", "emf"), ("COLDPATH_LOG_FORMAT", "json")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout_json(&out);
    assert_eq!(json["data"].as_array().unwrap().len(), 3);
    assert_invocation_metrics(&out, "embeddings", 3.0);
    // Off, as it is by default outside Lambda: no metric line at all.
    let quiet = invoke(
        &["invoke", "events/embeddings/direct.json"],
        &[("COLDPATH_METRICS", "off")],
    );
    assert!(quiet.status.success());
    assert!(emf_documents(&quiet).is_empty());
}

/// What the binary really reads (every variable through `ProcessEnv`, logged by the debug build)
/// is in its committed `contract.json`, the list `coldpath check` holds the template to: a
/// reader called from `main` and missing from the contract fails here.
#[test]
fn a_local_invoke_reads_only_variables_its_contract_lists() {
    let cmd = command(&["invoke", "events/embeddings/function-url.json"], &[]);
    let out = coldpath_test_support::assert_reads_within_contract(
        cmd,
        &repo_root().join("functions/hosts/embeddings/contract.json"),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With `EMBEDDINGS_CLIP` on, a request naming the CLIP model gets CLIP's text tower (the
/// query side of photo search, on the same warm function); the text model still answers its own
/// requests, an unknown model is refused naming both, and photos are refused (this host has no
/// vision tower).
#[test]
fn clip_text_tower_answers_requests_that_name_it() {
    let clip = [("EMBEDDINGS_CLIP", "true")];
    let out = invoke(
        &["invoke", "events/embeddings/function-url-clip.json"],
        &clip,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response = stdout_json(&out);
    assert_eq!(response["statusCode"], 200, "{response}");
    let body: serde_json::Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["model"], "vit-b-32-tiny");
    let vector = body["data"][0]["embedding"].as_array().unwrap();
    // The tiny fixture's width (tests/fixtures/clip/vit-b-32-tiny/config.json embed_dim).
    assert_eq!(vector.len(), 16);
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() >= 3,
        "{body}"
    );
    // Without the switch the same request is an unknown model.
    let out = invoke(&["invoke", "events/embeddings/function-url-clip.json"], &[]);
    let response = stdout_json(&out);
    assert_eq!(response["statusCode"], 400, "{response}");

    let out = invoke(&["invoke", "events/embeddings/direct.json"], &clip);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout_json(&out)["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .len(),
        384
    );

    let dir = tempfile::tempdir().unwrap();
    for (body, expect) in [
        (
            r#"{"input": "x", "model": "ViT-L-14"}"#,
            "all-MiniLM-L6-v2 or vit-b-32-tiny",
        ),
        (
            r#"{"input": "s3://photos/cat.jpg", "model": "vit-b-32-tiny", "modality": "image"}"#,
            "text tower only",
        ),
    ] {
        let file = dir.path().join("request.json");
        std::fs::write(&file, body).unwrap();
        let out = invoke(&["invoke", file.to_str().unwrap()], &clip);
        assert_eq!(out.status.code(), Some(1), "{body}");
        let json = stdout_json(&out);
        assert_eq!(json["errorType"], "InvalidInput", "{json}");
        assert!(
            json["errorMessage"].as_str().unwrap().contains(expect),
            "{json}"
        );
    }
}
