//! The captioning engine: a vision encoder-decoder ([`model`]: greedy and beam search with the KV
//! cache) and the batch pipeline over delivered messages ([`service`]): parse each message on its
//! own ([`message`]: the documented request, S3 uploads as EventBridge events or S3
//! notifications), fetch and decode its photos concurrently within a decode budget, caption in
//! model batches on the blocking pool, write one result per request id.
//!
//! Captions are not on anyone's wait path: photos are queued and captioned in batches. The
//! engine knows nothing of Lambda or of the SQS client: a message is anything that has an id and
//! a body ([`QueueMessage`]). Its hosts, the `captioning` Lambda function and the GPU pool's
//! worker, live in the `captioning` binary's crate.
//!
//! The model and the pipeline (`model`, `config`, `service`) sit behind the default `onnx`
//! feature. Without it the crate is message parsing (`message`) alone, with no ONNX Runtime in
//! the build: the fuzz targets take it that way.

#[cfg(feature = "onnx")]
pub mod config;
pub mod message;
#[cfg(feature = "onnx")]
pub mod model;
#[cfg(feature = "onnx")]
pub mod service;

#[cfg(feature = "onnx")]
pub use config::{BatchSettings, CaptioningConfig, WorkerSettings};
pub use message::{CaptionRequest, MessageError};
#[cfg(feature = "onnx")]
pub use service::{
    Caption, Captioner, CaptioningService, Delivery, ImageSource, InitError, MessageFailure,
    ModelService, Outcome, Progress, QueueMessage, ResultWriter, init,
};
