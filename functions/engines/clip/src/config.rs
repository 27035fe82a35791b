//! The engine's configuration, read once from the environment at start.

use std::path::PathBuf;

use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::{self, EnvVar};
use coldpath_models::{ModelKind, ModelSpec, OrtRuntime, SessionConfig};

use crate::layout::MODEL_FILES;

/// The bundled default: Immich's name for OpenAI's ViT-B-32, in a package's model directory.
pub const DEFAULT_MODEL_SOURCE: &str = "/opt/models/clip-vit-b-32";
pub const DEFAULT_MODEL_NAME: &str = "ViT-B-32__openai";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipConfig {
    /// `CLIP_MODEL_NAME`, `CLIP_MODEL_SOURCE` (a directory or `s3://bucket/prefix`) and
    /// `CLIP_MODEL_SHA256` (`file=hex,...`, required for every file of a remote source; file names
    /// are the layout's, e.g. `visual/model.onnx`).
    pub model: ModelSpec,
    pub ort_library: PathBuf,
    pub session: SessionConfig,
    /// `CLIP_SESSIONS`: sessions per tower; more than one only helps concurrent callers.
    pub sessions: usize,
    /// `CLIP_MAX_BATCH`: most texts or photos in one run, for towers whose batch is not fixed.
    pub max_batch: usize,
    /// `CLIP_WARMUP`: run each tower once at init.
    pub warmup: bool,
    /// Where remote models are cached (`COLDPATH_CACHE_DIR`).
    pub cache_dir: PathBuf,
}

impl ClipConfig {
    /// The variables [`ClipConfig::from_env`] reads itself; [`ClipConfig::env`] adds those of the
    /// readers it calls.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional("CLIP_MODEL_NAME", "the model's name in responses"),
        EnvVar::optional("CLIP_MODEL_SOURCE", "the model directory or s3:// prefix"),
        EnvVar::optional("CLIP_MODEL_SHA256", "file=sha256 pins, required for s3://"),
        EnvVar::optional("CLIP_SESSIONS", "sessions per tower"),
        EnvVar::optional("CLIP_MAX_BATCH", "texts or photos in one run"),
        EnvVar::optional("CLIP_WARMUP", "one run of each tower at init"),
        EnvVar::optional("COLDPATH_CACHE_DIR", "where s3:// models are cached"),
    ];

    /// Every variable [`ClipConfig::from_env`] reads, its own and its readers'.
    pub fn env() -> Vec<EnvVar> {
        contract::union(&[Self::ENV, SessionConfig::ENV, OrtRuntime::ENV])
    }

    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        Ok(ClipConfig {
            model: ModelSpec::from_env(
                env,
                "CLIP_MODEL",
                ModelKind::ImageTextEmbedding,
                DEFAULT_MODEL_NAME,
                DEFAULT_MODEL_SOURCE,
                &MODEL_FILES,
            )?,
            ort_library: OrtRuntime::library_from_env(env),
            session: SessionConfig::from_env(env)?,
            sessions: config::positive_or(env, "CLIP_SESSIONS", 1)?,
            max_batch: config::positive_or(env, "CLIP_MAX_BATCH", 16)?,
            warmup: config::bool_or(env, "CLIP_WARMUP", true)?,
            cache_dir: config::get(env, "COLDPATH_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp/coldpath")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;
    use coldpath_models::ModelSource;

    /// The deploy contract: `from_env` reads exactly [`ClipConfig::env`].
    #[test]
    fn from_env_reads_exactly_its_list() {
        let env = coldpath_core::RecordingEnv::new(MapEnv::new([
            ("COLDPATH_INTRA_THREADS", "2"),
            ("COLDPATH_PROVIDER", "cuda"),
        ]));
        ClipConfig::from_env(&env).unwrap();
        let difference = env.difference(&[&ClipConfig::env()]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[test]
    fn defaults() {
        let c = ClipConfig::from_env(&MapEnv::default()).unwrap();
        assert_eq!(c.model.name, DEFAULT_MODEL_NAME);
        assert_eq!(c.model.kind, ModelKind::ImageTextEmbedding);
        assert_eq!(
            c.model.source,
            ModelSource::Local(PathBuf::from(DEFAULT_MODEL_SOURCE))
        );
        let files: Vec<&str> = c.model.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, MODEL_FILES);
        assert_eq!((c.sessions, c.max_batch, c.warmup), (1, 16, true));
    }

    #[test]
    fn s3_source_with_pins_and_errors() {
        let hex = "ab".repeat(32);
        let env = MapEnv::new([
            (
                "CLIP_MODEL_SOURCE",
                "s3://models/clip/ViT-B-16-SigLIP__webli",
            ),
            (
                "CLIP_MODEL_SHA256",
                &*format!("visual/model.onnx={hex},textual/model.onnx={hex}"),
            ),
            ("CLIP_MAX_BATCH", "4"),
        ]);
        let c = ClipConfig::from_env(&env).unwrap();
        assert!(matches!(c.model.source, ModelSource::S3 { .. }));
        assert!(c.model.file("visual/model.onnx").unwrap().sha256.is_some());
        assert!(c.model.file("config.json").unwrap().sha256.is_none());
        assert_eq!(c.max_batch, 4);

        let typo = MapEnv::new([("CLIP_MODEL_SHA256", &*format!("vision/model.onnx={hex}"))]);
        let err = ClipConfig::from_env(&typo).unwrap_err().to_string();
        assert!(err.starts_with("CLIP_MODEL_SHA256"), "{err}");
        let zero = MapEnv::new([("CLIP_MAX_BATCH", "0")]);
        assert!(ClipConfig::from_env(&zero).is_err());
    }
}
