//! The one error type of this crate, classified for the Lambda edge.

use std::path::PathBuf;

use coldpath_core::{Classify, ErrorType};
use coldpath_io::FetchError;

/// Why an image could not be read, decoded or turned into a tensor.
///
/// Everything a caller can get wrong (a bad reference, bytes that are not an image, an image over
/// the limits, a missing object) is [`ErrorType::InvalidInput`]; a transient fetch failure is
/// [`ErrorType::Retryable`]; an object store that is not configured is [`ErrorType::Config`].
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image reference in the request is malformed (wrong keys, bad `s3://` URI).
    #[error("image reference: {0}")]
    InvalidRef(String),
    /// The `base64` payload is not standard base64.
    #[error(
        "image base64: expected standard base64 (optionally after a data:image/...;base64, prefix): {0}"
    )]
    Base64(String),
    /// A `path` reference was sent to a deployment that does not read local files.
    #[error(
        "image path {0:?}: local paths are accepted only in local invoke mode; send {{\"s3\": \"s3://bucket/key\"}} or {{\"base64\": ...}}"
    )]
    PathNotAllowed(PathBuf),
    /// A `path` reference that does not resolve to a file inside the directory this deployment
    /// reads local images from (missing files read the same, so nothing outside can be probed).
    #[error("image path {0:?}: not a file inside the directory local images are read from")]
    PathOutsideRoot(PathBuf),
    /// A local file could not be read.
    #[error("image path {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The object store could not deliver the object.
    #[error("image {uri}: {source}")]
    Fetch {
        uri: String,
        #[source]
        source: FetchError,
    },
    /// Zero bytes.
    #[error(
        "image is empty: expected the bytes of a JPEG, PNG, WebP, HEIC or AVIF file, found 0 bytes"
    )]
    Empty,
    /// More encoded bytes than [`crate::ImageLimits::max_bytes`] allows.
    #[error("image is too large: {size} bytes, the limit is {limit} bytes")]
    TooManyBytes { size: u64, limit: u64 },
    /// The header declares more pixels, or a longer side, than the limits allow.
    #[error(
        "image is too large: {width}x{height} pixels, the limits are {max_pixels} pixels and {max_side} pixels a side"
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        max_pixels: u64,
        max_side: u32,
    },
    /// The bytes are not one of the formats this crate decodes.
    #[error("unsupported image format: expected JPEG, PNG, WebP, HEIC or AVIF, found {found}")]
    UnsupportedFormat { found: String },
    /// A HEIC or AVIF file reached a deployment whose decoder library is missing or unusable:
    /// the deployment's fault, so not `InvalidInput` (the same file decodes where it is there).
    #[error(
        "cannot decode {format} images here: {reason} (set COLDPATH_LIBHEIF_PATH / COLDPATH_LIBAVIF_PATH, or install the layer)"
    )]
    CodecUnavailable {
        format: &'static str,
        reason: String,
    },
    /// The decoder process died on this image (a crash or abort in the C library, its memory
    /// limit, or the decode timeout): the image is refused, the host carries on.
    #[error("cannot decode the {format} image: {reason}")]
    DecoderCrashed {
        format: &'static str,
        reason: String,
    },
    /// The bytes start like a supported format but do not decode (truncated, corrupt).
    #[error("cannot decode the {format} image: {reason}")]
    Undecodable {
        format: &'static str,
        reason: String,
    },
    /// Images handed to [`crate::to_nchw`] cannot form one batch (a caller bug, not user input).
    #[error("cannot batch images: {0}")]
    Batch(String),
    /// The blocking decode task died (a panic inside the decoder, or the runtime shutting down).
    #[error("image decode task failed: {0}")]
    Task(#[from] coldpath_io::TaskError),
}

impl Classify for ImageError {
    fn error_type(&self) -> ErrorType {
        match self {
            ImageError::Fetch { source, .. } => match source {
                FetchError::Transient(_) => ErrorType::Retryable,
                FetchError::NotConfigured => ErrorType::Config,
                // Writing nowhere and reading our own disk failing is not the caller's fault.
                FetchError::Io(_) => ErrorType::Internal,
                // Missing, too large, forbidden (S3 answers 403 for a missing key when the role
                // may not list the bucket) or a malformed bucket/key: the request named an object
                // we cannot use, and retrying it unchanged fails again.
                FetchError::NotFound
                | FetchError::Denied(_)
                | FetchError::TooLarge { .. }
                | FetchError::Other(_) => ErrorType::InvalidInput,
            },
            ImageError::Read { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound
                | std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::IsADirectory
                | std::io::ErrorKind::InvalidInput => ErrorType::InvalidInput,
                _ => ErrorType::Internal,
            },
            ImageError::Batch(_) | ImageError::Task(_) => ErrorType::Internal,
            ImageError::CodecUnavailable { .. } => ErrorType::Config,
            ImageError::InvalidRef(_)
            | ImageError::Base64(_)
            | ImageError::PathNotAllowed(_)
            | ImageError::PathOutsideRoot(_)
            | ImageError::Empty
            | ImageError::TooManyBytes { .. }
            | ImageError::TooManyPixels { .. }
            | ImageError::UnsupportedFormat { .. }
            | ImageError::Undecodable { .. }
            | ImageError::DecoderCrashed { .. } => ErrorType::InvalidInput,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_failures_are_classified_by_cause() {
        let fetch = |source| ImageError::Fetch {
            uri: "s3://b/k".into(),
            source,
        };
        let cases = [
            (fetch(FetchError::NotFound), ErrorType::InvalidInput),
            (
                fetch(FetchError::TooLarge { size: 2, limit: 1 }),
                ErrorType::InvalidInput,
            ),
            (
                fetch(FetchError::Transient("slow down".into())),
                ErrorType::Retryable,
            ),
            (fetch(FetchError::NotConfigured), ErrorType::Config),
            (ImageError::Empty, ErrorType::InvalidInput),
            (ImageError::Batch("x".into()), ErrorType::Internal),
        ];
        for (err, want) in cases {
            assert_eq!(err.error_type(), want, "{err}");
        }
    }
}
