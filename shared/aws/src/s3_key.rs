//! Object keys as S3 events carry them, and the result id a photo's key maps to.
//!
//! Faces (S3 notifications) and captioning (S3 notifications or EventBridge events through SQS)
//! both receive photos by their S3 key and both name a photo's result by it. One rule for both
//! puts the two results of one photo at parallel places in the sink,
//! `faces/<bucket>/<key>.json` and `captioning/<bucket>/<key>.json`, so a consumer that knows the
//! photo finds both without a lookup table.

use serde::{Deserialize, Serialize};

use crate::sink::{SinkError, validate_id};

/// EventBridge's `source` and `detail-type` for an S3 upload.
pub const EVENTBRIDGE_SOURCE: &str = "aws.s3";
pub const EVENTBRIDGE_DETAIL_TYPE: &str = "Object Created";

/// The `detail` of S3's `Object Created` event as EventBridge delivers it; aws_lambda_events
/// has the envelope (`EventBridgeEvent`) but no S3 detail type. Only what the functions read:
/// EventBridge may add fields at any time, and the object's size, etag and sequencer, the
/// requester and the reason are ignored. The key is URL-encoded as in a notification
/// ([`decode_event_key`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct S3ObjectCreated {
    #[serde(default)]
    pub bucket: Option<Named>,
    #[serde(default)]
    pub object: Option<Keyed>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Named {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Keyed {
    #[serde(default)]
    pub key: Option<String>,
}

/// Why a key in an event cannot be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("object key {raw:?} is not URL-encoded UTF-8: {reason}")]
pub struct KeyError {
    pub raw: String,
    pub reason: String,
}

/// Decodes an object key from an S3 event notification or an S3 event delivered by EventBridge.
///
/// S3 writes keys in both URL-encoded the way HTML forms are: a space becomes `+` and other
/// reserved bytes `%XX` (AWS's own parsers decode the EventBridge `detail.object.key` with
/// `unquote_plus` too, as they do the notification's `s3.object.key`). So `+` is turned back into
/// a space first, then percent-escapes are decoded (a literal `+` in a key arrives as `%2B` and
/// survives). The bytes must be UTF-8, as every S3 key is.
pub fn decode_event_key(raw: &str) -> Result<String, KeyError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|e| KeyError {
            raw: raw.to_string(),
            reason: e.to_string(),
        })
}

/// The result id of the photo at `s3://<bucket>/<key>` (the decoded key): `<bucket>/<key>`.
///
/// Deterministic, so a redelivered event overwrites its own result. Checked with the sink's
/// [`validate_id`], so it can name a file and an S3 object without escaping: a key with an
/// empty, `.` or `..` segment, a control character or a segment over 250 bytes is refused here,
/// before any work is spent on the photo. Such keys are legal in S3 but cannot name a result
/// safely, and no escaping is applied that a consumer would have to reverse. The id always holds
/// a `/`, so it can never equal a caller-chosen captioning id (those have none).
///
/// The bucket must be a valid S3 bucket name (3 to 63 of `a-z 0-9 . -`, starting and ending with
/// a letter or digit): the id and `s3://<bucket>/<key>` split at the first `/`, so a "bucket"
/// holding one would name another bucket's photo.
pub fn photo_result_id(bucket: &str, key: &str) -> Result<String, SinkError> {
    if !is_bucket_name(bucket) {
        return Err(SinkError::InvalidId {
            id: format!("{bucket}/{key}"),
            reason: "the bucket is not an S3 bucket name (3 to 63 of a-z 0-9 . -, starting and ending with a letter or digit)",
        });
    }
    let id = format!("{bucket}/{key}");
    validate_id(&id)?;
    Ok(id)
}

/// S3's rules for a bucket name (general purpose buckets), the part that keeps a name one path
/// segment and unambiguous.
fn is_bucket_name(name: &str) -> bool {
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes.first().copied().is_some_and(edge)
        && bytes.last().copied().is_some_and(edge)
        && bytes.iter().all(|&b| edge(b) || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_form_decoded() {
        assert_eq!(
            decode_event_key("family+photo.jpg").unwrap(),
            "family photo.jpg"
        );
        assert_eq!(
            decode_event_key("a%2Bb/%C3%A9t%C3%A9+2024.jpg").unwrap(),
            "a+b/été 2024.jpg"
        );
        assert_eq!(decode_event_key("plain/key.jpg").unwrap(), "plain/key.jpg");
        let err = decode_event_key("bad%FF.jpg").unwrap_err();
        assert_eq!(err.raw, "bad%FF.jpg");
        assert!(err.to_string().contains("not URL-encoded UTF-8"), "{err}");
    }

    #[test]
    fn a_photo_is_named_by_bucket_and_key() {
        assert_eq!(
            photo_result_id("photos", "2026/family photo.jpg").unwrap(),
            "photos/2026/family photo.jpg"
        );
        for key in ["", "a//b.jpg", "../etc/passwd", "a/./b", "dir/", "a\nb"] {
            let err = photo_result_id("photos", key).unwrap_err();
            assert!(matches!(err, SinkError::InvalidId { .. }), "{key:?}: {err}");
        }
    }

    #[test]
    fn a_bucket_that_is_not_a_bucket_name_is_refused() {
        // Found by the captioning_message fuzz target: "photo/s" + "a.jpg" and "photo" +
        // "s/a.jpg" would be the same photo.
        for bucket in [
            "photo/s",
            "Photos",
            "ab",
            "-photos",
            "photos-",
            "ph_otos",
            &"a".repeat(64),
        ] {
            let err = photo_result_id(bucket, "a.jpg").unwrap_err();
            assert!(
                matches!(err, SinkError::InvalidId { .. }),
                "{bucket:?}: {err}"
            );
        }
        for bucket in ["abc", "photos-123", "my.photos", &"a".repeat(63)] {
            assert!(photo_result_id(bucket, "a.jpg").is_ok(), "{bucket:?}");
        }
        assert!(photo_result_id("photos", &"x".repeat(251)).is_err());
        assert!(photo_result_id("photos", &"x".repeat(250)).is_ok());
    }
}
