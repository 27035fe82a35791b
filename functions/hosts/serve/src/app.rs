//! The HTTP front: routes, readiness, request metrics, and the shutdown protocol.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use coldpath_aws::ObjectStore;
use coldpath_core::ErrorType;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{CONNECTION_BUFFER_BYTES, ServeConfig};
use crate::error::{RequestError, StartError};
use crate::metrics::{self, Metrics};
use crate::workloads::{self, Hosted};

/// `/ready`'s answer.
enum Readiness {
    Ready,
    Loading,
    Draining,
    /// A model call has run past the stall bound: these models.
    Stalled(Vec<&'static str>),
}

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
        matches!(self.readiness(), Readiness::Ready)
    }

    /// Where the server stands, read once so `/ready`'s status and code agree.
    fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::SeqCst) {
            return Readiness::Draining;
        }
        if self.hosted.get().is_none() {
            return Readiness::Loading;
        }
        match self.stalled() {
            stalled if stalled.is_empty() => Readiness::Ready,
            stalled => Readiness::Stalled(stalled),
        }
    }

    /// The models whose running call has taken longer than `COLDPATH_SERVE_STALL_MS`: while
    /// any is stuck the server is not ready, so the load balancer sends its traffic elsewhere
    /// instead of into a queue that does not move.
    pub fn stalled(&self) -> Vec<&'static str> {
        self.hosted
            .get()
            .map(|h| h.running_for())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, running)| running.is_some_and(|t| t > self.config.stall))
            .map(|(model, _)| model)
            .collect()
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

    fn answer(&self, result: Result<Response, RequestError>) -> Response {
        match result {
            Ok(answer) => answer,
            Err(e) => self.refuse(e),
        }
    }
}

/// What a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Embeddings,
    Faces,
    /// SageMaker's inference route.
    Invocations,
    Health,
    Ready,
    Metrics,
}

impl Endpoint {
    fn method_router(self) -> MethodRouter<Arc<AppState>> {
        match self {
            Endpoint::Embeddings => post(embeddings),
            Endpoint::Faces => post(faces),
            Endpoint::Invocations => post(invocations),
            Endpoint::Health => get(health),
            Endpoint::Ready => get(ready),
            Endpoint::Metrics => get(metrics_text),
        }
    }
}

/// Every route the server serves: [`router`] is built from this table, and `coldpath-serve
/// contract` prints its paths, which `coldpath check` holds the pod's health checks to.
pub const ROUTES: &[(&str, Endpoint)] = &[
    ("/v1/embeddings", Endpoint::Embeddings),
    ("/v1/faces", Endpoint::Faces),
    ("/invocations", Endpoint::Invocations),
    ("/health", Endpoint::Health),
    ("/ready", Endpoint::Ready),
    // SageMaker's health check.
    ("/ping", Endpoint::Ready),
    ("/metrics", Endpoint::Metrics),
];

/// Every route of [`ROUTES`], with request metrics on all of them.
pub fn router(state: Arc<AppState>) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |router, (path, endpoint)| {
            router.route(path, endpoint.method_router())
        })
        .fallback(not_found)
        // Each route reads its own body (`BodyReader`) after admission, under its own limit.
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

/// The request body as it arrives: read in pieces into one buffer (sized from
/// `Content-Length` when the client declares it, so a large photo is not copied as the buffer
/// grows), never past the limit it is read under, with no pause longer than the read timeout.
struct BodyReader {
    body: Body,
    declared: Option<u64>,
    bytes: Vec<u8>,
    complete: bool,
    idle: Duration,
}

/// Why a body could not be read.
enum ReadError {
    /// More than the limit: the declared length, or more than the limit was sent.
    TooLarge { found: String, max: usize },
    /// No byte for the read timeout.
    Slow(Duration),
    /// The request's deadline (from its admission) passed while its body arrived.
    Deadline,
    /// The client broke off.
    Aborted(String),
}

impl BodyReader {
    fn new(headers: &HeaderMap, body: Body, idle: Duration) -> Self {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        BodyReader {
            body,
            declared,
            bytes: Vec::new(),
            complete: false,
            idle,
        }
    }

    /// Whether the declared length is over `max` (nothing needs to be read to refuse it).
    fn declared_over(&self, max: usize) -> bool {
        self.declared.is_some_and(|n| n > max as u64)
    }

