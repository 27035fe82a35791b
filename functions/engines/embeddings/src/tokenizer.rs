//! Loading the model's `tokenizer.json` with the pipeline's truncation. It needs no ONNX Runtime,
//! so the tokenizer can be built (and fuzzed) without the model parts (the `onnx` feature).

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// A `tokenizer.json` that could not be read or set up.
#[derive(Debug, thiserror::Error)]
#[error("loading tokenizer {path}: {reason}")]
pub struct TokenizerLoadError {
    pub path: PathBuf,
    pub reason: String,
}

/// Loads `tokenizer.json` truncating to `max_tokens` (special tokens included), and leaves its
/// padding as the file has it: the ONNX pipeline reads the pad id from it and then turns padding
/// off, since batches are padded to their own longest text when they run.
pub fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer, TokenizerLoadError> {
    let load_err = |reason: String| TokenizerLoadError {
        path: path.to_path_buf(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
    // Exported tokenizer.json files often carry the exporter's truncation and fixed padding
    // (all-MiniLM-L6-v2's says 128 and pads every text to 128). The model's own limit comes
    // from config, so the truncation is replaced here.
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| load_err(e.to_string()))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let path = Path::new("/nonexistent/tokenizer.json");
        let err = load_tokenizer(path, 256).unwrap_err();
        assert_eq!(err.path, path);
        assert!(
            err.to_string()
                .starts_with("loading tokenizer /nonexistent/tokenizer.json: "),
            "{err}"
        );
    }
}
