//! `POST /v1/embeddings` over a Lambda Function URL or an API Gateway HTTP API (payload v2).
//!
//! Both deliver the same event shape and accept the same response shape, so one code path serves
//! both. Every failure becomes an HTTP status with an OpenAI-style JSON error body; nothing here
//! returns a Lambda error, which would reach the client as an opaque 502.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue, Method, header};
use base64::Engine as _;
use coldpath_core::ErrorType;
use coldpath_embeddings::api::{error_body, parse_body};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The one route this function serves.
pub const ROUTE: &str = "/v1/embeddings";

/// One invocation's payload. This module is self-contained (no `crate::` paths), so the fuzz
/// target compiles this very file without the engine's model (`fuzz_targets/embeddings_request.rs`).
#[derive(Debug)]
pub enum EmbeddingsEvent {
    /// A Function URL or HTTP API (payload v2) request: both send the same shape. Boxed: it is
    /// several header maps, and a direct invoke never builds one.
    Http(Box<ApiGatewayV2httpRequest>),
    /// A direct invoke: the OpenAI request itself, validated by the engine.
    Direct(Value),
}

/// An event with `requestContext.http` that is not a well-formed v2 request; answered with 400.
#[derive(Debug, thiserror::Error)]
#[error("malformed HTTP event: {0}")]
pub struct MalformedHttpEvent(#[from] serde_json::Error);

/// The member that tells the shapes apart: Function URLs and HTTP APIs always send
/// `requestContext.http`, which no embeddings request has. Read as a type before the payload is
/// parsed as either shape, so that a malformed HTTP event is still answered over HTTP (a
/// `#[serde(untagged)]` enum would take it for a direct invoke).
#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "requestContext")]
    request_context: Option<ContextShape>,
}

#[derive(Deserialize)]
struct ContextShape {
    http: Option<Map<String, Value>>,
}

impl EmbeddingsEvent {
    /// Reads a payload: an HTTP event when it has an object at `requestContext.http`, a direct
    /// invoke otherwise.
    pub fn from_payload(payload: Value) -> Result<EmbeddingsEvent, MalformedHttpEvent> {
        // Only an object: serde would also read a struct from an array, member by position.
        let http = payload.is_object()
            && Shape::deserialize(&payload)
                .is_ok_and(|s| s.request_context.is_some_and(|c| c.http.is_some()));
        if !http {
            return Ok(EmbeddingsEvent::Direct(payload));
        }
        Ok(EmbeddingsEvent::Http(Box::new(serde_json::from_value(
            payload,
        )?)))
    }
}

/// What to do with an HTTP request: embed this JSON body, or answer at once.
#[derive(Debug)]
pub enum Routed {
    Body(Value),
    // Boxed: a response is several header maps, and most requests never build one.
    Reply(Box<ApiGatewayV2httpResponse>),
}

fn answer(response: ApiGatewayV2httpResponse) -> Routed {
    Routed::Reply(Box::new(response))
}

/// The answer to a malformed HTTP event: 400, before anything is read.
pub fn malformed(e: &MalformedHttpEvent) -> Routed {
    answer(error(ErrorType::InvalidInput, &e.to_string()))
}

/// Checks route, method and size, and decodes the body.
pub fn route(req: ApiGatewayV2httpRequest, max_body_bytes: usize) -> Routed {
    let path = request_path(&req);
    if path != ROUTE {
        return answer(reply(
            404,
            &json!({"error": {
                "message": format!("no route for {path}; this function serves POST {ROUTE}"),
                "type": "invalid_request_error",
                "code": "NotFound",
            }}),
        ));
    }
    if req.request_context.http.method != Method::POST {
        let mut r = reply(
            405,
            &json!({"error": {
                "message": format!("method {} is not allowed on {ROUTE}; use POST", req.request_context.http.method),
                "type": "invalid_request_error",
                "code": "MethodNotAllowed",
            }}),
        );
        r.headers
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return answer(r);
    }
    let raw = req.body.unwrap_or_default();
    let bytes = if req.is_base64_encoded {
        match base64::engine::general_purpose::STANDARD.decode(raw.as_bytes()) {
            Ok(b) => b,
            Err(e) => {
                return answer(error(
                    ErrorType::InvalidInput,
                    &format!("body is not valid base64: {e}"),
                ));
            }
        }
    } else {
        raw.into_bytes()
    };
    match parse_body(&bytes, max_body_bytes) {
        Ok(v) => Routed::Body(v),
        Err((kind, message)) => answer(error(kind, &message)),
    }
}

/// The request path without an API Gateway stage prefix (`/prod/v1/embeddings` on a named stage).
fn request_path(req: &ApiGatewayV2httpRequest) -> String {
    let raw = req
        .raw_path
        .clone()
        .or_else(|| req.request_context.http.path.clone())
        .unwrap_or_else(|| "/".to_string());
    let trimmed = match raw.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    match req.request_context.stage.as_deref() {
        Some(stage) if stage != "$default" => {
            let prefix = format!("/{stage}");
            match trimmed.strip_prefix(&prefix) {
                Some(rest) if rest.starts_with('/') => rest.to_string(),
                _ => trimmed.to_string(),
            }
        }
        _ => trimmed.to_string(),
    }
}

