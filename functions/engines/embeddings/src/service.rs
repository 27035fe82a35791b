//! The service: one request in, one response out, over a narrow [`Embed`] trait, plus the init
//! that builds the real model once per process. Hosts (the Lambda function, the always-on
//! server) bring the requests.

use std::sync::Arc;
use std::time::Instant;

use coldpath_core::cold_start::{ColdStartTimer, Phase};
use coldpath_core::{Classify, ColdStartRecord, ErrorType};
use coldpath_io::{ObjectFetcher, run_blocking};
use coldpath_models::{ModelError, ModelStore, OrtRuntime, SessionPool};
use coldpath_runtime::metrics::{Invocation, Metrics};
use serde_json::Value;

use crate::api::{self, Limits, RequestError};
use crate::config::EmbeddingsConfig;
use crate::embedder::{Embed, EmbedError, OnnxEmbedder};

/// Any failure of one request.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingsError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("inference task failed: {0}")]
    Task(#[from] coldpath_io::TaskError),
}

impl Classify for EmbeddingsError {
    fn error_type(&self) -> ErrorType {
        match self {
            EmbeddingsError::Request(e) => e.error_type(),
            EmbeddingsError::Embed(e) => e.error_type(),
            EmbeddingsError::Task(_) => ErrorType::Internal,
        }
    }
}

/// Failures while building the service at init.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

impl Classify for InitError {
    fn error_type(&self) -> ErrorType {
        match self {
            InitError::Model(e) => e.error_type(),
            InitError::Embed(e) => e.error_type(),
        }
    }
}

/// Everything a request needs, built once per process.
pub struct EmbeddingsService<E> {
    embedder: Arc<E>,
    model_name: String,
    limits: Limits,
    metrics: Metrics,
}

impl<E: Embed + 'static> EmbeddingsService<E> {
    pub fn new(embedder: E, model_name: impl Into<String>, limits: Limits) -> Self {
        EmbeddingsService {
            embedder: Arc::new(embedder),
            model_name: model_name.into(),
            limits,
            metrics: Metrics::default(),
        }
    }

    /// Writes a metric line per invocation through `metrics` (none without).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn embedder(&self) -> &E {
        &self.embedder
    }

    /// The model's name, as requests may give it in `model`.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// The metric lines a host writes per invocation (none unless configured).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The limits requests are held to (a host's front door applies the body limit).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Embeds one request body (the direct-invoke payload, or a decoded HTTP body), counting its
    /// inputs as the invocation's batch size.
    pub async fn embed_json(
        &self,
        body: &Value,
        invocation: &mut Invocation<'_>,
    ) -> Result<Value, EmbeddingsError> {
        let request = api::parse_request(
            body,
            &self.model_name,
            self.embedder.dimensions(),
            &self.limits,
        )?;
        invocation.set_batch_size(request.input.len());
        let started = Instant::now();
        let embedder = Arc::clone(&self.embedder);
        let texts = request.input;
        let count = texts.len();
        let embedded = run_blocking(move || embedder.embed(&texts)).await??;
        let tokens: usize = embedded.token_counts.iter().sum();
        tracing::info!(
            model = %self.model_name,
            batch_size = count,
            tokens,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "embedded"
        );
        Ok(api::response(
            &self.model_name,
            request.encoding_format,
            &embedded.vectors,
            &embedded.token_counts,
        )
        .to_value())
    }
}

/// Builds the real service: loads ONNX Runtime, resolves the model, builds sessions, warms up,
/// and logs the cold-start record.
pub async fn init<F: ObjectFetcher>(
    config: &EmbeddingsConfig,
    fetcher: F,
) -> Result<(EmbeddingsService<OnnxEmbedder>, ColdStartRecord), InitError> {
    let mut timer = ColdStartTimer::start("embeddings");
    let runtime = timer.time(Phase::LibraryLoad, || OrtRuntime::load(&config.ort_library))?;
    let store = ModelStore::new(&config.cache_dir, fetcher);
    let model = store.resolve(&config.model).await?;
    timer.add(Phase::ModelFetch, model.elapsed);

    let build_started = Instant::now();
    // The tokenizer (a large JSON file) loads on a second thread while ONNX Runtime builds the
    // sessions: both are on the cold-start path and neither needs the other.
    let (tokenizer, sessions) = std::thread::scope(|scope| {
        let tokenizer = scope.spawn(|| {
            OnnxEmbedder::load_tokenizer(&model.path("tokenizer.json"), &config.pipeline)
        });
        let mut sessions = Vec::with_capacity(config.sessions);
        for _ in 0..config.sessions {
            let (session, provider) = runtime.build_session(
                &model.spec.name,
                &model.path("model.onnx"),
                &config.session,
            )?;
            timer.set_provider(provider.name());
            sessions.push(session);
        }
        let tokenizer = tokenizer.join().map_err(|_| EmbedError::TokenizerLoad {
            path: model.path("tokenizer.json"),
            reason: "the loader thread panicked".to_string(),
        })??;
        Ok::<_, InitError>((tokenizer, sessions))
    })?;
    let pool = SessionPool::new(sessions)
        .ok_or_else(|| EmbedError::ModelSignature("no sessions were built".to_string()))?;
    let embedder = OnnxEmbedder::new(tokenizer, pool, config.pipeline.clone())?;
    timer.add(Phase::SessionBuild, build_started.elapsed());
    if config.warmup {
        let text = "warm-up: a photo of a dog running on the beach at sunset".to_string();
        timer.time(Phase::Warmup, || embedder.embed(&[text]))?;
    }
    let metrics = Metrics::new("embeddings", config.metrics);
    let service = EmbeddingsService::new(embedder, model.spec.name.clone(), config.limits)
        .with_metrics(metrics.clone());
    let record = timer.finish();
    metrics.cold_start(&record);
    Ok((service, record))
}
