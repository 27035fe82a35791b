//! Helpers shared by coldpath's integration tests: where setup put the runtime library and the
//! models, the committed reference fixtures, a process-wide embeddings service, and a local moto
//! server for the S3 wire protocol.

pub mod moto;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use coldpath_core::MapEnv;
use coldpath_embeddings::{EmbeddingsConfig, EmbeddingsService, OnnxEmbedder};
use coldpath_models::NoObjectStore;
use serde::Deserialize;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A variable that `make test` exports from `bootstrap.py env`. Tests need the real library and
/// model, so a missing one fails loudly with the fix instead of skipping.
pub fn setup_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the tests with `make test` (or `eval \"$(make -s env)\"` first)"
        ),
    }
}

/// Settings for an embeddings service on the setup's model, plus `extra` overrides.
pub fn embeddings_env(extra: &[(&str, &str)]) -> MapEnv {
    let mut env = MapEnv::new([
        ("ORT_DYLIB_PATH", setup_var("ORT_DYLIB_PATH")),
        (
            "EMBEDDINGS_MODEL_SOURCE",
            setup_var("EMBEDDINGS_MODEL_SOURCE"),
        ),
        (
            "EMBEDDINGS_MODEL_SHA256",
            setup_var("EMBEDDINGS_MODEL_SHA256"),
        ),
        // The reference fixture was computed with one intra-op thread; match it so results
        // compare like for like.
        ("COLDPATH_INTRA_THREADS", "1".to_string()),
    ]);
    for (k, v) in extra {
        env.0.insert(k.to_string(), v.to_string());
    }
    env
}

/// Builds a service on its own runtime thread (tests each run their own tokio runtime, which
/// cannot block on another future).
pub fn build_service(env: &MapEnv) -> EmbeddingsService<OnnxEmbedder> {
    let config = EmbeddingsConfig::from_env(env).expect("embeddings config");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(coldpath_embeddings::init(&config, NoObjectStore))
            .map(|(service, _)| service)
            .unwrap_or_else(|e| panic!("embeddings init failed: {e}"))
    })
    .join()
    .expect("init thread")
}

/// One embeddings service on the real model for the whole test binary.
pub fn service() -> Arc<EmbeddingsService<OnnxEmbedder>> {
    static SERVICE: OnceLock<Arc<EmbeddingsService<OnnxEmbedder>>> = OnceLock::new();
    Arc::clone(SERVICE.get_or_init(|| Arc::new(build_service(&embeddings_env(&[])))))
}

/// `tests/fixtures/embeddings/reference.json`, written by `gen_embeddings_reference.py`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsReference {
    pub model_sha256: String,
    pub max_tokens: usize,
    pub texts: Vec<String>,
    pub token_counts: Vec<usize>,
    pub embeddings: Vec<Vec<f32>>,
    pub paraphrases: Vec<[usize; 2]>,
    pub unrelated: Vec<[usize; 2]>,
}

pub fn embeddings_reference() -> EmbeddingsReference {
    let path = repo_root().join("tests/fixtures/embeddings/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
