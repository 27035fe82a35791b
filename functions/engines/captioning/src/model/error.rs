//! What can go wrong while loading the captioner or captioning a batch.

use coldpath_core::{Classify, ErrorType};
use coldpath_models::ModelError;

/// A failure of [`CaptionModel`](super::CaptionModel): bad input, a model directory that does not
/// hold what an optimum export holds, or ONNX Runtime failing at run time.
#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    /// The request is wrong (shape of the pixel tensor, a zero token limit, mismatched lengths);
    /// retrying it unchanged fails again.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A model file is missing, unreadable or not shaped like an optimum export.
    #[error("model file {file}: {reason}")]
    BadModel { file: String, reason: String },
    /// Building a session failed (library, provider, graph).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// ONNX Runtime failed while running a graph, or returned tensors of an unexpected shape.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The tokenizer could not turn token ids back into text.
    #[error("detokenising failed: {0}")]
    Detokenize(String),
}

impl CaptionError {
    pub(crate) fn bad_model(file: &str, reason: impl ToString) -> Self {
        CaptionError::BadModel {
            file: file.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn inference(e: impl ToString) -> Self {
        CaptionError::Inference(e.to_string())
    }
}

impl Classify for CaptionError {
    fn error_type(&self) -> ErrorType {
        match self {
            CaptionError::InvalidInput(_) => ErrorType::InvalidInput,
            CaptionError::BadModel { .. } => ErrorType::ModelLoad,
            CaptionError::Model(e) => e.error_type(),
            CaptionError::Inference(_) | CaptionError::Detokenize(_) => ErrorType::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(
            CaptionError::InvalidInput("x".into()).error_type(),
            ErrorType::InvalidInput
        );
        assert_eq!(
            CaptionError::inference("boom").error_type(),
            ErrorType::Internal
        );
        assert_eq!(
            CaptionError::bad_model("a.onnx", "gone").error_type(),
            ErrorType::ModelLoad
        );
    }
}
