//! The hosted engines behind their batchers: the same `coldpath-embeddings` and
//! `coldpath-faces` code the Lambda functions run, loaded by the functions' own `init`.
//!
//! **Embeddings.** A request is parsed and validated by the function's `api`, then tokenized on
//! arrival (so its token count is known before it queues). A batch concatenates every queued
//! request's encodings and runs them through [`OnnxEmbedder::embed_encodings`] once: the
//! embedder splits that into ONNX runs under its own padded-token budget
//! (`EMBEDDINGS_MAX_BATCH_TOKENS`), longest texts first, so short queries from many callers
//! share one run. Each caller gets its own rows back.
//!
//! **Faces.** A request's photo is fetched and decoded on arrival (decoding runs beside the
//! model, on the blocking pool) and the decoded photo queues. A batch is up to
//! `COLDPATH_SERVE_FACES_MAX_BATCH` photos run one after the other on one blocking thread, each
//! through the pipeline's own `analyze` (one detector run per photo, all of a photo's faces in
//! one recogniser run). Photos are not stacked into one detector run: YuNet's file fixes the
//! batch at 1 and photos differ in size (the detector runs at each photo's own size, padded to
//! 32), so stacking would mean letterboxing every photo to one size, which changes the answers.
//! What batching buys faces is the queue: back-pressure, deadlines and one hop to the blocking
//! pool per batch instead of per photo.
//!
//! **CLIP's text tower** (workload `clip`, the query side of photo search). A request is parsed
//! by the engine's own service (`model` names the CLIP model on `/v1/embeddings`; photos are
//! refused: this server has no vision tower) and tokenized on arrival; a batch stacks every
//! queued request's rows (each the context length) and runs them through the tower in the
//! tower's own runs (one row at a time for exports that fix the batch at 1).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use axum::Json;
use axum::response::{IntoResponse as _, Response};
use coldpath_aws::ObjectStore;
use coldpath_clip::{ClipError, ClipService, ClipServiceError, Towers};
use coldpath_core::ErrorType;
use coldpath_embeddings::api::{self, Limits};
use coldpath_embeddings::{EmbedError, Embedded, EmbeddingsError, EmbeddingsService, OnnxEmbedder};
use coldpath_faces::request as faces_request;
use coldpath_faces::{AnalyzeFaces, DetectOptions, Face, FaceError, FacesError, OnnxFaces};
use coldpath_image::{ImageLoader, RgbImage};
use coldpath_io::TaskError;
use tokenizers::Encoding;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::batcher::{Admission, BatchError, BatchModel, Batcher};
use crate::config::{INLINE_TOKENIZE_BYTES, ServeConfig, TextShapes};
use crate::error::{RequestError, StartError};
use crate::metrics::Metrics;

/// The embedding model as a [`BatchModel`]: one request is its texts' encodings.
pub struct EmbeddingsModel {
    service: EmbeddingsService<OnnxEmbedder>,
}

impl EmbeddingsModel {
    fn embedder(&self) -> &OnnxEmbedder {
        self.service.embedder()
    }
}

impl BatchModel for EmbeddingsModel {
    type Input = Vec<Encoding>;
    type Output = Embedded;
    type Error = EmbedError;

    fn items(input: &Vec<Encoding>) -> usize {
        input.len()
    }

    fn weight(input: &Vec<Encoding>) -> usize {
        input.iter().map(Encoding::len).sum()
    }

    fn run(&self, inputs: Vec<Vec<Encoding>>) -> Vec<Result<Embedded, EmbedError>> {
        let counts: Vec<usize> = inputs.iter().map(Vec::len).collect();
        // Moved, not copied: a batch's encodings are held once.
        let all: Vec<Encoding> = inputs.into_iter().flatten().collect();
        match self.embedder().embed_encodings(&all) {
            Ok(embedded) => {
                let mut vectors = embedded.vectors.into_iter();
                let mut tokens = embedded.token_counts.into_iter();
                counts
                    .iter()
                    .map(|&n| {
                        Ok(Embedded {
                            vectors: vectors.by_ref().take(n).collect(),
                            token_counts: tokens.by_ref().take(n).collect(),
                        })
                    })
                    .collect()
            }
            // One request's failure must not fail its batch-mates: run each alone to find out
            // whose it is.
            Err(_) if counts.len() > 1 => {
                let mut rest = all.as_slice();
                counts
                    .iter()
                    .map(|&n| {
                        let (one, after) = rest.split_at(n);
                        rest = after;
                        self.embedder().embed_encodings(one)
                    })
                    .collect()
            }
            Err(e) => vec![Err(e)],
        }
    }
}

