//! Caption generation with an optimum-exported vision encoder-decoder (ViT-GPT2 style).
//!
//! [`CaptionModel::load`] opens a model directory as `optimum-cli export onnx --task
//! image-to-text-with-past` writes it: `encoder_model.onnx`, the decoder either merged
//! (`decoder_model_merged.onnx`, with its `use_cache_branch` input) or split
//! (`decoder_model.onnx` + `decoder_with_past_model.onnx`), `tokenizer.json`,
//! `preprocessor_config.json` and `generation_config.json`; next to a merged decoder, optionally
//! `decoder_cross_model.onnx` from `tools/hoist_cross_attention.py`. [`CaptionModel::caption`]
//! turns a batch of images into captions: preprocess, encode once, then greedy or beam search with
//! the KV cache, each image stopping on its own EOS or token limit, and detokenise without special
//! tokens.
//!
//! Everything here is blocking CPU/GPU work; async callers run it on a blocking thread.
//! See `functions/engines/captioning/MODEL.md` for the graph interface and where it was checked.

mod config;
mod error;
mod onnx;
mod preprocess;
mod search;

use std::path::Path;

use coldpath_models::{OrtRuntime, Provider, SessionConfig, SessionPool};
use image::RgbImage;
use ndarray::{Array3, Array4, ArrayView4};
use tokenizers::Tokenizer;

pub use config::{
    CaptionModelConfig, DEFAULT_MODEL_NAME, DEFAULT_MODEL_SOURCE, DecoderLayout, EarlyStopping,
    Generation, MODEL_PREFIX, model_files,
};
pub use error::CaptionError;
pub use preprocess::Preprocessor;

use config::{
    DECODER_CROSS_FILE, DECODER_FILE, DECODER_MERGED_FILE, DECODER_WITH_PAST_FILE, ENCODER_FILE,
    GENERATION_FILE, PREPROCESSOR_FILE, TOKENIZER_FILE, read_json,
};
use onnx::{DecoderSessions, Run, Sessions};
use search::{BeamSettings, Special};

/// One generated caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    /// The decoded text, special tokens skipped.
    pub text: String,
    /// The generated token ids after the decoder start token, up to and including the EOS when
    /// the caption ended on one (a caption cut by the token limit has none).
    pub token_ids: Vec<u32>,
}

/// How one call decodes. [`CaptionModel::options`] gives the configured defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// 1 is greedy search; more is beam search.
    pub num_beams: usize,
    /// Reuse the decoder's key/value cache between steps (one token per step) instead of
    /// re-running the decoder over the whole prefix.
    pub use_cache: bool,
}

/// A loaded captioning model. Thread-safe: sessions sit behind mutexes, so concurrent calls
/// serialise per decoder step.
pub struct CaptionModel {
    sessions: Sessions,
    tokenizer: Tokenizer,
    preprocessor: Preprocessor,
    generation: Generation,
    options: DecodeOptions,
    provider: Provider,
}

