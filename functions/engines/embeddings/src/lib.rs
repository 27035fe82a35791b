//! The text-embeddings engine for vector search: an OpenAI embeddings request in, its response
//! out. It knows nothing of Lambda or HTTP; its hosts (the `embeddings` Lambda function, the
//! always-on `coldpath-serve`) bring the requests.
//!
//! The workload sits on the user's search-wait path, so it is pinned warm (provisioned
//! concurrency) and does all its loading at init: ONNX Runtime, the model, the sessions and one
//! warm-up inference. The pipeline is model-agnostic for BERT-style encoders exported to ONNX:
//! HF `tokenizers` with the model's max length, padding per batch, attention-mask mean (or CLS)
//! pooling, L2 normalisation.
//!
//! The model parts (the ONNX pipeline, pooling, config, the service and init) sit behind the
//! default `onnx` feature. Without it the crate is the request and response types, their parsing
//! and validation (`api`) and the tokenizer loading (`tokenizer`), with no ONNX Runtime in the
//! build: the fuzz targets take it that way.

pub mod api;
#[cfg(feature = "onnx")]
pub mod config;
#[cfg(feature = "onnx")]
pub mod embedder;
#[cfg(feature = "onnx")]
pub mod pooling;
#[cfg(feature = "onnx")]
pub mod service;
pub mod tokenizer;

pub use api::Limits;
#[cfg(feature = "onnx")]
pub use config::EmbeddingsConfig;
#[cfg(feature = "onnx")]
pub use embedder::{Embed, EmbedError, Embedded, OnnxEmbedder, PipelineConfig};
#[cfg(feature = "onnx")]
pub use service::{EmbeddingsError, EmbeddingsService, InitError, init};