/// What the embedder reads of an encoding (ids, type ids, attention mask); the rest (each
/// token's text and offsets, and the truncated overflow, which keeps the whole rest of a long
/// text) is dropped, so a queued text holds 12 bytes a kept token instead of about a hundred
/// for every token of the text.
fn lean(encoding: Encoding) -> Encoding {
    Encoding::new(
        encoding.get_ids().to_vec(),
        encoding.get_type_ids().to_vec(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        encoding.get_attention_mask().to_vec(),
        Vec::new(),
        Default::default(),
    )
}

/// Embeddings as the server hosts it.
pub struct EmbeddingsWorkload {
    model: Arc<EmbeddingsModel>,
    batcher: Batcher<EmbeddingsModel>,
    model_name: String,
    limits: Limits,
    tokenizing: Tokenizing,
}

impl EmbeddingsWorkload {
    pub fn batcher(&self) -> &Batcher<EmbeddingsModel> {
        &self.batcher
    }

    /// Most bytes a request body may have.
    pub fn max_body_bytes(&self) -> usize {
        self.limits.max_request_bytes
    }

    fn refused(&self, e: BatchError<EmbedError>) -> RequestError {
        batch_error(
            e,
            |e| EmbeddingsError::Embed(e).into(),
            |t| EmbeddingsError::Task(t).into(),
        )
    }

    /// A place in the queue, taken before the request's body is read (429 when full).
    pub fn admit(&self) -> Result<Admission<'_, EmbeddingsModel>, RequestError> {
        self.batcher.admit().map_err(|e| self.refused(e))
    }

    /// The refusal for an admitted request whose deadline passed before it was queued.
    pub fn expired(&self, admission: &Admission<'_, EmbeddingsModel>) -> RequestError {
        self.refused(admission.expired())
    }

    /// Answers one OpenAI embeddings request body (the function's own parsing and limits).
    /// The body and its JSON tree are freed once the texts are out of them, before the request
    /// waits for anything; the texts are freed once tokenized, and only what the model reads of
    /// each encoding is kept while the request queues.
    pub async fn handle(
        &self,
        admission: Admission<'_, EmbeddingsModel>,
        body: Vec<u8>,
    ) -> Result<Response, RequestError> {
        let embedder = self.model.embedder();
        let request = {
            let tree = coldpath_embeddings::api::parse_body(&body, self.limits.max_request_bytes)
                .map_err(|(kind, message)| RequestError::Body { kind, message })?;
            drop(body);
            api::parse_request(
                &tree,
                &self.model_name,
                coldpath_embeddings::Embed::dimensions(embedder),
                &self.limits,
            )
            .map_err(EmbeddingsError::from)?
        };
        let model = Arc::clone(&self.model);
        let texts = request.input;
        let bytes = texts.iter().map(String::len).sum();
        let tokenized = self.tokenizing.run(bytes, move || {
            let embedder = model.embedder();
            texts
                .iter()
                .enumerate()
                .map(|(index, text)| {
                    let mut one =
                        embedder
                            .tokenize(std::slice::from_ref(text))
                            .map_err(|e| match e {
                                EmbedError::Tokenize { reason, .. } => {
                                    EmbedError::Tokenize { index, reason }
                                }
                                other => other,
                            })?;
                    Ok(lean(one.remove(0)))
                })
                .collect::<Result<Vec<_>, EmbedError>>()
        });
        let encodings = tokio::time::timeout_at(admission.deadline().into(), tokenized)
            .await
            .map_err(|_| self.expired(&admission))?
            .map_err(EmbeddingsError::from)?
            .map_err(EmbeddingsError::from)?;
        let embedded = admission
            .submit(encodings)
            .await
            .map_err(|e| self.refused(e))?;
        Ok(Json(api::response(
            &self.model_name,
            request.encoding_format,
            &embedded.vectors,
            &embedded.token_counts,
        ))
        .into_response())
    }
}

