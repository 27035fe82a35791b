//! Hosting for coldpath's engines: what every host (a Lambda binary, the always-on server, the
//! captioning worker) shares.
//!
//! Every function binary is the same four steps: init tracing, read config, build shared resources
//! once, run. This crate owns the parts that do not depend on the workload: structured logging to
//! stderr, the choice between the Lambda runtime loop and local `invoke <EVENT_FILE>` mode, the
//! mapping from a classified library error to the Lambda diagnostic (`errorType` / `errorMessage`),
//! the metric lines (CloudWatch embedded metric format, [`metrics`]), and `<binary> contract`
//! ([`contract`]). The Lambda parts (the
//! runtime loop, `invoke`, the diagnostic) sit behind the `lambda` feature.

pub mod contract;
mod deferred;
mod error;
#[cfg(feature = "lambda")]
mod invoke;
mod logging;
pub mod metrics;

pub use contract::{committed_contract_matches, contract_if_asked};
pub use deferred::Deferred;
pub use error::{HandlerError, log_failure, upload_outcome};
#[cfg(feature = "lambda")]
pub use invoke::{Mode, UsageError, init_failed, invoke_file, print_json, run, run_function};
#[cfg(feature = "lambda")]
pub use lambda_runtime::{Context, LambdaEvent};
pub use logging::{ENV as LOGGING_ENV, LogFormat, init_tracing};
