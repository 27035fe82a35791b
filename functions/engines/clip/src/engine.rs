//! The engine: both towers behind `embed_texts` and `embed_images`, and the init that builds
//! them once per process.

use std::time::Instant;

use coldpath_core::cold_start::{ColdStartTimer, Phase};
use coldpath_core::{Classify, ColdStartRecord, ErrorType};
use coldpath_image::RgbImage;
use coldpath_io::ObjectFetcher;
use coldpath_models::{ModelError, ModelStore, OrtRuntime, SessionConfig, SessionPool};
use ndarray::Array2;

use crate::config::ClipConfig;
use crate::error::ClipError;
use crate::layout::ModelLayout;
use crate::preprocess::Preprocess;
use crate::tokenize::ClipTokenizer;
use crate::towers::{Tower, TowerKind, TowerSignature};

/// Failures while building the engine at init.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Clip(#[from] ClipError),
}

impl Classify for InitError {
    fn error_type(&self) -> ErrorType {
        match self {
            InitError::Model(e) => e.error_type(),
            InitError::Clip(e) => e.error_type(),
        }
    }
}

/// A CLIP-family model ready to embed texts and photos into one space.
pub struct ClipEngine {
    name: String,
    tokenizer: ClipTokenizer,
    preprocess: Preprocess,
    text: Tower,
    vision: Tower,
    dimensions: usize,
}

impl ClipEngine {
    /// Builds the engine from a model directory's parsed files and one session pool per tower.
    pub fn new(
        name: impl Into<String>,
        layout: &ModelLayout,
        tokenizer: ClipTokenizer,
        text_sessions: SessionPool,
        vision_sessions: SessionPool,
        max_batch: usize,
    ) -> Result<Self, ClipError> {
        let text = Tower::new(
            TowerKind::Textual,
            text_sessions,
            &layout.path("textual/model.onnx"),
            layout.text.rules.context_length,
            max_batch,
        )?;
        let vision = Tower::new(
            TowerKind::Visual,
            vision_sessions,
            &layout.path("visual/model.onnx"),
            layout.preprocess.size as usize,
            max_batch,
        )?;
        let dimensions = layout.text.embed_dim;
        for tower in [&text, &vision] {
            if let Some(d) = tower.signature().dims
                && d != dimensions
            {
                return Err(ClipError::ModelSignature {
                    tower: tower.signature().kind.as_str(),
                    path: layout.path(&format!("{}/model.onnx", tower.signature().kind.as_str())),
                    reason: format!(
                        "expected {dimensions}-wide embeddings (config.json embed_dim), found {d}"
                    ),
                });
            }
        }
        let engine = ClipEngine {
            name: name.into(),
            tokenizer,
            preprocess: Preprocess::new(layout.preprocess.clone()),
            text,
            vision,
            dimensions,
        };
        tracing::info!(
            model = %engine.name,
            textual_exporter = engine.text.signature().generation.as_str(),
            visual_exporter = engine.vision.signature().generation.as_str(),
            text_rows_per_run = engine.text.rows_per_run(),
            image_rows_per_run = engine.vision.rows_per_run(),
            dimensions,
            "clip towers checked"
        );
        Ok(engine)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Width of every vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    pub fn text_signature(&self) -> &TowerSignature {
        self.text.signature()
    }

    pub fn vision_signature(&self) -> &TowerSignature {
        self.vision.signature()
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// One L2-normalised vector per text, in order. CPU-bound: call from a blocking context.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ClipError> {
        if texts.is_empty() {
            return Err(ClipError::Empty("text"));
        }
        let context = self.tokenizer.context_length();
        let mut vectors = Vec::with_capacity(texts.len());
        let mut index = 0;
        for chunk in texts.chunks(self.text.rows_per_run()) {
            let mut ids = Array2::<u32>::zeros((chunk.len(), context));
            for (row, text) in chunk.iter().enumerate() {
                let encoded = self
                    .tokenizer
                    .encode(text)
                    .map_err(|reason| ClipError::Tokenize { index, reason })?;
                ids.row_mut(row)
                    .iter_mut()
                    .zip(encoded)
                    .for_each(|(d, s)| *d = s);
                index += 1;
            }
            vectors.extend(self.text.run_ids(ids)?);
        }
        Ok(vectors)
    }

    /// One L2-normalised vector per photo (upright RGB, any size), in order. CPU-bound: call
    /// from a blocking context.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, ClipError> {
        if images.is_empty() {
            return Err(ClipError::Empty("image"));
        }
        let mut vectors = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.vision.rows_per_run()) {
            let refs: Vec<&RgbImage> = chunk.iter().collect();
            vectors.extend(self.vision.run_images(self.preprocess.tensor(&refs)?)?);
        }
        Ok(vectors)
    }
}

