//! Settings: the environment ([`CaptionModelConfig`]) and the model directory's JSON files
//! (`generation_config.json`, `preprocessor_config.json`) as Hugging Face writes them.

use std::path::Path;

use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::EnvVar;
use coldpath_models::{ModelKind, ModelSource, ModelSpec};
use serde::Deserialize;

use super::CaptionError;

/// The prefix of the model variables: `CAPTIONING_MODEL_SOURCE`, `_SHA256`, `_NAME`.
pub const MODEL_PREFIX: &str = "CAPTIONING_MODEL";
/// The model name when `CAPTIONING_MODEL_NAME` is unset.
pub const DEFAULT_MODEL_NAME: &str = "tiny-vit-gpt2";
/// Where a bundle shipped with the function would be (a layer's `/opt`, as embeddings' and
/// faces' defaults), never a path of the build machine: the template sets
/// `CAPTIONING_MODEL_SOURCE` to the published `s3://` bundle, and local runs take the generated
/// tiny model from `make env`.
pub const DEFAULT_MODEL_SOURCE: &str = "/opt/models/captioning";
/// The generated tiny model (`tests/fixtures/captioning/gen_tiny_model.py`) the unit tests load.
#[cfg(test)]
pub(crate) const TINY_MODEL_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../tests/fixtures/captioning/tiny-vit-gpt2"
);

/// File names of an optimum `image-to-text(-with-past)` export.
pub const ENCODER_FILE: &str = "encoder_model.onnx";
pub const DECODER_FILE: &str = "decoder_model.onnx";
pub const DECODER_WITH_PAST_FILE: &str = "decoder_with_past_model.onnx";
pub const DECODER_MERGED_FILE: &str = "decoder_model_merged.onnx";
/// Optional, merged layout only: the step-invariant cross-attention work that
/// `tools/hoist_cross_attention.py` moved out of the merged decoder, run once per batch.
pub const DECODER_CROSS_FILE: &str = "decoder_cross_model.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";
pub const GENERATION_FILE: &str = "generation_config.json";

/// Which decoder graphs a model directory provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderLayout {
    /// `decoder_model_merged.onnx`: both decoders behind a `use_cache_branch` input (optimum's
    /// default since 1.7).
    Merged,
    /// `decoder_model.onnx`, plus `decoder_with_past_model.onnx` for the KV cache (an export with
    /// `--no-post-process`, or an older optimum).
    Split,
}

/// Everything the captioner reads from the environment, once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionModelConfig {
    /// Where the model comes from and which files it needs (with their sha256 pins).
    pub spec: ModelSpec,
    pub layout: DecoderLayout,
    /// `CAPTIONING_NUM_BEAMS`; `None` takes `num_beams` from `generation_config.json` (1 if absent).
    pub num_beams: Option<usize>,
    /// `CAPTIONING_MAX_NEW_TOKENS`; `None` takes `max_new_tokens`, or `max_length - 1` (the decoder
    /// start token counts towards `max_length`), from `generation_config.json`.
    pub max_new_tokens: Option<usize>,
    /// `CAPTIONING_USE_CACHE` (default true): decode with the KV cache. Without it every step
    /// re-runs the decoder over the whole prefix; kept for benchmarks and parity checks.
    pub use_cache: bool,
}

