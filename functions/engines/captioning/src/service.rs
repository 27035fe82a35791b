//! Captioning a batch of queue messages, shared by the Lambda SQS handler and the worker.
//!
//! The pipeline is the same in both modes: parse each body on its own, fetch and decode the images
//! concurrently (bounded), caption the decoded ones in model batches on the blocking pool, and
//! write each caption to the result sink under the request's id. Every message gets its own
//! [`Outcome`], so one bad body, unreadable image, model error or sink failure fails only that
//! message. The model, the image source and the sink sit behind narrow traits so that the
//! batching logic is tested without ONNX Runtime or AWS.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use coldpath_core::cold_start::{ColdStartTimer, Phase};
use coldpath_core::{Classify, ColdStartRecord, ErrorType};
use coldpath_image::{ImageError, ImageLoader, ImageRef, RgbImage};
use coldpath_io::{ObjectFetcher, TaskError, spawn_blocking};
use coldpath_models::{ModelError, ModelStore, OrtRuntime};
use coldpath_runtime::metrics::Metrics;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{BatchSettings, CaptioningConfig};
use crate::message::{self, BodyKind, CaptionRequest, MessageError};
use crate::model::{CaptionError, CaptionModel};

pub use crate::model::Caption;
pub use coldpath_io::{Delivery, QueueMessage, ResultWriter};

/// The captioning model: one blocking call per image to prepare it, one per batch to caption.
pub trait Captioner: Send + Sync + 'static {
    type Error: std::error::Error + Classify + Send + 'static;
    /// One image as the model takes it (for the real model its `[3, H, W]` pixel tensor, 0.6 MB
    /// at 224 × 224). Made as soon as the photo is decoded, so a batch holds these rather than
    /// full-resolution photos.
    type Prepared: Send + Sync + 'static;

    /// Turns one decoded photo into the model's input. Blocking.
    fn prepare(&self, image: &RgbImage) -> Result<Self::Prepared, Self::Error>;

    /// Captions `inputs`; `max_new_tokens[i]` overrides the default length for input `i`.
    /// Returns one caption per input, in order. Blocking.
    fn caption(
        &self,
        inputs: &[&Self::Prepared],
        max_new_tokens: &[Option<usize>],
    ) -> Result<Vec<Caption>, Self::Error>;
}

/// Fetches and decodes the image a message names, in three steps so the pipeline can budget
/// decode memory between reading the header and allocating the pixels.
pub trait ImageSource: Send + Sync + 'static {
    /// The encoded bytes, within the byte limit.
    fn fetch(&self, image: &ImageRef) -> impl Future<Output = Result<Vec<u8>, ImageError>> + Send;
    /// Width and height from the header alone.
    fn dimensions(&self, bytes: &[u8]) -> Result<(u32, u32), ImageError>;
    /// The upright RGB pixels, within the pixel limits. Blocking.
    fn decode(&self, bytes: &[u8]) -> Result<RgbImage, ImageError>;
}

/// Decode-budget permits an image of `width` × `height` takes: one per started megapixel, at
/// most the whole budget, so an image larger than the budget still runs, alone.
pub fn decode_permits(width: u32, height: u32, budget_mpx: u32) -> u32 {
    let mpx = (u64::from(width) * u64::from(height)).div_ceil(1_000_000);
    mpx.clamp(1, u64::from(budget_mpx.max(1))) as u32
}

/// Which messages of a batch have their result written, for a caller that may have to stop
/// before the batch finishes: the worker deletes those at its stop deadline and hands the rest
/// back to the queue.
#[derive(Debug, Default)]
pub struct Progress {
    written: Mutex<Vec<bool>>,
}

impl Progress {
    pub fn new(messages: usize) -> Self {
        Progress {
            written: Mutex::new(vec![false; messages]),
        }
    }

    fn mark(&self, index: usize) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = written.get_mut(index) {
            *w = true;
        }
    }

    /// `written()[i]`: message `i`'s result is in the sink.
    pub fn written(&self) -> Vec<bool> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Why one message failed.
#[derive(Debug, thiserror::Error)]
pub enum MessageFailure {
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("captioning failed: {message}")]
    Model {
        error_type: ErrorType,
        message: String,
    },
    #[error("writing the result: {message}")]
    Sink {
        error_type: ErrorType,
        message: String,
    },
    /// The message asks for more photos than one message may carry, so captioning it could
    /// outlast a Lambda invocation whatever the time left; none of its photos is captioned.
    #[error(
        "message carries {found} photos: expected at most {max} (CAPTIONING_MAX_PHOTOS_PER_MESSAGE)"
    )]
    TooManyPhotos { found: usize, max: usize },
    #[error(transparent)]
    Task(#[from] TaskError),
}

impl Classify for MessageFailure {
    fn error_type(&self) -> ErrorType {
        match self {
            MessageFailure::Message(e) => e.error_type(),
            MessageFailure::Image(e) => e.error_type(),
            MessageFailure::Model { error_type, .. } | MessageFailure::Sink { error_type, .. } => {
                *error_type
            }
            MessageFailure::TooManyPhotos { .. } => ErrorType::RequestTooLarge,
            MessageFailure::Task(_) => ErrorType::Internal,
        }
    }
}

impl MessageFailure {
    fn model(e: &(impl std::error::Error + Classify)) -> Self {
        MessageFailure::Model {
            error_type: e.error_type(),
            message: e.to_string(),
        }
    }
}

