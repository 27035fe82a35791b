//! The `coldpath-serve` binary's deploy contract: every variable it reads, the union of the lists of the
//! readers its `main` calls. `coldpath-serve contract` prints it; `contract.json` beside this crate is
//! that output, committed, which `coldpath check` holds the deployment to.

use coldpath_aws::ObjectStore;
use coldpath_core::Contract;

use crate::ServeConfig;
use crate::app::ROUTES;

/// What `coldpath-serve` reads (tracing, the server's and both engines' config, the object
/// store) and the routes it serves, from the router's own table.
pub fn contract() -> Contract {
    Contract::new(
        "coldpath-serve",
        &[
            coldpath_runtime::LOGGING_ENV,
            &ServeConfig::env(),
            ObjectStore::ENV,
        ],
    )
    .with_routes(ROUTES.iter().map(|(path, _)| *path))
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
