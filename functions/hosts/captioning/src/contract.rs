//! The `captioning` binary's deploy contract: every variable it reads, the union of the lists of the
//! readers its `main` calls. `captioning contract` prints it; `contract.json` beside this crate is
//! that output, committed, which `coldpath check` holds the deployment to.

use coldpath_aws::{ObjectStore, ResultSink};
use coldpath_captioning::CaptioningConfig;
use coldpath_captioning::config::WORKER_ENV;
use coldpath_core::{Contract, EnvVar};

/// The queue `captioning worker` consumes (`main` reads it by this name).
pub const QUEUE_URL: EnvVar = EnvVar::required(
    "CAPTIONING_QUEUE_URL",
    "the SQS queue; `captioning worker` refuses to start without it",
);

/// What `captioning` reads, as the Lambda function and as the worker: tracing, the engine's
/// config, how Lambda started the sandbox, the worker's queue and result sink, the object store and the result sink.
pub fn contract() -> Contract {
    Contract::new(
        "captioning",
        &[
            coldpath_runtime::LOGGING_ENV,
            &CaptioningConfig::env(),
            &[QUEUE_URL, crate::lambda::INITIALIZATION_TYPE],
            WORKER_ENV,
            ObjectStore::ENV,
            ResultSink::ENV,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `contract.json` is what the binary prints (`make contracts` regenerates it).
    #[test]
    fn the_committed_contract_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contract.json");
        if let Err(problem) = coldpath_runtime::committed_contract_matches(&path, &contract()) {
            panic!("{problem}");
        }
    }
}