/// What happened to one message.
#[derive(Debug)]
pub struct Outcome {
    pub message_id: String,
    /// The ids of the requests the body carried and that parsed (one for a request or an
    /// EventBridge event, one per good record of an S3 notification, none for a test event).
    pub ids: Vec<String>,
    /// Where each result was written, or why the message failed: it succeeds only when every
    /// request it carries has its result written (an S3 test event carries none and succeeds).
    /// Of several failures, a transient one is reported, since retrying the message can fix it.
    pub result: Result<Vec<String>, MessageFailure>,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Everything a batch needs, built once per process.
pub struct CaptioningService<C, I, W> {
    captioner: Arc<C>,
    images: Arc<I>,
    sink: Arc<W>,
    model_name: String,
    settings: BatchSettings,
    metrics: Metrics,
    /// A pause before each model call, so process tests can kill or stop a worker with a batch
    /// in flight. Only in builds with the `fault-injection` feature (the tests' builds), so a
    /// deployed function cannot be slowed by a setting.
    #[cfg(feature = "fault-injection")]
    fault_delay: std::time::Duration,
}

impl<C: Captioner, I: ImageSource, W: ResultWriter> CaptioningService<C, I, W> {
    pub fn new(
        captioner: C,
        images: I,
        sink: W,
        model_name: impl Into<String>,
        settings: BatchSettings,
    ) -> Self {
        CaptioningService {
            captioner: Arc::new(captioner),
            images: Arc::new(images),
            sink: Arc::new(sink),
            model_name: model_name.into(),
            settings,
            metrics: Metrics::default(),
            #[cfg(feature = "fault-injection")]
            fault_delay: std::time::Duration::ZERO,
        }
    }

    /// Writes metric lines through `metrics`: one per Lambda invocation, and one per worker batch
    /// (as `captioning-worker`). None without.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Pauses before each model call (`fault-injection` builds only).
    #[cfg(feature = "fault-injection")]
    pub fn with_fault_delay(mut self, delay: std::time::Duration) -> Self {
        self.fault_delay = delay;
        self
    }

    pub fn settings(&self) -> &BatchSettings {
        &self.settings
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    pub fn captioner(&self) -> &C {
        &self.captioner
    }

    pub fn sink(&self) -> &W {
        &self.sink
    }

    /// Processes `batch`, captioning at most `model_batch` images per model call, and returns one
    /// outcome per message, in order.
    pub async fn process<M: QueueMessage>(&self, batch: &[M], model_batch: usize) -> Vec<Outcome> {
        self.process_tracked(batch, model_batch, &Progress::new(batch.len()))
            .await
    }

    /// [`CaptioningService::process`], marking in `progress` each message whose result is
    /// written as soon as it is, so a caller that drops this future at a deadline knows which
    /// messages are done.
    pub async fn process_tracked<M: QueueMessage>(
        &self,
        batch: &[M],
        model_batch: usize,
        progress: &Progress,
    ) -> Vec<Outcome> {
        let started = Instant::now();
        let (requests, message_of) = self.requests(batch);
        let images = self.prepare_images(&requests).await;

        // Move prepared inputs into one shared vector so the blocking model call can borrow
        // them without copying, and a failed batch can retry its items one by one.
        let mut failures: HashMap<usize, MessageFailure> = HashMap::new();
        let mut decoded: Vec<C::Prepared> = Vec::new();
        let mut decoded_of: Vec<usize> = Vec::new();
        let mut tokens_of: Vec<Option<usize>> = Vec::new();
        for (i, image) in images.into_iter().enumerate() {
            match (image, &requests[i]) {
                (Some(Ok(img)), Ok(request)) => {
                    decoded.push(img);
                    decoded_of.push(i);
                    tokens_of.push(request.max_new_tokens);
                }
                (Some(Err(e)), _) => {
                    failures.insert(i, e);
                }
                _ => {}
            }
        }
        let decoded = Arc::new(decoded);
        let picks: Vec<usize> = (0..decoded.len()).collect();
        let mut captions: HashMap<usize, Caption> = HashMap::new();
        for chunk in picks.chunks(model_batch.max(1)) {
            let tokens: Vec<Option<usize>> = chunk.iter().map(|&d| tokens_of[d]).collect();
            for (d, caption) in self.caption_chunk(&decoded, chunk, &tokens).await {
                match caption {
                    Ok(c) => {
                        captions.insert(decoded_of[d], c);
                    }
                    Err(e) => {
                        failures.insert(decoded_of[d], e);
                    }
                }
            }
        }
        // The inputs are no longer needed; free them before the sink writes.
        drop(decoded);

        let outcomes = self
            .write_results(batch, &message_of, requests, failures, captions, progress)
            .await;
        let failed = outcomes.iter().filter(|o| !o.is_ok()).count();
        tracing::info!(
            model = %self.model_name,
            batch_size = batch.len(),
            requests = message_of.len(),
            captioned = batch.len() - failed,
            failed,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "batch processed"
        );
        outcomes
    }

    /// The photos `message` would have captioned: its parsed requests, none when its body does
    /// not parse or it carries more than `max_photos_per_message` (it then fails as a whole
    /// before any photo is fetched). Parses the body; the Lambda handler uses it to plan its
    /// work against the deadline, which a JSON parse costs nothing of next to a caption.
    pub fn photos<M: QueueMessage>(&self, message: &M) -> usize {
        match message::parse(message.body(), self.settings.max_new_tokens_cap) {
            Ok(parsed) => {
                let good = parsed.requests.iter().filter(|r| r.is_ok()).count();
                if parsed.requests.len() > self.settings.max_photos_per_message {
                    0
                } else {
                    good
                }
            }
            Err(_) => 0,
        }
    }

    /// Parses every body on its own and lists the caption requests of the batch, each with the
    /// index of its message: `(requests, message_of)`. The rest of the pipeline works per request,
    /// so a message with several photos (an S3 notification with several records) batches like
    /// several messages. A body that does not parse, or that carries more photos than
    /// `max_photos_per_message`, becomes one failed request of its message; an S3 test event
    /// becomes none.
    fn requests<M: QueueMessage>(
        &self,
        batch: &[M],
    ) -> (Vec<Result<CaptionRequest, MessageFailure>>, Vec<usize>) {
        let cap = self.settings.max_new_tokens_cap;
        let max_photos = self.settings.max_photos_per_message;
        let mut requests = Vec::with_capacity(batch.len());
        let mut message_of = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            match message::parse(m.body(), cap) {
                Ok(parsed) if parsed.requests.len() > max_photos => {
                    requests.push(Err(MessageFailure::TooManyPhotos {
                        found: parsed.requests.len(),
                        max: max_photos,
                    }));
                    message_of.push(i);
                }
                Ok(parsed) => {
                    if parsed.kind == BodyKind::S3TestEvent {
                        tracing::info!(
                            message_id = m.message_id(),
                            "S3 test event: acknowledged, nothing to caption"
                        );
                    }
                    for request in parsed.requests {
                        requests.push(request.map_err(MessageFailure::from));
                        message_of.push(i);
                    }
                }
                Err(e) => {
                    requests.push(Err(e.into()));
                    message_of.push(i);
                }
            }
        }
        (requests, message_of)
    }

