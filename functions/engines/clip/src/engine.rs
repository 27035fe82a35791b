//! The engine: both towers behind `embed_texts` and `embed_images`, and the init that builds
//! them once per process.

use std::time::Instant;

use coldpath_core::cold_start::{ColdStartTimer, Phase};
use coldpath_core::{Classify, ColdStartRecord, ErrorType};
use coldpath_image::RgbImage;
use coldpath_io::ObjectFetcher;
use coldpath_models::{ModelError, ModelStore, OrtRuntime, SessionConfig, SessionPool};
use ndarray::Array2;

use crate::config::{ClipConfig, Towers};
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

/// A CLIP-family model ready to embed texts, photos or both into one space.
pub struct ClipEngine {
    name: String,
    text: Option<TextTower>,
    vision: Option<VisionTower>,
    dimensions: usize,
}

struct TextTower {
    tokenizer: ClipTokenizer,
    tower: Tower,
}

struct VisionTower {
    preprocess: Preprocess,
    tower: Tower,
}

/// One tower's loaded parts, for [`ClipEngine::with_towers`].
pub enum TowerParts {
    Text {
        tokenizer: Box<ClipTokenizer>,
        sessions: SessionPool,
    },
    Vision {
        sessions: SessionPool,
    },
}

impl ClipEngine {
    /// Builds the engine with both towers from a model directory's parsed files and one session
    /// pool per tower.
    pub fn new(
        name: impl Into<String>,
        layout: &ModelLayout,
        tokenizer: ClipTokenizer,
        text_sessions: SessionPool,
        vision_sessions: SessionPool,
        max_batch: usize,
    ) -> Result<Self, ClipError> {
        Self::with_towers(
            name,
            layout,
            vec![
                TowerParts::Text {
                    tokenizer: Box::new(tokenizer),
                    sessions: text_sessions,
                },
                TowerParts::Vision {
                    sessions: vision_sessions,
                },
            ],
            max_batch,
        )
    }

    /// Builds the engine with the towers given (one or both); the graphs are checked against the
    /// model's config.
    pub fn with_towers(
        name: impl Into<String>,
        layout: &ModelLayout,
        parts: Vec<TowerParts>,
        max_batch: usize,
    ) -> Result<Self, ClipError> {
        let dimensions = layout.text.embed_dim;
        let (mut text, mut vision) = (None, None);
        for part in parts {
            match part {
                TowerParts::Text {
                    tokenizer,
                    sessions,
                } => {
                    let tower = Tower::new(
                        TowerKind::Textual,
                        sessions,
                        &layout.path("textual/model.onnx"),
                        layout.text.rules.context_length,
                        max_batch,
                    )?;
                    check_width(&tower, layout, dimensions)?;
                    text = Some(TextTower {
                        tokenizer: *tokenizer,
                        tower,
                    });
                }
                TowerParts::Vision { sessions } => {
                    let tower = Tower::new(
                        TowerKind::Visual,
                        sessions,
                        &layout.path("visual/model.onnx"),
                        layout.preprocess.size as usize,
                        max_batch,
                    )?;
                    check_width(&tower, layout, dimensions)?;
                    vision = Some(VisionTower {
                        preprocess: Preprocess::new(layout.preprocess.clone()),
                        tower,
                    });
                }
            }
        }
        let engine = ClipEngine {
            name: name.into(),
            text,
            vision,
            dimensions,
        };
        tracing::info!(
            model = %engine.name,
            towers = engine.towers().as_str(),
            textual_exporter = engine.text.as_ref().map(|t| t.tower.signature().generation.as_str()),
            visual_exporter = engine.vision.as_ref().map(|v| v.tower.signature().generation.as_str()),
            text_rows_per_run = engine.text.as_ref().map(|t| t.tower.rows_per_run()),
            image_rows_per_run = engine.vision.as_ref().map(|v| v.tower.rows_per_run()),
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

    /// Which towers this engine loaded.
    pub fn towers(&self) -> Towers {
        match (self.text.is_some(), self.vision.is_some()) {
            (true, false) => Towers::Text,
            (false, true) => Towers::Vision,
            _ => Towers::Both,
        }
    }

    pub fn text_signature(&self) -> Option<&TowerSignature> {
        self.text.as_ref().map(|t| t.tower.signature())
    }

    pub fn vision_signature(&self) -> Option<&TowerSignature> {
        self.vision.as_ref().map(|v| v.tower.signature())
    }

    pub fn tokenizer(&self) -> Option<&ClipTokenizer> {
        self.text.as_ref().map(|t| &t.tokenizer)
    }

    pub fn preprocess(&self) -> Option<&Preprocess> {
        self.vision.as_ref().map(|v| &v.preprocess)
    }

    fn text_tower(&self) -> Result<&TextTower, ClipError> {
        self.text.as_ref().ok_or(ClipError::TowerNotLoaded {
            tower: "text",
            model: self.name.clone(),
        })
    }

    fn vision_tower(&self) -> Result<&VisionTower, ClipError> {
        self.vision.as_ref().ok_or(ClipError::TowerNotLoaded {
            tower: "vision",
            model: self.name.clone(),
        })
    }

    /// Tokenizes texts as the text tower takes them: one row of ids per text, and how many
    /// tokens each row holds (padding left out), for usage counts.
    pub fn tokenize(&self, texts: &[String]) -> Result<(Array2<u32>, Vec<usize>), ClipError> {
        let text = self.text_tower()?;
        let context = text.tokenizer.context_length();
        let mut ids = Array2::<u32>::zeros((texts.len(), context));
        let mut counts = Vec::with_capacity(texts.len());
        for (index, t) in texts.iter().enumerate() {
            let (encoded, count) = text
                .tokenizer
                .encode_counted(t)
                .map_err(|reason| ClipError::Tokenize { index, reason })?;
            counts.push(count);
            ids.row_mut(index)
                .iter_mut()
                .zip(encoded)
                .for_each(|(d, s)| *d = s);
        }
        Ok((ids, counts))
    }

    /// Runs already-tokenized rows ([`ClipEngine::tokenize`]) through the text tower, in runs
    /// of the tower's batch. CPU-bound: call from a blocking context.
    pub fn embed_token_ids(&self, ids: Array2<u32>) -> Result<Vec<Vec<f32>>, ClipError> {
        let text = self.text_tower()?;
        if ids.nrows() == 0 {
            return Err(ClipError::Empty("text"));
        }
        let rows = text.tower.rows_per_run();
        let mut vectors = Vec::with_capacity(ids.nrows());
        let mut start = 0;
        while start < ids.nrows() {
            let end = (start + rows).min(ids.nrows());
            let chunk = ids.slice(ndarray::s![start..end, ..]).to_owned();
            vectors.extend(text.tower.run_ids(chunk)?);
            start = end;
        }
        Ok(vectors)
    }

    /// One L2-normalised vector per text, in order. CPU-bound: call from a blocking context.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ClipError> {
        if texts.is_empty() {
            return Err(ClipError::Empty("text"));
        }
        let (ids, _) = self.tokenize(texts)?;
        self.embed_token_ids(ids)
    }

    /// One L2-normalised vector per photo (upright RGB, any size), in order. CPU-bound: call
    /// from a blocking context.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, ClipError> {
        let vision = self.vision_tower()?;
        if images.is_empty() {
            return Err(ClipError::Empty("image"));
        }
        let mut vectors = Vec::with_capacity(images.len());
        for chunk in images.chunks(vision.tower.rows_per_run()) {
            let refs: Vec<&RgbImage> = chunk.iter().collect();
            vectors.extend(vision.tower.run_images(vision.preprocess.tensor(&refs)?)?);
        }
        Ok(vectors)
    }
}

