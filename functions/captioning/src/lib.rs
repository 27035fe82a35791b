//! Image captioning with a vision encoder-decoder, driven by SQS.
//!
//! Captions are not on anyone's wait path: photos are queued and captioned in batches. The same
//! binary runs two ways. By default it is a Lambda function behind an SQS event source mapping
//! with `ReportBatchItemFailures` ([`lambda`]): each invocation captions one SQS batch and reports
//! only the messages that failed. `captioning worker` ([`worker`]) is a long-running consumer for
//! a serverless GPU runtime or a container: it long-polls the queue, batches, keeps in-flight
//! messages hidden with a heartbeat, deletes only what completed, hands back what failed or
//! cannot finish by its stop deadline after SIGTERM, and exits
//! when the queue stays empty, so a scale-to-zero platform stops billing. Both share the batch
//! pipeline in [`service`]: parse each message on its own, fetch and decode images concurrently,
//! caption in model batches on the blocking pool, write one result per request id.

pub mod cli;
pub mod config;
pub mod lambda;
pub mod message;
pub mod model;
pub mod service;
pub mod worker;

pub use cli::Command;
pub use config::{BatchSettings, CaptioningConfig, WorkerSettings};
pub use lambda::handle;
pub use message::{CaptionRequest, MessageError};
pub use service::{
    Caption, Captioner, CaptioningService, ImageSource, InitError, MessageFailure, ModelService,
    Outcome, Progress, QueueMessage, ResultWriter, init,
};
pub use worker::{ExitReason, Refused, WorkQueue, Worker, WorkerError, WorkerReport};