    /// Fetches, decodes and prepares the images of the parsed requests. Returns `None` for
    /// requests that did not parse.
    ///
    /// Memory is bounded by the settings, not by the batch: at most `image_concurrency` images
    /// are fetched and decoded at once, a decode waits until its megapixels fit the decode budget
    /// (`decode_budget_mpx`, read from the header before any pixel exists), and each photo
    /// becomes its model input right after decoding, on the same blocking thread, so its
    /// full-resolution pixels are freed before the next photo takes their place.
    async fn prepare_images(
        &self,
        requests: &[Result<CaptionRequest, MessageFailure>],
    ) -> Vec<Option<Result<C::Prepared, MessageFailure>>> {
        let mut out: Vec<Option<Result<C::Prepared, MessageFailure>>> =
            requests.iter().map(|_| None).collect();
        let permits = Arc::new(Semaphore::new(self.settings.image_concurrency));
        let budget_mpx = self.settings.decode_budget_mpx.max(1);
        let budget = Arc::new(Semaphore::new(budget_mpx as usize));
        let mut tasks = JoinSet::new();
        let mut index_of = HashMap::new();
        for (i, request) in requests.iter().enumerate() {
            let Ok(request) = request else { continue };
            let images = Arc::clone(&self.images);
            let captioner = Arc::clone(&self.captioner);
            let permits = Arc::clone(&permits);
            let budget = Arc::clone(&budget);
            let image_ref = request.image.clone();
            let handle = tasks.spawn(async move {
                // Neither semaphore is ever closed, so acquiring only waits for room.
                let _slot = permits.acquire_owned().await;
                let bytes = images.fetch(&image_ref).await?;
                let (width, height) = images.dimensions(&bytes)?;
                let _room = budget
                    .acquire_many_owned(decode_permits(width, height, budget_mpx))
                    .await;
                spawn_blocking(move || {
                    let image = images.decode(&bytes)?;
                    drop(bytes);
                    captioner
                        .prepare(&image)
                        .map_err(|e| MessageFailure::model(&e))
                })
                .await?
            });
            index_of.insert(handle.id(), i);
        }
        while let Some(joined) = tasks.join_next_with_id().await {
            let (id, result) = match joined {
                Ok((id, r)) => (id, r),
                Err(e) => (e.id(), Err(TaskError::from_join(e).into())),
            };
            if let Some(&i) = index_of.get(&id) {
                out[i] = Some(result);
            }
        }
        out
    }

    /// Captions `chunk` (indices into `decoded`) in one model call; if that call fails, retries
    /// each image alone so that one image the model cannot handle fails only its own message.
    async fn caption_chunk(
        &self,
        decoded: &Arc<Vec<C::Prepared>>,
        chunk: &[usize],
        tokens: &[Option<usize>],
    ) -> Vec<(usize, Result<Caption, MessageFailure>)> {
        #[cfg(feature = "fault-injection")]
        if !self.fault_delay.is_zero() {
            tokio::time::sleep(self.fault_delay).await;
        }
        let started = Instant::now();
        match self
            .run_model(decoded, chunk.to_vec(), tokens.to_vec())
            .await
        {
            Ok(captions) => {
                tracing::info!(
                    model = %self.model_name,
                    batch_size = chunk.len(),
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "captioned"
                );
                chunk
                    .iter()
                    .copied()
                    .zip(captions.into_iter().map(Ok))
                    .collect()
            }
            Err(e) if chunk.len() == 1 => vec![(chunk[0], Err(e))],
            Err(e) => {
                tracing::warn!(
                    model = %self.model_name,
                    batch_size = chunk.len(),
                    error_type = %e.error_type(),
                    "batch failed, retrying its images one by one: {e}"
                );
                let mut out = Vec::with_capacity(chunk.len());
                for (&d, &t) in chunk.iter().zip(tokens) {
                    let one = self.run_model(decoded, vec![d], vec![t]).await;
                    out.push((d, one.and_then(|mut c| c.pop().ok_or_else(no_caption))));
                }
                out
            }
        }
    }