/// A JSON reply with `status`.
pub fn reply(status: u16, body: &Value) -> ApiGatewayV2httpResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut r = ApiGatewayV2httpResponse::default();
    r.status_code = i64::from(status);
    r.headers = headers;
    r.body = Some(Body::Text(body.to_string()));
    r
}

/// An error reply in the OpenAI error shape, with the status that belongs to its class.
pub fn error(kind: ErrorType, message: &str) -> ApiGatewayV2httpResponse {
    reply(kind.http_status(), &error_body(kind, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(method: &str, path: &str, body: Option<&str>, b64: bool) -> Value {
        json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": {"content-type": "application/json"},
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "abc",
                "domainName": "abc.lambda-url.us-east-1.on.aws",
                "domainPrefix": "abc",
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "t"},
                "requestId": "r",
                "routeKey": "$default",
                "stage": "$default",
                "time": "28/Nov/2026:01:00:00 +0000",
                "timeEpoch": 1795827600000u64
            },
            "body": body,
            "isBase64Encoded": b64
        })
    }

    /// The payload read as an event and routed, as the handler does.
    fn route(payload: Value, max_body_bytes: usize) -> Routed {
        match EmbeddingsEvent::from_payload(payload) {
            Ok(EmbeddingsEvent::Http(req)) => super::route(*req, max_body_bytes),
            Ok(EmbeddingsEvent::Direct(v)) => panic!("not an HTTP event: {v}"),
            Err(e) => malformed(&e),
        }
    }

    fn is_http_event(payload: &Value) -> bool {
        !matches!(
            EmbeddingsEvent::from_payload(payload.clone()),
            Ok(EmbeddingsEvent::Direct(_))
        )
    }

    fn status(r: &Routed) -> i64 {
        match r {
            Routed::Reply(r) => r.status_code,
            Routed::Body(_) => 200,
        }
    }

    #[test]
    fn routes_post_and_decodes_bodies() {
        let e = event("POST", "/v1/embeddings", Some(r#"{"input":"hi"}"#), false);
        assert!(is_http_event(&e));
        match route(e, 100) {
            Routed::Body(v) => assert_eq!(v, json!({"input": "hi"})),
            other => panic!("{other:?}"),
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(r#"{"input":"hi"}"#);
        assert!(matches!(
            route(event("POST", "/v1/embeddings/", Some(&b64), true), 100),
            Routed::Body(_)
        ));
    }

    #[test]
    fn wrong_route_method_size_and_body() {
        assert_eq!(
            status(&route(
                event("POST", "/v2/embeddings", Some("{}"), false),
                100
            )),
            404
        );
        let r = route(event("GET", "/v1/embeddings", None, false), 100);
        assert_eq!(status(&r), 405);
        if let Routed::Reply(r) = r {
            assert_eq!(r.headers.get("allow").unwrap(), "POST");
        }
        assert_eq!(
            status(&route(
                event("POST", "/v1/embeddings", Some(&"x".repeat(101)), false),
                100
            )),
            413
        );
        assert_eq!(
            status(&route(
                event("POST", "/v1/embeddings", Some("{oops"), false),
                100
            )),
            400
        );
        assert_eq!(
            status(&route(event("POST", "/v1/embeddings", None, false), 100)),
            400
        );
        assert_eq!(
            status(&route(
                event("POST", "/v1/embeddings", Some("%%%"), true),
                100
            )),
            400
        );
    }

    #[test]
    fn strips_named_stage() {
        let mut e = event(
            "POST",
            "/prod/v1/embeddings",
            Some(r#"{"input":"x"}"#),
            false,
        );
        e["requestContext"]["stage"] = json!("prod");
        assert!(matches!(route(e, 100), Routed::Body(_)));
    }

    #[test]
    fn direct_payloads_are_not_http() {
        assert!(!is_http_event(&json!({"input": "x"})));
        assert!(!is_http_event(&json!({"input": "x", "requestContext": {}})));
        assert!(!is_http_event(&json!({"requestContext": {"http": "GET"}})));
        assert!(!is_http_event(&json!([{"http": {}}])));
    }

    #[test]
    fn a_malformed_http_event_is_answered_400() {
        let mut e = event("POST", "/v1/embeddings", Some("{}"), false);
        e["requestContext"]["http"]["method"] = json!(7);
        assert!(is_http_event(&e));
        let r = route(e, 100);
        assert_eq!(status(&r), 400);
        let Routed::Reply(r) = r else { panic!() };
        let Some(Body::Text(body)) = r.body else {
            panic!("text body")
        };
        assert!(body.contains("malformed HTTP event"), "{body}");
    }

    #[test]
    fn error_replies_carry_class_and_status() {
        let r = error(ErrorType::RequestTooLarge, "too big");
        assert_eq!(r.status_code, 413);
        let Some(Body::Text(body)) = r.body else {
            panic!("text body")
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "RequestTooLarge");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(error(ErrorType::Internal, "x").status_code, 500);
    }
}