    /// Reads until the body ends (`Ok(true)`) or more than `max` bytes are held (`Ok(false)`;
    /// what was read is kept, so a caller may go on under a larger limit).
    async fn fill(&mut self, max: usize, deadline: Instant) -> Result<bool, ReadError> {
        if self.declared_over(max) {
            return Ok(false);
        }
        if let Some(n) = self.declared {
            self.bytes
                .reserve_exact((n as usize).saturating_sub(self.bytes.len()));
        }
        while !self.complete && self.bytes.len() <= max {
            let wait = (Instant::now() + self.idle).min(deadline);
            match tokio::time::timeout_at(wait.into(), self.body.frame()).await {
                Err(_) if Instant::now() >= deadline => return Err(ReadError::Deadline),
                Err(_) => return Err(ReadError::Slow(self.idle)),
                Ok(None) => self.complete = true,
                Ok(Some(Err(e))) => return Err(ReadError::Aborted(e.to_string())),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.bytes.extend_from_slice(&data);
                    }
                }
            }
        }
        Ok(self.complete && self.bytes.len() <= max)
    }

    /// Reads the whole body under `max`, as one route's request.
    async fn read(mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        if self.fill(max, deadline).await? {
            Ok(self.bytes)
        } else {
            Err(self.too_large(max))
        }
    }

    fn too_large(&self, max: usize) -> ReadError {
        let found = match self.declared {
            Some(n) if n > max as u64 => n.to_string(),
            _ => format!("more than {max}"),
        };
        ReadError::TooLarge { found, max }
    }
}

impl ReadError {
    /// The request's error; `expired` is the workload's own deadline refusal.
    fn into_request_error(self, expired: impl FnOnce() -> RequestError) -> RequestError {
        match self {
            ReadError::TooLarge { found, max } => RequestError::Body {
                kind: ErrorType::RequestTooLarge,
                message: format!("request too large: {found} bytes, at most {max}"),
            },
            ReadError::Slow(idle) => RequestError::SlowClient(format!(
                "the request body stalled: no data for {} ms",
                idle.as_millis()
            )),
            ReadError::Deadline => expired(),
            ReadError::Aborted(reason) => RequestError::Body {
                kind: ErrorType::InvalidInput,
                message: format!("reading the request body: {reason}"),
            },
        }
    }
}

fn not_hosted(state: &AppState, workload: &'static str) -> RequestError {
    RequestError::NotHosted {
        workload,
        hosted: state.config.workloads().join(", "),
    }
}

/// Takes the workload's queue place, then reads the body under the workload's limit and within
/// the request's deadline, and answers it: a request that would be refused is refused before a
/// byte of its body is held (a client that sent `Expect: 100-continue` never sends it). A macro
/// rather than a generic function: the workloads' futures must stay `Send` for axum.
macro_rules! admit_then_read {
    ($workload:expr, $reader:expr) => {{
        let w = $workload;
        let admission = w.admit()?;
        let body = $reader
            .read(w.max_body_bytes(), admission.deadline())
            .await
            .map_err(|e| e.into_request_error(|| w.expired(&admission)))?;
        w.handle(admission, body).await
    }};
}

/// `POST /v1/embeddings`: the text embeddings, or CLIP's text tower for a request whose
/// `model` names it. With both hosted the body is read under the text embeddings' place and
/// limit (both take texts only, so the limits are alike); a request naming CLIP then gives that
/// place up for one in CLIP's queue before it is parsed further.
async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let hosted = state.hosted()?;
        let reader = BodyReader::new(&headers, body, state.config.connections.read_timeout);
        let (e, c) = match (&hosted.embeddings, &hosted.clip) {
            (Some(e), None) => return admit_then_read!(e, reader),
            (None, Some(c)) => return admit_then_read!(c, reader),
            (Some(e), Some(c)) => (e, c),
            (None, None) => return Err(not_hosted(&state, "embeddings")),
        };
        let admission = e.admit()?;
        let body = reader
            .read(e.max_body_bytes(), admission.deadline())
            .await
            .map_err(|err| err.into_request_error(|| e.expired(&admission)))?;
        if requested_model(&body).as_deref() == Some(c.name()) {
            drop(admission);
            let admission = c.admit()?;
            return c.handle(admission, body).await;
        }
        e.handle(admission, body).await
    }
    .await;
    state.answer(result)
}

/// Which of the two workloads' fields a JSON object has (present even when `null`), read
/// without building the body's tree; not an object, not JSON: no probe.
#[derive(serde::Deserialize)]
struct Probe {
    #[serde(default, deserialize_with = "present")]
    input: bool,
    #[serde(default, deserialize_with = "present")]
    image: bool,
}

impl Probe {
    fn read(body: &[u8]) -> Option<Probe> {
        is_object(body)
            .then(|| serde_json::from_slice(body).ok())
            .flatten()
    }
}

