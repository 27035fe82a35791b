//! The embeddings function on the real all-MiniLM-L6-v2 int8 model.
//!
//! The reference vectors come from `tests/fixtures/gen_embeddings_reference.py` (Python
//! onnxruntime + tokenizers + the same pooling). Tolerance: cosine ≥ 0.9999 per text. Both sides
//! run the same ONNX Runtime release and the same int8 graph, so the only differences are float
//! summation order in pooling and threading; 1e-4 in cosine leaves room for that and nothing else.

use base64::Engine as _;
use coldpath_core::{Classify, ErrorType};
use coldpath_embeddings::Embed;
use coldpath_embeddings::OnnxEmbedder;
use coldpath_embeddings::pooling::cosine;
use coldpath_embeddings_function::{EmbeddingsFunction, handle};
use coldpath_models::sha256_file;
use coldpath_runtime::{Context, LambdaEvent};
use coldpath_test_support::{repo_root, setup_var, vectors};
use coldpath_tests::{build_service, embeddings_env, embeddings_reference, service};
use serde_json::{Value, json};

use std::sync::{Arc, OnceLock};

const TOLERANCE: f32 = 0.9999;

/// The function (its handler's state) over its own service on the real model.
fn function() -> Arc<EmbeddingsFunction<OnnxEmbedder>> {
    static FUNCTION: OnceLock<Arc<EmbeddingsFunction<OnnxEmbedder>>> = OnceLock::new();
    Arc::clone(
        FUNCTION
            .get_or_init(|| Arc::new(EmbeddingsFunction::new(build_service(&embeddings_env(&[]))))),
    )
}

async fn call(payload: Value) -> Result<Value, coldpath_runtime::HandlerError> {
    handle(function(), LambdaEvent::new(payload, Context::default())).await
}

#[tokio::test]
async fn matches_python_reference_on_mixed_batch() {
    let reference = embeddings_reference();
    // The fixture must describe the model under test, or the comparison means nothing.
    let model = std::path::Path::new(&setup_var("EMBEDDINGS_MODEL_SOURCE")).join("model.onnx");
    assert_eq!(
        sha256_file(&model).unwrap().to_string(),
        reference.model_sha256
    );
    assert_eq!(reference.max_tokens, 256);
    assert!(
        reference.token_counts.contains(&256),
        "the fixture must include a text longer than the model's max tokens"
    );

    let response = call(json!({"input": reference.texts})).await.unwrap();
    let got = vectors(&response);
    assert_eq!(got.len(), reference.texts.len());
    for (i, (g, want)) in got.iter().zip(&reference.embeddings).enumerate() {
        assert_eq!(g.len(), 384);
        let c = cosine(g, want);
        assert!(
            c >= TOLERANCE,
            "text {i} ({:?}): cosine {c} < {TOLERANCE}",
            reference.texts[i]
        );
    }
    // usage counts the tokens actually used: truncated at 256, special tokens included.
    let total: usize = reference.token_counts.iter().sum();
    assert_eq!(response["usage"]["prompt_tokens"], total);
    assert_eq!(response["usage"]["total_tokens"], total);
    let counts = service()
        .embedder()
        .embed(&reference.texts)
        .unwrap()
        .token_counts;
    assert_eq!(counts, reference.token_counts);
}

#[tokio::test]
async fn batch_results_equal_single_results() {
    let reference = embeddings_reference();
    let batch = service().embedder().embed(&reference.texts).unwrap();
    for (i, text) in reference.texts.iter().enumerate() {
        let single = service()
            .embedder()
            .embed(std::slice::from_ref(text))
            .unwrap();
        let c = cosine(&single.vectors[0], &batch.vectors[i]);
        assert!(c >= TOLERANCE, "text {i}: batch vs single cosine {c}");
        assert_eq!(single.token_counts[0], batch.token_counts[i]);
    }
}

#[tokio::test]
async fn small_token_budget_splits_batches_without_changing_results() {
    let reference = embeddings_reference();
    let split = coldpath_tests::build_service(&coldpath_tests::embeddings_env(&[(
        "EMBEDDINGS_MAX_BATCH_TOKENS",
        "64",
    )]));
    let a = split.embedder().embed(&reference.texts).unwrap();
    let b = service().embedder().embed(&reference.texts).unwrap();
    for (i, (x, y)) in a.vectors.iter().zip(&b.vectors).enumerate() {
        assert!(cosine(x, y) >= TOLERANCE, "text {i}");
    }
}