impl CaptionModelConfig {
    /// The variables [`CaptionModelConfig::from_env`] reads.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional("CAPTIONING_MODEL_NAME", "the model's name in results"),
        EnvVar::optional(
            "CAPTIONING_MODEL_SOURCE",
            "the model directory or s3:// prefix",
        ),
        EnvVar::optional(
            "CAPTIONING_MODEL_SHA256",
            "file=sha256 pins, required for s3://",
        ),
        EnvVar::optional("CAPTIONING_DECODER_LAYOUT", "merged, split or auto"),
        EnvVar::optional("CAPTIONING_USE_CACHE", "decode with the KV cache"),
        EnvVar::optional(
            "CAPTIONING_NUM_BEAMS",
            "beams (generation_config.json otherwise)",
        ),
        EnvVar::optional(
            "CAPTIONING_MAX_NEW_TOKENS",
            "tokens per caption (generation_config.json otherwise)",
        ),
        EnvVar::optional(
            "CAPTIONING_CROSS_GRAPH",
            "the model has the hoisted cross-attention graph",
        ),
    ];

    /// Reads `CAPTIONING_MODEL_SOURCE` / `_SHA256` / `_NAME`, `CAPTIONING_DECODER_LAYOUT`
    /// (`merged`, `split` or `auto`, the default: merged when a local directory has
    /// `decoder_model_merged.onnx` or the source is remote, split otherwise),
    /// `CAPTIONING_NUM_BEAMS`, `CAPTIONING_MAX_NEW_TOKENS`, `CAPTIONING_USE_CACHE` and
    /// `CAPTIONING_CROSS_GRAPH`.
    pub fn from_env(env: &impl EnvSource) -> Result<CaptionModelConfig, ConfigError> {
        let source_var = format!("{MODEL_PREFIX}_SOURCE");
        let raw_source =
            config::get(env, &source_var).unwrap_or_else(|| DEFAULT_MODEL_SOURCE.to_string());
        let source: ModelSource = raw_source
            .parse()
            .map_err(|expected: String| ConfigError::invalid(&source_var, expected, &raw_source))?;
        let layout = match config::get(env, "CAPTIONING_DECODER_LAYOUT")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("auto") => match &source {
                ModelSource::Local(dir) if !dir.join(DECODER_MERGED_FILE).is_file() => {
                    DecoderLayout::Split
                }
                _ => DecoderLayout::Merged,
            },
            Some("merged") => DecoderLayout::Merged,
            Some("split") => DecoderLayout::Split,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "CAPTIONING_DECODER_LAYOUT",
                    "merged, split or auto",
                    other,
                ));
            }
        };
        let use_cache = config::bool_or(env, "CAPTIONING_USE_CACHE", true)?;
        let num_beams = optional_positive(env, "CAPTIONING_NUM_BEAMS")?;
        let max_new_tokens = optional_positive(env, "CAPTIONING_MAX_NEW_TOKENS")?;
        let local_cross =
            matches!(&source, ModelSource::Local(dir) if dir.join(DECODER_CROSS_FILE).is_file());
        // `CAPTIONING_CROSS_GRAPH`: the model has the cross graph `tools/hoist_cross_attention.py`
        // writes, so it is fetched and pinned with the other files. A remote source cannot be
        // looked into before the fetch, so a hoisted model on S3 needs it set.
        let cross_graph = config::bool_or(env, "CAPTIONING_CROSS_GRAPH", local_cross)?;
        if cross_graph && layout == DecoderLayout::Split {
            return Err(ConfigError::invalid(
                "CAPTIONING_CROSS_GRAPH",
                "false with CAPTIONING_DECODER_LAYOUT=split (the cross graph serves the merged decoder)",
                "true",
            ));
        }
        let files = model_files(layout, use_cache, cross_graph);
        let spec = ModelSpec::from_env(
            env,
            MODEL_PREFIX,
            ModelKind::ImageCaptioner,
            DEFAULT_MODEL_NAME,
            DEFAULT_MODEL_SOURCE,
            &files,
        )?;
        Ok(CaptionModelConfig {
            spec,
            layout,
            num_beams,
            max_new_tokens,
            use_cache,
        })
    }
}

/// The files a layout needs. A split export without the cache needs no with-past decoder; a
/// hoisted merged decoder needs its cross graph.
pub fn model_files(layout: DecoderLayout, use_cache: bool, cross_graph: bool) -> Vec<&'static str> {
    let mut files = vec![ENCODER_FILE];
    match layout {
        DecoderLayout::Merged => {
            files.push(DECODER_MERGED_FILE);
            if cross_graph {
                files.push(DECODER_CROSS_FILE);
            }
        }
        DecoderLayout::Split => {
            files.push(DECODER_FILE);
            if use_cache {
                files.push(DECODER_WITH_PAST_FILE);
            }
        }
    }
    files.extend([TOKENIZER_FILE, PREPROCESSOR_FILE, GENERATION_FILE]);
    files
}

