//! The server's typed errors: why it could not start, and why one request got no result.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use coldpath_core::{Classify, ConfigError, ErrorType};
use coldpath_embeddings::api::error_body;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading embeddings: {0}")]
    Embeddings(#[from] coldpath_embeddings::InitError),
    #[error("loading faces: {0}")]
    Faces(#[from] coldpath_faces::InitError),
    #[error("loading clip: {0}")]
    Clip(#[from] coldpath_clip::InitError),
    #[error("serving: {0}")]
    Serve(std::io::Error),
    /// `COLDPATH_SERVE_LOCAL_PATHS_DIR` names no usable directory.
    #[error("COLDPATH_SERVE_LOCAL_PATHS_DIR: {0}")]
    LocalPaths(String),
}

impl Classify for StartError {
    fn error_type(&self) -> ErrorType {
        match self {
            StartError::Config(e) => e.error_type(),
            StartError::Bind { .. } | StartError::LocalPaths(_) => ErrorType::Config,
            StartError::Embeddings(e) => e.error_type(),
            StartError::Faces(e) => e.error_type(),
            StartError::Clip(e) => e.error_type(),
            StartError::Serve(_) => ErrorType::Internal,
        }
    }
}

/// Why one request got no result. Each becomes an HTTP status and an OpenAI-style error body
/// (`{"error": {"message", "type", "code"}}`, `code` being the stable `errorType` name), the
/// same body the embeddings function answers with.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body could not be read or parsed (size, emptiness, JSON).
    #[error("{message}")]
    Body { kind: ErrorType, message: String },
    #[error(transparent)]
    Embeddings(#[from] coldpath_embeddings::EmbeddingsError),
    #[error(transparent)]
    Faces(#[from] coldpath_faces::FacesError),
    #[error(transparent)]
    Clip(#[from] coldpath_clip::ClipServiceError),
    /// The model's queue is full: 429 with `Retry-After`.
    #[error("{0}")]
    Overloaded(String),
    /// Not answered within its deadline, or the server is loading or draining: 503 with
    /// `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    #[error("{workload} is not hosted by this server (it hosts {hosted})")]
    NotHosted {
        workload: &'static str,
        hosted: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// The client stopped sending its body: 408.
    #[error("{0}")]
    SlowClient(String),
}

impl Classify for RequestError {
    fn error_type(&self) -> ErrorType {
        match self {
            RequestError::Body { kind, .. } => *kind,
            RequestError::Embeddings(e) => e.error_type(),
            RequestError::Faces(e) => e.error_type(),
            RequestError::Clip(e) => e.error_type(),
            RequestError::Overloaded(_) | RequestError::Unavailable(_) => ErrorType::Retryable,
            RequestError::NotHosted { .. }
            | RequestError::NotFound(_)
            | RequestError::SlowClient(_) => ErrorType::InvalidInput,
        }
    }
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            RequestError::NotHosted { .. } | RequestError::NotFound(_) => StatusCode::NOT_FOUND,
            RequestError::SlowClient(_) => StatusCode::REQUEST_TIMEOUT,
            other => StatusCode::from_u16(other.error_type().http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The response, with `Retry-After: retry_after_s` on 429 and 503.
    pub fn into_response_after(self, retry_after_s: u64) -> Response {
        let status = self.status();
        if status.is_server_error() && !matches!(self, RequestError::Unavailable(_)) {
            coldpath_runtime::log_failure(&self);
        }
        let body = error_body(self.error_type(), &self.to_string());
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        response
    }
}