#[tokio::test]
async fn paraphrases_score_higher_than_unrelated_sentences() {
    let reference = embeddings_reference();
    let got = vectors(&call(json!({"input": reference.texts})).await.unwrap());
    let sim = |[a, b]: [usize; 2]| cosine(&got[a], &got[b]);
    let lowest_paraphrase = reference
        .paraphrases
        .iter()
        .map(|&p| sim(p))
        .fold(f32::MAX, f32::min);
    let highest_unrelated = reference
        .unrelated
        .iter()
        .map(|&p| sim(p))
        .fold(f32::MIN, f32::max);
    assert!(
        lowest_paraphrase > highest_unrelated + 0.2,
        "paraphrases {lowest_paraphrase} vs unrelated {highest_unrelated}"
    );
    // Vectors are unit length.
    for v in &got {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
}

#[tokio::test]
async fn base64_encoding_carries_the_same_floats() {
    let text = "a photo of a dog on the beach";
    let floats = vectors(&call(json!({"input": text})).await.unwrap()).remove(0);
    let b64 = call(json!({"input": text, "encoding_format": "base64"}))
        .await
        .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, floats);
}

fn http_event(method: &str, path: &str, body: &str) -> Value {
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("events/embeddings/function-url.json")).unwrap(),
    )
    .unwrap();
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event["requestContext"]["http"]["method"] = json!(method);
    event["body"] = json!(body);
    event
}

fn http_status_and_code(response: &Value) -> (i64, Option<String>) {
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    (
        response["statusCode"].as_i64().unwrap(),
        body["error"]["code"].as_str().map(String::from),
    )
}

#[tokio::test]
async fn bad_inputs_get_their_documented_errors_over_direct_invoke_and_http() {
    let too_many: Vec<String> = (0..257).map(|i| format!("text {i}")).collect();
    let too_large = "word ".repeat(220_000);
    let cases: Vec<(&str, Value, ErrorType, &str)> = vec![
        (
            "empty array",
            json!({"input": []}),
            ErrorType::InvalidInput,
            "must not be an empty array",
        ),
        (
            "empty string",
            json!({"input": ["ok", ""]}),
            ErrorType::InvalidInput,
            "'input[1]' is empty",
        ),
        (
            "missing input",
            json!({"model": "all-MiniLM-L6-v2"}),
            ErrorType::InvalidInput,
            "missing required field 'input'",
        ),
        (
            "wrong type",
            json!({"input": 42}),
            ErrorType::InvalidInput,
            "must be a string or an array of strings",
        ),
        (
            "wrong item type",
            json!({"input": ["a", {"x": 1}]}),
            ErrorType::InvalidInput,
            "'input[1]' must be a string",
        ),
        (
            "not an object",
            json!("just a string"),
            ErrorType::InvalidInput,
            "must be a JSON object",
        ),
        (
            "too many inputs",
            json!({"input": too_many}),
            ErrorType::InvalidInput,
            "too many inputs: 257",
        ),
        (
            "too large",
            json!({"input": too_large}),
            ErrorType::RequestTooLarge,
            "request too large",
        ),
        (
            "other model",
            json!({"input": "x", "model": "text-embedding-3-small"}),
            ErrorType::InvalidInput,
            "serves \"all-MiniLM-L6-v2\"",
        ),
    ];
    for (name, body, kind, message) in cases {
        let err = call(body.clone()).await.expect_err(name);
        assert_eq!(err.error_type, kind, "{name}");
        assert!(err.message.contains(message), "{name}: {}", err.message);

        let response = call(http_event("POST", "/v1/embeddings", &body.to_string()))
            .await
            .unwrap();
        let (status, code) = http_status_and_code(&response);
        assert_eq!(status, i64::from(kind.http_status()), "{name} over HTTP");
        assert_eq!(code.as_deref(), Some(kind.as_str()), "{name} over HTTP");
    }
    // Invalid JSON can only arrive over HTTP (a direct invoke payload is parsed by Lambda).
    let response = call(http_event("POST", "/v1/embeddings", "{\"input\": "))
        .await
        .unwrap();
    assert_eq!(
        http_status_and_code(&response),
        (400, Some("InvalidInput".into()))
    );
    // An over-long body is refused before it is parsed.
    let big = format!("{{\"input\": \"{}\"}}", "a".repeat(2 << 20));
    let response = call(http_event("POST", "/v1/embeddings", &big))
        .await
        .unwrap();
    assert_eq!(
        http_status_and_code(&response),
        (413, Some("RequestTooLarge".into()))
    );
    let response = call(http_event("POST", "/v1/other", "{}")).await.unwrap();
    assert_eq!(http_status_and_code(&response).0, 404);
    let response = call(http_event("GET", "/v1/embeddings", "")).await.unwrap();
    assert_eq!(http_status_and_code(&response).0, 405);
    assert_eq!(response["headers"]["allow"], "POST");
}

