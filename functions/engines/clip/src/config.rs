//! The engine's configuration, read once from the environment at start.

use std::path::PathBuf;

use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::{self, EnvVar};
use coldpath_image::{CodecPaths, ImageLimits};
use coldpath_models::{ModelKind, ModelSpec, OrtRuntime, SessionConfig};
use coldpath_runtime::metrics::MetricsMode;

use crate::api::RequestLimits;
use crate::layout::MODEL_FILES;
use coldpath_embeddings::api::Limits;

/// Which towers a host loads. The search path needs only the text tower and the upload path
/// only the vision tower; each host fetches and builds only what it serves (a real ViT-B-32's
/// graphs are 254 MB and 352 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Towers {
    Text,
    Vision,
    Both,
}

impl Towers {
    pub fn text(self) -> bool {
        matches!(self, Towers::Text | Towers::Both)
    }

    pub fn vision(self) -> bool {
        matches!(self, Towers::Vision | Towers::Both)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Towers::Text => "text",
            Towers::Vision => "vision",
            Towers::Both => "both",
        }
    }

    /// Whether a host loading these towers needs the model file `name`: every small JSON file
    /// (the layout reads them all), and each loaded tower's graph and tokenizer.
    pub fn needs(self, name: &str) -> bool {
        if name.starts_with("visual/model") {
            self.vision()
        } else if name == "textual/model.onnx" || name == "textual/tokenizer.json" {
            self.text()
        } else {
            true
        }
    }
}

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
    /// `CLIP_MAX_INPUTS` (texts or photos in one request, 64) and `CLIP_MAX_REQUEST_BYTES`
    /// (the texts' bytes in one request, 64 KiB; photos are held to the photo limits instead).
    pub limits: RequestLimits,
    /// `CLIP_WARMUP`: run each loaded tower once at init.
    pub warmup: bool,
    /// The photo limits (`COLDPATH_IMAGE_*`), as for faces; the defaults, unread, without the
    /// vision tower.
    pub image_limits: ImageLimits,
    /// `COLDPATH_LIBHEIF_PATH` / `COLDPATH_LIBAVIF_PATH`: the HEIC and AVIF decoders.
    pub image_codecs: CodecPaths,
    /// `COLDPATH_METRICS`: whether metric lines (CloudWatch EMF, on stderr) are written.
    pub metrics: MetricsMode,
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
        EnvVar::optional("CLIP_MAX_INPUTS", "texts or photos in one request"),
        EnvVar::optional("CLIP_MAX_REQUEST_BYTES", "the texts' bytes in one request"),
        EnvVar::optional("CLIP_WARMUP", "one run of each tower at init"),
        EnvVar::optional("COLDPATH_CACHE_DIR", "where s3:// models are cached"),
    ];

    /// Every variable [`ClipConfig::from_env`] reads for both towers, its own and its readers'.
    pub fn env() -> Vec<EnvVar> {
        Self::env_for(Towers::Both)
    }

    /// Every variable [`ClipConfig::from_env`] reads for `towers`: the photo limits and the
    /// decoders only where the vision tower is loaded (the search path decodes no photo, so its
    /// deployment is not given them).
    pub fn env_for(towers: Towers) -> Vec<EnvVar> {
        let photos: &[&[EnvVar]] = if towers.vision() {
            &[ImageLimits::ENV, CodecPaths::ENV]
        } else {
            &[]
        };
        let mut lists: Vec<&[EnvVar]> = vec![
            Self::ENV,
            SessionConfig::ENV,
            OrtRuntime::ENV,
            MetricsMode::ENV,
        ];
        lists.extend_from_slice(photos);
        contract::union(&lists)
    }

    /// The config of a host that loads `towers`: the model's files are those towers need
    /// ([`Towers::needs`]), while `CLIP_MODEL_SHA256` may pin every file of the model, so one
    /// pin list serves the text and the vision host alike.
    pub fn from_env(env: &impl EnvSource, towers: Towers) -> Result<Self, ConfigError> {
        let mut model = ModelSpec::from_env(
            env,
            "CLIP_MODEL",
            ModelKind::ImageTextEmbedding,
            DEFAULT_MODEL_NAME,
            DEFAULT_MODEL_SOURCE,
            &MODEL_FILES,
        )?;
        model.files.retain(|f| towers.needs(&f.name));
        Ok(ClipConfig {
            model,
            ort_library: OrtRuntime::library_from_env(env),
            session: SessionConfig::from_env(env)?,
            sessions: config::positive_or(env, "CLIP_SESSIONS", 1)?,
            max_batch: config::positive_or(env, "CLIP_MAX_BATCH", 16)?,
            limits: {
                let max_inputs = config::positive_or(env, "CLIP_MAX_INPUTS", 64)?;
                RequestLimits {
                    text: Limits {
                        max_inputs,
                        max_request_bytes: config::positive_or(
                            env,
                            "CLIP_MAX_REQUEST_BYTES",
                            64 * 1024,
                        )?,
                    },
                    max_images: max_inputs,
                }
            },
            warmup: config::bool_or(env, "CLIP_WARMUP", true)?,
            image_limits: if towers.vision() {
                ImageLimits::from_env(env)?
            } else {
                ImageLimits::default()
            },
            image_codecs: if towers.vision() {
                CodecPaths::from_env(env)?
            } else {
                CodecPaths::default()
            },
            metrics: MetricsMode::from_env(env)?,
            cache_dir: coldpath_models::cache_dir_from_env(env),
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
        ClipConfig::from_env(&env, Towers::Both).unwrap();
        let difference = env.difference(&[&ClipConfig::env()]);
        assert!(difference.is_empty(), "{difference:?}");
        // The text tower alone reads neither the photo limits nor the decoders.
        for towers in [Towers::Text, Towers::Vision] {
            let env = coldpath_core::RecordingEnv::new(MapEnv::default());
            ClipConfig::from_env(&env, towers).unwrap();
            let difference = env.difference(&[&ClipConfig::env_for(towers)]);
            assert!(difference.is_empty(), "{towers:?}: {difference:?}");
        }
        let text = ClipConfig::env_for(Towers::Text);
        assert!(!text.iter().any(|v| v.name == "COLDPATH_LIBHEIF_PATH"));
    }

    #[test]
    fn defaults() {
        let c = ClipConfig::from_env(&MapEnv::default(), Towers::Both).unwrap();
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
        let c = ClipConfig::from_env(&env, Towers::Both).unwrap();
        assert!(matches!(c.model.source, ModelSource::S3 { .. }));
        assert!(c.model.file("visual/model.onnx").unwrap().sha256.is_some());
        assert!(c.model.file("config.json").unwrap().sha256.is_none());
        assert_eq!(c.max_batch, 4);

        let typo = MapEnv::new([("CLIP_MODEL_SHA256", &*format!("vision/model.onnx={hex}"))]);
        let err = ClipConfig::from_env(&typo, Towers::Both)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("CLIP_MODEL_SHA256"), "{err}");
        let zero = MapEnv::new([("CLIP_MAX_BATCH", "0")]);
        assert!(ClipConfig::from_env(&zero, Towers::Both).is_err());
    }

    /// Each host fetches only its towers' graphs, and one pin list covers both hosts.
    #[test]
    fn each_tower_host_needs_only_its_graphs() {
        let hex = "cd".repeat(32);
        let pins = format!("visual/model.onnx={hex},textual/model.onnx={hex}");
        let env = MapEnv::new([("CLIP_MODEL_SHA256", pins.as_str())]);
        let names = |towers| -> Vec<String> {
            ClipConfig::from_env(&env, towers)
                .unwrap()
                .model
                .files
                .into_iter()
                .map(|f| f.name)
                .collect()
        };
        let text = names(Towers::Text);
        assert!(text.contains(&"textual/model.onnx".to_string()));
        assert!(text.contains(&"textual/tokenizer.json".to_string()));
        assert!(!text.contains(&"visual/model.onnx".to_string()), "{text:?}");
        let vision = names(Towers::Vision);
        assert!(vision.contains(&"visual/model.onnx".to_string()));
        assert!(
            !vision
                .iter()
                .any(|f| f == "textual/model.onnx" || f == "textual/tokenizer.json"),
            "{vision:?}"
        );
        assert_eq!(names(Towers::Both).len(), MODEL_FILES.len());
    }
}
