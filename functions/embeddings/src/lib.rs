//! Text embeddings for vector search, served in the OpenAI embeddings API shape.
//!
//! This function sits on the user's search-wait path, so it is pinned warm (provisioned
//! concurrency) and does all its loading at init: ONNX Runtime, the model, the sessions and one
//! warm-up inference. The pipeline is model-agnostic for BERT-style encoders exported to ONNX:
//! HF `tokenizers` with the model's max length, padding per batch, attention-mask mean (or CLS)
//! pooling, L2 normalisation. Requests arrive as direct invokes or as Function URL / HTTP API
//! (payload v2) events on `POST /v1/embeddings`.

pub mod api;
pub mod config;
pub mod embedder;
pub mod http;
pub mod pooling;
pub mod service;

pub use api::Limits;
pub use config::EmbeddingsConfig;
pub use embedder::{Embed, EmbedError, Embedded, OnnxEmbedder, PipelineConfig};
pub use service::{EmbeddingsError, EmbeddingsService, InitError, handle, init};
