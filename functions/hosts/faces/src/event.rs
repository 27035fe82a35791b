//! What the faces function is invoked with, as types: an S3 event notification or a direct
//! invoke. Self-contained (no `crate::` paths), so the fuzz target compiles this very file
//! without the engine's models (`fuzz/fuzz_targets/faces_request.rs`).

use aws_lambda_events::s3::S3Event;
use coldpath_faces::request::RequestError;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// One invocation's payload.
#[derive(Debug)]
pub enum FacesEvent {
    /// S3 `ObjectCreated` notifications, one record per photo.
    S3(S3Event),
    /// A direct invoke: the faces request itself, validated by the engine.
    Direct(Value),
}

/// The member that tells the shapes apart: an S3 notification always has a `Records` array,
/// which no direct request can carry (the engine refuses unknown fields). Read as a type before
/// the payload is parsed as either shape, so a notification that does not parse is refused as a
/// notification rather than as a faces request (a `#[serde(untagged)]` enum would say only
/// "did not match any variant").
#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "Records")]
    records: Option<Vec<IgnoredAny>>,
}

impl FacesEvent {
    /// Reads a payload: an S3 notification when it has a `Records` array, a direct invoke
    /// otherwise. A notification that is not a well-formed `S3Event` is an `InvalidInput` error.
    pub fn from_payload(payload: Value) -> Result<FacesEvent, RequestError> {
        // Only an object: serde would also read a struct from an array, member by position.
        let notification =
            payload.is_object() && Shape::deserialize(&payload).is_ok_and(|s| s.records.is_some());
        if !notification {
            return Ok(FacesEvent::Direct(payload));
        }
        serde_json::from_value(payload)
            .map(FacesEvent::S3)
            .map_err(|e| RequestError::Invalid(format!("not an S3 event notification: {e}")))
    }
}

/// Decodes an object key from an S3 event notification (`+` is a space, then `%XX` escapes), with
/// the reason as text. The rule is shared with captioning: [`coldpath_aws::decode_event_key`].
pub fn decode_s3_key(raw: &str) -> Result<String, String> {
    coldpath_aws::decode_event_key(raw).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kind(payload: Value) -> Result<&'static str, String> {
        match FacesEvent::from_payload(payload) {
            Ok(FacesEvent::S3(_)) => Ok("s3"),
            Ok(FacesEvent::Direct(_)) => Ok("direct"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn a_records_array_is_a_notification_and_anything_else_a_direct_invoke() {
        assert_eq!(kind(json!({"Records": []})), Ok("s3"));
        let sample: Value =
            serde_json::from_str(include_str!("../../../../events/faces/s3-put.json")).unwrap();
        assert_eq!(kind(sample), Ok("s3"));
        assert_eq!(kind(json!({"image": {}})), Ok("direct"));
        // Not an array: not a notification; the engine refuses it as a request.
        assert_eq!(kind(json!({"Records": "x"})), Ok("direct"));
        assert_eq!(kind(json!([1])), Ok("direct"));
        assert_eq!(kind(json!([[1]])), Ok("direct"));
        let err = kind(json!({"Records": [{"eventSource": "aws:s3"}]})).unwrap_err();
        assert!(
            err.starts_with("invalid request: not an S3 event notification"),
            "{err}"
        );
    }

    #[test]
    fn s3_keys_are_form_decoded() {
        assert_eq!(
            decode_s3_key("family+photo.jpg").unwrap(),
            "family photo.jpg"
        );
        assert_eq!(
            decode_s3_key("a%2Bb/%C3%A9t%C3%A9+2024.jpg").unwrap(),
            "a+b/été 2024.jpg"
        );
        assert_eq!(decode_s3_key("plain/key.jpg").unwrap(), "plain/key.jpg");
        assert!(decode_s3_key("bad%FF.jpg").is_err());
    }
}