fn optional_positive(env: &impl EnvSource, name: &str) -> Result<Option<usize>, ConfigError> {
    match config::get(env, name) {
        None => Ok(None),
        Some(_) => config::positive_or(env, name, 1).map(Some),
    }
}

/// A token id or a list of them (`eos_token_id` may be either in Hugging Face configs).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub(crate) enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `early_stopping` is `true`, `false` or `"never"` in transformers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(untagged)]
pub(crate) enum EarlyStoppingValue {
    Flag(bool),
    Word(NeverWord),
    #[default]
    #[serde(skip)]
    Unset,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NeverWord {
    Never,
}

/// The fields of `generation_config.json` that greedy and beam search use.
#[derive(Debug, Clone, Deserialize, Default)]
pub(crate) struct GenerationFile {
    pub decoder_start_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<u32>,
    pub max_length: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f64>,
    #[serde(default)]
    pub early_stopping: EarlyStoppingValue,
}

/// When beam search stops for one image (transformers' `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// As soon as `num_beams` finished hypotheses exist.
    True,
    /// When no running beam can beat the worst finished hypothesis at the current length (the
    /// transformers default).
    False,
    /// Only when no running beam could beat it at the maximum length.
    Never,
}

/// Generation settings resolved from the file and the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The first decoder token (`decoder_start_token_id`, else `bos_token_id`).
    pub decoder_start_token_id: u32,
    /// Any of these ends a caption (`eos_token_id`, one id or a list).
    pub eos_token_ids: Vec<u32>,
    /// `pad_token_id`, else the first EOS. Finished captions leave the batch instead of being
    /// padded, so this is informational.
    pub pad_token_id: u32,
    /// 1 = greedy; from `CAPTIONING_NUM_BEAMS`, else the file, else 1.
    pub num_beams: usize,
    /// The default per-image token limit (see [`CaptionModelConfig::max_new_tokens`]).
    pub max_new_tokens: usize,
    /// Beam hypotheses score `sum of log-probs / length ^ length_penalty` (default 1.0).
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
}

/// transformers' `GenerationConfig` default for `max_length`.
const HF_DEFAULT_MAX_LENGTH: usize = 20;

impl Generation {
    pub(crate) fn resolve(
        file: GenerationFile,
        config: &CaptionModelConfig,
    ) -> Result<Generation, CaptionError> {
        let bad = |reason: &str| CaptionError::bad_model(GENERATION_FILE, reason);
        let decoder_start_token_id = file
            .decoder_start_token_id
            .or(file.bos_token_id)
            .ok_or_else(|| bad("needs decoder_start_token_id or bos_token_id"))?;
        let eos_token_ids = match file.eos_token_id {
            Some(TokenIds::One(id)) => vec![id],
            Some(TokenIds::Many(ids)) if !ids.is_empty() => ids,
            _ => return Err(bad("needs eos_token_id")),
        };
        let pad_token_id = file.pad_token_id.unwrap_or(eos_token_ids[0]);
        let max_new_tokens = match (config.max_new_tokens, file.max_new_tokens) {
            (Some(n), _) | (None, Some(n)) => n,
            // max_length counts the decoder start token.
            (None, None) => file
                .max_length
                .unwrap_or(HF_DEFAULT_MAX_LENGTH)
                .saturating_sub(1),
        };
        if max_new_tokens == 0 {
            return Err(bad("max_length must leave room for at least one new token"));
        }
        let early_stopping = match file.early_stopping {
            EarlyStoppingValue::Flag(true) => EarlyStopping::True,
            EarlyStoppingValue::Flag(false) | EarlyStoppingValue::Unset => EarlyStopping::False,
            EarlyStoppingValue::Word(NeverWord::Never) => EarlyStopping::Never,
        };
        Ok(Generation {
            decoder_start_token_id,
            eos_token_ids,
            pad_token_id,
            num_beams: config.num_beams.or(file.num_beams).unwrap_or(1).max(1),
            max_new_tokens,
            length_penalty: file.length_penalty.unwrap_or(1.0),
            early_stopping,
        })
    }
}

