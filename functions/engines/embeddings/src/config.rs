//! The embeddings function's configuration, read once from the environment at start.

use std::path::PathBuf;

use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::{self, EnvVar};
use coldpath_models::{ModelKind, ModelSpec, OrtRuntime, SessionConfig};
use coldpath_runtime::metrics::MetricsMode;

use crate::api::Limits;
use crate::embedder::PipelineConfig;
use crate::pooling::Pooling;

/// Files an embedding model directory must hold.
pub const MODEL_FILES: [&str; 2] = ["model.onnx", "tokenizer.json"];
/// The bundled default: the model directory the Lambda package or layer ships.
pub const DEFAULT_MODEL_SOURCE: &str = "/opt/models/all-minilm-l6-v2";
pub const DEFAULT_MODEL_NAME: &str = "all-MiniLM-L6-v2";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingsConfig {
    pub model: ModelSpec,
    pub ort_library: PathBuf,
    pub session: SessionConfig,
    /// Sessions in the pool; more than one only helps a server that takes concurrent requests.
    pub sessions: usize,
    pub pipeline: PipelineConfig,
    pub limits: Limits,
    /// Run one inference at init so the first request does not pay ORT's first-run cost.
    pub warmup: bool,
    /// `COLDPATH_METRICS`: whether metric lines (CloudWatch EMF, on stderr) are written.
    pub metrics: MetricsMode,
    /// Where remote (`s3://`) models are cached; Lambda only allows writes under /tmp.
    pub cache_dir: PathBuf,
}

impl EmbeddingsConfig {
    /// The variables [`EmbeddingsConfig::from_env`] reads itself; [`EmbeddingsConfig::env`] adds
    /// those of the readers it calls.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional("EMBEDDINGS_MODEL_NAME", "the model's name in responses"),
        EnvVar::optional(
            "EMBEDDINGS_MODEL_SOURCE",
            "the model directory or s3:// prefix",
        ),
        EnvVar::optional(
            "EMBEDDINGS_MODEL_SHA256",
            "file=sha256 pins, required for s3://",
        ),
        EnvVar::optional("EMBEDDINGS_POOLING", "mean or cls"),
        EnvVar::optional("EMBEDDINGS_SESSIONS", "sessions in the pool"),
        EnvVar::optional("EMBEDDINGS_MAX_TOKENS", "tokens per input"),
        EnvVar::optional("EMBEDDINGS_NORMALIZE", "unit-length vectors"),
        EnvVar::optional("EMBEDDINGS_MAX_BATCH_TOKENS", "padded tokens per model run"),
        EnvVar::optional("EMBEDDINGS_MAX_INPUTS", "inputs per request"),
        EnvVar::optional("EMBEDDINGS_MAX_REQUEST_BYTES", "request body size"),
        EnvVar::optional("EMBEDDINGS_WARMUP", "one inference at init"),
        EnvVar::optional("COLDPATH_CACHE_DIR", "where s3:// models are cached"),
    ];

    /// Every variable [`EmbeddingsConfig::from_env`] reads, its own and its readers'.
    pub fn env() -> Vec<EnvVar> {
        contract::union(&[
            Self::ENV,
            SessionConfig::ENV,
            OrtRuntime::ENV,
            MetricsMode::ENV,
        ])
    }

    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let model = ModelSpec::from_env(
            env,
            "EMBEDDINGS_MODEL",
            ModelKind::TextEmbedding,
            DEFAULT_MODEL_NAME,
            DEFAULT_MODEL_SOURCE,
            &MODEL_FILES,
        )?;
        let pooling = match config::get(env, "EMBEDDINGS_POOLING") {
            None => Pooling::Mean,
            Some(p) => p
                .parse()
                .map_err(|()| ConfigError::invalid("EMBEDDINGS_POOLING", "mean or cls", p))?,
        };
        Ok(EmbeddingsConfig {
            model,
            ort_library: OrtRuntime::library_from_env(env),
            session: SessionConfig::from_env(env)?,
            sessions: config::positive_or(env, "EMBEDDINGS_SESSIONS", 1)?,
            pipeline: PipelineConfig {
                // all-MiniLM-L6-v2's sentence-transformers max_seq_length.
                max_tokens: config::positive_or(env, "EMBEDDINGS_MAX_TOKENS", 256)?,
                pooling,
                normalize: config::bool_or(env, "EMBEDDINGS_NORMALIZE", true)?,
                // Measured on one CPU core (README, "Batching by cost"): the model's cost per
                // token is lowest for runs of about 200 to 400 padded tokens and rises by a
                // quarter to a third past 1,500, so larger requests run as several runs here.
                max_batch_tokens: config::positive_or(env, "EMBEDDINGS_MAX_BATCH_TOKENS", 384)?,
            },
            limits: Limits {
                max_inputs: config::positive_or(env, "EMBEDDINGS_MAX_INPUTS", 256)?,
                max_request_bytes: config::positive_or(
                    env,
                    "EMBEDDINGS_MAX_REQUEST_BYTES",
                    1 << 20,
                )?,
            },
            warmup: config::bool_or(env, "EMBEDDINGS_WARMUP", true)?,
            metrics: MetricsMode::from_env(env)?,
            cache_dir: coldpath_models::cache_dir_from_env(env),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;

    /// The deploy contract: `from_env` reads exactly [`EmbeddingsConfig::env`].
    #[test]
    fn from_env_reads_exactly_its_list() {
        let env = coldpath_core::RecordingEnv::new(MapEnv::new([
            ("COLDPATH_INTRA_THREADS", "2"),
            ("COLDPATH_PROVIDER", "cuda"),
        ]));
        EmbeddingsConfig::from_env(&env).unwrap();
        let difference = env.difference(&[&EmbeddingsConfig::env()]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[test]
    fn defaults() {
        let c = EmbeddingsConfig::from_env(&MapEnv::default()).unwrap();
        assert_eq!(c.model.name, DEFAULT_MODEL_NAME);
        assert_eq!(c.pipeline.max_tokens, 256);
        assert_eq!(c.pipeline.pooling, Pooling::Mean);
        assert!(c.pipeline.normalize && c.warmup);
        assert_eq!(c.limits.max_inputs, 256);
        assert_eq!(c.ort_library, PathBuf::from("/opt/lib/libonnxruntime.so"));
        assert_eq!(c.sessions, 1);
    }

    #[test]
    fn overrides_and_errors() {
        let env = MapEnv::new([
            ("EMBEDDINGS_MAX_TOKENS", "128"),
            ("EMBEDDINGS_POOLING", "cls"),
            ("EMBEDDINGS_MAX_INPUTS", "8"),
            ("ORT_DYLIB_PATH", "/x/libonnxruntime.so"),
        ]);
        let c = EmbeddingsConfig::from_env(&env).unwrap();
        assert_eq!(c.pipeline.max_tokens, 128);
        assert_eq!(c.pipeline.pooling, Pooling::Cls);
        assert_eq!(c.limits.max_inputs, 8);
        assert_eq!(c.ort_library, PathBuf::from("/x/libonnxruntime.so"));
        let bad = MapEnv::new([("EMBEDDINGS_POOLING", "max")]);
        assert!(
            EmbeddingsConfig::from_env(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("EMBEDDINGS_POOLING")
        );
    }
}