/// Builds `sessions` sessions of one tower's graph.
fn build_pool(
    runtime: &OrtRuntime,
    name: &str,
    path: &std::path::Path,
    config: &SessionConfig,
    sessions: usize,
    timer: &mut ColdStartTimer,
) -> Result<SessionPool, InitError> {
    let mut built = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (session, provider) = runtime.build_session(name, path, config)?;
        timer.set_provider(provider.name());
        built.push(session);
    }
    SessionPool::new(built).ok_or_else(|| {
        InitError::Clip(ClipError::ModelSignature {
            tower: "both",
            path: path.to_path_buf(),
            reason: "no sessions were built".into(),
        })
    })
}

/// Loads ONNX Runtime, resolves the model (local or `s3://`, checksums checked), reads its
/// layout, builds both towers' sessions (the tokenizer loads on a second thread meanwhile),
/// warms each tower up once and logs the cold-start record.
pub async fn init<F: ObjectFetcher>(
    config: &ClipConfig,
    fetcher: F,
) -> Result<(ClipEngine, ColdStartRecord), InitError> {
    let mut timer = ColdStartTimer::start("clip");
    let runtime = timer.time(Phase::LibraryLoad, || OrtRuntime::load(&config.ort_library))?;
    let store = ModelStore::new(&config.cache_dir, fetcher);
    let model = store.resolve(&config.model).await?;
    timer.add(Phase::ModelFetch, model.elapsed);

    let build_started = Instant::now();
    let layout = ModelLayout::read(&model.dir)?;
    let name = &model.spec.name;
    let (tokenizer, text, vision) = std::thread::scope(|scope| {
        let tokenizer = scope.spawn(|| {
            ClipTokenizer::load(
                &layout.path("textual/tokenizer.json"),
                layout.text.rules,
                layout.text.pad_token.as_deref(),
            )
        });
        // Each tower under its own name: the optimised-graph cache is keyed by it.
        let text = build_pool(
            &runtime,
            &format!("{name}/textual"),
            &layout.path("textual/model.onnx"),
            &config.session,
            config.sessions,
            &mut timer,
        )?;
        let vision = build_pool(
            &runtime,
            &format!("{name}/visual"),
            &layout.path("visual/model.onnx"),
            &config.session,
            config.sessions,
            &mut timer,
        )?;
        let tokenizer = tokenizer.join().map_err(|_| ClipError::TokenizerLoad {
            path: layout.path("textual/tokenizer.json"),
            reason: "the loader thread panicked".into(),
        })??;
        Ok::<_, InitError>((tokenizer, text, vision))
    })?;
    let engine = ClipEngine::new(name, &layout, tokenizer, text, vision, config.max_batch)?;
    timer.add(Phase::SessionBuild, build_started.elapsed());
    if config.warmup {
        timer.time(Phase::Warmup, || {
            engine.embed_texts(&["warm-up: a photo of a dog on the beach".to_string()])?;
            engine.embed_images(&[RgbImage::from_pixel(
                640,
                480,
                coldpath_image::Rgb([120, 140, 160]),
            )])
        })?;
    }
    Ok((engine, timer.finish()))
}
