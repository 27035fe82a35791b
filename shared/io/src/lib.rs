//! The light I/O layer every heavy crate stands on: no ONNX Runtime, no AWS SDK, no image codec.
//!
//! - [`ObjectFetcher`]: remote objects by bucket and key, with a local-directory and a "none"
//!   implementation here and S3 in `coldpath-aws`. Model loading (`coldpath-models`) and image
//!   input (`coldpath-image`) fetch through it without linking an object store's SDK.
//! - [`run_blocking`] and [`spawn_blocking`]: CPU-bound work (inference, decoding) off the async
//!   executor, with a panic in the work turned into a typed [`TaskError`] for that unit of work
//!   only; [`CatchPanic`] does the same for a future (one record of a batch).
//! - [`ResultWriter`]: where a result goes, one JSON document per request id; `coldpath-aws`'s
//!   `ResultSink` implements it.
//!
//! The dependency graph reads core → io → {models, image, aws} → functions.

mod blocking;
mod fetch;
mod message;
mod panic;
mod result;

pub use blocking::{run_blocking, spawn_blocking};
pub use fetch::{FetchError, LocalObjectDir, NoObjectStore, ObjectFetcher};
pub use message::{Delivery, QueueMessage};
pub use panic::{CatchPanic, TaskError, catch_panic};
pub use result::ResultWriter;
