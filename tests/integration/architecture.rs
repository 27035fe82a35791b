//! The layout as the build sees it: ARCHITECTURE.md's crate map is rendered from `cargo metadata`
//! (so it cannot drift from the manifests), and the rules the layout stands for are checked on
//! the same data: shared crates never depend on `functions/`, engines never on a host, and the
//! always-on server links no Lambda crate.
//!
//! After changing a manifest, `COLDPATH_UPDATE_MAP=1 cargo test -p coldpath-tests --test
//! integration architecture` rewrites the map in ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use coldpath_test_support::repo_root;
use serde_json::Value;

const BEGIN: &str = "<!-- crate map: generated from `cargo metadata` by tests/integration/architecture.rs; do not edit by hand -->";
const END: &str = "<!-- end of crate map -->";

/// The Lambda runtime: no engine and not the always-on server may be built with it.
const LAMBDA_RUNTIME: [&str; 2] = ["lambda_runtime", "lambda_runtime_api_client"];
/// The Lambda event types. The captioning engine reads S3 notifications and EventBridge's S3
/// events with them (those arrive over SQS, whichever host receives them: they are the engine's
/// request shapes, not Lambda's), so only the server must do without them.
const LAMBDA_EVENTS: &str = "aws_lambda_events";

/// One workspace crate: its folder and the workspace crates it depends on to build (normal and
/// build dependencies; dev-dependencies are not in its binary).
struct Crate {
    folder: String,
    deps: BTreeSet<String>,
}

fn cargo(args: &[&str]) -> String {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn workspace() -> BTreeMap<String, Crate> {
    let metadata: Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--locked",
        "--offline",
    ]))
    .expect("cargo metadata is JSON");
    let root = repo_root();
    let packages = metadata["packages"].as_array().expect("packages");
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().expect("manifest_path"));
            let folder = manifest
                .parent()
                .and_then(|d| d.strip_prefix(&root).ok())
                .expect("a crate inside the repository")
                .display()
                .to_string();
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .filter_map(|d| d["name"].as_str())
                .filter(|n| names.contains(n))
                .map(str::to_string)
                .collect();
            (
                p["name"].as_str().unwrap().to_string(),
                Crate { folder, deps },
            )
        })
        .collect()
}

/// The map as ARCHITECTURE.md shows it: one row per crate, by folder.
fn render(crates: &BTreeMap<String, Crate>) -> String {
    let mut rows: Vec<(&String, &Crate)> = crates.iter().collect();
    rows.sort_by(|a, b| a.1.folder.cmp(&b.1.folder));
    let mut out = String::from(
        "| folder | crate | builds on (our crates; dev-dependencies left out) |\n| --- | --- | --- |\n",
    );
    for (name, c) in rows {
        let deps = if c.deps.is_empty() {
            "—".to_string()
        } else {
            c.deps
                .iter()
                .map(|d| format!("`{d}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!("| `{}` | `{name}` | {deps} |\n", c.folder));
    }
    out
}

#[test]
fn the_crate_map_in_architecture_md_is_the_one_cargo_metadata_gives() {
    let path = repo_root().join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).expect("ARCHITECTURE.md");
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        panic!("ARCHITECTURE.md has no crate map between {BEGIN:?} and {END:?}");
    };
    let committed = text[begin + BEGIN.len()..end].trim();
    let generated = render(&workspace());
    if std::env::var_os("COLDPATH_UPDATE_MAP").is_some() {
        let updated = format!("{}{BEGIN}\n{generated}{}", &text[..begin], &text[end..]);
        std::fs::write(&path, updated).expect("write ARCHITECTURE.md");
        return;
    }
    assert_eq!(
        committed,
        generated.trim(),
        "ARCHITECTURE.md's crate map is stale; rerun with COLDPATH_UPDATE_MAP=1"
    );
}

/// Every arrow that breaks the layout's rules: a shared crate on anything outside `shared/`, an
/// engine on a host, a host on another host.
fn broken_arrows(crates: &BTreeMap<String, Crate>) -> Vec<String> {
    let mut broken = Vec::new();
    for (name, c) in crates {
        for dep in &c.deps {
            let (from, to) = (c.folder.as_str(), crates[dep].folder.as_str());
            let rule = if from.starts_with("shared/") && !to.starts_with("shared/") {
                "a shared crate builds on one outside shared/"
            } else if from.starts_with("functions/engines/") && to.starts_with("functions/hosts/") {
                "an engine builds on a host"
            } else if from.starts_with("functions/hosts/") && to.starts_with("functions/hosts/") {
                "a host builds on another host"
            } else {
                continue;
            };
            broken.push(format!("{name} ({from}) -> {dep} ({to}): {rule}"));
        }
    }
    broken
}

#[test]
fn dependencies_point_from_hosts_to_engines_to_shared() {
    let crates = workspace();
    assert_eq!(broken_arrows(&crates), Vec::<String>::new());
    // The hosts that run an engine build on one under functions/engines.
    for host in [
        "coldpath-serve",
        "coldpath-embeddings-function",
        "coldpath-faces-function",
        "coldpath-captioning-function",
    ] {
        assert!(
            crates[host]
                .deps
                .iter()
                .any(|d| crates[d].folder.starts_with("functions/engines/")),
            "{host} hosts no engine"
        );
    }
}

#[test]
fn each_kind_of_backward_arrow_is_caught() {
    let krate = |folder: &str, deps: &[&str]| Crate {
        folder: folder.to_string(),
        deps: deps.iter().map(|d| d.to_string()).collect(),
    };
    let crates = BTreeMap::from([
        ("core".to_string(), krate("shared/core", &[])),
        ("image".to_string(), krate("shared/image", &["engine"])),
        (
            "engine".to_string(),
            krate("functions/engines/e", &["core", "host"]),
        ),
        (
            "host".to_string(),
            krate("functions/hosts/h", &["engine", "serve"]),
        ),
        (
            "serve".to_string(),
            krate("functions/hosts/serve", &["engine"]),
        ),
    ]);
    let broken = broken_arrows(&crates);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].starts_with("engine "), "{broken:#?}");
    assert!(broken[1].starts_with("host "), "{broken:#?}");
    assert!(broken[2].starts_with("image "), "{broken:#?}");
}

