//! The requests the engine answers: OpenAI's embeddings contract, with infinity's `modality`
//! extension for photos, and the vector document a photo upload writes.
//!
//! Texts are an ordinary OpenAI embeddings request (`input`, `model`, `encoding_format`,
//! `dimensions`), parsed and refused by the same code as the text embeddings
//! ([`coldpath_embeddings::api`]), so any OpenAI client searches photos by words unchanged. Photos
//! use the same body with `"modality": "image"` (infinity's convention: the request and the
//! response keep OpenAI's shape, so the OpenAI clients send it through their extra-body option,
//! and one `input` list holds one kind of item), each input a photo:
//!
//! ```json
//! {"model": "ViT-B-32__openai", "modality": "image",
//!  "input": ["data:image/jpeg;base64,/9j/4AAQ...", "s3://photos/2024/beach.jpg"]}
//! ```
//!
//! An input is a `data:` URL with base64 (Jina, Cohere and Azure's image inputs take this form
//! too), bare base64, an `s3://bucket/key` of the deployment's store, or, in local invoke mode
//! only, a file path. Bare base64 and a path are told apart by the alphabet: base64 has no `.`,
//! no space and no `\`, which every photo path has. `http(s)://` URLs are refused: a function
//! that fetched whatever URL a caller named would reach into the network it runs in.
//! Why not Jina's or Cohere's shapes: Jina's per-item objects (`{"image": ...}`) and Cohere's
//! `images` / `inputs` fields change the request OpenAI clients build, and Cohere's
//! `embedding_types` change the response; `modality` changes neither.

use coldpath_core::{Classify, ErrorType};
use coldpath_embeddings::api::{self as openai, EncodingFormat, Limits};
use coldpath_image::ImageRef;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use coldpath_embeddings::api::RequestError as TextRequestError;

/// What one request's inputs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    Text,
    Image,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
        }
    }
}

/// A valid request.
#[derive(Debug, Clone, PartialEq)]
pub enum ClipRequest {
    Texts {
        input: Vec<String>,
        encoding_format: EncodingFormat,
    },
    Images {
        input: Vec<ImageRef>,
        encoding_format: EncodingFormat,
    },
}

impl ClipRequest {
    pub fn modality(&self) -> Modality {
        match self {
            ClipRequest::Texts { .. } => Modality::Text,
            ClipRequest::Images { .. } => Modality::Image,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ClipRequest::Texts { input, .. } => input.len(),
            ClipRequest::Images { input, .. } => input.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a request was refused. Every variant is the caller's to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error(transparent)]
    Request(#[from] TextRequestError),
    #[error("'modality' must be \"text\" or \"image\", found {0}")]
    Modality(String),
    #[error("'input[{index}]': {reason}")]
    Image { index: usize, reason: String },
}

impl Classify for RequestError {
    fn error_type(&self) -> ErrorType {
        match self {
            RequestError::Request(e) => e.error_type(),
            _ => ErrorType::InvalidInput,
        }
    }
}

/// The limits requests are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Texts in one request, and the bytes of their text.
    pub text: Limits,
    /// Photos in one request (each also under the photo limits when it is loaded).
    pub max_images: usize,
}

/// The `modality` of a request body (text when absent), before anything else is read: a host
/// that serves one tower refuses the other kind at once.
pub fn modality(body: &Value) -> Result<Modality, RequestError> {
    match body.get("modality") {
        None | Some(Value::Null) => Ok(Modality::Text),
        Some(Value::String(m)) if m == "text" => Ok(Modality::Text),
        Some(Value::String(m)) if m == "image" => Ok(Modality::Image),
        Some(Value::String(m)) => Err(RequestError::Modality(format!("{m:?}"))),
        Some(other) => Err(RequestError::Modality(other.to_string())),
    }
}

/// The `model` a request names, if it names one as a string: how a host that serves several
/// models routes a request before parsing it.
pub fn requested_model(body: &Value) -> Option<&str> {
    body.get("model").and_then(Value::as_str)
}

/// Parses and validates a request for the model `served`, whose vectors have `dimensions`.
/// `allow_paths` accepts file paths as photos (local invoke mode only).
pub fn parse_request(
    body: &Value,
    served: &str,
    dimensions: usize,
    limits: &RequestLimits,
    allow_paths: bool,
) -> Result<ClipRequest, RequestError> {
    match modality(body)? {
        Modality::Text => {
            let request = openai::parse_request(body, served, dimensions, &limits.text)?;
            Ok(ClipRequest::Texts {
                input: request.input,
                encoding_format: request.encoding_format,
            })
        }
        Modality::Image => {
            // The same fields and refusals as texts; the byte bound is the photo limits', applied
            // per photo when it is loaded, not the texts'.
            let as_inputs = Limits {
                max_inputs: limits.max_images,
                max_request_bytes: usize::MAX,
            };
            let request = openai::parse_request(body, served, dimensions, &as_inputs)?;
            let input = request
                .input
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    image_input(item, allow_paths)
                        .map_err(|reason| RequestError::Image { index, reason })
                })
                .collect::<Result<_, _>>()?;
            Ok(ClipRequest::Images {
                input,
                encoding_format: request.encoding_format,
            })
        }
    }
}

