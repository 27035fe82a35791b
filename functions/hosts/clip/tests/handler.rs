//! The upload handler's failure paths, on the fixture model with a photo store that fails on
//! purpose: a missing photo is reported and the others written, a transient failure fails the
//! invocation so that Lambda's asynchronous retries run it again, and a panic while fetching one
//! photo fails that photo only.

use std::path::Path;
use std::sync::Arc;

use coldpath_aws::{ResultSink, SinkTarget};
use coldpath_clip::{ClipConfig, ClipService, Towers};
use coldpath_clip_function::{ClipFunction, handle};
use coldpath_core::{ErrorType, MapEnv};
use coldpath_image::{ImageLimits, ImageLoader};
use coldpath_io::{FetchError, NoObjectStore, ObjectFetcher};
use coldpath_runtime::{Context, LambdaEvent};
use coldpath_test_support::{repo_root, setup_var};
use serde_json::{Value, json};

/// `ok.jpg` and `also ok.jpg` are the sample cat, `flaky.jpg` fails transiently, `panic.jpg`
/// panics in the fetcher (a bug nobody foresaw), anything else is missing.
#[derive(Clone)]
struct Photos(Vec<u8>);

impl ObjectFetcher for Photos {
    async fn fetch_to(&self, _: &str, _: &str, _: &Path) -> Result<u64, FetchError> {
        Err(FetchError::Other("not used".into()))
    }

    async fn fetch_bytes(&self, _: &str, key: &str, _: u64) -> Result<Vec<u8>, FetchError> {
        match key {
            "ok.jpg" | "also ok.jpg" => Ok(self.0.clone()),
            "flaky.jpg" => Err(FetchError::Transient("connection reset".into())),
            "panic.jpg" => panic!("index out of bounds in a made-up fetcher bug"),
            _ => Err(FetchError::NotFound),
        }
    }
}

async fn function(sink: &Path) -> Arc<ClipFunction<Photos>> {
    let env = MapEnv::new([
        ("CLIP_MODEL_SOURCE", setup_var("CLIP_MODEL_SOURCE")),
        ("CLIP_MODEL_NAME", "tiny".to_string()),
        ("ORT_DYLIB_PATH", setup_var("ORT_DYLIB_PATH")),
        ("COLDPATH_INTRA_THREADS", "1".to_string()),
    ]);
    let config = ClipConfig::from_env(&env, Towers::Vision).unwrap();
    let (engine, _) = coldpath_clip::init_towers(&config, NoObjectStore, Towers::Vision)
        .await
        .unwrap();
    let cat = std::fs::read(repo_root().join("events/data/photos/cat.jpg")).unwrap();
    let loader = ImageLoader::new(Photos(cat), ImageLimits::default(), false);
    let sink = ResultSink::new("clip", SinkTarget::Local(sink.to_path_buf())).unwrap();
    Arc::new(ClipFunction::new(
        ClipService::new(engine, loader, config.limits),
        sink,
    ))
}

/// The sample S3 notification with its records' keys replaced.
fn uploads(keys: &[&str]) -> Value {
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("events/clip/s3-put.json")).unwrap(),
    )
    .unwrap();
    let template = event["Records"][0].clone();
    event["Records"] = keys
        .iter()
        .map(|k| {
            let mut r = template.clone();
            r["s3"]["object"]["key"] = json!(k);
            r
        })
        .collect();
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_photo_fails_alone_and_a_transient_one_fails_the_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let f = function(dir.path()).await;
    let call = |payload| {
        handle(
            Arc::clone(&f),
            LambdaEvent::new(payload, Context::default()),
        )
    };

    let out = call(uploads(&["ok.jpg", "gone.jpg", "panic.jpg", "also+ok.jpg"]))
        .await
        .unwrap();
    assert_eq!(
        (out["succeeded"].as_u64(), out["failed"].as_u64()),
        (Some(2), Some(2)),
        "{out}"
    );
    assert_eq!(out["records"][1]["errorType"], "InvalidInput");
    assert_eq!(out["records"][2]["errorType"], "Internal");
    assert!(
        out["records"][2]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("made-up fetcher bug"),
        "{out}"
    );
    let doc: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("clip/photos/also ok.jpg.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["payload"]["key"], "also ok.jpg");
    assert_eq!(
        doc["id"],
        coldpath_clip::api::photo_id("s3://photos/also ok.jpg")
    );

    let err = call(uploads(&["ok.jpg", "flaky.jpg"])).await.unwrap_err();
    assert_eq!(err.error_type, ErrorType::Retryable);
    // The good photo was written; the retry overwrites it under the same id.
    assert!(dir.path().join("clip/photos/ok.jpg.json").is_file());
}
