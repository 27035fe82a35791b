//! The model directory as Immich publishes CLIP-family models, and what its JSON files say.
//!
//! ```text
//! <model>/config.json                  open_clip's model config (embed_dim, vision_cfg, text_cfg)
//! <model>/visual/model.onnx            image [N|1, 3, S, S] float32 (mean/std-normalised) -> L2-normalised embedding
//! <model>/visual/preprocess_cfg.json   open_clip.get_model_preprocess_cfg: size, mean, std, interpolation, resize_mode
//! <model>/textual/model.onnx           text [N|1, context] int32 token ids -> L2-normalised embedding
//! <model>/textual/tokenizer.json       the HF tokenizer (transformers' save_pretrained)
//! <model>/textual/tokenizer_config.json  its settings; `pad_token` is read
//! ```
//!
//! Which tokenizer rules apply is told the way open_clip tells them (`open_clip.get_tokenizer`):
//! a `text_cfg.hf_tokenizer_name` means open_clip's `HFTokenizer` (pad with the tokenizer's pad
//! token, clean `whitespace` unless `tokenizer_kwargs.clean` says otherwise: SigLIP says
//! `canonicalize`); none means open_clip's own BPE `SimpleTokenizer` (pad with 0, clean `lower`),
//! whose vocabulary the HF CLIP `tokenizer.json` shares id for id.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::ClipError;
use crate::tokenize::{Clean, TextRules};

/// Files a model directory must hold, relative to it.
pub const MODEL_FILES: [&str; 6] = [
    "config.json",
    "visual/model.onnx",
    "visual/preprocess_cfg.json",
    "textual/model.onnx",
    "textual/tokenizer.json",
    "textual/tokenizer_config.json",
];

/// How the photo is brought to the model's square input (open_clip's `resize_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Shorter side to the input size, then the centre crop (OpenAI CLIP).
    Shortest,
    /// Straight to size x size, aspect ratio not kept (SigLIP).
    Squash,
}

/// Resampling filter (open_clip's `interpolation`), as PIL applies it: antialiased when shrinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    Bicubic,
    Bilinear,
}

/// `visual/preprocess_cfg.json`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Side of the square model input.
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub interpolation: Interpolation,
    pub resize_mode: ResizeMode,
}

#[derive(Deserialize)]
struct RawPreprocess {
    size: Value,
    mean: Vec<f32>,
    std: Vec<f32>,
    #[serde(default)]
    interpolation: Option<String>,
    #[serde(default)]
    resize_mode: Option<String>,
}

impl PreprocessConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ClipError> {
        let bad = |reason: String| ClipError::Layout {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawPreprocess = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let size = match &raw.size {
            Value::Number(n) => n.as_u64(),
            // open_clip writes (h, w); the towers Immich exports are square.
            Value::Array(a) if a.len() == 2 && a[0] == a[1] => a[0].as_u64(),
            _ => None,
        }
        .and_then(|s| u32::try_from(s).ok())
        .filter(|&s| s > 0)
        .ok_or_else(|| {
            bad(format!(
                "expected a positive square size, found {}",
                raw.size
            ))
        })?;
        let triple = |name: &str, v: &[f32]| -> Result<[f32; 3], ClipError> {
            match v {
                [a, b, c] => Ok([*a, *b, *c]),
                _ => Err(bad(format!(
                    "expected 3 values for {name}, found {}",
                    v.len()
                ))),
            }
        };
        let mean = triple("mean", &raw.mean)?;
        let std = triple("std", &raw.std)?;
        if std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(bad(format!("expected a positive std, found {std:?}")));
        }
        // open_clip's defaults where the key is absent: bicubic, shortest.
        let interpolation = match raw.interpolation.as_deref().unwrap_or("bicubic") {
            "bicubic" => Interpolation::Bicubic,
            "bilinear" => Interpolation::Bilinear,
            other => {
                return Err(bad(format!(
                    "expected interpolation bicubic or bilinear, found {other}"
                )));
            }
        };
        let resize_mode = match raw.resize_mode.as_deref().unwrap_or("shortest") {
            "shortest" => ResizeMode::Shortest,
            "squash" => ResizeMode::Squash,
            other => {
                return Err(bad(format!(
                    "expected resize_mode shortest or squash, found {other}"
                )));
            }
        };
        Ok(PreprocessConfig {
            size,
            mean,
            std,
            interpolation,
            resize_mode,
        })
    }
}

