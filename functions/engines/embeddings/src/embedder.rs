//! Text in, unit vectors out: tokenisation, batched ONNX inference, pooling.

use std::path::{Path, PathBuf};

use coldpath_core::{Classify, ErrorType};
use coldpath_models::{SessionPool, output_last_dim};
use ndarray::{Array2, Ix3};
use ort::value::Tensor;
use tokenizers::{Encoding, Tokenizer};

use crate::pooling::{Pooling, l2_normalize, pool};
use crate::tokenizer::TokenizerLoadError;

/// What a handler needs from an embedding model: texts in, vectors and token counts out.
/// The ONNX implementation below is the real one; tests of request handling can use a small fake.
pub trait Embed: Send + Sync {
    fn embed(&self, texts: &[String]) -> Result<Embedded, EmbedError>;
    /// Length of each vector.
    fn dimensions(&self) -> usize;
}

/// Vectors in input order, with the tokens each text actually used (after truncation, with the
/// special tokens), which is what `usage` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub token_counts: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("loading tokenizer {path}: {reason}")]
    TokenizerLoad { path: PathBuf, reason: String },
    #[error("model does not look like a BERT-style text encoder: {0}")]
    ModelSignature(String),
    #[error("tokenizing input {index}: {reason}")]
    Tokenize { index: usize, reason: String },
    #[error("running the model: {0}")]
    Inference(String),
}

impl Classify for EmbedError {
    fn error_type(&self) -> ErrorType {
        match self {
            EmbedError::TokenizerLoad { .. } | EmbedError::ModelSignature(_) => {
                ErrorType::ModelLoad
            }
            EmbedError::Tokenize { .. } | EmbedError::Inference(_) => ErrorType::Internal,
        }
    }
}

/// Pipeline settings that depend on the model, not on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Texts are truncated to this many tokens, special tokens included.
    pub max_tokens: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Upper bound on padded tokens (texts × longest text) in one ONNX run.
    pub max_batch_tokens: usize,
}

/// A sentence-transformers style model exported to ONNX: `input_ids`, `attention_mask` and
/// optionally `token_type_ids` in, `last_hidden_state` (batch × seq × dim) out.
pub struct OnnxEmbedder {
    tokenizer: Tokenizer,
    sessions: SessionPool,
    config: PipelineConfig,
    has_token_type_ids: bool,
    output: String,
    pad_id: i64,
    dimensions: usize,
}

impl OnnxEmbedder {
    /// Loads `tokenizer.json` with the pipeline's truncation ([`crate::tokenizer::load_tokenizer`]);
    /// [`OnnxEmbedder::new`] turns its padding off (batches are padded to their own longest text
    /// when they run).
    pub fn load_tokenizer(path: &Path, config: &PipelineConfig) -> Result<Tokenizer, EmbedError> {
        crate::tokenizer::load_tokenizer(path, config.max_tokens).map_err(
            |TokenizerLoadError { path, reason }| EmbedError::TokenizerLoad { path, reason },
        )
    }

