//! `faces`, the Lambda function: the faces engine behind S3 uploads and direct invokes.
//!
//! The engine ([`coldpath_faces`]) takes a photo reference and answers the photo's faces; this
//! crate is the Lambda side: S3 `ObjectCreated` notifications, each record's result written to
//! the result sink under `<bucket>/<key>`, per-record failures reported without failing the
//! others, and the binary's start.

pub mod contract;
pub mod event;

use std::sync::Arc;

use aws_lambda_events::s3::{S3Event, S3EventRecord};
use coldpath_aws::{ResultSink, SinkError};
use coldpath_core::{Classify, ErrorType};
use coldpath_faces::request::RequestError;
use coldpath_faces::{AnalyzeFaces, FacesError, FacesService};
use coldpath_image::ImageRef;
use coldpath_io::{ObjectFetcher, catch_panic};
use coldpath_runtime::metrics::Invocation;
use coldpath_runtime::{HandlerError, LambdaEvent, log_failure};
use serde_json::{Value, json};

pub use crate::event::{FacesEvent, decode_s3_key};

/// Any failure of one S3 record: the engine's, or writing its result.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Faces(#[from] FacesError),
    #[error("writing the result: {0}")]
    Sink(#[from] SinkError),
    #[error("inference task failed: {0}")]
    Task(#[from] coldpath_io::TaskError),
}

impl Classify for RecordError {
    fn error_type(&self) -> ErrorType {
        match self {
            RecordError::Faces(e) => e.error_type(),
            RecordError::Sink(e) => e.error_type(),
            RecordError::Task(_) => ErrorType::Internal,
        }
    }
}

/// The function: the engine's service and where S3 uploads' results go.
pub struct FacesFunction<A, F> {
    pub service: FacesService<A, F>,
    pub sink: ResultSink,
}

impl<A: AnalyzeFaces + 'static, F: ObjectFetcher> FacesFunction<A, F> {
    pub fn new(service: FacesService<A, F>, sink: ResultSink) -> Self {
        FacesFunction { service, sink }
    }

    /// An S3 event: each record's photo is analysed and its result written to the sink under
    /// `<bucket>/<key>`. A record that fails is reported in the summary; the others still run.
    /// The records are the invocation's batch size, and each failed one counts as an error.
    pub async fn handle_s3(
        &self,
        event: S3Event,
        invocation: &mut Invocation<'_>,
    ) -> Result<Value, RecordError> {
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
                    let key = decode_s3_key(&raw_key).unwrap_or(raw_key);
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
    ) -> Result<(String, usize, String), RecordError> {
        let bad = |reason: String| RequestError::Record { index, reason };
        let event_name = record.event_name.as_deref().unwrap_or_default();
        if !event_name.starts_with("ObjectCreated:") {
            return Err(FacesError::from(bad(format!(
                "expected an ObjectCreated event, found {event_name:?}"
            )))
            .into());
        }
        let bucket = record
            .s3
            .bucket
            .name
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| FacesError::from(bad("no bucket name".to_string())))?;
        let raw_key = record
            .s3
            .object
            .key
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| FacesError::from(bad("no object key".to_string())))?;
        let key = decode_s3_key(raw_key).map_err(|e| FacesError::from(bad(e)))?;
        // Named before the photo is analysed, so a key that cannot name a result costs nothing.
        let id = coldpath_aws::photo_result_id(&bucket, &key)?;
        let image = ImageRef::S3 {
            bucket: bucket.clone(),
            key: key.clone(),
        };
        let mut result = self
            .service
            .analyze_ref(&image, self.service.defaults())
            .await?;
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
    function: Arc<FacesFunction<A, F>>,
    event: LambdaEvent<Value>,
) -> Result<Value, HandlerError> {
    let mut invocation = function.service.metrics().invocation();
    let event = FacesEvent::from_payload(event.payload).map_err(|e| {
        invocation.error(e.error_type());
        HandlerError::from_error(&e)
    })?;
    let payload = match event {
        FacesEvent::Direct(payload) => payload,
        FacesEvent::S3(event) => {
            let summary = function
                .handle_s3(event, &mut invocation)
                .await
                .map_err(|e| {
                    invocation.error(e.error_type());
                    HandlerError::from_error(&e)
                })?;
            return coldpath_runtime::upload_outcome(summary);
        }
    };
    invocation.set_batch_size(1);
    function.service.handle_direct(&payload).await.map_err(|e| {
        log_failure(&e);
        invocation.error(e.error_type());
        HandlerError::from_error(&e)
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use coldpath_aws::SinkTarget;
    use coldpath_image::ImageLimits;
    use coldpath_io::FetchError;
    use coldpath_runtime::Context;

    use coldpath_faces::{DetectOptions, Detection, Face, FaceError};
    use coldpath_image::{ImageLoader, RgbImage};

    use super::*;

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

    fn service(sink: &Path) -> Arc<FacesFunction<OneFace, Objects>> {
        let loader = ImageLoader::new(Objects(png(6, 4), png(7, 4)), ImageLimits::default(), false);
        let sink = ResultSink::new("faces", SinkTarget::Local(sink.to_path_buf())).unwrap();
        let defaults = DetectOptions {
            min_score: 0.9,
            nms_iou: 0.3,
            max_faces: 10,
            min_face_size: 0.0,
        };
        Arc::new(FacesFunction::new(
            FacesService::new(OneFace, loader, defaults),
            sink,
        ))
    }

    /// The sample S3 event with its records' keys replaced.
    fn s3_event(keys: &[&str]) -> Value {
        let mut event: Value =
            serde_json::from_str(include_str!("../../../../events/faces/s3-put.json")).unwrap();
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
        service: &Arc<FacesFunction<OneFace, Objects>>,
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
        let function = Arc::into_inner(service(dir.path())).unwrap();
        let service = Arc::new(FacesFunction::new(
            function.service.with_metrics(metrics),
            function.sink,
        ));
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

    /// Regression: on the multi-threaded runtime Lambda runs, a panic in one record's
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