/// Whether a body starts as a JSON object: serde would also read a struct from an array,
/// member by position.
fn is_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    <serde::de::IgnoredAny as serde::Deserialize>::deserialize(d).map(|_| true)
}

/// The `model` a JSON body names, read without building the body's tree (the workload parses
/// it in full once it has its place).
fn requested_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<Value>,
    }
    if !is_object(body) {
        return None;
    }
    match serde_json::from_slice::<Named>(body).ok()?.model? {
        Value::String(m) => Some(m),
        _ => None,
    }
}

async fn faces(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let hosted = state.hosted()?;
        let w = hosted
            .faces
            .as_ref()
            .ok_or_else(|| not_hosted(&state, "faces"))?;
        let reader = BodyReader::new(&headers, body, state.config.connections.read_timeout);
        admit_then_read!(w, reader)
    }
    .await;
    state.answer(result)
}

/// SageMaker's inference route: the single hosted workload, or, when both are hosted, the one
/// the body is for (`input` is an embeddings request, `image` a faces request).
///
/// With both hosted the body is read under embeddings' place and limit first; a body longer
/// than that can only be a photo, so it gives that place up for one in the faces queue before
/// more is read. Either way no more than one route's limit is held without its own place.
async fn invocations(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let hosted = state.hosted()?;
        let idle = state.config.connections.read_timeout;
        let mut reader = BodyReader::new(&headers, body, idle);
        let (e, f) = match (&hosted.embeddings, &hosted.faces) {
            (Some(e), None) => return admit_then_read!(e, reader),
            (None, Some(f)) => return admit_then_read!(f, reader),
            (Some(e), Some(f)) => (e, f),
            (None, None) => return Err(not_hosted(&state, "embeddings")),
        };
        let small = if reader.declared_over(e.max_body_bytes()) {
            None
        } else {
            let admission = e.admit()?;
            let complete = reader
                .fill(e.max_body_bytes(), admission.deadline())
                .await
                .map_err(|err| err.into_request_error(|| e.expired(&admission)))?;
            complete.then_some(admission)
        };
        let ambiguous = || RequestError::Body {
            kind: ErrorType::InvalidInput,
            message: "this endpoint hosts embeddings and faces: send a JSON object with \
                      'input' (embeddings) or 'image' (faces), not both"
                .to_string(),
        };
        if let Some(admission) = small {
            // The whole body is here: route by its fields (a body that is not a JSON object
            // gets embeddings' own answer for it). The probe only notes which fields are there,
            // building no tree: the workload parses the body once, itself.
            let probe = Probe::read(&reader.bytes);
            let has = |field: fn(&Probe) -> bool| probe.as_ref().is_some_and(field);
            return match (has(|p| p.input), has(|p| p.image)) {
                (true, true) => Err(ambiguous()),
                (false, true) => {
                    drop(admission);
                    let admission = f.admit()?;
                    f.handle(admission, reader.bytes).await
                }
                (true, false) => e.handle(admission, reader.bytes).await,
                (false, false) if probe.is_some() => Err(ambiguous()),
                (false, false) => e.handle(admission, reader.bytes).await,
            };
        }
        admit_then_read!(f, reader)
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
    let body = match state.readiness() {
        Readiness::Ready => {
            return axum::Json(json!({"status": "ready", "workloads": workloads})).into_response();
        }
        Readiness::Draining => json!({"status": "draining", "workloads": workloads}),
        Readiness::Loading => json!({"status": "loading", "workloads": workloads}),
        Readiness::Stalled(stalled) => {
            tracing::warn!(
                models = %stalled.join(","),
                stall_ms = state.config.stall.as_millis() as u64,
                "a model call is running past the stall bound: not ready"
            );
            json!({"status": "stalled", "workloads": workloads, "stalled": stalled})
        }
    };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
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
        "no route for {} {}; this server serves POST /v1/embeddings (text and CLIP text \
         models), POST /v1/faces, POST /invocations, GET /health, /ready, /ping, /metrics",
        request.method(),
        request.uri().path()
    )))
}

