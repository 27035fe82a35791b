//! The service: a request in, its response out (texts, photos), and a photo upload's vector
//! document, over the engine built once per process. Hosts bring the requests: the Lambda
//! functions (`embeddings` for the text tower, `clip` for the vision tower) and the always-on
//! server.

use std::sync::Arc;
use std::time::Instant;

use coldpath_core::{Classify, ColdStartRecord, ErrorType};
use coldpath_image::{ImageError, ImageLoader, ImageRef, RgbImage};
use coldpath_io::{ObjectFetcher, TaskError, run_blocking};
use coldpath_runtime::metrics::{Invocation, Metrics};
use serde_json::Value;

use crate::api::{self, ClipRequest, Modality, RequestError, RequestLimits};
use crate::config::{ClipConfig, Towers};
use crate::engine::{ClipEngine, InitError, init_towers};
use crate::error::ClipError;

/// Any failure of one request or photo.
#[derive(Debug, thiserror::Error)]
pub enum ClipServiceError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("photo {index}: {source}")]
    Image {
        index: usize,
        #[source]
        source: ImageError,
    },
    #[error(transparent)]
    Clip(#[from] ClipError),
    #[error("inference task failed: {0}")]
    Task(#[from] TaskError),
}

impl Classify for ClipServiceError {
    fn error_type(&self) -> ErrorType {
        match self {
            ClipServiceError::Request(e) => e.error_type(),
            ClipServiceError::Image { source, .. } => source.error_type(),
            ClipServiceError::Clip(e) => e.error_type(),
            ClipServiceError::Task(_) => ErrorType::Internal,
        }
    }
}

/// What one photo gave: its vector and the size it was decoded at (upright).
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoVector {
    pub vector: Vec<f32>,
    pub width: u32,
    pub height: u32,
}

/// Everything a request needs, built once per process.
pub struct ClipService<F> {
    engine: Arc<ClipEngine>,
    loader: ImageLoader<F>,
    limits: RequestLimits,
    metrics: Metrics,
}

impl<F: ObjectFetcher> ClipService<F> {
    pub fn new(engine: ClipEngine, loader: ImageLoader<F>, limits: RequestLimits) -> Self {
        ClipService {
            engine: Arc::new(engine),
            loader,
            limits,
            metrics: Metrics::default(),
        }
    }

    /// Writes a metric line per invocation through `metrics` (none without).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn engine(&self) -> &Arc<ClipEngine> {
        &self.engine
    }

    pub fn name(&self) -> &str {
        self.engine.name()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    /// Parses a request body for this model, refusing at once a kind of input whose tower
    /// this host did not load.
    pub fn parse(&self, body: &Value, allow_paths: bool) -> Result<ClipRequest, ClipServiceError> {
        let loaded = self.engine.towers();
        match api::modality(body)? {
            Modality::Text if !loaded.text() => Err(not_loaded("text", self.name())),
            Modality::Image if !loaded.vision() => Err(not_loaded("vision", self.name())),
            _ => Ok(api::parse_request(
                body,
                self.engine.name(),
                self.engine.dimensions(),
                &self.limits,
                allow_paths,
            )?),
        }
    }

    /// Answers one request body (a direct invoke's payload or a decoded HTTP body), counting
    /// its inputs as the invocation's batch size. Paths are read only if the loader allows them.
    pub async fn embed_json(
        &self,
        body: &Value,
        invocation: &mut Invocation<'_>,
    ) -> Result<Value, ClipServiceError> {
        let request = self.parse(body, true)?;
        invocation.set_batch_size(request.len());
        let started = Instant::now();
        let modality = request.modality();
        let count = request.len();
        let (vectors, tokens, format) = match request {
            ClipRequest::Texts {
                input,
                encoding_format,
            } => {
                let engine = Arc::clone(&self.engine);
                let (vectors, tokens) = run_blocking(move || {
                    let (ids, counts) = engine.tokenize(&input)?;
                    Ok::<_, ClipError>((engine.embed_token_ids(ids)?, counts))
                })
                .await??;
                (vectors, tokens, encoding_format)
            }
            ClipRequest::Images {
                input,
                encoding_format,
            } => {
                let mut photos = Vec::with_capacity(input.len());
                for (index, image) in input.into_iter().enumerate() {
                    let decoded = self
                        .loader
                        .load_owned(image)
                        .await
                        .map_err(|source| ClipServiceError::Image { index, source })?;
                    photos.push(decoded.image);
                }
                let engine = Arc::clone(&self.engine);
                let vectors = run_blocking(move || engine.embed_images(&photos)).await??;
                (vectors, vec![0; count], encoding_format)
            }
        };
        tracing::info!(
            model = %self.engine.name(),
            modality = modality.as_str(),
            batch_size = count,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "embedded"
        );
        Ok(api::response(self.engine.name(), format, &vectors, &tokens).to_value())
    }

    /// One uploaded photo through the vision tower: fetched, decoded upright within the photo
    /// limits, embedded.
    pub async fn embed_photo(&self, image: &ImageRef) -> Result<PhotoVector, ClipServiceError> {
        let started = Instant::now();
        let decoded = self
            .loader
            .load(image)
            .await
            .map_err(|source| ClipServiceError::Image { index: 0, source })?;
        let decode_ms = started.elapsed().as_secs_f64() * 1e3;
        let (width, height) = (decoded.width(), decoded.height());
        let engine = Arc::clone(&self.engine);
        let pixels: RgbImage = decoded.image;
        let mut vectors =
            run_blocking(move || engine.embed_images(std::slice::from_ref(&pixels))).await??;
        tracing::info!(
            image = %image.describe(),
            width,
            height,
            decode_ms,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "photo embedded"
        );
        let vector = vectors.pop().ok_or_else(|| {
            ClipError::Inference("the vision tower gave no vector for the photo".into())
        })?;
        Ok(PhotoVector {
            vector,
            width,
            height,
        })
    }
}

fn not_loaded(tower: &'static str, model: &str) -> ClipServiceError {
    ClipServiceError::Clip(ClipError::TowerNotLoaded {
        tower,
        model: model.to_string(),
    })
}

/// Builds the service for the towers a host serves: the engine ([`init_towers`]), the photo
/// loader (local paths only when `allow_local_paths`: the local invoke mode), metrics.
pub async fn init<F: ObjectFetcher + Clone>(
    config: &ClipConfig,
    fetcher: F,
    towers: Towers,
    allow_local_paths: bool,
) -> Result<(ClipService<F>, ColdStartRecord), InitError> {
    let (engine, record) = init_towers(config, fetcher.clone(), towers).await?;
    let metrics = Metrics::new("clip", config.metrics);
    metrics.cold_start(&record);
    if towers.vision() {
        // A missing HEIC/AVIF library shows in the init log, not first at a user's upload.
        coldpath_image::load_native_codecs(&config.image_codecs).log();
    }
    let loader = ImageLoader::new(fetcher, config.image_limits, allow_local_paths);
    Ok((
        ClipService::new(engine, loader, config.limits).with_metrics(metrics),
        record,
    ))
}
