//! Light types every coldpath crate shares.
//!
//! This crate must stay cheap to depend on: no ONNX Runtime, no AWS SDK, no async runtime. It holds
//! the stable error classification that the Lambda edge turns into an `errorType`, the helpers that
//! read configuration from the environment once into typed structs, the typed lists of the
//! variables each reader reads (the deploy contract), the cold-start record that
//! every function logs at init, and the vector arithmetic of embedding responses.

pub mod cold_start;
pub mod config;
pub mod contract;
pub mod error;
pub mod vector;

pub use cold_start::{ColdStartRecord, ColdStartTimer, Phase};
pub use config::{ConfigError, EnvSource, MapEnv, ProcessEnv};
pub use contract::{Contract, EnvVar, Need, RecordingEnv};
pub use error::{Classify, ErrorType};