/// Serves until `shutdown` resolves, then drains: `/ready` turns 503, the listener closes, and
/// requests in flight (queued ones included) finish, for at most the configured drain time.
/// Returns whether everything in flight finished.
///
/// Each connection is HTTP/1.1 with hyper's own timer: its request head must arrive within
/// the read timeout (an idle keep-alive connection is closed after it too), its read buffer is
/// bounded, and at most `COLDPATH_SERVE_MAX_CONNECTIONS` are open; one more is closed as soon as
/// it is accepted, so slow or idle clients cannot hold the process's memory or file handles.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<bool> {
    let limits = state.config.connections;
    let drain = state.config.drain;
    let open = Arc::new(Semaphore::new(limits.max));
    let graceful = GracefulShutdown::new();
    let app = router(Arc::clone(&state));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(CONNECTION_BUFFER_BYTES);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file handles, or a connection reset before it was accepted: the
                    // listener itself is fine; pause briefly so a persistent error cannot spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            state.metrics.connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        let metrics = state.metrics.clone();
        metrics.connection(true);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection closed: {e}");
            }
            metrics.connection(false);
            drop(permit);
        });
    }
    state.draining.store(true, Ordering::SeqCst);
    drop(listener);
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "shutting down: no new connections, finishing requests in flight"
    );
    tokio::select! {
        () = graceful.shutdown() => Ok(true),
        () = tokio::time::sleep(drain) => {
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

/// States the pod's worst case once the models are loaded (the text bound needs their vector
/// sizes): what requests in flight may hold beyond the loaded models, per workload and in all,
/// and the process's resident memory now, which the in-flight bound comes on top of.
fn log_memory_bound(config: &ServeConfig, hosted: &Hosted) {
    let shapes = hosted.text_shapes();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let in_flight = config.memory_bound(&shapes, workers);
    let idle = resident_bytes();
    tracing::info!(
        faces_memory_bound_bytes = config.faces_memory_bound(),
        text_memory_bound_bytes = config.text_memory_bound(&shapes, workers),
        unread_answers_bound_bytes = config
            .largest_text_answer(&shapes)
            .map(|a| a * config.connections.max as u64),
        in_flight_memory_bound_bytes = in_flight,
        loaded_resident_bytes = idle,
        memory_bound_bytes = idle.map(|idle| idle + in_flight),
        workers,
        "coldpath-serve memory bound"
    );
}

/// This process's resident memory, from `/proc` (`None` where there is none).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The whole server: listen first (so `/health` answers and `/ready` says 503 while models
/// load), load and warm the workloads, take requests until `shutdown`, drain, close the queues.
///
/// `shutdown` is honoured while the models load too: the server stops at once instead of
/// finishing a load nobody will use. Returns whether every request in flight was finished;
/// when not (the drain deadline passed, or a model call is stuck), the caller should exit
/// without waiting for the model calls still running (`main` gives the runtime a short
/// shutdown timeout).
pub async fn run(
    config: ServeConfig,
    store: ObjectStore,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<bool, StartError> {
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
    let mut server = tokio::spawn(serve(listener, Arc::clone(&state), async move {
        tokio::select! {
            () = shutdown => {}
            _ = stop_rx => {}
        }
    }));
    let load = workloads::load(&config, store, &metrics);
    let loaded = tokio::select! {
        loaded = load => loaded,
        stopped = &mut server => {
            tracing::info!("shut down while the models were loading");
            return stopped
                .map_err(|e| StartError::Serve(std::io::Error::other(e)))?
                .map_err(StartError::Serve);
        }
    };
    match loaded {
        Ok(hosted) => {
            log_memory_bound(&config, &hosted);
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
    if finished && let Some(hosted) = state.take_hosted() {
        hosted.close().await;
    }
    tracing::info!(finished, "coldpath-serve stopped");
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(body: &str) -> Option<(bool, bool)> {
        Probe::read(body.as_bytes()).map(|p| (p.input, p.image))
    }

    /// `/invocations` routes by which fields an object has, as `Value::get` saw them (a `null`
    /// field is there), without parsing the body into a tree first.
    #[test]
    fn the_probe_sees_fields_as_the_tree_did() {
        assert_eq!(probe(r#"{"input": ["a", "b"]}"#), Some((true, false)));
        assert_eq!(probe(r#"{"input": null}"#), Some((true, false)));
        assert_eq!(
            probe(r#"{"image": {"base64": "AA"}, "min_score": 0.5}"#),
            Some((false, true))
        );
        assert_eq!(probe(r#"{"input": "a", "image": {}}"#), Some((true, true)));
        assert_eq!(probe(r#"{"model": "m"}"#), Some((false, false)));
        for not_an_object in ["[1]", "\"input\"", "3", "{", ""] {
            assert_eq!(probe(not_an_object), None, "{not_an_object}");
        }
        assert_eq!(
            requested_model(br#"{"model": "clip", "input": "a"}"#).as_deref(),
            Some("clip")
        );
        assert_eq!(requested_model(br#"{"model": 3}"#), None);
        assert_eq!(requested_model(br#"["clip"]"#), None);
    }
}