    /// One blocking model call on tokio's blocking pool, so the executor keeps serving the
    /// worker's heartbeat and signal tasks while the model runs.
    async fn run_model(
        &self,
        decoded: &Arc<Vec<C::Prepared>>,
        picks: Vec<usize>,
        tokens: Vec<Option<usize>>,
    ) -> Result<Vec<Caption>, MessageFailure> {
        let captioner = Arc::clone(&self.captioner);
        let decoded = Arc::clone(decoded);
        let expected = picks.len();
        let captions = spawn_blocking(move || {
            let inputs: Vec<&C::Prepared> = picks.iter().map(|&d| &decoded[d]).collect();
            captioner
                .caption(&inputs, &tokens)
                .map_err(|e| MessageFailure::model(&e))
        })
        .await??;
        if captions.len() != expected {
            return Err(MessageFailure::Model {
                error_type: ErrorType::Internal,
                message: format!(
                    "the model returned {} captions for {expected} images",
                    captions.len()
                ),
            });
        }
        Ok(captions)
    }

    /// Writes every caption to the sink concurrently and assembles one outcome per message, in
    /// order. A message is marked in `progress` once the results of all its requests are written
    /// (at once when it carries none).
    async fn write_results<M: QueueMessage>(
        &self,
        batch: &[M],
        message_of: &[usize],
        requests: Vec<Result<CaptionRequest, MessageFailure>>,
        mut failures: HashMap<usize, MessageFailure>,
        mut captions: HashMap<usize, Caption>,
        progress: &Progress,
    ) -> Vec<Outcome> {
        // Per request: its id when it parsed, and where its result went or why there is none.
        let mut results: Vec<Option<Result<String, MessageFailure>>> =
            requests.iter().map(|_| None).collect();
        let mut ids: Vec<Option<String>> = Vec::with_capacity(requests.len());
        let mut tasks = JoinSet::new();
        let mut index_of = HashMap::new();
        for (r, request) in requests.into_iter().enumerate() {
            let request = match request {
                Ok(request) => request,
                Err(e) => {
                    ids.push(None);
                    results[r] = Some(Err(e));
                    continue;
                }
            };
            ids.push(Some(request.id.clone()));
            let caption = match (captions.remove(&r), failures.remove(&r)) {
                (Some(c), None) => c,
                (_, Some(e)) => {
                    results[r] = Some(Err(e));
                    continue;
                }
                (None, None) => {
                    results[r] = Some(Err(MessageFailure::Model {
                        error_type: ErrorType::Internal,
                        message: "no caption was produced for this request".to_string(),
                    }));
                    continue;
                }
            };
            let document = json!({
                "id": request.id,
                "caption": caption.text,
                "token_ids": caption.token_ids,
                "model": self.model_name,
                "message_id": batch[message_of[r]].message_id(),
            });
            let sink = Arc::clone(&self.sink);
            let handle = tasks.spawn(async move {
                sink.put(&request.id, &document)
                    .await
                    .map_err(|e| MessageFailure::Sink {
                        error_type: e.error_type(),
                        message: e.to_string(),
                    })
            });
            index_of.insert(handle.id(), r);
        }
        // A message is written once all its requests are: count what each still waits for.
        let mut waiting = vec![0usize; batch.len()];
        for &m in message_of {
            waiting[m] += 1;
        }
        for (r, result) in results.iter().enumerate() {
            if result.is_some() {
                // Failed before its write: the message can never be complete.
                waiting[message_of[r]] = usize::MAX;
            }
        }
        for (m, &w) in waiting.iter().enumerate() {
            if w == 0 {
                progress.mark(m);
            }
        }
        while let Some(joined) = tasks.join_next_with_id().await {
            let (id, result) = match joined {
                Ok((id, r)) => (id, r),
                Err(e) => (e.id(), Err(TaskError::from_join(e).into())),
            };
            if let Some(&r) = index_of.get(&id) {
                let m = message_of[r];
                match &result {
                    Ok(_) if waiting[m] != usize::MAX => {
                        waiting[m] -= 1;
                        if waiting[m] == 0 {
                            progress.mark(m);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => waiting[m] = usize::MAX,
                }
                results[r] = Some(result);
            }
        }
        let mut outcomes: Vec<Outcome> = batch
            .iter()
            .map(|message| Outcome {
                message_id: message.message_id().to_string(),
                ids: Vec::new(),
                result: Ok(Vec::new()),
            })
            .collect();
        for ((&m, id), result) in message_of.iter().zip(ids).zip(results) {
            let result = result.unwrap_or(Err(TaskError::Cancelled.into()));
            let outcome = &mut outcomes[m];
            if let Err(e) = &result {
                log_failure(&outcome.message_id, id.as_deref(), e);
            }
            outcome.ids.extend(id);
            match (&mut outcome.result, result) {
                (Ok(locations), Ok(location)) => locations.push(location),
                (Ok(_), Err(e)) => outcome.result = Err(e),
                // Report a transient failure over a permanent one: the message is retried as a
                // whole, and retrying is what can fix the transient one.
                (Err(first), Err(e))
                    if e.error_type() == ErrorType::Retryable
                        && first.error_type() != ErrorType::Retryable =>
                {
                    outcome.result = Err(e);
                }
                (Err(_), _) => {}
            }
        }
        outcomes
    }
}

fn no_caption() -> MessageFailure {
    MessageFailure::Model {
        error_type: ErrorType::Internal,
        message: "the model returned no caption for one image".to_string(),
    }
}

fn log_failure(message_id: &str, id: Option<&str>, e: &MessageFailure) {
    let error_type = e.error_type();
    if error_type.is_caller_error() {
        tracing::info!(message_id, id, error_type = %error_type, "message rejected: {e}");
    } else {
        tracing::error!(message_id, id, error_type = %error_type, "message failed: {e}");
    }
}

impl<F: ObjectFetcher + 'static> ImageSource for ImageLoader<F> {
    async fn fetch(&self, image: &ImageRef) -> Result<Vec<u8>, ImageError> {
        self.load_bytes(image).await
    }

    fn dimensions(&self, bytes: &[u8]) -> Result<(u32, u32), ImageError> {
        coldpath_image::dimensions(bytes)
    }

    fn decode(&self, bytes: &[u8]) -> Result<RgbImage, ImageError> {
        coldpath_image::decode(bytes, self.limits()).map(|d| d.image)
    }
}

impl Captioner for CaptionModel {
    type Error = CaptionError;
    type Prepared = ndarray::Array3<f32>;

