//! AWS adapters for coldpath.
//!
//! - Objects: the shared model loader and image input read `s3://` URIs through the
//!   `ObjectFetcher` trait; this crate implements it for Amazon S3 with `aws-sdk-s3`, and picks
//!   the object store a deployment uses from `COLDPATH_OBJECT_STORE`.
//! - Results: `ResultSink` writes one JSON result per id to a local directory, an S3 prefix or an
//!   SQS queue (`COLDPATH_RESULT_SINK`), so a redelivered message overwrites instead of
//!   duplicating (faces, captioning).
//! - Keys: `decode_event_key` reads the URL-encoded key of an S3 event, and `photo_result_id`
//!   names a photo's result `<bucket>/<key>` for faces and captioning alike.
//! - Queues: `Queue` is the typed SQS surface the captioning worker needs (receive, batch delete,
//!   visibility, backlog).
//!
//! It is the only shared crate that links the AWS SDK, and only behind its features: `s3`
//! (`S3Fetcher`, `ObjectStore`'s S3 kind, `ResultSink`'s S3 target) and `sqs` (`Queue`,
//! `ResultSink`'s SQS target). Without either, the key helpers, the local sink and the types
//! build with no SDK, so crates that need only those stay light.

mod object_store;
#[cfg(feature = "sqs")]
mod queue;
mod queue_url;
#[cfg(feature = "s3")]
mod s3;
mod s3_key;
#[cfg(any(feature = "s3", feature = "sqs"))]
mod sdk;
mod sink;

pub use object_store::ObjectStore;
#[cfg(feature = "sqs")]
pub use queue::{Queue, QueueError, ReceivedMessage};
#[cfg(feature = "s3")]
pub use s3::S3Fetcher;
pub use s3_key::{
    EVENTBRIDGE_DETAIL_TYPE, EVENTBRIDGE_SOURCE, KeyError, Keyed, Named, S3ObjectCreated,
    decode_event_key, photo_result_id,
};
#[cfg(any(feature = "s3", feature = "sqs"))]
pub use sdk::shared_config;
pub use sink::{RESULT_SINK_VAR, ResultSink, SinkError, SinkTarget, validate_id};
