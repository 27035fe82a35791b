//! `embeddings`, the Lambda function: the embeddings engine behind a Function URL (or an HTTP API,
//! payload v2) and direct invokes, and, when `EMBEDDINGS_CLIP` is on, CLIP's text tower beside it
//! (photo search by words: the query's vector, on the same warm path).
//!
//! The engines ([`coldpath_embeddings`], [`coldpath_clip`]) take an OpenAI embeddings request and
//! answer its response; this crate is the Lambda side of them: routing HTTP events ([`http`]),
//! choosing the engine by the request's `model`, turning every outcome into an HTTP response or a
//! classified Lambda error, and the binary's start ([`HostConfig`]).

pub mod contract;
pub mod http;

use std::sync::Arc;

use coldpath_clip::{ClipConfig, ClipService, ClipServiceError, Towers};
use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::EnvVar;
use coldpath_core::{Classify, ErrorType};
use coldpath_embeddings::api::RequestError;
use coldpath_embeddings::{Embed, EmbeddingsConfig, EmbeddingsError, EmbeddingsService};
use coldpath_io::{NoObjectStore, ObjectFetcher};
use coldpath_runtime::metrics::Invocation;
use coldpath_runtime::{HandlerError, LambdaEvent, log_failure};
use serde_json::Value;

use crate::http::{EmbeddingsEvent, Routed};

/// What the binary reads at start: the text model's settings, and CLIP's when its text tower
/// is hosted too.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    pub embeddings: EmbeddingsConfig,
    /// `EMBEDDINGS_CLIP` (off by default): also host CLIP's text tower (`CLIP_*` settings),
    /// for requests whose `model` is `CLIP_MODEL_NAME`.
    pub clip: Option<ClipConfig>,
}

impl HostConfig {
    pub const ENV: &'static [EnvVar] = &[EnvVar::optional(
        "EMBEDDINGS_CLIP",
        "also host CLIP's text tower (CLIP_* settings)",
    )];

    /// Every variable [`HostConfig::from_env`] reads, with CLIP's text tower hosted.
    pub fn env() -> Vec<EnvVar> {
        coldpath_core::contract::union(&[
            Self::ENV,
            &EmbeddingsConfig::env(),
            &ClipConfig::env_for(Towers::Text),
        ])
    }

    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let clip = config::bool_or(env, "EMBEDDINGS_CLIP", false)?;
        Ok(HostConfig {
            embeddings: EmbeddingsConfig::from_env(env)?,
            clip: clip
                .then(|| ClipConfig::from_env(env, Towers::Text))
                .transpose()?,
        })
    }
}

/// The function's models: the text embeddings, and CLIP's text tower when hosted (`F` is the
/// object store its model came through; the text tower never loads a photo with it).
pub struct EmbeddingsFunction<E, F = NoObjectStore> {
    pub embeddings: EmbeddingsService<E>,
    pub clip: Option<ClipService<F>>,
}

/// Any failure of one request, whichever model it named.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error(transparent)]
    Embeddings(#[from] EmbeddingsError),
    #[error(transparent)]
    Clip(#[from] ClipServiceError),
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl Classify for FunctionError {
    fn error_type(&self) -> ErrorType {
        match self {
            FunctionError::Embeddings(e) => e.error_type(),
            FunctionError::Clip(e) => e.error_type(),
            FunctionError::Request(e) => e.error_type(),
        }
    }
}

impl<E: Embed + 'static, F: ObjectFetcher> EmbeddingsFunction<E, F> {
    pub fn new(embeddings: EmbeddingsService<E>) -> Self {
        EmbeddingsFunction {
            embeddings,
            clip: None,
        }
    }

    pub fn with_clip(mut self, clip: ClipService<F>) -> Self {
        self.clip = Some(clip);
        self
    }

    /// The metric lines a host writes per invocation (none unless configured).
    pub fn metrics(&self) -> &coldpath_runtime::metrics::Metrics {
        self.embeddings.metrics()
    }

    /// The largest body the front door accepts: the text model's.
    pub fn max_body_bytes(&self) -> usize {
        self.embeddings.limits().max_request_bytes
    }

    /// Answers one request: CLIP's text tower when its `model` names it, the text embeddings
    /// otherwise (which refuse any other name).
    pub async fn embed_json(
        &self,
        body: &Value,
        invocation: &mut Invocation<'_>,
    ) -> Result<Value, FunctionError> {
        let requested = coldpath_clip::api::requested_model(body);
        if let Some(clip) = &self.clip {
            if requested == Some(clip.name()) {
                // Photos are embedded on upload, not here: `parse` refuses them (this host has
                // no vision tower), and paths are never read from a request here.
                return Ok(clip.embed_json(body, invocation).await?);
            }
            if let Some(given) = requested
                && given != self.embeddings_name()
            {
                return Err(RequestError::UnknownModel {
                    given: given.to_string(),
                    served: format!("{} or {}", self.embeddings_name(), clip.name()),
                }
                .into());
            }
        }
        Ok(self.embeddings.embed_json(body, invocation).await?)
    }

    fn embeddings_name(&self) -> &str {
        self.embeddings.model_name()
    }
}

/// Serves a routed HTTP event; every outcome, failures included, is an HTTP response.
pub async fn handle_http<E: Embed + 'static, F: ObjectFetcher>(
    service: &EmbeddingsFunction<E, F>,
    routed: Routed,
    invocation: &mut Invocation<'_>,
) -> Value {
    let response = match routed {
        Routed::Reply(r) => {
            // Refused before the body was read (route, method, size, encoding).
            if let Some(error_type) = refusal_type(r.status_code) {
                invocation.error(error_type);
            }
            *r
        }
        Routed::Body(body) => match service.embed_json(&body, invocation).await {
            Ok(v) => http::reply(200, &v),
            Err(e) => {
                log_failure(&e);
                invocation.error(e.error_type());
                http::error(e.error_type(), &e.to_string())
            }
        },
    };
    serde_json::to_value(response).unwrap_or_else(|e| {
            // Serialising a response built from strings and numbers cannot fail; if it ever
            // does, answer 500 rather than dropping the request.
            serde_json::json!({"statusCode": 500, "body": format!("{{\"error\":{{\"message\":\"{e}\"}}}}")})
        })
}

