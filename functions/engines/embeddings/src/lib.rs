//! The text-embeddings engine for vector search: an OpenAI embeddings request in, its response
//! out. It knows nothing of Lambda or HTTP; its hosts (the `embeddings` Lambda function, the
//! always-on `coldpath-serve`) bring the requests.
//!
//! The workload sits on the user's search-wait path, so it is pinned warm (provisioned
//! concurrency) and does all its loading at init: ONNX Runtime, the model, the sessions and one
//! warm-up inference. The pipeline is model-agnostic for BERT-style encoders exported to ONNX:
//! HF `tokenizers` with the model's max length, padding per batch, attention-mask mean (or CLS)
//! pooling, L2 normalisation.

pub mod api;
pub mod config;
pub mod embedder;
pub mod pooling;
pub mod service;

pub use api::Limits;
pub use config::EmbeddingsConfig;
pub use embedder::{Embed, EmbedError, Embedded, OnnxEmbedder, PipelineConfig};
pub use service::{EmbeddingsError, EmbeddingsService, InitError, init};