/// What `config.json` and `textual/tokenizer_config.json` say about the text side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextConfig {
    /// The embedding width both towers give (`embed_dim`).
    pub embed_dim: usize,
    pub rules: TextRules,
    /// The pad token's text when open_clip's `HFTokenizer` rules apply (its id comes from the
    /// tokenizer); `None` for the `SimpleTokenizer` rules, which pad with id 0.
    pub pad_token: Option<String>,
}

#[derive(Deserialize)]
struct RawModelConfig {
    embed_dim: usize,
    text_cfg: RawTextCfg,
}

#[derive(Deserialize)]
struct RawTextCfg {
    #[serde(default)]
    context_length: Option<usize>,
    #[serde(default)]
    hf_tokenizer_name: Option<String>,
    #[serde(default)]
    tokenizer_kwargs: Option<Value>,
}

impl TextConfig {
    /// From the text of `config.json` and of `textual/tokenizer_config.json`.
    pub fn parse(
        config_path: &Path,
        config: &str,
        tokenizer_config_path: &Path,
        tokenizer_config: &str,
    ) -> Result<Self, ClipError> {
        let bad = |path: &Path, reason: String| ClipError::Layout {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawModelConfig =
            serde_json::from_str(config).map_err(|e| bad(config_path, e.to_string()))?;
        if raw.embed_dim == 0 {
            return Err(bad(config_path, "expected a positive embed_dim".into()));
        }
        // open_clip's DEFAULT_CONTEXT_LENGTH, as Immich's exporter also assumes.
        let context_length = raw.text_cfg.context_length.unwrap_or(77);
        if context_length < 2 {
            return Err(bad(
                config_path,
                format!("expected a context_length of at least 2, found {context_length}"),
            ));
        }
        let hf = raw.text_cfg.hf_tokenizer_name.is_some();
        let clean = match raw
            .text_cfg
            .tokenizer_kwargs
            .as_ref()
            .and_then(|k| k.get("clean"))
        {
            None if hf => Clean::Whitespace,
            None => Clean::Lower,
            Some(Value::String(s)) => s.parse().map_err(|()| {
                bad(
                    config_path,
                    format!(
                        "expected text_cfg.tokenizer_kwargs.clean lower, whitespace or canonicalize, found {s}"
                    ),
                )
            })?,
            Some(other) => {
                return Err(bad(
                    config_path,
                    format!("expected a string for text_cfg.tokenizer_kwargs.clean, found {other}"),
                ));
            }
        };
        let pad_token = if hf {
            let tc: Value = serde_json::from_str(tokenizer_config)
                .map_err(|e| bad(tokenizer_config_path, e.to_string()))?;
            // transformers writes special tokens either as a string or as an AddedToken object.
            let pad = match tc.get("pad_token") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => {
                    o.get("content").and_then(Value::as_str).map(str::to_string)
                }
                _ => None,
            };
            Some(pad.ok_or_else(|| {
                bad(
                    tokenizer_config_path,
                    "expected a pad_token (a string or an object with content)".into(),
                )
            })?)
        } else {
            None
        };
        Ok(TextConfig {
            embed_dim: raw.embed_dim,
            rules: TextRules {
                context_length,
                clean,
            },
            pad_token,
        })
    }
}

/// A model directory's parsed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLayout {
    pub dir: PathBuf,
    pub text: TextConfig,
    pub preprocess: PreprocessConfig,
}

