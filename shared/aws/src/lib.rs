//! AWS adapters for coldpath.
//!
//! The shared model loader fetches `s3://` model sources through the `ObjectFetcher` trait; this
//! crate implements it for Amazon S3 with `aws-sdk-s3`, and picks the object store a deployment
//! uses from `COLDPATH_OBJECT_STORE`. It is the only shared crate that links the AWS SDK, so
//! crates that need only types stay light.

mod object_store;
mod queue;
mod s3;
mod sink;

pub use object_store::ObjectStore;
pub use queue::{Queue, QueueError, ReceivedMessage};
pub use s3::S3Fetcher;
pub use sink::{RESULT_SINK_VAR, ResultSink, SinkError, SinkTarget, validate_id};
