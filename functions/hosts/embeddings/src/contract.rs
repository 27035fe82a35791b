//! The `embeddings` binary's deploy contract: every variable it reads, the union of the lists of the
//! readers its `main` calls. `embeddings contract` prints it; `contract.json` beside this crate is
//! that output, committed, which `coldpath check` holds the deployment to.

use coldpath_aws::ObjectStore;
use coldpath_core::Contract;

use crate::HostConfig;

/// What `embeddings` reads: tracing, the engines' config (CLIP's when its text tower is hosted)
/// and the object store.
pub fn contract() -> Contract {
    Contract::new(
        "embeddings",
        &[
            coldpath_runtime::LOGGING_ENV,
            &HostConfig::env(),
            ObjectStore::ENV,
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
