//! The service: one request (a photo reference and options) in, the photo's faces out, over a
//! narrow [`AnalyzeFaces`] trait, and the init that builds the real models once per process.
//! Hosts bring the requests: the `faces` Lambda function (direct invokes, S3 uploads) and the
//! always-on server.

use std::sync::Arc;
use std::time::Instant;

use coldpath_core::cold_start::{ColdStartTimer, Phase};
use coldpath_core::{Classify, ColdStartRecord, ErrorType};
use coldpath_image::{ImageError, ImageLoader, ImageRef, RgbImage};
use coldpath_io::{ObjectFetcher, run_blocking};
use coldpath_models::{ModelError, ModelStore, OrtRuntime, SessionPool};
use coldpath_runtime::metrics::Metrics;
use serde_json::Value;

use crate::config::{DetectOptions, FacesConfig};
use crate::pipeline::{AnalyzeFaces, FaceError, OnnxFaces};
use crate::request::{self, RequestError};

/// Any failure of one photo.
#[derive(Debug, thiserror::Error)]
pub enum FacesError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Face(#[from] FaceError),
    #[error("inference task failed: {0}")]
    Task(#[from] coldpath_io::TaskError),
}

impl Classify for FacesError {
    fn error_type(&self) -> ErrorType {
        match self {
            FacesError::Request(e) => e.error_type(),
            FacesError::Image(e) => e.error_type(),
            FacesError::Face(e) => e.error_type(),
            FacesError::Task(_) => ErrorType::Internal,
        }
    }
}

/// Failures while building the service at init.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Face(#[from] FaceError),
}

impl Classify for InitError {
    fn error_type(&self) -> ErrorType {
        match self {
            InitError::Model(e) => e.error_type(),
            InitError::Face(e) => e.error_type(),
        }
    }
}

/// Everything a request needs, built once per process.
pub struct FacesService<A, F> {
    faces: Arc<A>,
    loader: ImageLoader<F>,
    defaults: DetectOptions,
    metrics: Metrics,
}

impl<A: AnalyzeFaces + 'static, F: ObjectFetcher> FacesService<A, F> {
    pub fn new(faces: A, loader: ImageLoader<F>, defaults: DetectOptions) -> Self {
        Self::with_shared(Arc::new(faces), loader, defaults)
    }

    /// A service over models that are already shared (tests run several services, with
    /// different loaders, over one set of sessions).
    pub fn with_shared(faces: Arc<A>, loader: ImageLoader<F>, defaults: DetectOptions) -> Self {
        FacesService {
            faces,
            loader,
            defaults,
            metrics: Metrics::default(),
        }
    }

    /// Writes a metric line per invocation through `metrics` (none without).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn faces(&self) -> &A {
        &self.faces
    }

    /// The detection options a request gets when it sets none (an S3 upload sets none).
    pub fn defaults(&self) -> &DetectOptions {
        &self.defaults
    }

    /// The metric lines a host writes per invocation (none unless configured).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Loads, decodes and analyses one image; the per-photo response.
    pub async fn analyze_ref(
        &self,
        image: &ImageRef,
        options: &DetectOptions,
    ) -> Result<Value, FacesError> {
        let started = Instant::now();
        let decoded = self.loader.load(image).await?;
        let decode_ms = started.elapsed().as_secs_f64() * 1e3;
        let (width, height) = (decoded.width(), decoded.height());
        let faces = Arc::clone(&self.faces);
        let options = *options;
        let pixels: RgbImage = decoded.image;
        let found = run_blocking(move || faces.analyze(&pixels, &options)).await??;
        tracing::info!(
            image = %image.describe(),
            width,
            height,
            faces = found.len(),
            decode_ms,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "analysed"
        );
        Ok(request::response(
            width,
            height,
            &found,
            self.faces.model_names(),
        ))
    }

    /// A direct invoke: `{"image": <ImageRef>, "min_score"?, "max_faces"?}`.
    pub async fn handle_direct(&self, payload: &Value) -> Result<Value, FacesError> {
        let req = request::parse_request(payload, &self.defaults)?;
        self.analyze_ref(&req.image, &req.options).await
    }
}

