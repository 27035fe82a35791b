//! The HTTP front: routes, readiness, request metrics, and the shutdown protocol.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use coldpath_aws::ObjectStore;
use coldpath_core::ErrorType;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::ServeConfig;
use crate::error::{RequestError, StartError};
use crate::metrics::{self, Metrics};
use crate::workloads::{self, Hosted};

/// What every handler shares: the config, the workloads once loaded, and the metrics.
pub struct AppState {
    config: ServeConfig,
    hosted: OnceLock<Hosted>,
    draining: AtomicBool,
    metrics: Metrics,
}

impl AppState {
    /// A server that is not ready yet: `/health` answers, `/ready` says 503 until
    /// [`AppState::set_ready`].
    pub fn new(config: ServeConfig, metrics: Metrics) -> Arc<Self> {
        Arc::new(AppState {
            config,
            hosted: OnceLock::new(),
            draining: AtomicBool::new(false),
            metrics,
        })
    }

    /// The workloads are loaded and warmed: requests are taken from now on.
    pub fn set_ready(&self, hosted: Hosted) {
        if self.hosted.set(hosted).is_err() {
            tracing::warn!("the workloads were already loaded; keeping the first");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.hosted.get().is_some() && !self.draining.load(Ordering::SeqCst)
    }

    /// Each hosted model's queue depth (none before the models are loaded).
    pub fn queue_depths(&self) -> Vec<(&'static str, usize)> {
        self.hosted.get().map(Hosted::depths).unwrap_or_default()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Takes the workloads back (after the server stopped), to close their queues.
    pub fn take_hosted(self: Arc<Self>) -> Option<Hosted> {
        Arc::into_inner(self).and_then(|s| s.hosted.into_inner())
    }

    fn hosted(&self) -> Result<&Hosted, RequestError> {
        self.hosted.get().ok_or_else(|| {
            RequestError::Unavailable("the models are still loading; retry shortly".to_string())
        })
    }

    fn refuse(&self, e: RequestError) -> Response {
        e.into_response_after(self.config.retry_after_s)
    }

    fn answer(&self, result: Result<Value, RequestError>) -> Response {
        match result {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => self.refuse(e),
        }
    }
}

/// Every route, with request metrics on all of them.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/faces", post(faces))
        .route("/invocations", post(invocations))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/ping", get(ready))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        // Each route enforces its own body limit (`read_json`), with the workload's own refusal.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(Arc::clone(&state), track))
        .with_state(state)
}

async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// Reads a JSON body of at most `max` bytes; `what` names the field a request needs, for the
/// empty-body message. Embeddings bodies go through the function's own check, so both front
/// doors refuse alike.
async fn read_json(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    what: &str,
) -> Result<Value, RequestError> {
    let too_large = |found: String| RequestError::Body {
        kind: ErrorType::RequestTooLarge,
        message: format!("request too large: {found} bytes, at most {max}"),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > max as u64) {
        return Err(too_large(n.to_string()));
    }
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large(format!("more than {max}")))?;
    if what == "input" {
        return coldpath_embeddings::http::parse_body(&bytes, max)
            .map_err(|(kind, message)| RequestError::Body { kind, message });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::Body {
            kind: ErrorType::InvalidInput,
            message: format!("request body is empty; send a JSON object with '{what}'"),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| RequestError::Body {
        kind: ErrorType::InvalidInput,
        message: format!("request body is not valid JSON: {e}"),
    })
}

fn not_hosted(state: &AppState, workload: &'static str) -> RequestError {
    RequestError::NotHosted {
        workload,
        hosted: state.config.workloads().join(", "),
    }
}

async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let hosted = state.hosted()?;
        let w = hosted
            .embeddings
            .as_ref()
            .ok_or_else(|| not_hosted(&state, "embeddings"))?;
        let payload = read_json(&headers, body, w.max_body_bytes(), "input").await?;
        w.handle(&payload).await
    }
    .await;
    state.answer(result)
}

async fn faces(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let hosted = state.hosted()?;
        let w = hosted
            .faces
            .as_ref()
            .ok_or_else(|| not_hosted(&state, "faces"))?;
        let payload = read_json(&headers, body, w.max_body_bytes(), "image").await?;
        w.handle(&payload).await
    }
    .await;
    state.answer(result)
}

