//! Where results go.

use std::future::Future;

use coldpath_core::Classify;
use serde_json::Value;

/// One JSON document per request id, overwritten on redelivery: a retry of the same request
/// rewrites the same result instead of adding a second one. `coldpath-aws`'s `ResultSink`
/// (a local directory, an S3 prefix or an SQS queue) implements it; tests use memory.
pub trait ResultWriter: Send + Sync + 'static {
    type Error: std::error::Error + Classify + Send + 'static;

    /// Writes `result` under `id` and returns where it went (a path or URI, for logs).
    fn put(
        &self,
        id: &str,
        result: &Value,
    ) -> impl Future<Output = Result<String, Self::Error>> + Send;
}