/// `size` in `preprocessor_config.json`: ViTImageProcessor writes `{"height", "width"}`; older
/// ViTFeatureExtractor configs (nlpconnect/vit-gpt2-image-captioning's among them) a bare number
/// for a square.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum SizeField {
    Square(u32),
    /// Missing fields (a `shortest_edge` config) are rejected when resolving.
    Dims {
        height: Option<u32>,
        width: Option<u32>,
    },
}

/// The fields of `preprocessor_config.json` (ViTImageProcessor) that preprocessing uses.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PreprocessorFile {
    #[serde(default = "yes")]
    pub do_resize: bool,
    pub size: Option<SizeField>,
    #[serde(default = "bilinear")]
    pub resample: u32,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "one_255th")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    pub image_mean: Option<Vec<f32>>,
    pub image_std: Option<Vec<f32>>,
}

fn yes() -> bool {
    true
}
fn bilinear() -> u32 {
    2
}
fn one_255th() -> f64 {
    1.0 / 255.0
}

/// Reads and parses one JSON file of the model directory.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    file: &str,
) -> Result<T, CaptionError> {
    let text = std::fs::read_to_string(dir.join(file))
        .map_err(|e| CaptionError::bad_model(file, format!("cannot read it: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| CaptionError::bad_model(file, format!("not the expected JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;

    fn tiny_dir() -> String {
        TINY_MODEL_DIR.to_string()
    }

    #[test]
    fn the_default_source_is_no_build_machine_path() {
        let c = CaptionModelConfig::from_env(&MapEnv::default()).unwrap();
        assert_eq!(
            c.spec.source,
            coldpath_models::ModelSource::Local("/opt/models/captioning".into())
        );
    }

    #[test]
    fn defaults_pick_merged_for_the_tiny_model() {
        let env = MapEnv::new([("CAPTIONING_MODEL_SOURCE", tiny_dir())]);
        let c = CaptionModelConfig::from_env(&env).unwrap();
        assert_eq!(c.layout, DecoderLayout::Merged);
        assert!(c.use_cache);
        assert_eq!(c.num_beams, None);
        assert!(c.spec.file(DECODER_MERGED_FILE).is_some());
        assert!(c.spec.file(DECODER_FILE).is_none());
        assert_eq!(c.spec.kind, ModelKind::ImageCaptioner);
    }

    #[test]
    fn split_layout_without_cache_needs_no_with_past_decoder() {
        let env = MapEnv::new([
            ("CAPTIONING_MODEL_SOURCE", tiny_dir()),
            ("CAPTIONING_DECODER_LAYOUT", "split".into()),
            ("CAPTIONING_USE_CACHE", "false".into()),
            ("CAPTIONING_NUM_BEAMS", "4".into()),
            ("CAPTIONING_MAX_NEW_TOKENS", "7".into()),
        ]);
        let c = CaptionModelConfig::from_env(&env).unwrap();
        assert_eq!(c.layout, DecoderLayout::Split);
        assert_eq!(c.num_beams, Some(4));
        assert_eq!(c.max_new_tokens, Some(7));
        assert!(c.spec.file(DECODER_FILE).is_some());
        assert!(c.spec.file(DECODER_WITH_PAST_FILE).is_none());
    }

    #[test]
    fn the_cross_graph_is_fetched_when_present_locally_or_asked_for() {
        let hoisted = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../tests/fixtures/captioning/optimum-vit-gpt2-tiny-hoisted");
        let env = MapEnv::new([("CAPTIONING_MODEL_SOURCE", hoisted.display().to_string())]);
        let c = CaptionModelConfig::from_env(&env).unwrap();
        assert!(c.spec.file(DECODER_CROSS_FILE).is_some());
        // The plain tiny model has none; a remote source has it only when asked for.
        let env = MapEnv::new([("CAPTIONING_MODEL_SOURCE", tiny_dir())]);
        let c = CaptionModelConfig::from_env(&env).unwrap();
        assert!(c.spec.file(DECODER_CROSS_FILE).is_none());
        let env = MapEnv::new([
            (
                "CAPTIONING_MODEL_SOURCE",
                "s3://bucket/vit-gpt2".to_string(),
            ),
            ("CAPTIONING_CROSS_GRAPH", "true".into()),
        ]);
        let c = CaptionModelConfig::from_env(&env).unwrap();
        assert!(c.spec.file(DECODER_CROSS_FILE).is_some());
        let env = MapEnv::new([
            (
                "CAPTIONING_MODEL_SOURCE",
                "s3://bucket/vit-gpt2".to_string(),
            ),
            ("CAPTIONING_CROSS_GRAPH", "true".into()),
            ("CAPTIONING_DECODER_LAYOUT", "split".into()),
        ]);
        assert!(CaptionModelConfig::from_env(&env).is_err());
    }

    #[test]
    fn local_dir_without_merged_file_is_split_and_remote_is_merged() {
        let dir = tempfile::tempdir().unwrap();
        let env = MapEnv::new([("CAPTIONING_MODEL_SOURCE", dir.path().display().to_string())]);
        assert_eq!(
            CaptionModelConfig::from_env(&env).unwrap().layout,
            DecoderLayout::Split
        );
        let env = MapEnv::new([("CAPTIONING_MODEL_SOURCE", "s3://bucket/vit-gpt2")]);
        assert_eq!(
            CaptionModelConfig::from_env(&env).unwrap().layout,
            DecoderLayout::Merged
        );
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (name, value) in [
            ("CAPTIONING_DECODER_LAYOUT", "both"),
            ("CAPTIONING_NUM_BEAMS", "0"),
            ("CAPTIONING_MAX_NEW_TOKENS", "many"),
            ("CAPTIONING_USE_CACHE", "perhaps"),
            ("CAPTIONING_MODEL_SHA256", "nope.onnx=00"),
        ] {
            let env = MapEnv::new([
                ("CAPTIONING_MODEL_SOURCE", tiny_dir()),
                (name, value.into()),
            ]);
            let err = CaptionModelConfig::from_env(&env).unwrap_err();
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn generation_defaults_follow_transformers() {
        let env = MapEnv::new([("CAPTIONING_MODEL_SOURCE", tiny_dir())]);
        let c = CaptionModelConfig::from_env(&env).unwrap();
        let file: GenerationFile =
            serde_json::from_str(r#"{"bos_token_id": 5, "eos_token_id": [7, 8]}"#).unwrap();
        let g = Generation::resolve(file, &c).unwrap();
        assert_eq!(g.decoder_start_token_id, 5);
        assert_eq!(g.eos_token_ids, vec![7, 8]);
        assert_eq!(g.pad_token_id, 7);
        assert_eq!(g.num_beams, 1);
        assert_eq!(g.max_new_tokens, 19);
        assert_eq!(g.early_stopping, EarlyStopping::False);

        let file: GenerationFile = serde_json::from_str(
            r#"{"decoder_start_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                "max_length": 9, "num_beams": 4, "early_stopping": "never"}"#,
        )
        .unwrap();
        let g = Generation::resolve(file, &c).unwrap();
        assert_eq!((g.max_new_tokens, g.num_beams), (8, 4));
        assert_eq!(g.early_stopping, EarlyStopping::Never);

        let file: GenerationFile = serde_json::from_str(r#"{"eos_token_id": 2}"#).unwrap();
        assert!(matches!(
            Generation::resolve(file, &c),
            Err(CaptionError::BadModel { .. })
        ));
    }
}
