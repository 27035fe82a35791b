//! `<binary> contract`: every host prints its deploy contract (the variables it reads and, for a
//! server, its routes) as JSON and exits, before tracing, config or init, so printing it needs
//! no model, no ONNX Runtime and no AWS.

use std::path::Path;
use std::process::ExitCode;

use coldpath_core::Contract;

/// The argument that asks for the contract.
pub const CONTRACT_ARG: &str = "contract";

/// When the arguments (after the program name) are exactly `contract`, prints `contract()` on
/// stdout and gives the exit code; otherwise `None`, and the binary goes on.
pub fn contract_if_asked(args: &[String], contract: impl FnOnce() -> Contract) -> Option<ExitCode> {
    match args {
        [arg] if arg == CONTRACT_ARG => {
            print!("{}", contract().to_json());
            Some(ExitCode::SUCCESS)
        }
        _ => None,
    }
}

/// Compares a host crate's committed `contract.json` with what the binary would print; the
/// error says how to regenerate it. The host crates' tests call this.
pub fn committed_contract_matches(path: &Path, contract: &Contract) -> Result<(), String> {
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let current = contract.to_json();
    if committed == current {
        Ok(())
    } else {
        Err(format!(
            "{} is stale (regenerate it with `make contracts`); the binary prints:\n{current}",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::EnvVar;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_single_argument_contract_asks_for_it() {
        let contract = || Contract::new("x", &[&[EnvVar::optional("A", "a")]]);
        assert_eq!(
            contract_if_asked(&args(&["contract"]), contract),
            Some(ExitCode::SUCCESS)
        );
        for other in [&[][..], &["invoke", "e.json"], &["contract", "x"]] {
            assert_eq!(contract_if_asked(&args(other), contract), None, "{other:?}");
        }
    }

    #[test]
    fn a_stale_or_missing_file_is_an_error_naming_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contract.json");
        let contract = Contract::new("x", &[&[EnvVar::optional("A", "a")]]);
        let err = committed_contract_matches(&path, &contract).unwrap_err();
        assert!(err.contains("make contracts"), "{err}");
        std::fs::write(&path, contract.to_json()).unwrap();
        assert_eq!(committed_contract_matches(&path, &contract), Ok(()));
    }
}
