//! Helpers for coldpath's tests and benchmarks that need no function crate, so every crate can
//! dev-depend on them without a cycle: where the repository is, the setup's variables, a function
//! binary's stdout and its metric lines, a local moto server for the S3 and SQS wire protocols
//! ([`moto`]), and the machine and median every benchmark records ([`bench`]).

pub mod bench;
pub mod moto;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    // This crate lives at `tests/support`.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The response JSON a function binary printed in `invoke` mode, which must be the only thing on
/// its stdout (logs go to stderr): one line, one JSON document.
pub fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        1,
        "stdout must be exactly one JSON document: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The CloudWatch embedded-metric-format documents a function binary wrote on stderr: every line
/// that is a JSON object with an `_aws` member (log lines, text or JSON, have none).
pub fn emf_documents(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|doc| doc.get("_aws").is_some())
        .collect()
}

/// The vectors of an OpenAI embeddings response (`data[].embedding`, float format), in order.
pub fn vectors(response: &serde_json::Value) -> Vec<Vec<f32>> {
    response["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .expect("float embedding")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect()
        })
        .collect()
}

/// Checks the metric lines of one local invocation that succeeded: exactly a `ColdStart` line and
/// then one invocation line (`Latency`, `BatchSize` = `batch`, `Errors` = 0), both for `function`
/// in the `coldpath` namespace.
pub fn assert_invocation_metrics(out: &std::process::Output, function: &str, batch: f64) {
    let docs = emf_documents(out);
    assert_eq!(docs.len(), 2, "{docs:?}");
    for doc in &docs {
        assert_eq!(doc["Function"], function, "{doc}");
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], "coldpath");
    }
    assert!(
        docs[0]["ColdStart"].as_f64().is_some_and(|ms| ms > 0.0),
        "{}",
        docs[0]
    );
    assert!(
        docs[1]["Latency"].as_f64().is_some_and(|ms| ms > 0.0),
        "{}",
        docs[1]
    );
    assert_eq!(docs[1]["BatchSize"], batch, "{}", docs[1]);
    assert_eq!(docs[1]["Errors"], 0.0, "{}", docs[1]);
}

/// A variable that `make test` exports from `tools/setup/bootstrap.py env`. Tests need the real
/// library and model, so a missing one fails loudly with the fix instead of skipping.
pub fn setup_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the tests with `make test` (or `eval \"$(make -s env)\"` first)"
        ),
    }
}

/// Sends SIGTERM to process `pid`, as a container platform does before stopping it.
pub fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill -TERM");
    assert!(status.success(), "kill -TERM {pid}: {status}");
}

/// Bytes that make a test build's HEIC/AVIF decoder child abort, hang, or allocate until its
/// memory limit stops it (`coldpath-image`'s `fault-injection` feature, which `make test`
/// turns on; release builds have no such check).
pub const DECODER_ABORT: &[u8] = b"COLDPATH-TEST-DECODER-ABORT";
pub const DECODER_HANG: &[u8] = b"COLDPATH-TEST-DECODER-HANG";
pub const DECODER_HOG: &[u8] = b"COLDPATH-TEST-DECODER-HOG";

/// The sample iPhone HEIC with `marker` in a trailing `free` box: still a valid HEIC (readers
/// skip `free` boxes), so only the fault-injection decoder treats it differently.
pub fn heic_with_marker(marker: &[u8]) -> Vec<u8> {
    let mut bytes =
        std::fs::read(repo_root().join("events/data/photos/IMG_0001.HEIC")).expect("sample HEIC");
    let size = u32::try_from(8 + marker.len()).expect("small marker");
    bytes.extend_from_slice(&size.to_be_bytes());
    bytes.extend_from_slice(b"free");
    bytes.extend_from_slice(marker);
    bytes
}

/// Runs `command` (a debug build of a host binary) with every variable it reads through
/// `ProcessEnv` logged, and asserts each one is in the host's committed `contract.json` at
/// `contract`: what the binary really reads, held to what `coldpath check` holds the templates
/// to. `test_only` names variables a test build may read beyond it (a fault-injection setting,
/// in no release binary). Returns the command's output for the caller's own assertions.
pub fn assert_reads_within_contract(
    mut command: std::process::Command,
    contract: &std::path::Path,
    test_only: &[&str],
) -> std::process::Output {
    // One file per call: the test binary's threads may run several hosts at once.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = std::env::temp_dir().join(format!(
        "coldpath-env-reads-{}-{call}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&log);
    let out = command
        .env("COLDPATH_ENV_READS", &log)
        .output()
        .expect("run the binary");
    let read = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let listed: std::collections::BTreeSet<String> = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(contract).expect("contract.json"),
    )
    .expect("contract.json is JSON")["env"]
        .as_array()
        .expect("contract.json lists env")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    let unlisted: std::collections::BTreeSet<&str> = read
        .lines()
        .filter(|n| !listed.contains(*n) && !test_only.contains(n))
        .collect();
    assert!(
        !read.is_empty(),
        "the binary logged no variable read; is it a debug build?"
    );
    assert!(
        unlisted.is_empty(),
        "the binary read variables its contract ({}) does not list: {unlisted:?}",
        contract.display()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_is_the_workspace_root() {
        assert!(repo_root().join("ARCHITECTURE.md").is_file());
        assert!(repo_root().join("tests/support/Cargo.toml").is_file());
    }
}