/// Builds the real pipeline: loads ONNX Runtime, resolves both models, builds their sessions
/// side by side, warms them up, and logs the cold-start record.
pub async fn init_faces<F: ObjectFetcher>(
    config: &FacesConfig,
    model_fetcher: F,
) -> Result<(OnnxFaces, ColdStartRecord), InitError> {
    let mut timer = ColdStartTimer::start("faces");
    let runtime = timer.time(Phase::LibraryLoad, || OrtRuntime::load(&config.ort_library))?;
    let store = ModelStore::new(&config.cache_dir, model_fetcher);
    let detector = store.resolve(&config.detector).await?;
    timer.add(Phase::ModelFetch, detector.elapsed);
    let recognizer = store.resolve(&config.recognizer).await?;
    timer.add(Phase::ModelFetch, recognizer.elapsed);

    let build_started = Instant::now();
    // The two sessions do not depend on each other: build them on two threads, so cold start
    // pays for the slower one rather than for both.
    let (det_session, rec_session) = std::thread::scope(|scope| {
        let rec = scope.spawn(|| {
            runtime.build_session(
                &recognizer.spec.name,
                &recognizer.path("model.onnx"),
                &config.session,
            )
        });
        let det = runtime.build_session(
            &detector.spec.name,
            &detector.path("model.onnx"),
            &config.session,
        );
        let rec = rec.join().unwrap_or_else(|_| {
            Err(ModelError::Session {
                model: recognizer.spec.name.clone(),
                path: recognizer.path("model.onnx"),
                reason: "the session-building thread panicked".to_string(),
            })
        });
        (det, rec)
    });
    let (det_session, provider) = det_session?;
    let (rec_session, _) = rec_session?;
    timer.set_provider(provider.name());
    let pool = |s| {
        SessionPool::new(vec![s]).ok_or_else(|| FaceError::Inference {
            model: String::new(),
            reason: "no session was built".to_string(),
        })
    };
    let faces = OnnxFaces::new(
        config.family,
        pool(det_session)?,
        &detector.spec.name,
        pool(rec_session)?,
        &recognizer.spec.name,
    )?
    .with_resample(config.resample)
    .with_detector_input(config.detector_input);
    timer.add(Phase::SessionBuild, build_started.elapsed());
    if config.warmup {
        // A blank photo exercises the detector; one aligned crop exercises the recogniser.
        timer.time(Phase::Warmup, || {
            let (w, h) = faces.detector_size();
            faces
                .detect_letterboxed(&RgbImage::new(w as u32, h as u32), config.detect.min_score)?;
            let crop = RgbImage::new(crate::align::ALIGNED_SIZE, crate::align::ALIGNED_SIZE);
            faces.embed_aligned(&[&crop])
        })?;
    }
    Ok((faces, timer.finish()))
}

/// Builds the whole service. `allow_local_paths` lets `{"path"}` image references through; only
/// a host's local mode sets it.
pub async fn init<F: ObjectFetcher + Clone>(
    config: &FacesConfig,
    fetcher: F,
    allow_local_paths: bool,
) -> Result<(FacesService<OnnxFaces, F>, ColdStartRecord), InitError> {
    let (faces, record) = init_faces(config, fetcher.clone()).await?;
    let metrics = Metrics::new("faces", config.metrics);
    metrics.cold_start(&record);
    // A missing HEIC/AVIF library shows in the init log, not first at a user's upload.
    coldpath_image::load_native_codecs(&config.image_codecs).log();
    let loader = ImageLoader::new(fetcher, config.image_limits, allow_local_paths);
    Ok((
        FacesService::new(faces, loader, config.detect).with_metrics(metrics),
        record,
    ))
}
