//! The workspace as `cargo metadata` describes it, and the deploy contracts its hosts commit.
//!
//! `cargo metadata --format-version 1 --no-deps --locked` names the workspace's crates, where
//! each lives and its `[package.metadata]`: the host crates (under `functions/hosts/`) carry the
//! declarations ([`crate::declaration`]). Each host also commits `contract.json` beside its
//! `Cargo.toml`, what `<binary> contract` prints: every variable the binary reads (the union of
//! the typed lists its config readers use) and, for the server, its routes. `coldpath check`
//! holds the templates to those files; it never reads source text, builds nothing and runs no
//! binary, and each host's tests fail when its `contract.json` is stale.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::declaration::{self, Declaration, PodDeclaration};
use crate::error::DeclarationError;

/// Where the host crates live, relative to the workspace root: each declares a function or the
/// always-on pod in `[package.metadata.coldpath]`.
pub const HOSTS_DIR: &str = "functions/hosts";

/// The file beside each host's `Cargo.toml` that holds its contract.
pub const CONTRACT_FILE: &str = "contract.json";

/// One crate of the workspace.
#[derive(Debug, Clone, Deserialize)]
pub struct Package {
    pub name: String,
    pub manifest_path: PathBuf,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

impl Package {
    /// The crate's folder.
    pub fn dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(Path::new("."))
    }
}

/// The workspace's crates.
#[derive(Debug, Clone, Deserialize)]
pub struct Workspace {
    pub workspace_root: PathBuf,
    pub packages: Vec<Package>,
}

impl Workspace {
    /// Runs `cargo metadata` on the workspace at `root` (`$CARGO`, or `cargo` on the path).
    pub fn load(root: &Path) -> Result<Self, DeclarationError> {
        let manifest = root.join("Cargo.toml");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let failed = |reason: String| DeclarationError::Read {
            path: manifest.clone(),
            reason,
        };
        let output = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
            .arg("--manifest-path")
            .arg(&manifest)
            .output()
            .map_err(|e| failed(format!("cannot run cargo metadata: {e}")))?;
        if !output.status.success() {
            return Err(failed(format!(
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Self::from_json(&String::from_utf8_lossy(&output.stdout), &manifest)
    }

    /// Parses `cargo metadata`'s output; `path` is only used in messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, DeclarationError> {
        serde_json::from_str(text).map_err(|e| DeclarationError::Parse {
            path: path.to_path_buf(),
            reason: format!("cargo metadata output: {e}"),
        })
    }

    /// The host crates: those under [`HOSTS_DIR`].
    pub fn hosts(&self) -> impl Iterator<Item = &Package> {
        let hosts = self.workspace_root.join(HOSTS_DIR);
        self.packages
            .iter()
            .filter(move |p| p.manifest_path.starts_with(&hosts))
    }

    /// The crate named `name`.
    pub fn package(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name)
    }

    /// Every host's declaration: a function's, or the pod's given to the workloads it hosts.
    pub fn declarations(&self) -> Result<Vec<Declaration>, DeclarationError> {
        let mut functions = Vec::new();
        let mut pod = None;
        for package in self.hosts() {
            let section = package
                .metadata
                .as_ref()
                .and_then(|m| m.get("coldpath"))
                .ok_or_else(|| DeclarationError::Missing {
                    crate_name: package.name.clone(),
                    path: package.manifest_path.clone(),
                })?;
            let table = toml_table(section, &package.manifest_path)?;
            match table.get("pod").and_then(toml::Value::as_table) {
                Some(pod_table) => {
                    pod = Some(PodDeclaration::from_table(
                        &package.name,
                        pod_table,
                        &self.workspace_root,
                    )?);
                }
                None => functions.push(Declaration::from_table(package.name.clone(), &table)?),
            }
        }
        declaration::with_pod(functions, pod)
    }

    /// The committed contract of the crate named `crate_name`.
    pub fn contract(&self, crate_name: &str) -> Result<BinaryContract, DeclarationError> {
        let package = self
            .package(crate_name)
            .ok_or_else(|| DeclarationError::Read {
                path: self.workspace_root.join("Cargo.toml"),
                reason: format!("no crate {crate_name} in the workspace"),
            })?;
        BinaryContract::from_file(&package.dir().join(CONTRACT_FILE))
    }
}

/// A `cargo metadata` JSON table as the TOML table the manifest wrote.
fn toml_table(section: &serde_json::Value, path: &Path) -> Result<toml::Table, DeclarationError> {
    toml::Table::try_from(section).map_err(|e| DeclarationError::Parse {
        path: path.to_path_buf(),
        reason: format!("[package.metadata.coldpath]: {e}"),
    })
}

/// Whether a deployment sets a variable (`need` in `contract.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    Optional,
    Required,
    /// Set by the platform (Lambda, AWS Batch), never by a template.
    Platform,
}

/// One variable of a contract.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContractVar {
    pub name: String,
    pub need: Need,
}