/// The threads that tokenize, shared by the text workloads: as many as the runtime has
/// workers, each tokenizing one request's texts at a time (a small request is tokenized on the
/// worker that took it instead). The tokenizer's working set is a few
/// hundred times the text it tokenizes (`TOKENIZER_BYTES_PER_TEXT_BYTE`), so tokenizing every
/// admitted request at once would make memory a matter of how many arrive together; and the
/// threads are dedicated because the allocator keeps an arena per thread: a working set freed
/// on one of a few threads is reused by the next text, where on whichever thread the blocking
/// pool lends it would stay resident in many arenas (measured: +291 MB against +159 MB with one
/// arena, 8 requests of a 256 KiB text).
#[derive(Clone)]
pub struct Tokenizing {
    permits: Arc<Semaphore>,
    jobs: std::sync::mpsc::Sender<TokenizeJob>,
}

type TokenizeJob = Box<dyn FnOnce() + Send>;

impl Tokenizing {
    /// Starts `threads` tokenizing threads; they end when every handle is dropped.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (jobs, queue) = std::sync::mpsc::channel::<TokenizeJob>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..threads {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("tokenize-{i}"))
                .spawn(move || {
                    loop {
                        // A job catches its own panics, so the lock is never poisoned by one.
                        let next = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match next {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                })?;
        }
        Ok(Tokenizing {
            permits: Arc::new(Semaphore::new(threads)),
            jobs,
        })
    }

    /// Tokenizes `bytes` of text with `f`: at once on this worker when they are few
    /// ([`INLINE_TOKENIZE_BYTES`]: a query must not wait behind a large text), otherwise on a
    /// tokenizing thread once one is free. A panic in `f` is its error.
    async fn run<T: Send + 'static>(
        &self,
        bytes: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TaskError> {
        if bytes <= INLINE_TOKENIZE_BYTES {
            return catch_unwind(AssertUnwindSafe(f))
                .map_err(|p| TaskError::Panicked(panic_message(p.as_ref())));
        }
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| TaskError::Cancelled)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: TokenizeJob = Box::new(move || {
            let out = catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(p.as_ref()));
            drop(permit);
            let _ = tx.send(out);
        });
        self.jobs.send(job).map_err(|_| TaskError::Cancelled)?;
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(reason)) => Err(TaskError::Panicked(reason)),
            Err(_) => Err(TaskError::Cancelled),
        }
    }
}

/// A panic's message, for its error.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// The face models as a [`BatchModel`]: one request is one decoded photo and its options.
pub struct FacesModel {
    faces: OnnxFaces,
}

impl BatchModel for FacesModel {
    type Input = (RgbImage, DetectOptions);
    type Output = Vec<Face>;
    type Error = FaceError;

    fn items(_: &Self::Input) -> usize {
        1
    }

    fn weight(_: &Self::Input) -> usize {
        0
    }

    fn run(&self, inputs: Vec<Self::Input>) -> Vec<Result<Vec<Face>, FaceError>> {
        inputs
            .iter()
            .map(|(image, options)| {
                // A panic on one photo (a decoder or runtime bug) fails that photo only.
                catch_unwind(AssertUnwindSafe(|| self.faces.analyze(image, options)))
                    .unwrap_or_else(|panic| {
                        Err(FaceError::Inference {
                            model: self.faces.model_names().0.to_string(),
                            reason: format!(
                                "the pipeline panicked: {}",
                                panic_message(panic.as_ref())
                            ),
                        })
                    })
            })
            .collect()
    }
}

/// Faces as the server hosts it.
pub struct FacesWorkload {
    model: Arc<FacesModel>,
    batcher: Batcher<FacesModel>,
    loader: ImageLoader<ObjectStore>,
    defaults: DetectOptions,
}

impl FacesWorkload {
    pub fn batcher(&self) -> &Batcher<FacesModel> {
        &self.batcher
    }