/// The Lambda handler: HTTP events get HTTP responses, direct invokes get the JSON body or a
/// classified error.
///
/// Each invocation writes one metric line (latency, inputs, errors by type) when metrics are on.
pub async fn handle<E: Embed + 'static, F: ObjectFetcher>(
    service: Arc<EmbeddingsFunction<E, F>>,
    event: LambdaEvent<Value>,
) -> Result<Value, HandlerError> {
    let mut invocation = service.metrics().invocation();
    let max_body_bytes = service.max_body_bytes();
    let payload = match EmbeddingsEvent::from_payload(event.payload) {
        Ok(EmbeddingsEvent::Direct(payload)) => payload,
        Ok(EmbeddingsEvent::Http(request)) => {
            let routed = http::route(*request, max_body_bytes);
            return Ok(handle_http(&service, routed, &mut invocation).await);
        }
        Err(e) => {
            return Ok(handle_http(&service, http::malformed(&e), &mut invocation).await);
        }
    };
    service
        .embed_json(&payload, &mut invocation)
        .await
        .map_err(|e| {
            log_failure(&e);
            invocation.error(e.error_type());
            HandlerError::from_error(&e)
        })
}

/// The error class of an HTTP status the router answered with, for the metrics; `None` for a
/// success.
fn refusal_type(status: i64) -> Option<ErrorType> {
    match status {
        413 => Some(ErrorType::RequestTooLarge),
        400..=499 => Some(ErrorType::InvalidInput),
        500.. => Some(ErrorType::Internal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;

    /// The deploy contract: with CLIP's text tower on, `from_env` reads exactly
    /// [`HostConfig::env`], and no photo or decoder setting (this host decodes no photo).
    #[test]
    fn host_config_reads_exactly_its_list() {
        let env = coldpath_core::RecordingEnv::new(MapEnv::new([("EMBEDDINGS_CLIP", "true")]));
        let config = HostConfig::from_env(&env).unwrap();
        let clip = config.clip.expect("the text tower is hosted");
        assert!(clip.model.file("visual/model.onnx").is_none());
        let difference = env.difference(&[&HostConfig::env()]);
        assert!(difference.is_empty(), "{difference:?}");
        assert!(
            !HostConfig::env()
                .iter()
                .any(|v| v.name.starts_with("COLDPATH_IMAGE_"))
        );
        let off = HostConfig::from_env(&MapEnv::default()).unwrap();
        assert!(off.clip.is_none());
        let bad = HostConfig::from_env(&MapEnv::new([("EMBEDDINGS_CLIP", "sometimes")]));
        assert!(bad.unwrap_err().to_string().starts_with("EMBEDDINGS_CLIP"));
    }

    #[test]
    fn router_refusals_count_as_errors_of_their_class() {
        assert_eq!(refusal_type(200), None);
        assert_eq!(refusal_type(204), None);
        assert_eq!(refusal_type(400), Some(ErrorType::InvalidInput));
        assert_eq!(refusal_type(404), Some(ErrorType::InvalidInput));
        assert_eq!(refusal_type(405), Some(ErrorType::InvalidInput));
        assert_eq!(refusal_type(413), Some(ErrorType::RequestTooLarge));
        assert_eq!(refusal_type(500), Some(ErrorType::Internal));
    }
}
