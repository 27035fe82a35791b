//! The OpenAI embeddings request and response, with the limits a public endpoint needs.
//!
//! Requests are parsed from `serde_json::Value` by hand rather than with a derived type so that
//! every wrong shape gets its own clear message naming the offending field and index.

use base64::Engine as _;
use coldpath_core::{Classify, ErrorType};
use serde_json::{Value, json};

/// Per-request limits, read once from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most texts in one request.
    pub max_inputs: usize,
    /// Most bytes in one request: the HTTP body, or the input texts of a direct invoke.
    pub max_request_bytes: usize,
}

/// How vectors are written in the response (OpenAI's `encoding_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    /// Little-endian f32 bytes, base64: what the OpenAI Python client asks for by default.
    Base64,
}

/// A valid request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub input: Vec<String>,
    pub encoding_format: EncodingFormat,
}

/// Why a request was refused. Every variant is the caller's to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("missing required field 'input'")]
    MissingInput,
    #[error("'input' must be a string or an array of strings, found {0}")]
    InputType(&'static str),
    #[error("'input[{index}]' must be a string, found {found}")]
    InputItemType { index: usize, found: &'static str },
    #[error("'input' must not be an empty array")]
    EmptyInput,
    #[error("'input[{index}]' is empty; every text needs at least one non-whitespace character")]
    EmptyString { index: usize },
    #[error("too many inputs: {count} given, at most {max} per request")]
    TooManyInputs { count: usize, max: usize },
    #[error("request too large: {bytes} bytes, at most {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("'model' is {given:?}, but this endpoint serves {served:?}")]
    UnknownModel { given: String, served: String },
    #[error("'{field}' must be {expected}, found {found}")]
    FieldType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
}

impl Classify for RequestError {
    fn error_type(&self) -> ErrorType {
        match self {
            RequestError::TooLarge { .. } => ErrorType::RequestTooLarge,
            _ => ErrorType::InvalidInput,
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses and validates a request for the model named `served`, with `dimensions` per vector.
pub fn parse_request(
    body: &Value,
    served: &str,
    dimensions: usize,
    limits: &Limits,
) -> Result<EmbeddingsRequest, RequestError> {
    let obj = body
        .as_object()
        .ok_or(RequestError::NotAnObject(type_name(body)))?;
    let input = match obj.get("input").ok_or(RequestError::MissingInput)? {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(RequestError::InputItemType {
                    index,
                    found: type_name(other),
                }),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(RequestError::InputType(type_name(other))),
    };
    if input.is_empty() {
        return Err(RequestError::EmptyInput);
    }
    if input.len() > limits.max_inputs {
        return Err(RequestError::TooManyInputs {
            count: input.len(),
            max: limits.max_inputs,
        });
    }
    let bytes: usize = input.iter().map(String::len).sum();
    if bytes > limits.max_request_bytes {
        return Err(RequestError::TooLarge {
            bytes,
            max: limits.max_request_bytes,
        });
    }
    if let Some(index) = input.iter().position(|s| s.trim().is_empty()) {
        return Err(RequestError::EmptyString { index });
    }
    match obj.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == served => {}
        Some(Value::String(m)) => {
            return Err(RequestError::UnknownModel {
                given: m.clone(),
                served: served.to_string(),
            });
        }
        Some(other) => return Err(field_type("model", "a string", other)),
    }
    let encoding_format = match obj.get("encoding_format") {
        None | Some(Value::Null) => EncodingFormat::Float,
        Some(Value::String(f)) if f == "float" => EncodingFormat::Float,
        Some(Value::String(f)) if f == "base64" => EncodingFormat::Base64,
        Some(other) => {
            return Err(field_type(
                "encoding_format",
                "\"float\" or \"base64\"",
                other,
            ));
        }
    };
    // This model's vectors have one size; accept the parameter only when it asks for exactly that,
    // rather than silently returning vectors of another length.
    match obj.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(dimensions as u64) => {}
        Some(other) => {
            return Err(RequestError::FieldType {
                field: "dimensions",
                expected: "absent or equal to the model's size",
                found: format!("{other} (this model gives {dimensions})"),
            });
        }
    }
    Ok(EmbeddingsRequest {
        input,
        encoding_format,
    })
}

fn field_type(field: &'static str, expected: &'static str, found: &Value) -> RequestError {
    RequestError::FieldType {
        field,
        expected,
        found: type_name(found).to_string(),
    }
}

/// Builds the OpenAI-shaped response.
pub fn response(
    model: &str,
    format: EncodingFormat,
    vectors: &[Vec<f32>],
    token_counts: &[usize],
) -> Value {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match format {
                EncodingFormat::Float => json!(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: usize = token_counts.iter().sum();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// Checks a decoded request body's size and parses its JSON: the class and message of the
/// refusal otherwise. Every host's front door (the Lambda function's Function URL, the always-on server) refuses
/// alike through it.
pub fn parse_body(bytes: &[u8], max_body_bytes: usize) -> Result<Value, (ErrorType, String)> {
    if bytes.len() > max_body_bytes {
        let msg = format!(
            "request too large: {} bytes, at most {max_body_bytes}",
            bytes.len()
        );
        return Err((ErrorType::RequestTooLarge, msg));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err((
            ErrorType::InvalidInput,
            "request body is empty; send a JSON object with 'input'".to_string(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        (
            ErrorType::InvalidInput,
            format!("request body is not valid JSON: {e}"),
        )
    })
}

/// The OpenAI error body for an error of class `kind`.
pub fn error_body(kind: ErrorType, message: &str) -> Value {
    let error_type = match kind {
        ErrorType::InvalidInput | ErrorType::RequestTooLarge => "invalid_request_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": error_type, "code": kind.as_str()}})
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_inputs: 3,
        max_request_bytes: 20,
    };

    fn parse(v: Value) -> Result<EmbeddingsRequest, RequestError> {
        parse_request(&v, "mini", 4, &LIMITS)
    }

    #[test]
    fn accepts_string_and_array() {
        assert_eq!(parse(json!({"input": "hi"})).unwrap().input, vec!["hi"]);
        let r = parse(json!({"input": ["a", "b"], "model": "mini", "encoding_format": "base64", "dimensions": 4})).unwrap();
        assert_eq!(r.input, vec!["a", "b"]);
        assert_eq!(r.encoding_format, EncodingFormat::Base64);
    }

    #[test]
    fn each_bad_shape_has_its_error() {
        let cases = [
            (json!([1]), RequestError::NotAnObject("an array")),
            (json!({}), RequestError::MissingInput),
            (json!({"input": 5}), RequestError::InputType("a number")),
            (
                json!({"input": ["a", null]}),
                RequestError::InputItemType {
                    index: 1,
                    found: "null",
                },
            ),
            (json!({"input": []}), RequestError::EmptyInput),
            (
                json!({"input": ["a", "  "]}),
                RequestError::EmptyString { index: 1 },
            ),
            (json!({"input": ""}), RequestError::EmptyString { index: 0 }),
            (
                json!({"input": ["a", "b", "c", "d"]}),
                RequestError::TooManyInputs { count: 4, max: 3 },
            ),
            (
                json!({"input": "x".repeat(21)}),
                RequestError::TooLarge { bytes: 21, max: 20 },
            ),
            (
                json!({"input": "a", "model": "gpt"}),
                RequestError::UnknownModel {
                    given: "gpt".into(),
                    served: "mini".into(),
                },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse(body.clone()), Err(want), "{body}");
        }
        assert!(matches!(
            parse(json!({"input": "a", "model": 3})),
            Err(RequestError::FieldType { field: "model", .. })
        ));
        assert!(matches!(
            parse(json!({"input": "a", "encoding_format": "int8"})),
            Err(RequestError::FieldType {
                field: "encoding_format",
                ..
            })
        ));
        assert!(matches!(
            parse(json!({"input": "a", "dimensions": 256})),
            Err(RequestError::FieldType {
                field: "dimensions",
                ..
            })
        ));
    }

    #[test]
    fn error_classes() {
        assert_eq!(
            RequestError::TooLarge { bytes: 1, max: 0 }.error_type(),
            ErrorType::RequestTooLarge
        );
        assert_eq!(
            RequestError::EmptyInput.error_type(),
            ErrorType::InvalidInput
        );
    }

    #[test]
    fn response_has_openai_shape() {
        let r = response("mini", EncodingFormat::Float, &[vec![0.5, -0.5]], &[7]);
        assert_eq!(
            r,
            json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
                "model": "mini",
                "usage": {"prompt_tokens": 7, "total_tokens": 7}
            })
        );
        let b = response("mini", EncodingFormat::Base64, &[vec![1.0]], &[1]);
        // 1.0f32 little-endian is 00 00 80 3f.
        assert_eq!(b["data"][0]["embedding"], "AACAPw==");
    }
}