    /// Most bytes a request body may have: the largest photo, base64-encoded, and the JSON
    /// around it.
    pub fn max_body_bytes(&self) -> usize {
        let photo = usize::try_from(self.loader.limits().max_bytes).unwrap_or(usize::MAX);
        photo.saturating_mul(4) / 3 + 64 * 1024
    }

    /// A place in the queue, taken before the request's body is read (429 when full): it
    /// bounds the photos held at once, as bodies, encoded bytes and pixels.
    pub fn admit(&self) -> Result<Admission<'_, FacesModel>, RequestError> {
        self.batcher.admit().map_err(refused)
    }

    /// The refusal for an admitted request whose deadline passed before it was queued.
    pub fn expired(&self, admission: &Admission<'_, FacesModel>) -> RequestError {
        refused(admission.expired())
    }

    /// Answers one faces request body (`{"image": ..., "min_score"?, "max_faces"?}`). The
    /// body is parsed straight into the request and freed; the photo is then fetched or
    /// decoded from base64 without a copy, within the request's deadline.
    pub async fn handle(
        &self,
        admission: Admission<'_, FacesModel>,
        body: Vec<u8>,
    ) -> Result<Response, RequestError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(RequestError::Body {
                kind: ErrorType::InvalidInput,
                message: "request body is empty; send a JSON object with 'image'".to_string(),
            });
        }
        let request =
            faces_request::parse_request_bytes(&body, &self.defaults).map_err(FacesError::from)?;
        drop(body);
        let loaded = self.loader.load_owned(request.image);
        let decoded = tokio::time::timeout_at(admission.deadline().into(), loaded)
            .await
            .map_err(|_| self.expired(&admission))?
            .map_err(FacesError::from)?;
        let (width, height) = (decoded.width(), decoded.height());
        let found = admission
            .submit((decoded.image, request.options))
            .await
            .map_err(refused)?;
        Ok(Json(faces_request::response(
            width,
            height,
            &found,
            self.model.faces.model_names(),
        ))
        .into_response())
    }
}

fn refused(e: BatchError<FaceError>) -> RequestError {
    batch_error(
        e,
        |e| FacesError::Face(e).into(),
        |t| FacesError::Task(t).into(),
    )
}

/// A batcher's refusal as the request's error: its own model error, 429, or 503.
fn batch_error<E: std::error::Error + 'static>(
    e: BatchError<E>,
    model: impl FnOnce(E) -> RequestError,
    task: impl FnOnce(TaskError) -> RequestError,
) -> RequestError {
    match e {
        BatchError::Model(e) => model(e),
        BatchError::Task { source, .. } => task(source),
        e @ BatchError::QueueFull { .. } => RequestError::Overloaded(e.to_string()),
        e @ (BatchError::Deadline { .. } | BatchError::Closed { .. }) => {
            RequestError::Unavailable(e.to_string())
        }
    }
}

/// CLIP's text tower as a [`BatchModel`]: one request is its texts' token rows.
pub struct ClipTextModel {
    service: ClipService<ObjectStore>,
}

impl BatchModel for ClipTextModel {
    type Input = ndarray::Array2<u32>;
    type Output = Vec<Vec<f32>>;
    type Error = ClipError;

    fn items(input: &Self::Input) -> usize {
        input.nrows()
    }

    fn weight(_: &Self::Input) -> usize {
        0
    }

    fn run(&self, inputs: Vec<Self::Input>) -> Vec<Result<Vec<Vec<f32>>, ClipError>> {
        let engine = self.service.engine();
        let counts: Vec<usize> = inputs.iter().map(|i| i.nrows()).collect();
        let views: Vec<_> = inputs.iter().map(|i| i.view()).collect();
        let stacked = ndarray::concatenate(ndarray::Axis(0), &views)
            .map_err(|e| ClipError::Inference(e.to_string()));
        match stacked.and_then(|ids| engine.embed_token_ids(ids)) {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                counts
                    .iter()
                    .map(|&n| Ok(vectors.by_ref().take(n).collect()))
                    .collect()
            }
            // One request's failure must not fail its batch-mates: run each alone to find out
            // whose it is.
            Err(_) if inputs.len() > 1 => inputs
                .into_iter()
                .map(|one| engine.embed_token_ids(one))
                .collect(),
            Err(e) => vec![Err(e)],
        }
    }
}