/// SageMaker's inference route: the single hosted workload, or, when both are hosted, the one
/// the body is for (`input` is an embeddings request, `image` a faces request).
async fn invocations(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let hosted = state.hosted()?;
        let max = [
            hosted.embeddings.as_ref().map(|w| w.max_body_bytes()),
            hosted.faces.as_ref().map(|w| w.max_body_bytes()),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let what = match (&hosted.embeddings, &hosted.faces) {
            (Some(_), None) => "input",
            (None, Some(_)) => "image",
            _ => "input' or 'image",
        };
        let payload = read_json(&headers, body, max, what).await?;
        let has = |field: &str| payload.get(field).is_some();
        match (&hosted.embeddings, &hosted.faces) {
            (Some(e), None) => e.handle(&payload).await,
            (None, Some(f)) => f.handle(&payload).await,
            (Some(e), Some(_)) if has("input") && !has("image") => e.handle(&payload).await,
            (Some(_), Some(f)) if has("image") && !has("input") => f.handle(&payload).await,
            _ => Err(RequestError::Body {
                kind: ErrorType::InvalidInput,
                message: "this endpoint hosts embeddings and faces: send a JSON object with \
                          'input' (embeddings) or 'image' (faces), not both"
                    .to_string(),
            }),
        }
    }
    .await;
    state.answer(result)
}

async fn health() -> Response {
    axum::Json(json!({"status": "alive"})).into_response()
}

/// `/ready` and SageMaker's `/ping`: 200 once every hosted model is loaded and warmed, 503
/// while loading and once draining (so load balancers stop sending).
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let workloads = state.config.workloads();
    if state.is_ready() {
        return axum::Json(json!({"status": "ready", "workloads": workloads})).into_response();
    }
    let status = if state.draining.load(Ordering::SeqCst) {
        "draining"
    } else {
        "loading"
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"status": status, "workloads": workloads})),
    )
        .into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let depths = state.queue_depths();
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(&depths),
    )
        .into_response()
}

async fn not_found(State(state): State<Arc<AppState>>, request: Request) -> Response {
    state.refuse(RequestError::NotFound(format!(
        "no route for {} {}; this server serves POST /v1/embeddings, POST /v1/faces, \
         POST /invocations, GET /health, /ready, /ping, /metrics",
        request.method(),
        request.uri().path()
    )))
}

/// Serves until `shutdown` resolves, then drains: `/ready` turns 503, the listener closes, and
/// requests in flight (queued ones included) finish, for at most the configured drain time.
/// Returns whether everything in flight finished.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<bool> {
    let (begun_tx, begun_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_state = Arc::clone(&state);
    let signal = async move {
        shutdown.await;
        signal_state.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            drain_ms = signal_state.config.drain.as_millis() as u64,
            "shutting down: no new connections, finishing requests in flight"
        );
        let _ = begun_tx.send(());
    };
    let drain = state.config.drain;
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(signal);
    let deadline = async move {
        if begun_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        r = server.into_future() => r.map(|()| true),
        () = deadline => {
            tracing::warn!("drain deadline passed with requests still in flight; exiting anyway");
            Ok(false)
        }
    }
}

/// Resolves on SIGTERM (what container platforms send) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The whole server: listen first (so `/health` answers and `/ready` says 503 while models
/// load), load and warm the workloads, take requests until `shutdown`, drain, close the queues.
pub async fn run(
    config: ServeConfig,
    store: ObjectStore,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let addr = config.addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(
        address = %format!("http://{local}"),
        workloads = %config.workloads().join(","),
        "coldpath-serve listening"
    );
    let metrics = Metrics::new();
    let state = AppState::new(config.clone(), metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::clone(&state), async move {
        tokio::select! {
            () = shutdown => {}
            _ = stop_rx => {}
        }
    }));
    match workloads::load(&config, store, &metrics).await {
        Ok(hosted) => {
            state.set_ready(hosted);
            tracing::info!("coldpath-serve ready");
        }
        Err(e) => {
            let _ = stop_tx.send(());
            let _ = server.await;
            return Err(e);
        }
    }
    let finished = server
        .await
        .map_err(|e| StartError::Serve(std::io::Error::other(e)))?
        .map_err(StartError::Serve)?;
    if let Some(hosted) = state.take_hosted() {
        hosted.close().await;
    }
    tracing::info!(finished, "coldpath-serve stopped");
    Ok(())
}