// Multi-threaded like the Lambda runtime, so inference takes the `block_in_place` path here
// (the other tests' current-thread runtimes take the blocking-pool path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_events_answer_with_real_embeddings() {
    for (file, count) in [
        ("direct.json", 3),
        ("function-url.json", 1),
        ("http-api.json", 2),
    ] {
        let event: Value = serde_json::from_str(
            &std::fs::read_to_string(repo_root().join("events/embeddings").join(file)).unwrap(),
        )
        .unwrap();
        let response = call(event).await.unwrap();
        let body = if response.get("statusCode").is_some() {
            assert_eq!(response["statusCode"], 200, "{file}");
            assert_eq!(
                response["headers"]["content-type"], "application/json",
                "{file}"
            );
            serde_json::from_str(response["body"].as_str().unwrap()).unwrap()
        } else {
            response
        };
        assert_eq!(body["object"], "list", "{file}");
        assert_eq!(body["model"], "all-MiniLM-L6-v2", "{file}");
        let got = vectors(&body);
        assert_eq!(got.len(), count, "{file}");
        assert!(got.iter().all(|v| v.len() == 384), "{file}");
        assert!(
            body["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
            "{file}"
        );
    }
    let bad: Value = serde_json::from_str(
        &std::fs::read_to_string(
            repo_root().join("events/embeddings/function-url-empty-string.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        http_status_and_code(&call(bad).await.unwrap()),
        (400, Some("InvalidInput".into()))
    );
}

#[test]
fn wrong_model_checksum_fails_init_with_model_load() {
    let env = coldpath_tests::embeddings_env(&[(
        "EMBEDDINGS_MODEL_SHA256",
        "model.onnx=0000000000000000000000000000000000000000000000000000000000000000",
    )]);
    let config = coldpath_embeddings::EmbeddingsConfig::from_env(&env).unwrap();
    let err = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(coldpath_embeddings::init(
                &config,
                coldpath_io::NoObjectStore,
            ))
            .err()
    })
    .join()
    .unwrap()
    .expect("a wrong checksum must fail init");
    assert_eq!(err.error_type(), ErrorType::ModelLoad);
    assert!(
        err.to_string().contains("checksum mismatch for model.onnx"),
        "{err}"
    );
}

#[test]
fn optimized_graph_cache_is_reused_and_gives_the_same_vectors() {
    let reference = embeddings_reference();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().display().to_string();
    let env = coldpath_tests::embeddings_env(&[("COLDPATH_OPTIMIZED_MODEL_DIR", &cache)]);
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let first = coldpath_tests::build_service(&env);
    let saved = files();
    assert_eq!(
        saved.len(),
        2,
        "one graph and its weights file, no partial files: {saved:?}"
    );
    assert!(
        saved[0].ends_with(".data") && saved[1].ends_with(".onnx"),
        "{saved:?}"
    );
    let second = coldpath_tests::build_service(&env);
    assert_eq!(files(), saved, "a cache hit writes nothing");
    for service in [&first, &second] {
        let got = service.embedder().embed(&reference.texts).unwrap();
        for (i, (g, want)) in got.vectors.iter().zip(&reference.embeddings).enumerate() {
            assert!(cosine(g, want) >= TOLERANCE, "text {i}");
        }
    }
    // Their sessions map the weights file; let them go before the file is damaged below.
    drop((first, second));
    // A corrupt graph or a truncated weights file is rebuilt, not loaded, and leaves no orphans.
    for (suffix, bytes) in [(".onnx", b"garbage".as_slice()), (".data", b"".as_slice())] {
        let victim = files().into_iter().find(|f| f.ends_with(suffix)).unwrap();
        std::fs::write(dir.path().join(victim), bytes).unwrap();
        let rebuilt = coldpath_tests::build_service(&env);
        let got = rebuilt.embedder().embed(&reference.texts[..1]).unwrap();
        assert!(cosine(&got.vectors[0], &reference.embeddings[0]) >= TOLERANCE);
        let now = files();
        assert_eq!(now.len(), 2, "{now:?}");
        let data = dir.path().join(&now[0]);
        assert!(
            std::fs::metadata(data).unwrap().len() > 1_000_000,
            "the weights were rewritten"
        );
    }
}