impl ModelLayout {
    /// Reads and checks the JSON files of the model directory `dir`.
    pub fn read(dir: &Path) -> Result<Self, ClipError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path)
                .map(|text| (path.clone(), text))
                .map_err(|e| ClipError::Layout {
                    path,
                    reason: e.to_string(),
                })
        };
        let (config_path, config) = read("config.json")?;
        let (tc_path, tc) = read("textual/tokenizer_config.json")?;
        let (pre_path, pre) = read("visual/preprocess_cfg.json")?;
        Ok(ModelLayout {
            dir: dir.to_path_buf(),
            text: TextConfig::parse(&config_path, &config, &tc_path, &tc)?,
            preprocess: PreprocessConfig::parse(&pre_path, &pre)?,
        })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(text: &str) -> Result<PreprocessConfig, ClipError> {
        PreprocessConfig::parse(Path::new("p.json"), text)
    }

    #[test]
    fn preprocess_openai_and_siglip() {
        let clip = pre(r#"{"size": [224, 224], "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}"#)
            .unwrap();
        assert_eq!(clip.size, 224);
        assert_eq!(clip.resize_mode, ResizeMode::Shortest);
        assert_eq!(clip.interpolation, Interpolation::Bicubic);
        let siglip = pre(
            r#"{"size": 256, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "interpolation": "bilinear", "resize_mode": "squash"}"#,
        )
        .unwrap();
        assert_eq!(
            (siglip.size, siglip.resize_mode, siglip.interpolation),
            (256, ResizeMode::Squash, Interpolation::Bilinear)
        );
        // Absent keys take open_clip's defaults.
        let bare = pre(r#"{"size": 224, "mean": [0, 0, 0], "std": [1, 1, 1]}"#).unwrap();
        assert_eq!(
            (bare.resize_mode, bare.interpolation),
            (ResizeMode::Shortest, Interpolation::Bicubic)
        );
    }

    #[test]
    fn preprocess_refusals_say_what_was_found() {
        for (text, found) in [
            (
                r#"{"size": [224, 256], "mean": [0,0,0], "std": [1,1,1]}"#,
                "[224,256]",
            ),
            (r#"{"size": 224, "mean": [0,0], "std": [1,1,1]}"#, "found 2"),
            (
                r#"{"size": 224, "mean": [0,0,0], "std": [1,0,1]}"#,
                "positive std",
            ),
            (
                r#"{"size": 224, "mean": [0,0,0], "std": [1,1,1], "interpolation": "nearest"}"#,
                "found nearest",
            ),
            (
                r#"{"size": 224, "mean": [0,0,0], "std": [1,1,1], "resize_mode": "longest"}"#,
                "found longest",
            ),
        ] {
            let err = pre(text).unwrap_err().to_string();
            assert!(err.contains(found), "{err} should contain {found}");
        }
    }

    #[test]
    fn text_rules_follow_open_clip() {
        let p = Path::new("x");
        let clip = TextConfig::parse(
            p,
            r#"{"embed_dim": 512, "text_cfg": {"context_length": 77, "vocab_size": 49408}}"#,
            p,
            r#"{"pad_token": "<|endoftext|>"}"#,
        )
        .unwrap();
        assert_eq!(clip.rules.clean, Clean::Lower);
        assert_eq!(clip.rules.context_length, 77);
        assert_eq!(clip.pad_token, None, "SimpleTokenizer rules pad with 0");

        let siglip = TextConfig::parse(
            p,
            r#"{"embed_dim": 768, "text_cfg": {"context_length": 64, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
                "tokenizer_kwargs": {"clean": "canonicalize"}}}"#,
            p,
            r#"{"pad_token": {"content": "</s>", "lstrip": false}}"#,
        )
        .unwrap();
        assert_eq!(siglip.rules.clean, Clean::Canonicalize);
        assert_eq!(siglip.rules.context_length, 64);
        assert_eq!(siglip.pad_token.as_deref(), Some("</s>"));

        let hf_default = TextConfig::parse(
            p,
            r#"{"embed_dim": 8, "text_cfg": {"hf_tokenizer_name": "x"}}"#,
            p,
            r#"{"pad_token": "<pad>"}"#,
        )
        .unwrap();
        assert_eq!(hf_default.rules.clean, Clean::Whitespace);
        assert_eq!(hf_default.rules.context_length, 77);

        let no_pad = TextConfig::parse(
            p,
            r#"{"embed_dim": 8, "text_cfg": {"hf_tokenizer_name": "x"}}"#,
            p,
            r#"{}"#,
        )
        .unwrap_err();
        assert!(no_pad.to_string().contains("pad_token"), "{no_pad}");
    }
}
