//! `s3://` model sources against a real S3 wire protocol (a moto server on 127.0.0.1).

use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use coldpath_aws::S3Fetcher;
use coldpath_core::{Classify, ErrorType};
use coldpath_embeddings::pooling::cosine;
use coldpath_embeddings::{Embed, EmbeddingsConfig};
use coldpath_models::{ModelError, ModelStore, sha256_file};
use coldpath_test_support::moto::MotoServer;
use coldpath_test_support::setup_var;
use coldpath_tests::{embeddings_env, service};

const BUCKET: &str = "coldpath-models";
const PREFIX: &str = "all-minilm-l6-v2/v1";

async fn upload_model(client: &aws_sdk_s3::Client) -> u64 {
    client
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("create bucket");
    let dir = setup_var("EMBEDDINGS_MODEL_SOURCE");
    let mut total = 0;
    for file in ["model.onnx", "tokenizer.json"] {
        let path = Path::new(&dir).join(file);
        total += std::fs::metadata(&path).unwrap().len();
        client
            .put_object()
            .bucket(BUCKET)
            .key(format!("{PREFIX}/{file}"))
            .body(ByteStream::from_path(&path).await.unwrap())
            .send()
            .await
            .expect("put object");
    }
    total
}

fn s3_config(cache: &Path, extra: &[(&str, &str)]) -> EmbeddingsConfig {
    let source = format!("s3://{BUCKET}/{PREFIX}");
    let cache = cache.display().to_string();
    let mut vars = vec![
        ("EMBEDDINGS_MODEL_SOURCE", source.as_str()),
        ("COLDPATH_CACHE_DIR", cache.as_str()),
    ];
    vars.extend_from_slice(extra);
    EmbeddingsConfig::from_env(&embeddings_env(&vars)).unwrap()
}

#[tokio::test]
async fn model_from_s3_is_fetched_verified_cached_and_embeds_like_the_local_one() {
    let moto = MotoServer::start();
    let client = moto.s3_client().await;
    let size = upload_model(&client).await;
    let cache = tempfile::tempdir().unwrap();
    let config = s3_config(cache.path(), &[]);
    let store = ModelStore::new(&config.cache_dir, S3Fetcher::new(client.clone()));

    let first = store.resolve(&config.model).await.unwrap();
    assert_eq!(first.fetched_bytes, size);
    for file in ["model.onnx", "tokenizer.json"] {
        let local = Path::new(&setup_var("EMBEDDINGS_MODEL_SOURCE")).join(file);
        assert_eq!(
            sha256_file(&first.path(file)).unwrap(),
            sha256_file(&local).unwrap(),
            "{file}"
        );
    }
    // A later cold start on the same sandbox reuses the verified cache and downloads nothing.
    let second = store.resolve(&config.model).await.unwrap();
    assert_eq!(second.fetched_bytes, 0);
    assert_eq!(second.dir, first.dir);

    // The whole function initialises from the S3 source and gives the same vectors.
    let (from_s3, record) = coldpath_embeddings::init(&config, S3Fetcher::new(client))
        .await
        .unwrap();
    assert!(record.model_fetch_ms >= 0.0 && record.total_ms >= record.session_build_ms);
    let text = vec!["a photo of a dog on the beach".to_string()];
    let a = from_s3.embedder().embed(&text).unwrap();
    let b = service().embedder().embed(&text).unwrap();
    assert!(cosine(&a.vectors[0], &b.vectors[0]) >= 0.9999);
}

#[tokio::test]
async fn wrong_checksum_or_missing_object_is_a_model_load_error() {
    let moto = MotoServer::start();
    let client = moto.s3_client().await;
    upload_model(&client).await;
    let cache = tempfile::tempdir().unwrap();
    let model_sha = setup_var("EMBEDDINGS_MODEL_SHA256");
    let model_only = model_sha
        .split(',')
        .find(|e| e.starts_with("model.onnx="))
        .unwrap();
    let wrong = format!("{model_only},tokenizer.json={}", "ab".repeat(32));
    let config = s3_config(cache.path(), &[("EMBEDDINGS_MODEL_SHA256", &wrong)]);
    let store = ModelStore::new(&config.cache_dir, S3Fetcher::new(client.clone()));
    let err = store.resolve(&config.model).await.unwrap_err();
    assert!(
        matches!(err, ModelError::Checksum { ref file, .. } if file == "tokenizer.json"),
        "{err}"
    );
    assert_eq!(err.error_type(), ErrorType::ModelLoad);
    // The bad download never lands where a later cold start would trust it.
    let leftovers: Vec<_> = walk(cache.path())
        .into_iter()
        .filter(|p| p.ends_with("tokenizer.json"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let missing = EmbeddingsConfig::from_env(&embeddings_env(&[
        (
            "EMBEDDINGS_MODEL_SOURCE",
            &format!("s3://{BUCKET}/no/such/prefix"),
        ),
        ("COLDPATH_CACHE_DIR", &cache.path().display().to_string()),
    ]))
    .unwrap();
    let err = store.resolve(&missing.model).await.unwrap_err();
    assert!(err.to_string().contains("no such object"), "{err}");
    assert_eq!(err.error_type(), ErrorType::ModelLoad);
}

#[tokio::test]
async fn unreachable_endpoint_is_retryable() {
    // Start and stop a server so the port is known to be closed.
    let endpoint = {
        let moto = MotoServer::start();
        moto.endpoint.clone()
    };
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(&endpoint)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    );
    let cache = tempfile::tempdir().unwrap();
    let config = s3_config(cache.path(), &[]);
    let err = ModelStore::new(cache.path(), S3Fetcher::new(client))
        .resolve(&config.model)
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), ErrorType::Retryable, "{err}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
