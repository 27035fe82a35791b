//! One queue message: `{"id": "...", "image": <ImageRef>, "max_new_tokens"?: n}`.
//!
//! Each SQS record's body is parsed here on its own, so one malformed body fails only its own
//! message (a typed `SqsEventObj<T>` would fail the whole batch on the first bad body).

use coldpath_core::{Classify, ErrorType};
use coldpath_image::ImageRef;
use serde::Deserialize;

/// The longest `id`; it names the result object, and S3 keys stop at 1024 bytes with the prefix.
pub const MAX_ID_LEN: usize = 200;

/// A validated caption request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionRequest {
    /// The caller's id for this image; the result is stored under it, so a redelivered message
    /// overwrites its own result instead of adding a second one.
    pub id: String,
    pub image: ImageRef,
    /// Overrides the model's default generation length, up to the configured cap.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
}

/// Why a message body is not a caption request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("message has no body: expected a JSON object with id and image")]
    NoBody,
    #[error(
        "message body: expected a JSON object {{\"id\": string, \"image\": {{\"s3\"|\"base64\"|\"path\": string}}, \"max_new_tokens\"?: integer}}: {0}"
    )]
    Json(String),
    #[error(
        "id: expected 1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 . _ - not starting with '.', found {0:?}"
    )]
    BadId(String),
    #[error("max_new_tokens: expected 1 to {cap}, found {found}")]
    MaxNewTokens { found: usize, cap: usize },
}

impl Classify for MessageError {
    fn error_type(&self) -> ErrorType {
        match self {
            MessageError::MaxNewTokens { .. } => ErrorType::RequestTooLarge,
            _ => ErrorType::InvalidInput,
        }
    }
}

/// Whether `id` can name a result object as it is: no path separators, no `..`, nothing a file
/// system or an S3 console would treat specially.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses and validates one message body.
pub fn parse(
    body: Option<&str>,
    max_new_tokens_cap: usize,
) -> Result<CaptionRequest, MessageError> {
    let body = body.ok_or(MessageError::NoBody)?;
    let request: CaptionRequest =
        serde_json::from_str(body).map_err(|e| MessageError::Json(e.to_string()))?;
    if !is_safe_id(&request.id) {
        return Err(MessageError::BadId(request.id));
    }
    if let Some(n) = request.max_new_tokens
        && (n == 0 || n > max_new_tokens_cap)
    {
        return Err(MessageError::MaxNewTokens {
            found: n,
            cap: max_new_tokens_cap,
        });
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_good_body() {
        let r = parse(
            Some(r#"{"id": "photo-1.jpg", "image": {"s3": "s3://photos/kafka.jpg"}, "max_new_tokens": 12}"#),
            32,
        )
        .unwrap();
        assert_eq!(r.id, "photo-1.jpg");
        assert_eq!(r.max_new_tokens, Some(12));
        let r = parse(Some(r#"{"id": "a", "image": {"s3": "s3://b/k"}}"#), 32).unwrap();
        assert_eq!(r.max_new_tokens, None);
    }

    #[test]
    fn rejects_bad_bodies_with_typed_errors() {
        let cases: [(Option<&str>, &str); 9] = [
            (None, "no body"),
            (Some("not json"), "message body"),
            (Some(r#"["id"]"#), "message body"),
            (
                Some(r#"{"image": {"s3": "s3://b/k"}}"#),
                "missing field `id`",
            ),
            (Some(r#"{"id": "a"}"#), "missing field `image`"),
            (
                Some(r#"{"id": "a", "image": {"s3": "s3://b/k"}, "max_tokens": 3}"#),
                "unknown field",
            ),
            (
                Some(r#"{"id": "", "image": {"s3": "s3://b/k"}}"#),
                "id: expected",
            ),
            (
                Some(r#"{"id": "../etc/passwd", "image": {"s3": "s3://b/k"}}"#),
                "id: expected",
            ),
            (
                Some(r#"{"id": "a", "image": {"s3": "s3://b/k"}, "max_new_tokens": 33}"#),
                "max_new_tokens: expected 1 to 32, found 33",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body, 32).unwrap_err();
            assert!(err.to_string().contains(want), "{body:?}: {err}");
        }
        let zero = parse(
            Some(r#"{"id": "a", "image": {"s3": "s3://b/k"}, "max_new_tokens": 0}"#),
            32,
        );
        assert_eq!(
            zero.unwrap_err(),
            MessageError::MaxNewTokens { found: 0, cap: 32 }
        );
    }

    #[test]
    fn safe_ids() {
        for ok in ["a", "IMG_0001.jpg", "3f2c-11ee.b", &"x".repeat(MAX_ID_LEN)] {
            assert!(is_safe_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a b",
            "é",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(!is_safe_id(bad), "{bad}");
        }
    }
}