/// A host's committed `contract.json`: what its binary reads and serves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BinaryContract {
    pub binary: String,
    pub env: Vec<ContractVar>,
    #[serde(default)]
    pub routes: Vec<String>,
}

impl BinaryContract {
    pub fn from_file(path: &Path) -> Result<Self, DeclarationError> {
        let text = std::fs::read_to_string(path).map_err(|e| DeclarationError::Read {
            path: path.to_path_buf(),
            reason: format!("{e} (`make contracts` writes it)"),
        })?;
        serde_json::from_str(&text).map_err(|e| DeclarationError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Whether a deployment may set `name`: the binary reads it and the platform does not set
    /// it.
    pub fn reads(&self, name: &str) -> bool {
        self.env
            .iter()
            .any(|v| v.name == name && v.need != Need::Platform)
    }

    /// Whether the server routes `path`.
    pub fn routes(&self, path: &str) -> bool {
        self.routes.iter().any(|r| r == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn the_hosts_are_found_by_cargo_metadata_and_declare_themselves() {
        let workspace = Workspace::load(&root()).unwrap();
        let mut hosts: Vec<&str> = workspace.hosts().map(|p| p.name.as_str()).collect();
        hosts.sort();
        assert_eq!(
            hosts,
            [
                "coldpath-captioning-function",
                "coldpath-clip-function",
                "coldpath-embeddings-function",
                "coldpath-faces-function",
                "coldpath-serve"
            ]
        );
        let declarations = workspace.declarations().unwrap();
        let workloads: Vec<&str> = declarations.iter().map(|d| d.workload.as_str()).collect();
        assert_eq!(
            workloads,
            ["embeddings", "faces", "clip-vision", "captioning"]
        );
        assert!(declarations[0].pod.is_some() && declarations[3].pod.is_none());
        // The CLIP text tower is declared inside the embeddings function, and the pod hosts it.
        let cohosted: Vec<&str> = declarations[0]
            .cohosted
            .iter()
            .map(|c| c.workload.as_str())
            .collect();
        assert_eq!(cohosted, ["clip-text"]);
        assert!(
            declarations[0]
                .pod
                .as_ref()
                .is_some_and(|p| p.hosts.iter().any(|h| h == "clip-text"))
        );
    }

    #[test]
    fn a_contract_lists_what_its_binary_reads_and_not_what_the_platform_sets() {
        let workspace = Workspace::load(&root()).unwrap();
        let embeddings = workspace.contract("coldpath-embeddings-function").unwrap();
        assert_eq!(embeddings.binary, "embeddings");
        assert!(embeddings.reads("EMBEDDINGS_MODEL_SOURCE"));
        assert!(!embeddings.reads("AWS_LAMBDA_FUNCTION_NAME"));
        // embeddings decodes no image (its CLIP text tower reads no photo): the decoders' paths
        // are not its to be given.
        assert!(!embeddings.reads("COLDPATH_LIBHEIF_PATH"));
        assert!(embeddings.reads("EMBEDDINGS_CLIP") && embeddings.reads("CLIP_MODEL_SOURCE"));
        assert!(
            workspace
                .contract("coldpath-faces-function")
                .unwrap()
                .reads("COLDPATH_LIBHEIF_PATH")
        );
        let clip = workspace.contract("coldpath-clip-function").unwrap();
        assert_eq!(clip.binary, "clip");
        assert!(clip.reads("CLIP_MODEL_SOURCE") && !clip.reads("EMBEDDINGS_CLIP"));
        let serve = workspace.contract("coldpath-serve").unwrap();
        assert!(serve.routes("/ready") && !serve.routes("/readyz"));
    }
}