    fn prepare(&self, image: &RgbImage) -> Result<ndarray::Array3<f32>, CaptionError> {
        CaptionModel::prepare(self, image)
    }

    fn caption(
        &self,
        inputs: &[&ndarray::Array3<f32>],
        max_new_tokens: &[Option<usize>],
    ) -> Result<Vec<Caption>, CaptionError> {
        CaptionModel::caption_prepared(self, inputs, max_new_tokens)
    }
}

/// Failures while building the service at init.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Caption(#[from] CaptionError),
}

impl Classify for InitError {
    fn error_type(&self) -> ErrorType {
        match self {
            InitError::Model(e) => e.error_type(),
            InitError::Caption(e) => e.error_type(),
        }
    }
}

/// The service on the real model, as both modes run it.
pub type ModelService<F, W> = CaptioningService<CaptionModel, ImageLoader<F>, W>;

/// Builds the real service: loads ONNX Runtime, resolves the model (local bundle or `s3://`
/// through `fetcher`), builds its sessions, warms up, and logs the cold-start record.
/// `allow_local_paths` lets messages name local files (`invoke` mode only).
pub async fn init<F: ObjectFetcher + Clone + 'static, W: ResultWriter>(
    config: &CaptioningConfig,
    fetcher: F,
    sink: W,
    allow_local_paths: bool,
) -> Result<(ModelService<F, W>, ColdStartRecord), InitError> {
    let mut timer = ColdStartTimer::start("captioning");
    let runtime = timer.time(Phase::LibraryLoad, || OrtRuntime::load(&config.ort_library))?;
    let store = ModelStore::new(&config.cache_dir, fetcher.clone());
    let resolved = store.resolve(&config.model.spec).await?;
    timer.add(Phase::ModelFetch, resolved.elapsed);
    let model = timer.time(Phase::SessionBuild, || {
        CaptionModel::load(&config.model, &resolved.dir, &runtime, &config.session)
    })?;
    timer.set_provider(model.provider().name());
    if config.warmup {
        // One short caption pays ONNX Runtime's first-run allocations before the first batch.
        let image = RgbImage::from_pixel(64, 64, coldpath_image::Rgb([127, 127, 127]));
        timer.time(Phase::Warmup, || model.caption(&[&image], &[Some(2)]))?;
    }
    // Loading the HEIC/AVIF libraries belongs to the cold start, and a missing one to its log.
    coldpath_image::load_native_codecs(&config.image_codecs).log();
    let images = ImageLoader::new(fetcher, config.images, allow_local_paths);
    let metrics = Metrics::new("captioning", config.metrics);
    let service = CaptioningService::new(
        model,
        images,
        sink,
        resolved.spec.name.clone(),
        config.batch,
    )
    .with_metrics(metrics.clone());
    #[cfg(feature = "fault-injection")]
    let service = service.with_fault_delay(config.fault_delay);
    let record = timer.finish();
    metrics.cold_start(&record);
    Ok((service, record))
}

#[cfg(any(test, feature = "testing"))]
pub mod testing {
    //! Test doubles for the unit tests of this crate and of its hosts (the `testing` feature): a
    //! model that captions an image with its size, an image source that makes images from their
    //! key, and an in-memory sink. The integration tests use the real model, loader and sink.

    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use coldpath_io::FetchError;
    use serde_json::Value;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct FakeError(pub String);

    impl Classify for FakeError {
        /// A "throttled" failure is transient; every other one is ours.
        fn error_type(&self) -> ErrorType {
            if self.0.contains("throttled") {
                ErrorType::Retryable
            } else {
                ErrorType::Internal
            }
        }
    }

    /// Decoded pixels alive between [`FakeImages::decode`] and [`FakeCaptioner::prepare`], and
    /// the most there ever were at once.
    #[derive(Default)]
    pub struct LivePixels {
        pub live: AtomicU64,
        pub peak: AtomicU64,
    }

