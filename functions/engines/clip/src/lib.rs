//! The image–text embeddings engine (CLIP, SigLIP) for photo search by words: texts and photos
//! in, L2-normalised vectors in one space out, so a text's vector ranks photos by cosine.
//!
//! It loads CLIP-family models in the layout Immich publishes on the Hugging Face Hub (a model
//! directory with `visual/` and `textual/` ONNX towers, open_clip's `config.json`, the visual
//! `preprocess_cfg.json` and the tokenizer files: [`layout`]), reproduces open_clip's
//! preprocessing ([`preprocess`]) and tokenization ([`tokenize`]) in Rust, and tells the two
//! generations of Immich's exporter apart by the graphs' output names ([`towers`]). It knows
//! nothing of Lambda, HTTP or queues; hosts decode photos with `coldpath-image` (upright RGB)
//! and call [`ClipEngine::embed_images`] / [`ClipEngine::embed_texts`] from a blocking context.
//!
//! Init ([`init`]) loads ONNX Runtime once, resolves the model (local directory or `s3://` with
//! sha256 pins, [`ClipConfig`]), builds one session pool per tower while the tokenizer loads,
//! warms both towers up and logs the cold-start record.

pub mod api;
pub mod config;
pub mod engine;
pub mod error;
pub mod layout;
pub mod preprocess;
pub mod resample;
pub mod service;
pub mod tokenize;
pub mod towers;

pub use config::{ClipConfig, Towers};
pub use engine::{ClipEngine, InitError, TowerParts, init, init_towers};
pub use error::ClipError;
pub use layout::{Interpolation, MODEL_FILES, ModelLayout, PreprocessConfig, ResizeMode};
pub use preprocess::Preprocess;
pub use service::{ClipService, ClipServiceError, PhotoVector};
pub use tokenize::{Clean, ClipTokenizer, TextRules};
pub use towers::{ExporterGeneration, TowerKind, TowerSignature};