/// One photo input ([module docs](self)).
pub fn image_input(item: String, allow_paths: bool) -> Result<ImageRef, String> {
    let describe = |e: coldpath_image::ImageError| e.to_string();
    if item.starts_with("data:") {
        let image = ImageRef::base64_owned(item).map_err(describe)?;
        // Refused here, naming the input, rather than later as an undecodable photo.
        if let ImageRef::Base64(data) = &image
            && !is_base64(data)
        {
            return Err("the data: URL's payload is not base64".to_string());
        }
        return Ok(image);
    }
    if item.starts_with("s3://") {
        return ImageRef::s3(&item).map_err(describe);
    }
    let lower = item.get(..8).unwrap_or(&item).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(
            "URLs are not fetched; send the photo as a data: URL with base64, or as s3://bucket/key"
                .to_string(),
        );
    }
    if is_base64(&item) {
        return Ok(ImageRef::Base64(item));
    }
    if allow_paths {
        return Ok(ImageRef::Path(item.into()));
    }
    Err(
        "expected a data: URL with base64, bare base64 or s3://bucket/key (file paths are read in local invoke mode only)"
            .to_string(),
    )
}

/// Whether `data` uses only base64's alphabet (line breaks allowed, as MIME wraps it).
fn is_base64(data: &str) -> bool {
    data.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'))
}

/// The OpenAI response: one vector per input, in order; `usage` counts the texts' tokens (a
/// photo counts none).
pub fn response<'a>(
    model: &'a str,
    format: EncodingFormat,
    vectors: &'a [Vec<f32>],
    token_counts: &[usize],
) -> openai::Response<'a> {
    openai::response(model, format, vectors, token_counts)
}