    /// Puts a tokenizer from [`OnnxEmbedder::load_tokenizer`] and the model's sessions together,
    /// checking that the model takes and gives what the pipeline needs.
    pub fn new(
        mut tokenizer: Tokenizer,
        sessions: SessionPool,
        config: PipelineConfig,
    ) -> Result<Self, EmbedError> {
        let pad_id = tokenizer
            .get_padding()
            .map(|p| i64::from(p.pad_id))
            .unwrap_or(0);
        tokenizer.with_padding(None);

        let inputs = sessions.input_names();
        for required in ["input_ids", "attention_mask"] {
            if !inputs.iter().any(|n| n == required) {
                return Err(EmbedError::ModelSignature(format!(
                    "no input named {required} (inputs: {})",
                    inputs.join(", ")
                )));
            }
        }
        let has_token_type_ids = inputs.iter().any(|n| n == "token_type_ids");
        if let Some(extra) = inputs
            .iter()
            .find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(&n.as_str()))
        {
            return Err(EmbedError::ModelSignature(format!(
                "unexpected input {extra}"
            )));
        }
        let outputs = sessions.output_names();
        let output = outputs
            .iter()
            .find(|n| *n == "last_hidden_state")
            .or_else(|| outputs.first())
            .cloned()
            .ok_or_else(|| EmbedError::ModelSignature("no outputs".to_string()))?;
        let mut embedder = OnnxEmbedder {
            tokenizer,
            sessions,
            config,
            has_token_type_ids,
            output,
            pad_id,
            dimensions: 0,
        };
        embedder.dimensions = match embedder.declared_dimensions() {
            Some(d) => d,
            // Some exports leave the hidden size symbolic; then one tiny run tells it.
            None => embedder.embed(&["dimension probe".to_string()])?.vectors[0].len(),
        };
        Ok(embedder)
    }

    /// The model's sessions, for callers that run the raw model (the benchmark's floor).
    pub fn sessions(&self) -> &SessionPool {
        &self.sessions
    }

    /// The output's last dimension when the graph declares it (384 for all-MiniLM-L6-v2).
    fn declared_dimensions(&self) -> Option<usize> {
        self.sessions.with(|s| output_last_dim(s, &self.output))
    }

    fn run_batch(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let batch = encodings.len();
        let seq = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = Array2::<i64>::from_elem((batch, seq), self.pad_id);
        let mut mask = Array2::<i64>::zeros((batch, seq));
        let mut types = Array2::<i64>::zeros((batch, seq));
        for (b, enc) in encodings.iter().enumerate() {
            for (t, ((&id, &m), &ty)) in enc
                .get_ids()
                .iter()
                .zip(enc.get_attention_mask())
                .zip(enc.get_type_ids())
                .enumerate()
            {
                ids[[b, t]] = i64::from(id);
                mask[[b, t]] = i64::from(m);
                types[[b, t]] = i64::from(ty);
            }
        }
        let tensor = |a: Array2<i64>| {
            Tensor::from_array(a).map_err(|e| EmbedError::Inference(e.to_string()))
        };
        let mut inputs = ort::inputs! {
            "input_ids" => tensor(ids)?,
            "attention_mask" => tensor(mask.clone())?,
        };
        if self.has_token_type_ids {
            inputs.push(("token_type_ids".into(), tensor(types)?.into()));
        }
        self.sessions.with(|session| {
            let outputs = session
                .run(inputs)
                .map_err(|e| EmbedError::Inference(e.to_string()))?;
            let hidden = outputs
                .get(self.output.as_str())
                .ok_or_else(|| {
                    EmbedError::Inference(format!("the model returned no output {}", self.output))
                })?
                .try_extract_array::<f32>()
                .map_err(|e| EmbedError::Inference(e.to_string()))?
                .into_dimensionality::<Ix3>()
                .map_err(|e| {
                    EmbedError::ModelSignature(format!(
                        "output {} is not batch × seq × dim: {e}",
                        self.output
                    ))
                })?;
            let mut vectors =
                pool(self.config.pooling, hidden, mask.view()).map_err(EmbedError::Inference)?;
            if self.config.normalize {
                vectors.iter_mut().for_each(|v| l2_normalize(v));
            }
            Ok(vectors)
        })
    }
}

