//! `captioning`, the binary that hosts the captioning engine twice: as the Lambda function behind
//! the caption queue's event source mapping ([`lambda`]: one SQS batch an invocation, only the
//! failed messages reported) and as the GPU pool's long-polling worker ([`worker`]: batches,
//! heartbeats, deletes only what was written, hands back the rest at SIGTERM, exits when idle).
//! One binary for both, so the Lambda zip and the GPU image ship the same build of the engine.
//!
//! The engine ([`coldpath_captioning`]) parses each message, fetches and decodes its photos,
//! captions them in model batches and writes one result per request id; this crate owns the
//! queue side of both hosts and the binary's command line ([`cli`]).

pub mod cli;
pub mod contract;
pub mod event;
pub mod lambda;
pub mod worker;

pub use cli::Command;
pub use lambda::{handle, load_in_background};
pub use worker::{ExitReason, Refused, WorkQueue, Worker, WorkerError, WorkerReport};