    /// Captions an image `WxH` as `"WxH"`; fails any call containing an image of `poison_width`;
    /// takes `delay` per call and `per_image` more for each image, like a real model on a slow
    /// machine.
    #[derive(Default)]
    pub struct FakeCaptioner {
        pub poison_width: Option<u32>,
        pub delay: Duration,
        pub per_image: Duration,
        pub pixels: Option<Arc<LivePixels>>,
        /// The size of every model call, in order.
        pub calls: Mutex<Vec<usize>>,
    }

    impl Captioner for FakeCaptioner {
        type Error = FakeError;
        /// The photo's width and height: all the fake model looks at.
        type Prepared = (u32, u32);

        fn prepare(&self, image: &RgbImage) -> Result<(u32, u32), FakeError> {
            if let Some(p) = &self.pixels {
                let n = u64::from(image.width()) * u64::from(image.height());
                p.live.fetch_sub(n, Ordering::SeqCst);
            }
            Ok(image.dimensions())
        }

        fn caption(
            &self,
            images: &[&(u32, u32)],
            max_new_tokens: &[Option<usize>],
        ) -> Result<Vec<Caption>, FakeError> {
            self.calls.lock().unwrap().push(images.len());
            assert_eq!(images.len(), max_new_tokens.len());
            std::thread::sleep(self.delay + self.per_image * images.len() as u32);
            if images.iter().any(|i| Some(i.0) == self.poison_width) {
                return Err(FakeError("the model cannot handle this image".into()));
            }
            Ok(images
                .iter()
                .zip(max_new_tokens)
                .map(|(i, n)| Caption {
                    text: format!("{}x{}", i.0, i.1),
                    token_ids: vec![i.0, n.unwrap_or(0) as u32],
                })
                .collect())
        }
    }

    /// `s3://b/<W>x<H>` (optionally followed by `/...`) is a blank image of that size; any other
    /// key is missing.
    #[derive(Default)]
    pub struct FakeImages {
        pub pixels: Option<Arc<LivePixels>>,
    }

    fn size_of(bytes: &[u8]) -> Option<(u32, u32)> {
        // `WxH/anything` is a `WxH` image too, so a test can give it a distinct id.
        let text = std::str::from_utf8(bytes).ok()?.split('/').next()?;
        let (w, h) = text.split_once('x')?;
        Some((w.parse().ok()?, h.parse().ok()?))
    }

    impl ImageSource for FakeImages {
        async fn fetch(&self, image: &ImageRef) -> Result<Vec<u8>, ImageError> {
            let ImageRef::S3 { key, .. } = image else {
                return Err(ImageError::Empty);
            };
            match size_of(key.as_bytes()) {
                Some(_) => Ok(key.as_bytes().to_vec()),
                None => Err(ImageError::Fetch {
                    uri: image.describe(),
                    source: FetchError::NotFound,
                }),
            }
        }

        fn dimensions(&self, bytes: &[u8]) -> Result<(u32, u32), ImageError> {
            size_of(bytes).ok_or(ImageError::Empty)
        }

        fn decode(&self, bytes: &[u8]) -> Result<RgbImage, ImageError> {
            let (w, h) = self.dimensions(bytes)?;
            let image = RgbImage::new(w, h);
            if let Some(p) = &self.pixels {
                let n = u64::from(w) * u64::from(h);
                let now = p.live.fetch_add(n, Ordering::SeqCst) + n;
                p.peak.fetch_max(now, Ordering::SeqCst);
                // Decoding takes a while, so concurrent decodes overlap as real ones do.
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(image)
        }
    }

    /// Keeps results in memory; refuses the id `sink-fails`, and throttles ids ending in `busy`.
    #[derive(Default)]
    pub struct MemorySink {
        pub results: Mutex<BTreeMap<String, Value>>,
    }

    impl ResultWriter for MemorySink {
        type Error = FakeError;

        async fn put(&self, id: &str, result: &Value) -> Result<String, FakeError> {
            if id == "sink-fails" {
                return Err(FakeError("the bucket refused the write".into()));
            }
            if id.ends_with("busy") {
                return Err(FakeError("the bucket throttled the write".into()));
            }
            self.results
                .lock()
                .unwrap()
                .insert(id.to_string(), result.clone());
            Ok(format!("memory:{id}"))
        }
    }

    pub fn settings(max_batch: usize) -> BatchSettings {
        BatchSettings {
            max_batch,
            max_new_tokens_cap: 32,
            image_concurrency: 2,
            decode_budget_mpx: 64,
            deadline_margin: Duration::from_secs(2),
            max_photos_per_message: 100,
        }
    }

    pub type FakeService = CaptioningService<FakeCaptioner, FakeImages, MemorySink>;

    pub fn service(max_batch: usize, poison_width: Option<u32>) -> FakeService {
        let captioner = FakeCaptioner {
            poison_width,
            ..Default::default()
        };
        CaptioningService::new(
            captioner,
            FakeImages::default(),
            MemorySink::default(),
            "fake",
            settings(max_batch),
        )
    }

    pub fn body(id: &str, key: &str) -> String {
        serde_json::json!({"id": id, "image": {"s3": format!("s3://b/{key}")}}).to_string()
    }

