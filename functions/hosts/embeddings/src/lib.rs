//! `embeddings`, the Lambda function: the embeddings engine behind a Function URL (or an HTTP API,
//! payload v2) and direct invokes.
//!
//! The engine ([`coldpath_embeddings`]) takes an OpenAI embeddings request and answers its
//! response; this crate is the Lambda side of it: routing HTTP events ([`http`]), turning every
//! outcome into an HTTP response or a classified Lambda error, and the binary's start.

pub mod contract;
pub mod http;

use std::sync::Arc;

use coldpath_core::{Classify, ErrorType};
use coldpath_embeddings::{Embed, EmbeddingsService};
use coldpath_runtime::metrics::Invocation;
use coldpath_runtime::{HandlerError, LambdaEvent, log_failure};
use serde_json::Value;

use crate::http::{EmbeddingsEvent, Routed};

/// Serves a routed HTTP event; every outcome, failures included, is an HTTP response.
pub async fn handle_http<E: Embed + 'static>(
    service: &EmbeddingsService<E>,
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
pub async fn handle<E: Embed + 'static>(
    service: Arc<EmbeddingsService<E>>,
    event: LambdaEvent<Value>,
) -> Result<Value, HandlerError> {
    let mut invocation = service.metrics().invocation();
    let max_body_bytes = service.limits().max_request_bytes;
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
