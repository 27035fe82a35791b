//! The `clip` binary's deploy contract: every variable it reads, the union of the lists of the
//! readers its `main` calls. `clip contract` prints it; `contract.json` beside this crate is that
//! output, committed, which `coldpath check` holds the deployment to.

use coldpath_aws::{ObjectStore, ResultSink};
use coldpath_clip::ClipConfig;
use coldpath_core::Contract;

/// What `clip` reads: tracing, the engine's config, the object store and the result sink.
pub fn contract() -> Contract {
    Contract::new(
        "clip",
        &[
            coldpath_runtime::LOGGING_ENV,
            &ClipConfig::env(),
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
