//! The handler (direct invokes and S3 `ObjectCreated` events) over a narrow [`AnalyzeFaces`]
//! trait, and the init that builds the real models once per process.

use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::s3::{S3Event, S3EventRecord};
use coldpath_aws::{ResultSink, SinkError};
use coldpath_core::cold_start::{ColdStartTimer, Phase};
use coldpath_core::{Classify, ColdStartRecord, ErrorType};
use coldpath_image::{ImageError, ImageLoader, ImageRef, RgbImage};
use coldpath_io::{ObjectFetcher, catch_panic, run_blocking};
use coldpath_models::{ModelError, ModelStore, OrtRuntime, SessionPool};
use coldpath_runtime::metrics::{Invocation, Metrics};
use coldpath_runtime::{HandlerError, LambdaEvent, log_failure};
use serde_json::{Value, json};

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
    #[error("writing the result: {0}")]
    Sink(#[from] SinkError),
    #[error("inference task failed: {0}")]
    Task(#[from] coldpath_io::TaskError),
}

impl Classify for FacesError {
    fn error_type(&self) -> ErrorType {
        match self {
            FacesError::Request(e) => e.error_type(),
            FacesError::Image(e) => e.error_type(),
            FacesError::Face(e) => e.error_type(),
            FacesError::Sink(e) => e.error_type(),
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
    sink: ResultSink,
    defaults: DetectOptions,
    metrics: Metrics,
}

impl<A: AnalyzeFaces + 'static, F: ObjectFetcher> FacesService<A, F> {
    pub fn new(
        faces: A,
        loader: ImageLoader<F>,
        sink: ResultSink,
        defaults: DetectOptions,
    ) -> Self {
        Self::with_shared(Arc::new(faces), loader, sink, defaults)
    }

    /// A service over models that are already shared (tests run several services, with
    /// different loaders and sinks, over one set of sessions).
    pub fn with_shared(
        faces: Arc<A>,
        loader: ImageLoader<F>,
        sink: ResultSink,
        defaults: DetectOptions,
    ) -> Self {
        FacesService {
            faces,
            loader,
            sink,
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

    pub fn sink(&self) -> &ResultSink {
        &self.sink
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

    /// An S3 event: each record's photo is analysed and its result written to the sink under
    /// `<bucket>/<key>`. A record that fails is reported in the summary; the others still run.
    /// The records are the invocation's batch size, and each failed one counts as an error.
    pub async fn handle_s3(
        &self,
        payload: Value,
        invocation: &mut Invocation<'_>,
    ) -> Result<Value, FacesError> {
        let event: S3Event = serde_json::from_value(payload)
            .map_err(|e| RequestError::Invalid(format!("not an S3 event notification: {e}")))?;
        invocation.set_batch_size(event.records.len());
        let mut records = Vec::with_capacity(event.records.len());
        let (mut succeeded, mut failed) = (0usize, 0usize);
        for (index, record) in event.records.iter().enumerate() {
            let bucket = record.s3.bucket.name.clone().unwrap_or_default();
            let raw_key = record.s3.object.key.clone().unwrap_or_default();
            // A panic anywhere in one record (a decoder or model bug on input nobody foresaw)
            // fails that record only.
            let outcome = catch_panic(self.process_record(index, record))
                .await
                .unwrap_or_else(|e| Err(e.into()));
            match outcome {
                Ok((key, faces, location)) => {
                    succeeded += 1;
                    records.push(json!({
                        "bucket": bucket, "key": key, "status": "ok",
                        "faces": faces, "result": location,
                    }));
                }
                Err(e) => {
                    failed += 1;
                    log_failure(&e);
                    invocation.error(e.error_type());
                    let key = request::decode_s3_key(&raw_key).unwrap_or(raw_key);
                    records.push(json!({
                        "bucket": bucket, "key": key, "status": "error",
                        "errorType": e.error_type().as_str(), "errorMessage": e.to_string(),
                    }));
                }
            }
        }
        Ok(json!({"records": records, "succeeded": succeeded, "failed": failed}))
    }

    /// One record: `(decoded key, faces found, where the result went)`.
    async fn process_record(
        &self,
        index: usize,
        record: &S3EventRecord,
    ) -> Result<(String, usize, String), FacesError> {
        let bad = |reason: String| RequestError::Record { index, reason };
        let event_name = record.event_name.as_deref().unwrap_or_default();
        if !event_name.starts_with("ObjectCreated:") {
            return Err(bad(format!(
                "expected an ObjectCreated event, found {event_name:?}"
            ))
            .into());
        }
        let bucket = record
            .s3
            .bucket
            .name
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("no bucket name".to_string()))?;
        let raw_key = record
            .s3
            .object
            .key
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("no object key".to_string()))?;
        let key = request::decode_s3_key(raw_key).map_err(bad)?;
        // Named before the photo is analysed, so a key that cannot name a result costs nothing.
        let id = coldpath_aws::photo_result_id(&bucket, &key)?;
        let image = ImageRef::S3 {
            bucket: bucket.clone(),
            key: key.clone(),
        };
        let mut result = self.analyze_ref(&image, &self.defaults).await?;
        let faces = result["faces"].as_array().map_or(0, Vec::len);
        result["source"] = json!(image.describe());
        let location = self.sink.put(&id, &result).await?;
        Ok((key, faces, location))
    }
}

/// The Lambda handler.
///
/// A direct invoke answers the per-photo response or a classified error. An S3 event answers a
/// per-record summary: records with bad input (not an image, a missing object, too large) are
/// reported and logged but do not fail the invocation, because S3 invokes asynchronously and
/// Lambda would retry the whole event, redoing the good records, for an error that retrying
/// cannot fix. Only when a record failed with a transient error (`Retryable`: throttling, a
/// network failure reaching S3 or the sink) does the invocation fail, so that Lambda's async
/// retries run the event again; results are keyed by `<bucket>/<key>`, so the repeat overwrites
/// rather than duplicates what the good records wrote.
///
/// Each invocation writes one metric line when metrics are on: its latency, its records (1 for a
/// direct invoke) and its failed records by error type.
pub async fn handle<A: AnalyzeFaces + 'static, F: ObjectFetcher>(
    service: Arc<FacesService<A, F>>,
    event: LambdaEvent<Value>,
) -> Result<Value, HandlerError> {
    let payload = event.payload;
    let mut invocation = service.metrics.invocation();
    if request::is_s3_event(&payload) {
        let summary = service
            .handle_s3(payload, &mut invocation)
            .await
            .map_err(|e| {
                invocation.error(e.error_type());
                HandlerError::from_error(&e)
            })?;
        let retryable = summary["records"].as_array().is_some_and(|records| {
            records
                .iter()
                .any(|r| r["errorType"] == ErrorType::Retryable.as_str())
        });
        if retryable {
            return Err(HandlerError::new(
                ErrorType::Retryable,
                format!("some records failed transiently; retry the event: {summary}"),
            ));
        }
        return Ok(summary);
    }
    invocation.set_batch_size(1);
    service.handle_direct(&payload).await.map_err(|e| {
        log_failure(&e);
        invocation.error(e.error_type());
        HandlerError::from_error(&e)
    })
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
/// the local `invoke` mode sets it.
pub async fn init<F: ObjectFetcher + Clone>(
    config: &FacesConfig,
    fetcher: F,
    sink: ResultSink,
    allow_local_paths: bool,
) -> Result<(FacesService<OnnxFaces, F>, ColdStartRecord), InitError> {
    let (faces, record) = init_faces(config, fetcher.clone()).await?;
    let metrics = Metrics::new("faces", config.metrics);
    metrics.cold_start(&record);
    // A missing HEIC/AVIF library shows in the init log, not first at a user's upload.
    coldpath_image::load_native_codecs(&config.image_codecs).log();
    let loader = ImageLoader::new(fetcher, config.image_limits, allow_local_paths);
    Ok((
        FacesService::new(faces, loader, sink, config.detect).with_metrics(metrics),
        record,
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use coldpath_aws::SinkTarget;
    use coldpath_image::ImageLimits;
    use coldpath_io::FetchError;
    use coldpath_runtime::Context;

    use super::*;
    use crate::detect::Detection;
    use crate::pipeline::Face;

    /// One face in every photo, whatever it shows; a 7-pixel-wide photo makes it panic, as a
    /// decoder or runtime bug would.
    struct OneFace;

    impl AnalyzeFaces for OneFace {
        fn analyze(&self, image: &RgbImage, _: &DetectOptions) -> Result<Vec<Face>, FaceError> {
            assert_ne!(
                image.width(),
                7,
                "index out of bounds in a made-up decoder bug"
            );
            Ok(vec![Face {
                detection: Detection {
                    x: 0.0,
                    y: 0.0,
                    width: image.width() as f32,
                    height: image.height() as f32,
                    score: 0.99,
                    landmarks: [[1.0, 1.0]; 5],
                },
                embedding: vec![1.0, 0.0],
            }])
        }

        fn model_names(&self) -> (&str, &str) {
            ("det", "rec")
        }
    }

    /// `photos/ok.jpg` is a small PNG, `photos/poison.jpg` a PNG that makes the model panic,
    /// `photos/flaky.jpg` fails transiently, anything else is missing.
    struct Objects(Vec<u8>, Vec<u8>);

    impl ObjectFetcher for Objects {
        async fn fetch_to(&self, _: &str, _: &str, _: &Path) -> Result<u64, FetchError> {
            Err(FetchError::Other("not used".into()))
        }

        async fn fetch_bytes(&self, _: &str, key: &str, _: u64) -> Result<Vec<u8>, FetchError> {
            match key {
                "ok.jpg" | "with space.jpg" => Ok(self.0.clone()),
                "poison.jpg" => Ok(self.1.clone()),
                "flaky.jpg" => Err(FetchError::Transient("connection reset".into())),
                _ => Err(FetchError::NotFound),
            }
        }
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(RgbImage::new(width, height))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    }

    fn service(sink: &Path) -> Arc<FacesService<OneFace, Objects>> {
        let loader = ImageLoader::new(Objects(png(6, 4), png(7, 4)), ImageLimits::default(), false);
        let sink = ResultSink::new("faces", SinkTarget::Local(sink.to_path_buf())).unwrap();
        let defaults = DetectOptions {
            min_score: 0.9,
            nms_iou: 0.3,
            max_faces: 10,
            min_face_size: 0.0,
        };
        Arc::new(FacesService::new(OneFace, loader, sink, defaults))
    }

    /// The sample S3 event with its records' keys replaced.
    fn s3_event(keys: &[&str]) -> Value {
        let mut event: Value =
            serde_json::from_str(include_str!("../../../events/faces/s3-put.json")).unwrap();
        let template = event["Records"][0].clone();
        let records: Vec<Value> = keys
            .iter()
            .map(|k| {
                let mut r = template.clone();
                r["s3"]["object"]["key"] = json!(k);
                r
            })
            .collect();
        event["Records"] = json!(records);
        event
    }

    async fn call(
        service: &Arc<FacesService<OneFace, Objects>>,
        payload: Value,
    ) -> Result<Value, HandlerError> {
        handle(
            Arc::clone(service),
            LambdaEvent::new(payload, Context::default()),
        )
        .await
    }

    #[tokio::test]
    async fn bad_records_are_reported_and_the_invocation_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        let out = call(
            &service,
            s3_event(&["ok.jpg", "gone.jpg", "with+space.jpg"]),
        )
        .await
        .unwrap();
        assert_eq!(out["succeeded"], 2);
        assert_eq!(out["failed"], 1);
        assert_eq!(out["records"][1]["errorType"], "InvalidInput");
        assert_eq!(out["records"][2]["key"], "with space.jpg");
        let written = dir.path().join("faces/photos/with space.jpg.json");
        let result: Value = serde_json::from_slice(&std::fs::read(written).unwrap()).unwrap();
        assert_eq!(result["width"], 6);
        assert_eq!(result["source"], "s3://photos/with space.jpg");
    }

    #[tokio::test]
    async fn each_invocation_writes_one_metric_line_with_failed_records_by_type() {
        let dir = tempfile::tempdir().unwrap();
        let (metrics, lines) = coldpath_runtime::metrics::Metrics::in_memory("faces");
        let service = Arc::new(
            Arc::into_inner(service(dir.path()))
                .unwrap()
                .with_metrics(metrics),
        );
        call(
            &service,
            s3_event(&["ok.jpg", "gone.jpg", "with+space.jpg"]),
        )
        .await
        .unwrap();
        let docs = lines.documents();
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert_eq!(docs[0]["Function"], "faces");
        assert_eq!(docs[0]["BatchSize"], 3.0);
        assert_eq!(docs[0]["Errors"], 1.0);
        assert_eq!(docs[1]["ErrorType"], "InvalidInput");
        // A direct invoke is a batch of one.
        call(&service, json!({"image": {"s3": "s3://photos/ok.jpg"}}))
            .await
            .unwrap();
        let docs = lines.documents();
        assert_eq!(docs.len(), 3);
        assert_eq!(
            (docs[2]["BatchSize"].as_f64(), docs[2]["Errors"].as_f64()),
            (Some(1.0), Some(0.0))
        );
    }

    /// Regression (issue 12): on the multi-threaded runtime Lambda runs, a panic in one record's
    /// inference unwound through the handler and failed the whole event, good records included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_one_record_fails_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        let out = call(
            &service,
            s3_event(&["ok.jpg", "poison.jpg", "with+space.jpg"]),
        )
        .await
        .unwrap();
        assert_eq!(
            (out["succeeded"].as_u64(), out["failed"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(out["records"][1]["errorType"], "Internal");
        assert!(
            out["records"][1]["errorMessage"]
                .as_str()
                .unwrap()
                .contains("made-up decoder bug"),
            "{out}"
        );
        assert!(dir.path().join("faces/photos/ok.jpg.json").is_file());
        assert!(
            dir.path()
                .join("faces/photos/with space.jpg.json")
                .is_file()
        );
        // A direct invoke of the same photo is a typed error, not a crashed sandbox.
        let err = call(&service, json!({"image": {"s3": "s3://photos/poison.jpg"}}))
            .await
            .unwrap_err();
        assert_eq!(err.error_type, ErrorType::Internal);
    }

    #[tokio::test]
    async fn a_transient_failure_fails_the_invocation_so_lambda_retries() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        let err = call(&service, s3_event(&["ok.jpg", "flaky.jpg"]))
            .await
            .unwrap_err();
        assert_eq!(err.error_type, ErrorType::Retryable);
        // The good record was still written; the retry will overwrite it under the same id.
        assert!(dir.path().join("faces/photos/ok.jpg.json").is_file());
    }

    #[tokio::test]
    async fn records_that_are_not_object_created_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        let mut event = s3_event(&["ok.jpg"]);
        event["Records"][0]["eventName"] = json!("ObjectRemoved:Delete");
        let out = call(&service, event).await.unwrap();
        assert_eq!(out["failed"], 1);
        assert!(
            out["records"][0]["errorMessage"]
                .as_str()
                .unwrap()
                .contains("ObjectCreated"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn direct_invokes_answer_the_photo_or_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        let out = call(&service, json!({"image": {"s3": "s3://photos/ok.jpg"}}))
            .await
            .unwrap();
        assert_eq!(
            (out["width"].as_u64(), out["height"].as_u64()),
            (Some(6), Some(4))
        );
        assert_eq!(out["faces"][0]["embedding"], json!([1.0, 0.0]));
        assert_eq!(
            out["models"],
            json!({"detector": "det", "recognizer": "rec"})
        );
        let err = call(&service, json!({"image": {"s3": "s3://photos/flaky.jpg"}}))
            .await
            .unwrap_err();
        assert_eq!(err.error_type, ErrorType::Retryable);
        let err = call(&service, json!({"image": {"path": "a.jpg"}}))
            .await
            .unwrap_err();
        assert_eq!(err.error_type, ErrorType::InvalidInput);
    }
}
