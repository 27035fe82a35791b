//! The faces API on the wire: the direct-invoke request, the per-photo response, and the keys
//! of S3 event records.

use coldpath_core::{Classify, ErrorType};
use coldpath_image::ImageRef;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::DetectOptions;
use crate::detect::Detection;

/// One face in the photo's upright pixel coordinates, with its unit-length embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    pub detection: Detection,
    pub embedding: Vec<f32>,
}

/// A valid direct-invoke request.
#[derive(Debug, Clone, PartialEq)]
pub struct FacesRequest {
    pub image: ImageRef,
    /// The detection settings for this request: the configured ones, narrowed by the request.
    pub options: DetectOptions,
}

/// Why a request was refused. Every variant is the caller's to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("'min_score' must be a number from 0 to 1, found {0}")]
    MinScore(String),
    #[error("'max_faces' must be from 1 to {max}, found {found}")]
    MaxFaces { found: String, max: usize },
    #[error("S3 event record {index}: {reason}")]
    Record { index: usize, reason: String },
}

impl Classify for RequestError {
    fn error_type(&self) -> ErrorType {
        ErrorType::InvalidInput
    }
}

/// The wire form; unknown fields are refused so a misspelt option is not silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    image: ImageRef,
    #[serde(default)]
    min_score: Option<f64>,
    #[serde(default)]
    max_faces: Option<i64>,
}

/// Parses and validates a direct-invoke payload against the configured `defaults`.
///
/// `min_score` may be anything in `[0, 1]` (a caller may want weaker faces than the default);
/// `max_faces` may lower the configured cap but not raise it.
pub fn parse_request(
    payload: &Value,
    defaults: &DetectOptions,
) -> Result<FacesRequest, RequestError> {
    if !payload.is_object() {
        return Err(RequestError::Invalid(format!(
            "expected a JSON object with an 'image' field, found {}",
            type_name(payload)
        )));
    }
    let raw: RawRequest = serde_json::from_value(payload.clone())
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    validate(raw, defaults)
}

/// [`parse_request`] straight from a request body, for a server that holds large photos: the
/// body is parsed once into the request (no JSON tree, no copy of the base64 text), and the
/// caller can free the body as soon as this returns. Errors read as [`parse_request`]'s.
pub fn parse_request_bytes(
    body: &[u8],
    defaults: &DetectOptions,
) -> Result<FacesRequest, RequestError> {
    match serde_json::from_slice::<RawRequest>(body) {
        Ok(raw) => validate(raw, defaults),
        // The failure path may parse twice: it says what was wrong in the same words as the
        // tree-based parser (a bare number, an array, a misspelt field).
        Err(e) => match serde_json::from_slice::<Value>(body) {
            Ok(payload) => parse_request(&payload, defaults),
            Err(_) => Err(RequestError::Invalid(format!(
                "request body is not valid JSON: {e}"
            ))),
        },
    }
}

