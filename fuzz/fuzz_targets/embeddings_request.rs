//! The embeddings function's request path, from the raw invoke payload to a validated request:
//! `http::EmbeddingsEvent::from_payload` (the typed event: Function URL / API Gateway HTTP API v2
//! request or direct invoke), `http::route` (path, stage, method, base64 body, size) and
//! `api::parse_request` (the OpenAI request), as the Lambda host's `handle` chains them. The host
//! crate links the engine's model, so its `http` module is compiled in from its own file.
//!
//! Invariants checked: nothing panics; an HTTP event is answered with a JSON error body whose
//! status matches its code, or yields a body within the size limit that is then parsed; a
//! refused request is `InvalidInput`, or `RequestTooLarge` exactly when it is too large; an
//! accepted one holds 1 to `max_inputs` non-blank texts within `max_request_bytes`.
#![no_main]

use aws_lambda_events::encodings::Body;
use coldpath_core::{Classify, ErrorType};
use coldpath_embeddings::Limits;
use coldpath_embeddings::api::{RequestError, parse_request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "../../functions/hosts/embeddings/src/http.rs"]
mod http;

use http::{EmbeddingsEvent, Routed, malformed, route};

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
const DIMENSIONS: usize = 384;
const LIMITS: Limits = Limits {
    max_inputs: 8,
    max_request_bytes: 4096,
};

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<Value>(data) else {
        // The Lambda runtime only ever hands the handler a JSON value.
        return;
    };
    let routed = match EmbeddingsEvent::from_payload(payload) {
        Ok(EmbeddingsEvent::Direct(body)) => Err(body),
        Ok(EmbeddingsEvent::Http(request)) => Ok(route(*request, LIMITS.max_request_bytes)),
        Err(e) => Ok(malformed(&e)),
    };
    let body = match routed {
        Ok(routed) => match routed {
            Routed::Reply(reply) => {
                let status = reply.status_code;
                assert!(matches!(status, 400 | 404 | 405 | 413), "status {status}");
                let Some(Body::Text(text)) = &reply.body else {
                    panic!("reply without a text body: {reply:?}");
                };
                let v: Value = serde_json::from_str(text).expect("reply body is JSON");
                let message = v["error"]["message"].as_str().expect("error.message");
                assert!(!message.is_empty());
                let code = v["error"]["code"].as_str().expect("error.code");
                let expected = match code {
                    "NotFound" => 404,
                    "MethodNotAllowed" => 405,
                    "RequestTooLarge" => 413,
                    "InvalidInput" => 400,
                    other => panic!("unexpected error code {other}"),
                };
                assert_eq!(status, expected, "{text}");
                return;
            }
            Routed::Body(body) => body,
        },
        Err(direct) => direct,
    };
    match parse_request(&body, MODEL, DIMENSIONS, &LIMITS) {
        Ok(request) => {
            assert!(!request.input.is_empty());
            assert!(request.input.len() <= LIMITS.max_inputs);
            let bytes: usize = request.input.iter().map(String::len).sum();
            assert!(bytes <= LIMITS.max_request_bytes);
            assert!(request.input.iter().all(|t| !t.trim().is_empty()));
        }
        Err(e) => {
            let too_large = matches!(e, RequestError::TooLarge { .. });
            let expected = if too_large {
                ErrorType::RequestTooLarge
            } else {
                ErrorType::InvalidInput
            };
            assert_eq!(e.error_type(), expected, "{e}");
            assert!(!e.to_string().is_empty());
        }
    }
});
