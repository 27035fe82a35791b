//! The `faces` binary's local mode, as a user runs it: `faces invoke <EVENT_FILE>`.
//!
//! Needs the setup's library and models (`make test` exports their paths).

use std::process::{Command, Output};

use coldpath_test_support::{assert_invocation_metrics, emf_documents, repo_root, stdout_json};

/// The binary as these tests run it: one intra-op thread, local object store, not in Lambda.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faces"));
    cmd.current_dir(repo_root())
        .args(args)
        .env("COLDPATH_INTRA_THREADS", "1")
        // Local runs: `s3://` reads events/data, and no result may leave the machine.
        .env_remove("AWS_LAMBDA_FUNCTION_NAME")
        .env_remove("COLDPATH_OBJECT_STORE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn invoke(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("run faces")
}

#[test]
fn invoke_prints_only_the_response_json() {
    assert!(
        std::env::var("ORT_DYLIB_PATH").is_ok(),
        "run with `make test` so ORT_DYLIB_PATH is set"
    );
    let out = invoke(&["invoke", "events/faces/direct.json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout_json(&out);
    let faces = json["faces"].as_array().unwrap();
    assert!(faces.len() >= 3, "{json}");
    assert_eq!(faces[0]["embedding"].as_array().unwrap().len(), 128);
    assert_eq!(json["width"], 1600);
    // Logs, including the cold-start record, go to stderr.
    assert!(String::from_utf8_lossy(&out.stderr).contains("cold start"));
}

#[test]
fn local_paths_work_in_invoke_mode() {
    let out = invoke(&["invoke", "events/faces/direct-path.json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["faces"].as_array().unwrap().len(), 1);
}

#[test]
fn s3_event_writes_results_and_reports_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("local:{}", dir.path().display());
    let out = invoke(
        &["invoke", "events/faces/s3-put.json"],
        &[("COLDPATH_RESULT_SINK", &sink)],
    );
    // Bad records are reported, not raised: the invocation succeeds.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout_json(&out);
    assert_eq!(json["succeeded"], 2, "{json}");
    assert_eq!(json["failed"], 2, "{json}");
    assert!(
        dir.path()
            .join("faces/photos/family photo.jpg.json")
            .is_file()
    );
    assert!(dir.path().join("faces/photos/group.jpg.json").is_file());
}

#[test]
fn invoke_reports_errors_in_lambda_shape_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"image": {"s3": "s3://photos/not-a-photo.txt"}}"#).unwrap();
    let out = invoke(&["invoke", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "InvalidInput");
    assert!(
        json["errorMessage"]
            .as_str()
            .unwrap()
            .contains("unsupported image format"),
        "{json}"
    );
}

#[test]
fn bad_config_and_missing_models_are_clear_start_up_errors() {
    let out = invoke(
        &["invoke", "events/faces/direct.json"],
        &[("FACES_MIN_SCORE", "2")],
    );
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "Config");
    assert!(
        json["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("FACES_MIN_SCORE"),
        "{json}"
    );
    let out = invoke(
        &["invoke", "events/faces/direct.json"],
        &[
            ("FACES_DETECTOR_SOURCE", "/nonexistent/yunet"),
            ("FACES_DETECTOR_SHA256", ""),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "ModelLoad");
    assert!(
        json["errorMessage"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/yunet"),
        "{json}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [&["invoke"][..], &["serve", "x"][..]] {
        let out = invoke(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: faces"));
    }
}

/// With metrics on (`COLDPATH_METRICS=emf`, the default inside Lambda), the EMF lines go to
/// stderr beside the logs, and stdout still holds only the response JSON.
#[test]
fn metric_lines_go_to_stderr_and_stdout_keeps_only_the_response() {
    let out = invoke(
        &["invoke", "events/faces/direct.json"],
        &[("COLDPATH_METRICS", "emf"), ("COLDPATH_LOG_FORMAT", "json")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout_json(&out);
    assert!(json["faces"].is_array(), "{json}");
    assert_invocation_metrics(&out, "faces", 1.0);
    // Off, as it is by default outside Lambda: no metric line at all.
    let quiet = invoke(
        &["invoke", "events/faces/direct.json"],
        &[("COLDPATH_METRICS", "off")],
    );
    assert!(quiet.status.success());
    assert!(emf_documents(&quiet).is_empty());
}

/// A HEIC that crashes the decoder (a test build's decoder child aborts on a marker) fails its
/// own record of an S3 event, typed; the other photos of the same event, a HEIC decoded by a
/// fresh child among them, are written. In process, the abort would have taken the whole
/// invocation, and every photo in it, down.
#[test]
fn a_decoder_crash_fails_only_its_own_photo() {
    use coldpath_test_support::{DECODER_ABORT, heic_with_marker};
    let store = tempfile::tempdir().unwrap();
    let photos = store.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    std::fs::write(photos.join("crash.heic"), heic_with_marker(DECODER_ABORT)).unwrap();
    std::fs::copy(
        repo_root().join("events/data/photos/IMG_0001.HEIC"),
        photos.join("IMG_0001.HEIC"),
    )
    .unwrap();
    std::fs::copy(
        repo_root().join("events/data/photos/group.jpg"),
        photos.join("group.jpg"),
    )
    .unwrap();
    let template: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("events/faces/s3-put.json")).unwrap(),
    )
    .unwrap();
    let record = template["Records"][0].clone();
    let records: Vec<serde_json::Value> = ["crash.heic", "IMG_0001.HEIC", "group.jpg"]
        .iter()
        .map(|key| {
            let mut r = record.clone();
            r["s3"]["object"]["key"] = (*key).into();
            r
        })
        .collect();
    let event = store.path().join("event.json");
    std::fs::write(&event, serde_json::json!({"Records": records}).to_string()).unwrap();
    let sink_dir = tempfile::tempdir().unwrap();
    let out = invoke(
        &["invoke", event.to_str().unwrap()],
        &[
            (
                "COLDPATH_OBJECT_STORE",
                &format!("local:{}", store.path().display()),
            ),
            (
                "COLDPATH_RESULT_SINK",
                &format!("local:{}", sink_dir.path().display()),
            ),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json = stdout_json(&out);
    assert_eq!(json["succeeded"], 2, "{json}\n{stderr}");
    assert_eq!(json["failed"], 1, "{json}");
    let text = json.to_string();
    assert!(
        text.contains("crash.heic") && text.contains("SIGABRT"),
        "the failure names the photo and how its decoder died: {json}"
    );
    for key in ["IMG_0001.HEIC", "group.jpg"] {
        let result = sink_dir.path().join(format!("faces/photos/{key}.json"));
        assert!(result.is_file(), "{key} was not written: {json}");
    }
}

/// What the binary really reads (every variable through `ProcessEnv`, logged by the debug build)
/// is in its committed `contract.json`, the list `coldpath check` holds the template to: a
/// reader called from `main` and missing from the contract fails here.
#[test]
fn a_local_invoke_reads_only_variables_its_contract_lists() {
    let sink = tempfile::tempdir().unwrap();
    let sink_setting = format!("local:{}", sink.path().display());
    let cmd = command(
        &["invoke", "events/faces/s3-put.json"],
        &[("COLDPATH_RESULT_SINK", &sink_setting)],
    );
    let out = coldpath_test_support::assert_reads_within_contract(
        cmd,
        &repo_root().join("functions/hosts/faces/contract.json"),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