impl std::fmt::Debug for CaptionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptionModel")
            .field("generation", &self.generation)
            .field("options", &self.options)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl CaptionModel {
    /// Loads the model in `dir` (a directory the `ModelStore` resolved from `config.spec`) and
    /// builds its sessions with `session`'s threads, optimisation level and execution provider.
    ///
    /// Fails with [`CaptionError::BadModel`] when a file is missing or not shaped like an optimum
    /// export, and [`CaptionError::Model`] when ONNX Runtime cannot build a session.
    pub fn load(
        config: &CaptionModelConfig,
        dir: &Path,
        runtime: &OrtRuntime,
        session: &SessionConfig,
    ) -> Result<CaptionModel, CaptionError> {
        let name = config.spec.name.as_str();
        let build = |file: &str| -> Result<(ort::session::Session, Provider), CaptionError> {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(CaptionError::bad_model(
                    file,
                    format!("not found in {}", dir.display()),
                ));
            }
            Ok(runtime.build_session(&format!("{name}/{file}"), &path, session)?)
        };
        let pool = |s: ort::session::Session, file: &str| {
            SessionPool::new(vec![s]).ok_or_else(|| CaptionError::bad_model(file, "no session"))
        };
        let (encoder, provider) = build(ENCODER_FILE)?;
        let mut cross = None;
        let decoder = match config.layout {
            DecoderLayout::Merged => {
                // A decoder rewritten by tools/hoist_cross_attention.py comes with its cross
                // graph; `Sessions::new` checks that the two belong together.
                if dir.join(DECODER_CROSS_FILE).is_file() {
                    cross = Some(build(DECODER_CROSS_FILE)?.0);
                }
                DecoderSessions::Merged(pool(build(DECODER_MERGED_FILE)?.0, DECODER_MERGED_FILE)?)
            }
            DecoderLayout::Split => {
                let decoder = pool(build(DECODER_FILE)?.0, DECODER_FILE)?;
                // Load the with-past graph whenever it is there, so one model can decode both
                // ways (benchmarks, parity tests); it is required only with the cache on.
                let with_past = if config.use_cache || dir.join(DECODER_WITH_PAST_FILE).is_file() {
                    Some(pool(
                        build(DECODER_WITH_PAST_FILE)?.0,
                        DECODER_WITH_PAST_FILE,
                    )?)
                } else {
                    None
                };
                DecoderSessions::Split { decoder, with_past }
            }
        };
        let hoisted = cross.is_some();
        let sessions = Sessions::new(encoder, decoder, cross)?;
        let tokenizer = Tokenizer::from_file(dir.join(TOKENIZER_FILE))
            .map_err(|e| CaptionError::bad_model(TOKENIZER_FILE, e))?;
        let preprocessor = Preprocessor::from_file(read_json(dir, PREPROCESSOR_FILE)?)?;
        let generation = Generation::resolve(read_json(dir, GENERATION_FILE)?, config)?;
        let options = DecodeOptions {
            num_beams: generation.num_beams,
            use_cache: config.use_cache,
        };
        tracing::info!(
            model = name,
            layout = ?config.layout,
            provider = %provider,
            num_beams = options.num_beams,
            max_new_tokens = generation.max_new_tokens,
            use_cache = options.use_cache,
            hoisted,
            "captioning model loaded"
        );
        Ok(CaptionModel {
            sessions,
            tokenizer,
            preprocessor,
            generation,
            options,
            provider,
        })
    }

    /// The configured decoding (beams from the environment or `generation_config.json`).
    pub fn options(&self) -> DecodeOptions {
        self.options
    }

    /// The generation settings resolved from `generation_config.json` and the environment.
    pub fn generation(&self) -> &Generation {
        &self.generation
    }

    /// The preprocessing settings from `preprocessor_config.json`.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// The execution provider the encoder session runs on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Captions one batch of images with the configured decoding. `max_new_tokens[i]` limits
    /// image i's caption (`None`: the configured limit) and must have one entry per image.
    /// Blocking.
    pub fn caption(
        &self,
        images: &[&RgbImage],
        max_new_tokens: &[Option<usize>],
    ) -> Result<Vec<Caption>, CaptionError> {
        let pixels = self.preprocessor.pixel_values(images)?;
        self.caption_pixels_with(pixels.view(), max_new_tokens, &self.options)
    }

    /// One image's `pixel_values` row `[3, height, width]`: resized and normalised as the
    /// preprocessor says, the same values [`CaptionModel::caption`] would compute for it in any
    /// batch. Lets a caller free the decoded photo right away. Blocking.
    pub fn prepare(&self, image: &RgbImage) -> Result<Array3<f32>, CaptionError> {
        let pixels = self.preprocessor.pixel_values(&[image])?;
        Ok(pixels.index_axis_move(ndarray::Axis(0), 0))
    }

    /// Captions images prepared by [`CaptionModel::prepare`], stacked into one batch, with the
    /// configured decoding. Blocking.
    pub fn caption_prepared(
        &self,
        inputs: &[&Array3<f32>],
        max_new_tokens: &[Option<usize>],
    ) -> Result<Vec<Caption>, CaptionError> {
        let (h, w) = (
            self.preprocessor.height as usize,
            self.preprocessor.width as usize,
        );
        let mut pixels = Array4::<f32>::zeros((inputs.len(), 3, h, w));
        for (i, input) in inputs.iter().enumerate() {
            if input.shape() != [3, h, w] {
                return Err(CaptionError::InvalidInput(format!(
                    "input {i} must be [3, {h}, {w}], found {:?}",
                    input.shape()
                )));
            }
            pixels.index_axis_mut(ndarray::Axis(0), i).assign(input);
        }
        self.caption_pixels_with(pixels.view(), max_new_tokens, &self.options)
    }

    /// Captions prepared `pixel_values` `[batch, 3, height, width]` (already resized and
    /// normalised) with the configured decoding.
    pub fn caption_pixels(
        &self,
        pixel_values: ArrayView4<'_, f32>,
        max_new_tokens: &[Option<usize>],
    ) -> Result<Vec<Caption>, CaptionError> {
        self.caption_pixels_with(pixel_values, max_new_tokens, &self.options)
    }

    /// Captions prepared `pixel_values` with explicit decoding options.
    pub fn caption_pixels_with(
        &self,
        pixel_values: ArrayView4<'_, f32>,
        max_new_tokens: &[Option<usize>],
        options: &DecodeOptions,
    ) -> Result<Vec<Caption>, CaptionError> {
        let batch = pixel_values.len_of(ndarray::Axis(0));
        let (h, w) = (
            self.preprocessor.height as usize,
            self.preprocessor.width as usize,
        );
        if pixel_values.shape()[1..] != [3, h, w] {
            return Err(CaptionError::InvalidInput(format!(
                "pixel_values must be [batch, 3, {h}, {w}], found {:?}",
                pixel_values.shape()
            )));
        }
        if max_new_tokens.len() != batch {
            return Err(CaptionError::InvalidInput(format!(
                "{} token limits for {batch} images",
                max_new_tokens.len()
            )));
        }
        if options.num_beams == 0 {
            return Err(CaptionError::InvalidInput(
                "num_beams must be at least 1".into(),
            ));
        }
        if options.use_cache && !self.sessions.has_cache() {
            return Err(CaptionError::InvalidInput(
                "this model has no decoder_with_past_model.onnx, so it cannot decode with the cache"
                    .into(),
            ));
        }
        let limits = max_new_tokens
            .iter()
            .enumerate()
            .map(|(i, l)| match l {
                Some(0) => Err(CaptionError::InvalidInput(format!(
                    "max_new_tokens of image {i} must be at least 1"
                ))),
                Some(n) => Ok(*n),
                None => Ok(self.generation.max_new_tokens),
            })
            .collect::<Result<Vec<usize>, _>>()?;
        if batch == 0 {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let pixels: Array4<f32> = pixel_values.as_standard_layout().into_owned();
        let states = self.sessions.encode(&pixels)?;
        let mut run = Run::new(&self.sessions, states, options.use_cache);
        let special = Special {
            start: self.generation.decoder_start_token_id,
            eos: self.generation.eos_token_ids.clone(),
        };
        let ids = if options.num_beams == 1 {
            search::greedy(&mut run, &special, &limits)?
        } else {
            let settings = BeamSettings {
                num_beams: options.num_beams,
                length_penalty: self.generation.length_penalty,
                early_stopping: self.generation.early_stopping,
            };
            search::beam_search(&mut run, &special, &settings, &limits)?
        };
        let captions = ids
            .into_iter()
            .map(|token_ids| {
                let text = self
                    .tokenizer
                    .decode(&token_ids, true)
                    .map_err(|e| CaptionError::Detokenize(e.to_string()))?;
                Ok(Caption {
                    text: text.trim().to_string(),
                    token_ids,
                })
            })
            .collect::<Result<Vec<_>, CaptionError>>()?;
        tracing::debug!(
            batch_size = batch,
            num_beams = options.num_beams,
            use_cache = options.use_cache,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "captioned batch"
        );
        Ok(captions)
    }
}
