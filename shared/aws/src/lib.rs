//! AWS adapters for coldpath.
//!
//! - Objects: the shared model loader and image input read `s3://` URIs through the
//!   `ObjectFetcher` trait; this crate implements it for Amazon S3 with `aws-sdk-s3`, and picks
//!   the object store a deployment uses from `COLDPATH_OBJECT_STORE`.
//! - Results: `ResultSink` writes one JSON result per id to a local directory, an S3 prefix or an
//!   SQS queue (`COLDPATH_RESULT_SINK`), so a redelivered message overwrites instead of
//!   duplicating (faces, captioning).
//! - Queues: `Queue` is the typed SQS surface the captioning worker needs (receive, batch delete,
//!   visibility, backlog).
//!
//! It is the only shared crate that links the AWS SDK, so crates that need only types stay light.

mod object_store;
mod queue;
mod s3;
mod sdk;
mod sink;

pub use object_store::ObjectStore;
pub use queue::{Queue, QueueError, ReceivedMessage};
pub use s3::S3Fetcher;
pub use sdk::shared_config;
pub use sink::{RESULT_SINK_VAR, ResultSink, SinkError, SinkTarget, validate_id};
