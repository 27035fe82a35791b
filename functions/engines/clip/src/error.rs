//! The engine's typed errors.

use std::path::PathBuf;

use coldpath_core::{Classify, ErrorType};

/// Anything that goes wrong loading or running a CLIP-family model.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("model file {path}: {reason}")]
    Layout { path: PathBuf, reason: String },
    #[error("loading tokenizer {path}: {reason}")]
    TokenizerLoad { path: PathBuf, reason: String },
    #[error("{tower} tower {path}: {reason}")]
    ModelSignature {
        tower: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("tokenizing text {index}: {reason}")]
    Tokenize { index: usize, reason: String },
    #[error("expected at least one {0}, found none")]
    Empty(&'static str),
    #[error("running the model: {0}")]
    Inference(String),
    /// The host loaded only the other tower (the search path has no vision tower; photos are
    /// embedded on upload).
    #[error("{model}: this host serves the {other} tower only, not the {tower} tower", other = if *tower == "text" { "vision" } else { "text" })]
    TowerNotLoaded { tower: &'static str, model: String },
}

impl Classify for ClipError {
    fn error_type(&self) -> ErrorType {
        match self {
            ClipError::Layout { .. }
            | ClipError::TokenizerLoad { .. }
            | ClipError::ModelSignature { .. } => ErrorType::ModelLoad,
            ClipError::Empty(_) | ClipError::TowerNotLoaded { .. } => ErrorType::InvalidInput,
            ClipError::Tokenize { .. } | ClipError::Inference(_) => ErrorType::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let layout = ClipError::Layout {
            path: "config.json".into(),
            reason: "expected a positive embed_dim".into(),
        };
        assert_eq!(layout.error_type(), ErrorType::ModelLoad);
        assert_eq!(
            ClipError::Empty("text").error_type(),
            ErrorType::InvalidInput
        );
        assert_eq!(
            ClipError::Inference("x".into()).error_type(),
            ErrorType::Internal
        );
        assert_eq!(
            layout.to_string(),
            "model file config.json: expected a positive embed_dim"
        );
    }
}