/// CLIP's text tower as the server hosts it.
pub struct ClipWorkload {
    model: Arc<ClipTextModel>,
    batcher: Batcher<ClipTextModel>,
    tokenizing: Tokenizing,
}

impl ClipWorkload {
    pub fn batcher(&self) -> &Batcher<ClipTextModel> {
        &self.batcher
    }

    /// The model's name: a `/v1/embeddings` request naming it is this workload's.
    pub fn name(&self) -> &str {
        self.model.service.name()
    }

    /// Most bytes a request body may have.
    pub fn max_body_bytes(&self) -> usize {
        self.model.service.limits().text.max_request_bytes
    }

    pub fn admit(&self) -> Result<Admission<'_, ClipTextModel>, RequestError> {
        self.batcher.admit().map_err(clip_refused)
    }

    pub fn expired(&self, admission: &Admission<'_, ClipTextModel>) -> RequestError {
        clip_refused(admission.expired())
    }

    /// Answers one OpenAI embeddings request body naming the CLIP model.
    pub async fn handle(
        &self,
        admission: Admission<'_, ClipTextModel>,
        body: Vec<u8>,
    ) -> Result<Response, RequestError> {
        // The body and its tree are freed before the request waits for anything.
        let request = {
            let tree = coldpath_embeddings::api::parse_body(&body, self.max_body_bytes())
                .map_err(|(kind, message)| RequestError::Body { kind, message })?;
            drop(body);
            self.model.service.parse(&tree, false)?
        };
        let (texts, format) = match request {
            coldpath_clip::api::ClipRequest::Texts {
                input,
                encoding_format,
            } => (input, encoding_format),
            // `parse` refuses photos on a host without the vision tower; this is that refusal
            // should the tower set ever change.
            coldpath_clip::api::ClipRequest::Images { .. } => {
                return Err(ClipServiceError::Clip(ClipError::TowerNotLoaded {
                    tower: "vision",
                    model: self.name().to_string(),
                })
                .into());
            }
        };
        let model = Arc::clone(&self.model);
        let bytes = texts.iter().map(String::len).sum();
        let tokenized = self
            .tokenizing
            .run(bytes, move || model.service.engine().tokenize(&texts));
        let (ids, counts) = tokio::time::timeout_at(admission.deadline().into(), tokenized)
            .await
            .map_err(|_| self.expired(&admission))?
            .map_err(ClipServiceError::from)?
            .map_err(ClipServiceError::from)?;
        let vectors = admission.submit(ids).await.map_err(clip_refused)?;
        Ok(Json(coldpath_clip::api::response(
            self.name(),
            format,
            &vectors,
            &counts,
        ))
        .into_response())
    }
}

fn clip_refused(e: BatchError<ClipError>) -> RequestError {
    batch_error(
        e,
        |e| ClipServiceError::Clip(e).into(),
        |t| ClipServiceError::Task(t).into(),
    )
}

/// Everything the server hosts, loaded and warmed, with their batching tasks.
pub struct Hosted {
    pub embeddings: Option<EmbeddingsWorkload>,
    pub faces: Option<FacesWorkload>,
    pub clip: Option<ClipWorkload>,
    tasks: Vec<JoinHandle<()>>,
}

impl Hosted {
    /// The loaded text models' shapes, for [`ServeConfig::text_memory_bound`].
    pub fn text_shapes(&self) -> TextShapes {
        TextShapes {
            embeddings_dims: self
                .embeddings
                .as_ref()
                .map(|e| coldpath_embeddings::Embed::dimensions(e.model.embedder())),
            clip: self.clip.as_ref().map(|c| {
                let engine = c.model.service.engine();
                // 77 for OpenAI's CLIP; a text tower is always loaded here.
                let context = engine.tokenizer().map_or(77, |t| t.context_length());
                (engine.dimensions(), context)
            }),
        }
    }

