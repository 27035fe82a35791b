//! Where a request's image comes from: the `image` field of request JSON.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ImageError;

/// An image reference as it appears in request JSON: an object with exactly one key.
///
/// ```json
/// {"s3": "s3://bucket/photos/cat.jpg"}
/// {"base64": "/9j/4AAQSkZJRg..."}          // standard base64; a data:image/...;base64, prefix is fine
/// {"path": "events/data/photos/cat.jpg"}    // local invoke mode only
/// ```
///
/// The `s3` URI is parsed and checked when the request is parsed (bucket and key non-empty);
/// base64 is decoded only by [`crate::ImageLoader`], under the byte limit. A reference with no
/// key, two keys or an unknown key is a deserialisation error that names the keys expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawImageRef", into = "RawImageRef")]
pub enum ImageRef {
    /// An object in the deployment's object store. Build it with [`ImageRef::s3`] from a URI, or
    /// directly from an S3 event's (already URL-decoded) bucket and key.
    S3 { bucket: String, key: String },
    /// The encoded image inline, as standard base64 (the `data:` prefix already stripped).
    Base64(String),
    /// A local file; refused unless the loader allows local paths.
    Path(PathBuf),
}

impl ImageRef {
    /// Parses `s3://bucket/key`, requiring a non-empty bucket and key.
    pub fn s3(uri: &str) -> Result<ImageRef, ImageError> {
        let rest = uri.strip_prefix("s3://").ok_or_else(|| {
            ImageError::InvalidRef(format!("expected an s3://bucket/key URI, found {uri:?}"))
        })?;
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(ImageRef::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            }),
            _ => Err(ImageError::InvalidRef(format!(
                "expected an s3://bucket/key URI with a non-empty bucket and key, found {uri:?}"
            ))),
        }
    }

    /// Inline base64, with or without a `data:image/...;base64,` prefix.
    pub fn base64(data: &str) -> Result<ImageRef, ImageError> {
        Ok(ImageRef::Base64(strip_data_url(data)?.to_string()))
    }

    /// [`ImageRef::base64`] taking the request's own string: a prefix is cut in place, so a
    /// large payload is not copied.
    pub fn base64_owned(mut data: String) -> Result<ImageRef, ImageError> {
        let prefix = data.len() - strip_data_url(&data)?.len();
        data.drain(..prefix);
        Ok(ImageRef::Base64(data))
    }

    /// A short description for logs and error messages: the URI or path, or the size of inline
    /// data, never the data itself.
    pub fn describe(&self) -> String {
        match self {
            ImageRef::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
            ImageRef::Base64(data) => format!("base64 ({} characters)", data.len()),
            ImageRef::Path(path) => format!("path {}", path.display()),
        }
    }
}

/// Strips a `data:<media type>;base64,` prefix; anything else is taken as plain base64.
fn strip_data_url(data: &str) -> Result<&str, ImageError> {
    let Some(rest) = data.strip_prefix("data:") else {
        return Ok(data);
    };
    match rest.split_once(',') {
        // A second prefix (a client that wrapped an already wrapped URL) would otherwise be
        // taken as base64 and fail later as bad characters; say what it is instead, and keep
        // the parsed reference the same when it is serialised and parsed again.
        Some((_, payload)) if payload.starts_with("data:") => Err(ImageError::InvalidRef(
            "the base64 payload has a second data: prefix".to_string(),
        )),
        Some((meta, payload)) if meta.starts_with("image/") && meta.ends_with(";base64") => {
            Ok(payload)
        }
        _ => Err(ImageError::InvalidRef(format!(
            "expected a data:image/<type>;base64, prefix, found {:?}",
            data.chars().take(40).collect::<String>()
        ))),
    }
}

/// The wire form: every key optional so that the conversion can say exactly what was wrong.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImageRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
}

impl TryFrom<RawImageRef> for ImageRef {
    type Error = ImageError;