impl OnnxEmbedder {
    /// The first half of [`Embed::embed`]: each text tokenized with the pipeline's truncation
    /// (its `len()` is the tokens it uses). A server that batches requests tokenizes each one on
    /// arrival, to weigh it against a token budget, and runs many requests' encodings together
    /// with [`OnnxEmbedder::embed_encodings`].
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Encoding>, EmbedError> {
        texts
            .iter()
            .enumerate()
            .map(|(index, t)| {
                self.tokenizer
                    .encode_fast(t.as_str(), true)
                    .map_err(|e| EmbedError::Tokenize {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// The second half of [`Embed::embed`]: vectors for encodings from
    /// [`OnnxEmbedder::tokenize`], in order, in ONNX runs of at most the pipeline's padded-token
    /// budget.
    pub fn embed_encodings(&self, encodings: &[Encoding]) -> Result<Embedded, EmbedError> {
        let lengths: Vec<usize> = encodings.iter().map(Encoding::len).collect();
        let mut vectors = vec![Vec::new(); encodings.len()];
        for group in plan_batches(&lengths, self.config.max_batch_tokens) {
            let batch: Vec<&Encoding> = group.iter().map(|&i| &encodings[i]).collect();
            let run = self.run_batch(&batch)?;
            check_vectors(&run, group.len(), self.dimensions)?;
            for (i, v) in group.into_iter().zip(run) {
                vectors[i] = v;
            }
        }
        Ok(Embedded {
            vectors,
            token_counts: lengths,
        })
    }
}

impl Embed for OnnxEmbedder {
    fn embed(&self, texts: &[String]) -> Result<Embedded, EmbedError> {
        self.embed_encodings(&self.tokenize(texts)?)
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }
}

/// One vector per text, each of the model's width (`dimensions` 0 while it is being probed):
/// a short or ragged answer is an error, never an empty vector in a 200 response.
fn check_vectors(vectors: &[Vec<f32>], texts: usize, dimensions: usize) -> Result<(), EmbedError> {
    if vectors.len() != texts {
        return Err(EmbedError::Inference(format!(
            "the model returned {} vectors for {texts} texts",
            vectors.len()
        )));
    }
    if let Some(v) = vectors
        .iter()
        .find(|v| v.is_empty() || (dimensions > 0 && v.len() != dimensions))
    {
        return Err(EmbedError::Inference(format!(
            "the model returned a vector of length {} where {dimensions} was expected",
            v.len()
        )));
    }
    Ok(())
}

/// Splits texts into ONNX runs of at most `max_batch_tokens` padded tokens.
///
/// Texts are taken longest first, so each run pads to a length close to its members' own and a
/// single long text does not make every short one pay for its padding. A text longer than the
/// budget still runs, alone.
pub fn plan_batches(lengths: &[usize], max_batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match groups.last_mut() {
            // Sorted longest first, so the group's first member sets its padded length.
            Some(g) if (g.len() + 1) * lengths[g[0]].max(1) <= max_batch_tokens => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_when_everything_fits() {
        assert_eq!(plan_batches(&[3, 5, 4], 100), vec![vec![1, 2, 0]]);
        assert!(plan_batches(&[], 100).is_empty());
    }

    #[test]
    fn splits_by_padded_token_budget() {
        // 300 × 2 would exceed 512, so the long text runs alone and the short ones together.
        let groups = plan_batches(&[10, 300, 12, 11], 512);
        assert_eq!(groups, vec![vec![1], vec![2, 3, 0]]);
        // Every index appears exactly once.
        let mut all: Vec<usize> = groups.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
    }

    /// Regression: fewer rows than texts left empty vectors in the response.
    #[test]
    fn short_or_ragged_model_answers_are_errors() {
        let v = |n: usize| vec![0.5f32; n];
        assert!(check_vectors(&[v(4), v(4)], 2, 4).is_ok());
        assert!(check_vectors(&[v(4)], 1, 0).is_ok());
        let err = check_vectors(&[v(4)], 2, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "running the model: the model returned 1 vectors for 2 texts"
        );
        assert!(check_vectors(&[v(4), v(3)], 2, 4).is_err());
        assert!(check_vectors(&[v(0)], 1, 0).is_err());
        assert_eq!(err.error_type(), ErrorType::Internal);
    }

    #[test]
    fn oversized_text_still_runs_alone() {
        assert_eq!(plan_batches(&[1000, 1000], 256), vec![vec![0], vec![1]]);
    }
}