/// The crates `package` is built from, as `cargo tree` resolves its features when it is built on
/// its own (a release build of the server alone, as the pod's images build it).
fn built_from(package: &str) -> BTreeSet<String> {
    tree(&["-p", package])
}

/// The crates in `cargo tree` for `args` (a package, its features, another manifest).
fn tree(args: &[&str]) -> BTreeSet<String> {
    let mut all = vec!["tree"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p}",
        "--locked",
        "--offline",
    ]);
    cargo(&all)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_pod_and_the_engines_link_no_lambda_crate() {
    for package in [
        "coldpath-serve",
        "coldpath-embeddings",
        "coldpath-faces",
        "coldpath-captioning",
    ] {
        let crates = built_from(package);
        for lambda in LAMBDA_RUNTIME {
            assert!(!crates.contains(lambda), "{package} is built with {lambda}");
        }
    }
    assert!(
        !built_from("coldpath-serve").contains(LAMBDA_EVENTS),
        "coldpath-serve is built with {LAMBDA_EVENTS}"
    );
    // The check sees a Lambda crate where there is one.
    assert!(built_from("coldpath-embeddings-function").contains("lambda_runtime"));
}

/// Crates that make a build link ONNX Runtime.
const ORT_CRATES: [&str; 2] = ["ort", "ort-sys"];

#[test]
fn the_engines_parsers_and_the_fuzz_targets_link_no_onnx_runtime() {
    // Each engine without its `onnx` feature: the request and response types, parsing and
    // validation, as the fuzz targets take it.
    for package in [
        "coldpath-embeddings",
        "coldpath-faces",
        "coldpath-captioning",
    ] {
        let crates = tree(&["-p", package, "--no-default-features"]);
        for ort in ORT_CRATES {
            assert!(
                !crates.contains(ort),
                "{package} without default features is built with {ort}"
            );
        }
    }
    // The fuzz targets themselves (their own workspace and lock file).
    let fuzz = tree(&["--manifest-path", "fuzz/Cargo.toml"]);
    assert!(fuzz.contains("coldpath-faces"), "{fuzz:?}");
    for ort in ORT_CRATES {
        assert!(!fuzz.contains(ort), "the fuzz targets are built with {ort}");
    }
    // The check sees ONNX Runtime where it is: in an engine's default build.
    assert!(built_from("coldpath-embeddings").contains("ort"));
}
