//! `clip`, the Lambda function: a photo's vector on upload (the CLIP/SigLIP vision tower),
//! direct invokes, and the local `clip search` over the vectors written.
//!
//! The engine ([`coldpath_clip`]) embeds texts and photos into one space; this crate is the
//! upload side of photo search: each uploaded photo (an EventBridge `Object Created` event, or an
//! S3 notification record) is embedded and its vector document (a Qdrant point whose vector is
//! also pgvector's literal, [`coldpath_clip::api::photo_document`]) written to the result sink
//! under `<bucket>/<key>`; per-record failures are reported without failing the others. The
//! query side, the text tower, is hosted warm by the `embeddings` function and by
//! `coldpath-serve`: nobody waits for a photo's vector, everybody waits for a query's.

pub mod contract;
pub mod event;
pub mod search;

use std::sync::Arc;

use coldpath_aws::{ResultSink, SinkError};
use coldpath_clip::api::photo_document;
use coldpath_clip::{ClipService, ClipServiceError};
use coldpath_core::{Classify, ErrorType};
use coldpath_image::ImageRef;
use coldpath_io::{ObjectFetcher, catch_panic};
use coldpath_runtime::metrics::Invocation;
use coldpath_runtime::{HandlerError, LambdaEvent, log_failure};
use serde_json::{Value, json};

pub use crate::event::{ClipEvent, Refused, Upload};

/// Any failure of one uploaded photo.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Clip(#[from] ClipServiceError),
    #[error("writing the result: {0}")]
    Sink(#[from] SinkError),
    #[error("inference task failed: {0}")]
    Task(#[from] coldpath_io::TaskError),
}

impl Classify for RecordError {
    fn error_type(&self) -> ErrorType {
        match self {
            RecordError::Refused(_) => ErrorType::InvalidInput,
            RecordError::Clip(e) => e.error_type(),
            RecordError::Sink(e) => e.error_type(),
            RecordError::Task(_) => ErrorType::Internal,
        }
    }
}

/// The function: the engine's service (vision tower) and where photo vectors go.
pub struct ClipFunction<F> {
    pub service: ClipService<F>,
    pub sink: ResultSink,
}

impl<F: ObjectFetcher> ClipFunction<F> {
    pub fn new(service: ClipService<F>, sink: ResultSink) -> Self {
        ClipFunction { service, sink }
    }

    /// Uploads: each photo embedded and its document written under `<bucket>/<key>`. A record
    /// that fails is reported in the summary; the others still run.
    pub async fn handle_uploads(
        &self,
        uploads: Vec<Result<Upload, Refused>>,
        invocation: &mut Invocation<'_>,
    ) -> Value {
        invocation.set_batch_size(uploads.len());
        let mut records = Vec::with_capacity(uploads.len());
        let (mut succeeded, mut failed) = (0usize, 0usize);
        for upload in uploads {
            let (bucket, key, outcome) = match upload {
                Ok(u) => {
                    // A panic anywhere in one photo (a decoder or model bug on input nobody
                    // foresaw) fails that photo only.
                    let outcome = catch_panic(self.process(&u))
                        .await
                        .unwrap_or_else(|e| Err(e.into()));
                    (u.bucket, u.key, outcome)
                }
                Err(r) => (r.bucket, r.key, Err(RecordError::Refused(r.reason))),
            };
            match outcome {
                Ok((dimensions, location)) => {
                    succeeded += 1;
                    records.push(json!({
                        "bucket": bucket, "key": key, "status": "ok",
                        "dimensions": dimensions, "result": location,
                    }));
                }
                Err(e) => {
                    failed += 1;
                    log_failure(&e);
                    invocation.error(e.error_type());
                    records.push(json!({
                        "bucket": bucket, "key": key, "status": "error",
                        "errorType": e.error_type().as_str(), "errorMessage": e.to_string(),
                    }));
                }
            }
        }
        json!({"records": records, "succeeded": succeeded, "failed": failed})
    }

    /// One photo: `(vector width, where its document went)`.
    async fn process(&self, upload: &Upload) -> Result<(usize, String), RecordError> {
        // Named before the photo is embedded, so a key that cannot name a result costs nothing.
        let id = coldpath_aws::photo_result_id(&upload.bucket, &upload.key)?;
        let image = ImageRef::S3 {
            bucket: upload.bucket.clone(),
            key: upload.key.clone(),
        };
        let photo = self.service.embed_photo(&image).await?;
        let document = photo_document(
            &upload.bucket,
            &upload.key,
            self.service.name(),
            &photo.vector,
            (photo.width, photo.height),
        );
        let location = self.sink.put(&id, &document).await?;
        Ok((photo.vector.len(), location))
    }
}

/// The Lambda handler.
///
/// A direct invoke answers the OpenAI-shaped response or a classified error. Uploads answer a
/// per-record summary: a record with bad input (not a photo, a missing object, too large) is
/// reported and logged but does not fail the invocation, because the upload event arrives
/// asynchronously (EventBridge or S3 invoke the function) and Lambda would retry the whole
/// event for an error that retrying cannot fix. Only a transient failure (`Retryable`: S3
/// throttling, a network failure reaching S3 or the sink) fails the invocation so that the
/// asynchronous retries run it again; a document is keyed by its photo, so the repeat overwrites.
pub async fn handle<F: ObjectFetcher>(
    function: Arc<ClipFunction<F>>,
    event: LambdaEvent<Value>,
) -> Result<Value, HandlerError> {
    let mut invocation = function.service.metrics().invocation();
    let payload = match ClipEvent::from_payload(event.payload) {
        ClipEvent::Direct(payload) => payload,
        ClipEvent::Uploads(uploads) => {
            let summary = function.handle_uploads(uploads, &mut invocation).await;
            return coldpath_runtime::upload_outcome(summary);
        }
    };
    function
        .service
        .embed_json(&payload, &mut invocation)
        .await
        .map_err(|e| {
            log_failure(&e);
            invocation.error(e.error_type());
            HandlerError::from_error(&e)
        })
}
