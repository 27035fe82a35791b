//! `coldpath-serve`: the always-on server. One process hosts any subset of the workloads
//! (`COLDPATH_SERVE_WORKLOADS=embeddings,faces`), with their sessions co-resident on one device,
//! behind one HTTP port, for traffic that outgrows provisioned Lambda.
//!
//! The engines are the Lambda functions' own crates, loaded by their own `init`; this crate only
//! translates HTTP to them and back (text-embeddings-inference's router-over-`Infer` shape):
//!
//! - `POST /v1/embeddings`: the OpenAI embeddings contract, limits and error bodies of the
//!   embeddings function; `POST /v1/faces`: the faces direct request and per-photo response;
//! - `GET /health` (alive), `GET /ready` (models loaded and warmed), `GET /metrics` (Prometheus);
//! - SageMaker's container contract: `GET /ping` and `POST /invocations` on `PORT` (8080).
//!
//! Each model has one bounded queue and one batching task ([`batcher`]): full queue → 429 with
//! `Retry-After`, still queued at the deadline → 503 (a started batch is always answered), a
//! caller that went away is dropped before it runs.
//! A request takes its queue place before its body is read, and reads it under its route's
//! limit, the read timeout and its deadline; connections are capped and their heads timed
//! ([`app::serve`]). A model call past `COLDPATH_SERVE_STALL_MS` turns `/ready` to 503.
//! SIGTERM stops accepting, finishes what is queued within `COLDPATH_SERVE_DRAIN_MS`, and the
//! process exits 0 (at once when the models are still loading).

pub mod app;
pub mod batcher;
pub mod config;
pub mod contract;
pub mod error;
pub mod metrics;
pub mod workloads;

pub use app::{AppState, router, run, serve, shutdown_signal};
pub use config::{BatchPolicy, ConnectionLimits, ServeConfig, TextShapes};
pub use error::{RequestError, StartError};
pub use metrics::Metrics;
pub use workloads::{Hosted, load};
