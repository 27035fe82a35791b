//! Shared model loading for every coldpath function.
//!
//! A model is described by a [`ModelSpec`]: a name, a kind, the files it needs with their sha256,
//! and where they come from (a local directory bundled with the package or image, or an
//! `s3://bucket/prefix` fetched once into a cache directory and reused by later cold starts on the
//! same sandbox). [`ModelStore`] turns a spec into verified local paths; [`OrtRuntime`] loads the
//! ONNX Runtime library named by `ORT_DYLIB_PATH` and builds sessions with the thread count,
//! graph optimisation level and execution provider that the function's placement asks for;
//! [`SessionPool`] shares those sessions between callers without `unsafe`.
//!
//! This crate never talks to AWS itself: remote objects come through `coldpath-io`'s
//! [`ObjectFetcher`](coldpath_io::ObjectFetcher) trait, which `coldpath-aws` implements for S3.

mod digest;
mod ort_env;
mod pool;
mod session;
mod spec;
mod store;

pub use digest::{Sha256Digest, file_digest, sha256_file};
pub use ort_env::{DEFAULT_ORT_DYLIB_PATH, ORT_DYLIB_VAR, OrtRuntime};
pub use pool::{SessionPool, output_last_dim};
pub use session::{GraphOptLevel, Provider, SessionConfig, Threads, select_provider};
pub use spec::{ModelFile, ModelKind, ModelSource, ModelSpec};
pub use store::{DEFAULT_CACHE_DIR, ModelStore, ResolvedModel, cache_dir_from_env};

use coldpath_core::{Classify, ErrorType};
use coldpath_io::FetchError;
use std::path::PathBuf;

/// Everything that can go wrong between a spec and a ready session.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "cannot load the ONNX Runtime library from {path} (set {var} to the path of libonnxruntime.so 1.{min_minor} or newer): {reason}"
    )]
    RuntimeLibrary {
        var: &'static str,
        path: PathBuf,
        min_minor: u32,
        reason: String,
    },
    #[error("model {model}: file {file} not found at {path}")]
    MissingFile {
        model: String,
        file: String,
        path: PathBuf,
    },
    #[error(
        "model {model}: checksum mismatch for {file}: expected sha256 {expected}, found {found}"
    )]
    Checksum {
        model: String,
        file: String,
        expected: Sha256Digest,
        found: Sha256Digest,
    },
    #[error("model {model}: file {file} comes from {source_uri}, which needs a sha256 in the spec")]
    UnpinnedRemote {
        model: String,
        file: String,
        source_uri: String,
    },
    #[error("model {model}: fetching {uri}: {source}")]
    Fetch {
        model: String,
        uri: String,
        #[source]
        source: FetchError,
    },
    #[error("model {model}: i/o on {path}: {source}")]
    Io {
        model: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "execution provider {requested} is not available in this ONNX Runtime build ({available}); set COLDPATH_ALLOW_CPU_FALLBACK=true to run on CPU instead"
    )]
    ProviderUnavailable {
        requested: Provider,
        available: String,
    },
    #[error("model {model}: building the ONNX Runtime session from {path}: {reason}")]
    Session {
        model: String,
        path: PathBuf,
        reason: String,
    },
}

impl Classify for ModelError {
    fn error_type(&self) -> ErrorType {
        match self {
            // A network hiccup while fetching is worth retrying; everything else is a broken
            // deployment that retrying cannot fix.
            ModelError::Fetch { source, .. } if source.is_transient() => ErrorType::Retryable,
            _ => ErrorType::ModelLoad,
        }
    }
}