/// A tower whose graph declares its width must give the config's `embed_dim`.
fn check_width(tower: &Tower, layout: &ModelLayout, dimensions: usize) -> Result<(), ClipError> {
    match tower.signature().dims {
        Some(d) if d != dimensions => Err(ClipError::ModelSignature {
            tower: tower.signature().kind.as_str(),
            path: layout.path(&format!("{}/model.onnx", tower.signature().kind.as_str())),
            reason: format!(
                "expected {dimensions}-wide embeddings (config.json embed_dim), found {d}"
            ),
        }),
        _ => Ok(()),
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
    init_towers(config, fetcher, Towers::Both).await
}

/// [`init`] for the towers a host serves: only their files are fetched (the config's file list,
/// [`ClipConfig::from_env`]) and only their sessions built.
pub async fn init_towers<F: ObjectFetcher>(
    config: &ClipConfig,
    fetcher: F,
    towers: Towers,
) -> Result<(ClipEngine, ColdStartRecord), InitError> {
    let mut timer = ColdStartTimer::start("clip");
    let runtime = timer.time(Phase::LibraryLoad, || OrtRuntime::load(&config.ort_library))?;
    let store = ModelStore::new(&config.cache_dir, fetcher);
    let model = store.resolve(&config.model).await?;
    timer.add(Phase::ModelFetch, model.elapsed);

    let build_started = Instant::now();
    let layout = ModelLayout::read(&model.dir)?;
    let name = &model.spec.name;
    let parts = std::thread::scope(|scope| {
        let tokenizer = towers.text().then(|| {
            scope.spawn(|| {
                ClipTokenizer::load(
                    &layout.path("textual/tokenizer.json"),
                    layout.text.rules,
                    layout.text.pad_token.as_deref(),
                )
            })
        });
        let mut parts = Vec::with_capacity(2);
        // Each tower under its own name: the optimised-graph cache is keyed by it.
        let text = if towers.text() {
            Some(build_pool(
                &runtime,
                &format!("{name}/textual"),
                &layout.path("textual/model.onnx"),
                &config.session,
                config.sessions,
                &mut timer,
            )?)
        } else {
            None
        };
        if towers.vision() {
            parts.push(TowerParts::Vision {
                sessions: build_pool(
                    &runtime,
                    &format!("{name}/visual"),
                    &layout.path("visual/model.onnx"),
                    &config.session,
                    config.sessions,
                    &mut timer,
                )?,
            });
        }
        if let (Some(sessions), Some(tokenizer)) = (text, tokenizer) {
            let tokenizer = tokenizer.join().map_err(|_| ClipError::TokenizerLoad {
                path: layout.path("textual/tokenizer.json"),
                reason: "the loader thread panicked".into(),
            })??;
            parts.push(TowerParts::Text {
                tokenizer: Box::new(tokenizer),
                sessions,
            });
        }
        Ok::<_, InitError>(parts)
    })?;
    let engine = ClipEngine::with_towers(name, &layout, parts, config.max_batch)?;
    timer.add(Phase::SessionBuild, build_started.elapsed());
    if config.warmup {
        timer.time(Phase::Warmup, || {
            if towers.text() {
                engine.embed_texts(&["warm-up: a photo of a dog on the beach".to_string()])?;
            }
            if towers.vision() {
                engine.embed_images(&[RgbImage::from_pixel(
                    640,
                    480,
                    coldpath_image::Rgb([120, 140, 160]),
                )])?;
            }
            Ok::<_, ClipError>(())
        })?;
    }
    Ok((engine, timer.finish()))
}
