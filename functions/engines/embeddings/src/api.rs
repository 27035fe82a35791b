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

/// An OpenAI embeddings response, written straight to JSON: each vector's numbers as the
/// shortest decimals that read back as the same `f32` (about 10 characters, where the `f64` a
/// `serde_json::Value` widens them to takes about 20), which halves the answer and the work of
/// writing it. Keys in the order a `Value` writes them (sorted). [`Response::to_value`] is the
/// same answer as a `Value`, for the hosts that build one: the same short numbers, which read
/// back as the same `f32`s.
#[derive(Debug, serde::Serialize)]
pub struct Response<'a> {
    data: Vec<Datum<'a>>,
    model: &'a str,
    object: &'static str,
    usage: Usage,
}

#[derive(Debug, serde::Serialize)]
struct Datum<'a> {
    embedding: Embedding<'a>,
    index: usize,
    object: &'static str,
}

#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum Embedding<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Debug, serde::Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

impl Response<'_> {
    /// The answer as a `Value`, its numbers the `f64`s nearest the `f32`s' shortest decimals,
    /// so that the `Value` writes the same short numbers as `self` (an `f64` switches to an
    /// exponent at other sizes than an `f32`: 8.735648e-6 against 0.000008735648).
    pub fn to_value(&self) -> Value {
        let data = self
            .data
            .iter()
            .map(|d| {
                let embedding = match &d.embedding {
                    Embedding::Float(v) => Value::Array(v.iter().map(|&x| short(x)).collect()),
                    Embedding::Base64(b) => Value::String(b.clone()),
                };
                json!({"object": d.object, "index": d.index, "embedding": embedding})
            })
            .collect::<Vec<_>>();
        json!({
            "object": self.object,
            "data": data,
            "model": self.model,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "total_tokens": self.usage.total_tokens,
            },
        })
    }
}

/// `x` as the `f64` nearest its shortest `f32` decimal, which is how it then writes.
fn short(x: f32) -> Value {
    if !x.is_finite() {
        // JSON has no NaN or infinity; `Value` writes them as null, as serializing `x` does.
        return Value::Null;
    }
    let decimal = x.to_string();
    decimal
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The OpenAI response for `vectors`, one per input, in input order.
pub fn response<'a>(
    model: &'a str,
    format: EncodingFormat,
    vectors: &'a [Vec<f32>],
    token_counts: &[usize],
) -> Response<'a> {
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| Datum {
            embedding: match format {
                EncodingFormat::Float => Embedding::Float(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            },
            index,
            object: "embedding",
        })
        .collect();
    let tokens: usize = token_counts.iter().sum();
    Response {
        data,
        model,
        object: "list",
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }
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
        let vectors = [vec![0.5, -0.5]];
        let r = response("mini", EncodingFormat::Float, &vectors, &[7]).to_value();
        assert_eq!(
            r,
            json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
                "model": "mini",
                "usage": {"prompt_tokens": 7, "total_tokens": 7}
            })
        );
        let vectors = [vec![1.0]];
        let b = response("mini", EncodingFormat::Base64, &vectors, &[1]).to_value();
        // 1.0f32 little-endian is 00 00 80 3f.
        assert_eq!(b["data"][0]["embedding"], "AACAPw==");
    }

    /// Floats across the whole range, by bit pattern (a fixed xorshift, so the test is the same
    /// every run), with the edges spelled out.
    fn floats() -> Vec<f32> {
        let mut state = 0x9e37_79b9_u32;
        let mut out = vec![
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            1e-45,
            f32::MAX,
            f32::MIN,
            0.1,
            1e-7,
            1e7,
            123_456_790.0,
            -0.100_205_906,
            f32::NAN,
            f32::INFINITY,
        ];
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            out.push(f32::from_bits(state));
        }
        out
    }

    #[test]
    fn floats_are_written_as_the_shortest_f32_decimal_that_reads_back() {
        let vectors = [floats()];
        let r = response("mini", EncodingFormat::Float, &vectors, &[1]);
        let text = serde_json::to_string(&r).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        let numbers = back["data"][0]["embedding"].as_array().unwrap();
        for (x, written) in vectors[0].iter().zip(numbers) {
            match written.as_f64() {
                // f64 -> f32 rounds to the nearest f32: the decimal reads back as exactly `x`.
                Some(y) => assert_eq!((y as f32).to_bits(), x.to_bits(), "{x:e} as {written}"),
                None => assert!(!x.is_finite(), "{x} as {written}"),
            }
        }
        // Short: 0.1f32 is "0.1", not the "0.10000000149011612" of its f64 widening.
        assert!(text.contains("[0.0,-0.0,"), "{}", &text[..80]);
        assert!(text.contains(",0.1,"), "{}", &text[..200]);
    }

    /// Every number of a written answer as the `f32` it reads back as (bits), and the rest.
    fn read_back(text: &str) -> (Vec<Option<u32>>, Value) {
        let mut tree: Value = serde_json::from_str(text).unwrap();
        let mut bits = Vec::new();
        for d in tree["data"].as_array_mut().unwrap() {
            if let Some(v) = d["embedding"].as_array() {
                bits.extend(v.iter().map(|x| x.as_f64().map(|y| (y as f32).to_bits())));
                d["embedding"] = Value::Null;
            }
        }
        (bits, tree)
    }

    #[test]
    fn to_value_writes_the_same_answer_as_the_response() {
        for format in [EncodingFormat::Float, EncodingFormat::Base64] {
            let vectors = [floats(), vec![0.25, -3.5]];
            let r = response("mini", format, &vectors, &[3, 4]);
            let direct = serde_json::to_string(&r).unwrap();
            let through_value = serde_json::to_string(&r.to_value()).unwrap();
            // The same numbers, as short; only where a number switches to an exponent may
            // differ (0.000008735648 as an f32, 8.735648e-6 as an f64).
            assert_eq!(read_back(&direct), read_back(&through_value));
            let ratio = through_value.len() as f64 / direct.len() as f64;
            assert!((0.97..1.03).contains(&ratio), "{ratio}");
        }
    }
}