/// A stable point id for a photo: a UUID made from the SHA-256 of its `s3://` URI (RFC 9562
/// version 8, the name-based layout with a modern hash), so a retried or repeated upload
/// overwrites the same point in Qdrant and the same row in pgvector. Qdrant takes a UUID or an
/// unsigned integer as a point id, not a path.
pub fn photo_id(uri: &str) -> String {
    let digest = Sha256::digest(uri.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // the RFC variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The document a photo upload writes: a Qdrant point as its `PUT /collections/<c>/points` API
/// takes it (`id`, `vector`, `payload`), whose `vector` is also pgvector's text form (`[x,y,…]`),
/// so `(doc->>'vector')::vector` loads it (docs/photo-search.md).
pub fn photo_document(
    bucket: &str,
    key: &str,
    model: &str,
    vector: &[f32],
    (width, height): (u32, u32),
) -> Value {
    let uri = format!("s3://{bucket}/{key}");
    json!({
        "id": photo_id(&uri),
        "vector": vector,
        "payload": {
            "photo": uri,
            "bucket": bucket,
            "key": key,
            "model": model,
            "dimensions": vector.len(),
            "width": width,
            "height": height,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        text: Limits {
            max_inputs: 3,
            max_request_bytes: 40,
        },
        max_images: 2,
    };

    fn parse(body: Value, paths: bool) -> Result<ClipRequest, RequestError> {
        parse_request(&body, "clip", 4, &LIMITS, paths)
    }

    #[test]
    fn texts_are_an_openai_request() {
        let r = parse(
            json!({"input": ["a dog", "a cat"], "model": "clip", "dimensions": 4}),
            false,
        )
        .unwrap();
        assert_eq!(
            r,
            ClipRequest::Texts {
                input: vec!["a dog".into(), "a cat".into()],
                encoding_format: EncodingFormat::Float
            }
        );
        let r = parse(
            json!({"input": "x", "modality": "text", "encoding_format": "base64"}),
            false,
        )
        .unwrap();
        assert_eq!(r.modality(), Modality::Text);
        // The text refusals are the embeddings API's own.
        let err = parse(json!({"input": ["a", "b", "c", "d"]}), false).unwrap_err();
        assert_eq!(
            err,
            RequestError::Request(TextRequestError::TooManyInputs { count: 4, max: 3 })
        );
        let err = parse(json!({"input": "a", "model": "ViT-L-14"}), false).unwrap_err();
        assert!(err.to_string().contains("serves \"clip\""), "{err}");
        let err = parse(json!({"input": "a", "dimensions": 8}), false).unwrap_err();
        assert!(err.to_string().starts_with("'dimensions'"), "{err}");
    }

    #[test]
    fn photos_by_modality() {
        let long_base64 = "A".repeat(100);
        let r = parse(
            json!({"modality": "image", "input": ["data:image/png;base64,iVBORw0KGgo=", "s3://photos/a b.jpg"]}),
            false,
        )
        .unwrap();
        assert_eq!(
            r,
            ClipRequest::Images {
                input: vec![
                    ImageRef::Base64("iVBORw0KGgo=".into()),
                    ImageRef::S3 {
                        bucket: "photos".into(),
                        key: "a b.jpg".into()
                    }
                ],
                encoding_format: EncodingFormat::Float
            }
        );
        // The texts' byte limit does not apply to photos; their own count limit does.
        let r = parse(json!({"modality": "image", "input": long_base64}), false).unwrap();
        assert_eq!(r.len(), 1);
        let err = parse(
            json!({"modality": "image", "input": ["AA", "AA", "AA"]}),
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            RequestError::Request(TextRequestError::TooManyInputs { count: 3, max: 2 })
        );
        // Paths only in local mode; URLs never.
        let path = json!({"modality": "image", "input": "events/data/photos/cat.jpg"});
        let err = parse(path.clone(), false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("'input[0]': expected a data: URL"),
            "{err}"
        );
        assert_eq!(
            parse(path, true).unwrap(),
            ClipRequest::Images {
                input: vec![ImageRef::Path("events/data/photos/cat.jpg".into())],
                encoding_format: EncodingFormat::Float
            }
        );
        for url in ["https://example.com/cat.jpg", "HTTP://10.0.0.1/x.png"] {
            let err = parse(json!({"modality": "image", "input": url}), true).unwrap_err();
            assert!(err.to_string().contains("URLs are not fetched"), "{err}");
            assert_eq!(err.error_type(), ErrorType::InvalidInput);
        }
        // Found by the fuzzer: a data: URL whose payload is not base64 is refused at parse time.
        let bad =
            json!({"modality": "image", "input": ["data:image/png;base64,iVhttps://x/a.jpg"]});
        let err = parse(bad, true).unwrap_err();
        assert!(err.to_string().contains("payload is not base64"), "{err}");
        let err = parse(json!({"modality": "image", "input": "s3://photos"}), false).unwrap_err();
        assert!(
            err.to_string().contains("non-empty bucket and key"),
            "{err}"
        );
        let err = parse(json!({"modality": "audio", "input": "x"}), false).unwrap_err();
        assert_eq!(err, RequestError::Modality("\"audio\"".into()));
        let err = parse(json!({"modality": 1, "input": "x"}), false).unwrap_err();
        assert_eq!(err, RequestError::Modality("1".into()));
    }

    #[test]
    fn photo_ids_are_stable_uuids() {
        let a = photo_id("s3://photos/2024/beach.jpg");
        assert_eq!(a, photo_id("s3://photos/2024/beach.jpg"));
        assert_ne!(a, photo_id("s3://photos/2024/beach2.jpg"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('8'), "version 8: {a}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "variant: {a}"
        );
        assert!(a.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
    }

    #[test]
    fn the_photo_document_is_a_qdrant_point_and_a_pgvector_literal() {
        let doc = photo_document("photos", "a.jpg", "clip", &[0.5, -0.25], (640, 480));
        assert_eq!(doc["id"], photo_id("s3://photos/a.jpg"));
        assert_eq!(doc["vector"], json!([0.5, -0.25]));
        assert_eq!(doc["payload"]["photo"], "s3://photos/a.jpg");
        assert_eq!(doc["payload"]["dimensions"], 2);
        // pgvector's text input is '[x,y,...]': the JSON array's own text.
        assert_eq!(doc["vector"].to_string(), "[0.5,-0.25]");
        let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "payload", "vector"]);
    }
}