    fn try_from(raw: RawImageRef) -> Result<Self, ImageError> {
        match (raw.s3, raw.base64, raw.path) {
            (Some(uri), None, None) => ImageRef::s3(&uri),
            (None, Some(data), None) => ImageRef::base64_owned(data),
            (None, None, Some(path)) => Ok(ImageRef::Path(path)),
            (s3, b64, path) => {
                let found: Vec<&str> = [
                    ("s3", s3.is_some()),
                    ("base64", b64.is_some()),
                    ("path", path.is_some()),
                ]
                .into_iter()
                .filter_map(|(k, present)| present.then_some(k))
                .collect();
                Err(ImageError::InvalidRef(format!(
                    "expected exactly one of the keys s3, base64, path, found {}",
                    if found.is_empty() {
                        "none".to_string()
                    } else {
                        found.join(" and ")
                    }
                )))
            }
        }
    }
}

impl From<ImageRef> for RawImageRef {
    fn from(r: ImageRef) -> Self {
        match r {
            ImageRef::S3 { bucket, key } => RawImageRef {
                s3: Some(format!("s3://{bucket}/{key}")),
                ..Default::default()
            },
            ImageRef::Base64(data) => RawImageRef {
                base64: Some(data),
                ..Default::default()
            },
            ImageRef::Path(path) => RawImageRef {
                path: Some(path),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ImageRef, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    /// Found by reading the fuzz target's round-trip property: a payload with two
    /// data: prefixes parsed to a reference that serialised and parsed to a different one.
    #[test]
    fn a_doubled_data_url_prefix_is_refused() {
        let doubled = "data:image/png;base64,data:image/png;base64,AAAA";
        let err = ImageRef::base64(doubled).unwrap_err();
        assert!(err.to_string().contains("second data: prefix"), "{err}");
        let once = ImageRef::base64("data:image/png;base64,AAAA").unwrap();
        let json = serde_json::to_value(&once).unwrap();
        assert_eq!(serde_json::from_value::<ImageRef>(json).unwrap(), once);
    }

    #[test]
    fn parses_each_kind_and_round_trips() {
        let cases = [
            (
                r#"{"s3":"s3://photos/2024/cat.jpg"}"#,
                ImageRef::S3 {
                    bucket: "photos".into(),
                    key: "2024/cat.jpg".into(),
                },
            ),
            (
                r#"{"base64":"aGVsbG8="}"#,
                ImageRef::Base64("aGVsbG8=".into()),
            ),
            (
                r#"{"base64":"data:image/png;base64,aGVsbG8="}"#,
                ImageRef::Base64("aGVsbG8=".into()),
            ),
            (
                r#"{"path":"events/data/x.jpg"}"#,
                ImageRef::Path("events/data/x.jpg".into()),
            ),
        ];
        for (json, want) in cases {
            let got = parse(json).unwrap();
            assert_eq!(got, want, "{json}");
            let again: ImageRef =
                serde_json::from_value(serde_json::to_value(&got).unwrap()).unwrap();
            assert_eq!(again, got);
        }
        assert_eq!(
            serde_json::to_string(&ImageRef::s3("s3://b/k").unwrap()).unwrap(),
            r#"{"s3":"s3://b/k"}"#
        );
    }

    #[test]
    fn refuses_wrong_keys_and_bad_uris() {
        let err = parse(r#"{"s3":"s3://b/k","path":"x"}"#).unwrap_err();
        assert!(
            err.contains("expected exactly one of the keys s3, base64, path, found s3 and path"),
            "{err}"
        );
        let err = parse("{}").unwrap_err();
        assert!(err.contains("found none"), "{err}");
        let err = parse(r#"{"url":"http://x/y.jpg"}"#).unwrap_err();
        assert!(err.contains("unknown field `url`"), "{err}");
        for uri in [
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "https://b/k",
            "b/k",
        ] {
            let json = format!(r#"{{"s3":"{uri}"}}"#);
            let err = parse(&json).unwrap_err();
            assert!(
                err.contains("expected an s3://bucket/key URI"),
                "{uri}: {err}"
            );
        }
        let err = parse(r#"{"base64":"data:text/plain;base64,aGk="}"#).unwrap_err();
        assert!(err.contains("data:image/<type>;base64"), "{err}");
        assert!(parse(r#""s3://b/k""#).is_err());
    }

    #[test]
    fn describe_never_shows_inline_data() {
        let r = ImageRef::Base64("QUJD".repeat(100));
        assert_eq!(r.describe(), "base64 (400 characters)");
        assert_eq!(ImageRef::s3("s3://b/a/b").unwrap().describe(), "s3://b/a/b");
    }
}