    /// Each model's queue depth, for `/metrics`.
    pub fn depths(&self) -> Vec<(&'static str, usize)> {
        let mut d = Vec::new();
        if let Some(e) = &self.embeddings {
            d.push((e.batcher.name(), e.batcher.depth()));
        }
        if let Some(f) = &self.faces {
            d.push((f.batcher.name(), f.batcher.depth()));
        }
        if let Some(c) = &self.clip {
            d.push((c.batcher.name(), c.batcher.depth()));
        }
        d
    }

    /// How long each model's running call has taken (`None`: idle), for the watchdog.
    pub fn running_for(&self) -> Vec<(&'static str, Option<std::time::Duration>)> {
        let mut r = Vec::new();
        if let Some(e) = &self.embeddings {
            r.push((e.batcher.name(), e.batcher.running_for()));
        }
        if let Some(f) = &self.faces {
            r.push((f.batcher.name(), f.batcher.running_for()));
        }
        if let Some(c) = &self.clip {
            r.push((c.batcher.name(), c.batcher.running_for()));
        }
        r
    }

    /// Drops the queues and waits for the batching tasks to answer what they hold.
    pub async fn close(self) {
        let Hosted {
            embeddings,
            faces,
            clip,
            tasks,
        } = self;
        drop((embeddings, faces, clip));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Loads the configured workloads with the functions' own `init` (library, models, sessions,
/// warm-up, cold-start record) and starts a batcher for each.
pub async fn load(
    config: &ServeConfig,
    store: ObjectStore,
    metrics: &Metrics,
) -> Result<Hosted, StartError> {
    let mut tasks = Vec::new();
    let tokenizing = Tokenizing::new(tokio::runtime::Handle::current().metrics().num_workers())
        .map_err(StartError::Serve)?;
    let embeddings = match &config.embeddings {
        None => None,
        Some(c) => {
            let (service, record) = coldpath_embeddings::init(c, store.clone()).await?;
            tracing::info!(
                model = %c.model.name,
                total_ms = record.total_ms,
                "embeddings loaded"
            );
            let model = Arc::new(EmbeddingsModel { service });
            let (batcher, task) = Batcher::spawn(
                "embeddings",
                Arc::clone(&model),
                config.embeddings_batch,
                metrics.model("embeddings"),
            );
            tasks.push(task);
            Some(EmbeddingsWorkload {
                model,
                batcher,
                model_name: c.model.name.clone(),
                limits: c.limits,
                tokenizing: tokenizing.clone(),
            })
        }
    };
    let faces = match &config.faces {
        None => None,
        Some(c) => {
            let (faces, record) = coldpath_faces::init_faces(c, store.clone()).await?;
            tracing::info!(
                detector = %c.detector.name,
                recognizer = %c.recognizer.name,
                total_ms = record.total_ms,
                "faces loaded"
            );
            let model = Arc::new(FacesModel { faces });
            let (batcher, task) = Batcher::spawn(
                "faces",
                Arc::clone(&model),
                config.faces_batch,
                metrics.model("faces"),
            );
            tasks.push(task);
            coldpath_image::load_native_codecs(&c.image_codecs).log();
            let mut loader = ImageLoader::new(store.clone(), c.image_limits, false);
            if let Some(dir) = &config.local_paths_dir {
                loader = loader
                    .confine_paths_to(dir)
                    .map_err(|e| StartError::LocalPaths(e.to_string()))?;
            }
            Some(FacesWorkload {
                model,
                batcher,
                loader,
                defaults: c.detect,
            })
        }
    };
    let clip = match &config.clip {
        None => None,
        Some(c) => {
            let (service, record) =
                coldpath_clip::service::init(c, store.clone(), Towers::Text, false).await?;
            tracing::info!(
                model = %c.model.name,
                total_ms = record.total_ms,
                "clip text tower loaded"
            );
            let model = Arc::new(ClipTextModel { service });
            let (batcher, task) = Batcher::spawn(
                "clip",
                Arc::clone(&model),
                config.clip_batch,
                metrics.model("clip"),
            );
            tasks.push(task);
            Some(ClipWorkload {
                model,
                batcher,
                tokenizing,
            })
        }
    };
    Ok(Hosted {
        embeddings,
        faces,
        clip,
        tasks,
    })
}