    pub fn message(message_id: &str, body: Option<String>) -> Delivery {
        Delivery::new(message_id, body)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::testing::*;
    use super::*;

    #[test]
    fn decode_permits_count_started_megapixels_within_the_budget() {
        assert_eq!(decode_permits(1, 1, 64), 1);
        assert_eq!(decode_permits(1000, 1000, 64), 1);
        assert_eq!(decode_permits(1000, 1001, 64), 2);
        assert_eq!(decode_permits(4000, 3000, 64), 12);
        // Larger than the whole budget: it takes all of it and runs alone.
        assert_eq!(decode_permits(10_000, 10_000, 64), 64);
        assert_eq!(decode_permits(10, 10, 0), 1);
    }

    /// Regression: a batch kept every decoded full-resolution photo until the whole
    /// batch was captioned (eight 12-megapixel photos: 96 Mpx, 288 MB of RGB at once). Now each
    /// photo becomes its model input right after decoding, and decodes wait for room in the
    /// decode budget, so the pixels alive at once are bounded by the budget, not the batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decoded_pixels_alive_at_once_stay_within_the_decode_budget() {
        let pixels = Arc::new(LivePixels::default());
        let captioner = FakeCaptioner {
            pixels: Some(Arc::clone(&pixels)),
            ..Default::default()
        };
        let images = FakeImages {
            pixels: Some(Arc::clone(&pixels)),
        };
        let mut batch_settings = settings(8);
        batch_settings.image_concurrency = 8;
        batch_settings.decode_budget_mpx = 30;
        let service = CaptioningService::new(
            captioner,
            images,
            MemorySink::default(),
            "fake",
            batch_settings,
        );
        let batch: Vec<Delivery> = (0..8)
            .map(|i| message(&format!("m{i}"), Some(body(&format!("id{i}"), "4000x3000"))))
            .collect();
        let outcomes = service.process(&batch, 8).await;
        assert!(outcomes.iter().all(Outcome::is_ok));
        assert_eq!(*service.captioner().calls.lock().unwrap(), [8]);
        let peak = pixels.peak.load(Ordering::SeqCst);
        // Two 12 Mpx photos fit a 30 Mpx budget, three do not.
        assert!(
            peak <= 30_000_000,
            "peak {peak} decoded pixels alive at once"
        );
        assert!(peak >= 12_000_000, "peak {peak}");
        assert_eq!(pixels.live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn every_message_gets_its_own_outcome_and_only_good_ones_a_result() {
        let service = service(2, Some(13));
        let batch = vec![
            message("m1", Some(body("a", "10x20"))),
            message("m2", Some("{not json".into())),
            message("m3", Some(body("b", "missing.jpg"))),
            message("m4", Some(body("c", "13x13"))), // the model fails on this one
            message("m5", Some(body("d", "30x40"))),
            message("m6", None),
            message("m7", Some(body("sink-fails", "5x5"))),
            message(
                "m8",
                Some(r#"{"id": "e", "image": {"s3": "s3://b/7x8"}, "max_new_tokens": 9}"#.into()),
            ),
        ];
        let outcomes = service.process(&batch, 2).await;
        let failed: Vec<(&str, ErrorType)> = outcomes
            .iter()
            .filter_map(|o| Some((o.message_id.as_str(), o.result.as_ref().err()?.error_type())))
            .collect();
        assert_eq!(
            failed,
            vec![
                ("m2", ErrorType::InvalidInput),
                ("m3", ErrorType::InvalidInput),
                ("m4", ErrorType::Internal),
                ("m6", ErrorType::InvalidInput),
                ("m7", ErrorType::Internal),
            ]
        );
        let ids: Vec<&[String]> = outcomes.iter().map(|o| o.ids.as_slice()).collect();
        assert_eq!(
            ids,
            [
                &["a".to_string()][..],
                &[],
                &["b".to_string()],
                &["c".to_string()],
                &["d".to_string()],
                &[],
                &["sink-fails".to_string()],
                &["e".to_string()],
            ]
        );
        let results = service.sink.results.lock().unwrap();
        assert_eq!(results.keys().collect::<Vec<_>>(), ["a", "d", "e"]);
        assert_eq!(
            results["a"],
            json!({"id": "a", "caption": "10x20", "token_ids": [10, 0], "model": "fake", "message_id": "m1"})
        );
        assert_eq!(results["e"]["token_ids"], json!([7, 9]));
        // Five decoded images (a, c, d, sink-fails, e) in model batches of two; the first batch
        // holds the poison image, fails, and is retried one image at a time.
        assert_eq!(*service.captioner.calls.lock().unwrap(), [2, 1, 1, 2, 1]);
    }

    fn s3_notification(keys: &[&str]) -> String {
        let records: Vec<serde_json::Value> = keys
            .iter()
            .map(|key| {
                json!({
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "photos"}, "object": {"key": key, "size": 16}}
                })
            })
            .collect();
        json!({ "Records": records }).to_string()
    }

    fn eventbridge(key: &str) -> String {
        crate::message::samples::eventbridge_created(key).to_string()
    }

    /// A message with several photos succeeds only when every photo's result is written; a
    /// test event succeeds with none; photos from S3 are named `<bucket>/<key>`.
    #[tokio::test]
    async fn a_message_is_done_only_when_all_its_photos_are_written() {
        let service = service(2, None);
        let test_event = crate::message::samples::S3_TEST_EVENT;
        let batch = vec![
            message("m1", Some(s3_notification(&["4x4", "6x2", "3x5"]))),
            message("m2", Some(s3_notification(&["5x5", "missing.jpg"]))),
            message("m3", Some(test_event.to_string())),
            message("m4", Some(eventbridge("8x8"))),
            message("m5", Some(body("plain", "2x2"))),
        ];
        let progress = Progress::new(batch.len());
        let outcomes = service.process_tracked(&batch, 2, &progress).await;
        assert_eq!(progress.written(), [true, false, true, true, true]);
        let ok: Vec<bool> = outcomes.iter().map(Outcome::is_ok).collect();
        assert_eq!(ok, [true, false, true, true, true]);
        assert_eq!(
            outcomes[0].result.as_ref().unwrap(),
            &[
                "memory:photos/4x4",
                "memory:photos/6x2",
                "memory:photos/3x5"
            ]
        );
        assert_eq!(outcomes[1].ids, ["photos/5x5", "photos/missing.jpg"]);
        assert_eq!(
            outcomes[1].result.as_ref().unwrap_err().error_type(),
            ErrorType::InvalidInput
        );
        assert!(outcomes[2].ids.is_empty());
        assert_eq!(outcomes[3].ids, ["photos/8x8"]);
        let results = service.sink.results.lock().unwrap();
        // The good photo of the failed message is written too: its redelivery rewrites it.
        assert_eq!(
            results.keys().collect::<Vec<_>>(),
            [
                "photos/3x5",
                "photos/4x4",
                "photos/5x5",
                "photos/6x2",
                "photos/8x8",
                "plain"
            ]
        );
        assert_eq!(results["photos/6x2"]["message_id"], "m1");
        assert_eq!(results["photos/6x2"]["caption"], "6x2");
        // Six photos decoded, in model batches of two across message boundaries.
        assert_eq!(*service.captioner.calls.lock().unwrap(), [2, 2, 2]);
    }

    /// One message may carry many photos, and is done only when all are: one over the limit
    /// fails alone, before any of its photos is fetched or captioned.
    #[tokio::test]
    async fn a_message_over_the_photo_limit_fails_alone_and_costs_nothing() {
        let mut batch_settings = settings(8);
        batch_settings.max_photos_per_message = 3;
        let service = CaptioningService::new(
            FakeCaptioner::default(),
            FakeImages::default(),
            MemorySink::default(),
            "fake",
            batch_settings,
        );
        let batch = vec![
            message("m1", Some(s3_notification(&["1x1", "2x2", "3x3", "4x4"]))),
            message("m2", Some(s3_notification(&["5x5", "6x6", "7x7"]))),
            message("m3", Some(body("plain", "8x8"))),
        ];
        assert_eq!(
            batch.iter().map(|m| service.photos(m)).collect::<Vec<_>>(),
            [0, 3, 1]
        );
        let outcomes = service.process(&batch, 8).await;
        let err = outcomes[0].result.as_ref().unwrap_err();
        assert_eq!(err.error_type(), ErrorType::RequestTooLarge);
        assert_eq!(
            err.to_string(),
            "message carries 4 photos: expected at most 3 (CAPTIONING_MAX_PHOTOS_PER_MESSAGE)"
        );
        assert!(outcomes[1].is_ok() && outcomes[2].is_ok());
        assert_eq!(*service.captioner.calls.lock().unwrap(), [4]);
        let results = service.sink.results.lock().unwrap();
        assert_eq!(
            results.keys().collect::<Vec<_>>(),
            ["photos/5x5", "photos/6x6", "photos/7x7", "plain"]
        );
    }

    #[tokio::test]
    async fn a_transient_failure_is_the_one_a_message_reports() {
        let service = service(4, None);
        let batch = vec![
            message("m1", Some(s3_notification(&["missing.jpg", "2x2/busy"]))),
            message("m2", Some(s3_notification(&["missing.jpg", "2x2"]))),
        ];
        let outcomes = service.process(&batch, 4).await;
        // The missing photo fails for good, the throttled write may succeed on a retry: the
        // worker's backoff for transient failures applies to the message.
        assert_eq!(
            outcomes[0].result.as_ref().unwrap_err().error_type(),
            ErrorType::Retryable
        );
        assert_eq!(
            outcomes[1].result.as_ref().unwrap_err().error_type(),
            ErrorType::InvalidInput
        );
        assert_eq!(outcomes[0].ids, ["photos/missing.jpg", "photos/2x2/busy"]);
    }

    #[tokio::test]
    async fn batches_respect_the_model_batch_size() {
        let service = service(3, None);
        let batch: Vec<Delivery> = (0..7)
            .map(|i| message(&format!("m{i}"), Some(body(&format!("id{i}"), "4x4"))))
            .collect();
        let outcomes = service.process(&batch, 3).await;
        assert!(outcomes.iter().all(Outcome::is_ok));
        assert_eq!(*service.captioner.calls.lock().unwrap(), [3, 3, 1]);
        assert_eq!(service.sink.results.lock().unwrap().len(), 7);
    }

    #[tokio::test]
    async fn a_failing_single_image_fails_only_itself() {
        let service = service(1, Some(2));
        let batch = vec![
            message("m1", Some(body("a", "2x2"))),
            message("m2", Some(body("b", "3x3"))),
        ];
        let outcomes = service.process(&batch, 1).await;
        assert!(!outcomes[0].is_ok() && outcomes[1].is_ok());
        assert!(
            outcomes[0]
                .result
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("cannot handle"),
            "{:?}",
            outcomes[0].result
        );
    }
}