fn validate(raw: RawRequest, defaults: &DetectOptions) -> Result<FacesRequest, RequestError> {
    let mut options = *defaults;
    if let Some(s) = raw.min_score {
        if !(0.0..=1.0).contains(&s) {
            return Err(RequestError::MinScore(s.to_string()));
        }
        options.min_score = s as f32;
    }
    if let Some(n) = raw.max_faces {
        let max = defaults.max_faces;
        match usize::try_from(n) {
            Ok(n) if (1..=max).contains(&n) => options.max_faces = n,
            _ => {
                return Err(RequestError::MaxFaces {
                    found: n.to_string(),
                    max,
                });
            }
        }
    }
    Ok(FacesRequest {
        image: raw.image,
        options,
    })
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

/// An `f32` as the JSON number with the fewest digits that reads back as the same `f32`
/// (`0.6`, not the `0.6000000238418579` a widening cast prints), so responses stay short and
/// lossless.
fn short(x: f32) -> Value {
    format!("{x}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The per-photo response: faces in the upright photo's pixel coordinates.
pub fn response(width: u32, height: u32, faces: &[Face], models: (&str, &str)) -> Value {
    let faces: Vec<Value> = faces
        .iter()
        .map(|f| {
            let d = &f.detection;
            let landmarks: Vec<Value> = d
                .landmarks
                .iter()
                .map(|p| json!([short(p[0]), short(p[1])]))
                .collect();
            let embedding: Vec<Value> = f.embedding.iter().map(|&v| short(v)).collect();
            json!({
                "box": {
                    "x": short(d.x),
                    "y": short(d.y),
                    "width": short(d.width),
                    "height": short(d.height),
                },
                "score": short(d.score),
                "landmarks": landmarks,
                "embedding": embedding,
            })
        })
        .collect();
    json!({
        "width": width,
        "height": height,
        "faces": faces,
        "models": {"detector": models.0, "recognizer": models.1},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: DetectOptions = DetectOptions {
        min_score: 0.9,
        nms_iou: 0.3,
        max_faces: 10,
        min_face_size: 0.0,
    };

    fn parse(v: Value) -> Result<FacesRequest, RequestError> {
        parse_request(&v, &DEFAULTS)
    }

    #[test]
    fn accepts_each_image_reference_and_options() {
        let r = parse(json!({"image": {"s3": "s3://photos/a b.jpg"}})).unwrap();
        assert_eq!(
            r.image,
            ImageRef::S3 {
                bucket: "photos".into(),
                key: "a b.jpg".into()
            }
        );
        assert_eq!(r.options, DEFAULTS);
        let r =
            parse(json!({"image": {"path": "x.jpg"}, "min_score": 0.5, "max_faces": 3})).unwrap();
        assert_eq!(r.image, ImageRef::Path("x.jpg".into()));
        assert_eq!(r.options.min_score, 0.5);
        assert_eq!(r.options.max_faces, 3);
        assert!(matches!(
            parse(json!({"image": {"base64": "AAAA"}})).unwrap().image,
            ImageRef::Base64(_)
        ));
    }

    #[test]
    fn each_bad_request_is_invalid_input() {
        let cases = [
            json!([]),
            json!({}),
            json!({"image": "s3://photos/a.jpg"}),
            json!({"image": {}}),
            json!({"image": {"s3": "s3://photos/a.jpg", "path": "a.jpg"}}),
            json!({"image": {"s3": "photos/a.jpg"}}),
            json!({"image": {"url": "https://x"}}),
            json!({"image": {"path": "a.jpg"}, "threshold": 0.5}),
            json!({"image": {"path": "a.jpg"}, "min_score": "high"}),
        ];
        for c in cases {
            let err = parse(c.clone()).unwrap_err();
            assert!(matches!(err, RequestError::Invalid(_)), "{c}: {err}");
            assert_eq!(err.error_type(), ErrorType::InvalidInput);
        }
        assert_eq!(
            parse(json!({"image": {"path": "a"}, "min_score": 1.5})),
            Err(RequestError::MinScore("1.5".into()))
        );
        assert!(matches!(
            parse(json!({"image": {"path": "a"}, "min_score": -0.1})),
            Err(RequestError::MinScore(_))
        ));
        for n in [0, -2, 11] {
            assert_eq!(
                parse(json!({"image": {"path": "a"}, "max_faces": n})),
                Err(RequestError::MaxFaces {
                    found: n.to_string(),
                    max: 10
                })
            );
        }
        let unknown = parse(json!({"image": {"path": "a"}, "maxfaces": 3})).unwrap_err();
        assert!(unknown.to_string().contains("maxfaces"), "{unknown}");
    }

    #[test]
    fn bytes_parse_as_the_tree_does() {
        let cases = [
            json!({"image": {"s3": "s3://photos/a b.jpg"}, "min_score": 0.5, "max_faces": 3}),
            json!({"image": {"base64": "data:image/png;base64,AAAA"}}),
            json!({"image": {"base64": "data:text/plain;base64,AAAA"}}),
            json!({"image": {"path": "x.jpg"}}),
            json!([]),
            json!(7),
            json!({}),
            json!({"image": {"url": "https://x"}}),
            json!({"image": {"path": "a"}, "maxfaces": 3}),
            json!({"image": {"path": "a"}, "min_score": 1.5}),
            json!({"image": {"path": "a"}, "max_faces": 11}),
        ];
        for c in cases {
            let bytes = parse_request_bytes(c.to_string().as_bytes(), &DEFAULTS);
            assert_eq!(bytes, parse(c.clone()), "{c}");
        }
        let r = parse_request_bytes(
            br#"{"image": {"base64": "data:image/png;base64,AAAA"}}"#,
            &DEFAULTS,
        )
        .unwrap();
        assert_eq!(r.image, ImageRef::Base64("AAAA".into()));
        let err = parse_request_bytes(b"{\"image\": ", &DEFAULTS).unwrap_err();
        assert!(matches!(err, RequestError::Invalid(_)), "{err}");
    }

    #[test]
    fn response_shape() {
        let face = Face {
            detection: Detection {
                x: 1.0,
                y: 2.0,
                width: 3.0,
                height: 4.0,
                score: 0.5,
                landmarks: [[1.0, 2.0]; 5],
            },
            embedding: vec![0.6, 0.8],
        };
        let r = response(10, 20, &[face], ("det", "rec"));
        assert_eq!(
            r,
            json!({
                "width": 10, "height": 20,
                "faces": [{
                    "box": {"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0},
                    "score": 0.5,
                    "landmarks": [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]],
                    "embedding": [0.6, 0.8]
                }],
                "models": {"detector": "det", "recognizer": "rec"}
            })
        );
    }
}
