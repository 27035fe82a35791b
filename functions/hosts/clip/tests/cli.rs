//! The `clip` binary as a user runs it: `clip invoke <EVENT_FILE>` on the upload events and a
//! direct request, then `clip search` over the vectors it wrote.
//!
//! Needs the setup's library and the fixture model (`make test` exports their paths; locally
//! `CLIP_MODEL_SOURCE` is the random-weight ViT-B-32 in tests/fixtures/clip).

use std::process::{Command, Output};

use coldpath_test_support::{repo_root, setup_var, stdout_json};
use serde_json::Value;

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clip"));
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

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = command(args, env).output().expect("run clip");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Uploads write one vector document per photo; a direct request for the same photos gives the
/// same vectors; `clip search` ranks exactly the photos written, best first.
#[test]
fn uploads_write_vector_documents_that_search_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("local:{}", dir.path().display());
    let env = [("COLDPATH_RESULT_SINK", sink.as_str())];
    let out = run(&["invoke", "events/clip/s3-put.json"], &env);
    let summary = stdout_json(&out);
    assert_eq!(summary["succeeded"], 4, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    // Logs, including the cold-start record, go to stderr.
    assert!(String::from_utf8_lossy(&out.stderr).contains("cold start"));
    let out = run(&["invoke", "events/clip/eventbridge-s3.json"], &env);
    assert_eq!(stdout_json(&out)["succeeded"], 1);

    let doc_path = dir.path().join("clip/photos/cat.jpg.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(&doc_path).unwrap()).unwrap();
    assert_eq!(doc["payload"]["photo"], "s3://photos/cat.jpg");
    assert_eq!(doc["payload"]["model"], setup_var("CLIP_MODEL_NAME"));
    let vector = floats(&doc["vector"]);
    assert_eq!(
        vector.len(),
        doc["payload"]["dimensions"].as_u64().unwrap() as usize
    );
    let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    assert!(
        dir.path()
            .join("clip/photos/family photo.jpg.json")
            .is_file()
    );

    // The direct request's vector for the same photo is the upload's.
    let out = run(&["invoke", "events/clip/direct-image.json"], &[]);
    let direct = stdout_json(&out);
    let same = floats(&direct["data"][0]["embedding"]);
    let dot: f32 = same.iter().zip(&vector).map(|(a, b)| a * b).sum();
    assert!(dot > 0.99999, "{dot}");

    let out = run(
        &[
            "search",
            "--top",
            "3",
            dir.path().to_str().unwrap(),
            "a",
            "cat",
        ],
        &[],
    );
    let report = stdout_json(&out);
    assert_eq!(report["query"], "a cat");
    assert_eq!(report["searched"], 5, "{report}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
}

#[test]
fn refusals_are_typed() {
    // The upload host has no text tower: a query is refused, not answered with a wrong vector.
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("text.json");
    std::fs::write(&request, r#"{"input": "a dog on the beach"}"#).unwrap();
    let out = command(&["invoke", request.to_str().unwrap()], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json = stdout_json(&out);
    assert_eq!(json["errorType"], "InvalidInput");
    assert!(
        json["errorMessage"]
            .as_str()
            .unwrap()
            .contains("vision tower only"),
        "{json}"
    );
    // A photo that is not one, and a URL, fail alone with their reasons.
    std::fs::write(
        &request,
        r#"{"modality": "image", "input": ["s3://photos/not-a-photo.txt"]}"#,
    )
    .unwrap();
    let out = command(&["invoke", request.to_str().unwrap()], &[])
        .output()
        .unwrap();
    assert_eq!(stdout_json(&out)["errorType"], "InvalidInput");
    let out = command(&["search", dir.path().to_str().unwrap()], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: clip search"));
}

#[test]
fn a_local_invoke_reads_only_variables_its_contract_lists() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("local:{}", dir.path().display());
    let cmd = command(
        &["invoke", "events/clip/eventbridge-s3.json"],
        &[("COLDPATH_RESULT_SINK", &sink)],
    );
    let out = coldpath_test_support::assert_reads_within_contract(
        cmd,
        &repo_root().join("functions/hosts/clip/contract.json"),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
