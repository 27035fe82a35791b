//! What the process tests and the soak share: `captioning worker` as a platform starts it.

use std::path::Path;
use std::process::{Command, Stdio};

use coldpath_test_support::repo_root;

/// The real binary in worker mode, configured by the environment only: the queue at
/// `queue_url` on the moto server at `endpoint` (test credentials, one region, no instance
/// metadata), photos from `events/data`, results as JSON files under `results`, JSON logs, one
/// intra-op thread and a 1 s long poll. Callers add their own settings and where stderr goes.
pub fn worker_command(queue_url: &str, endpoint: &str, results: &Path) -> Command {
    assert!(
        std::env::var("ORT_DYLIB_PATH").is_ok(),
        "run with `make test` so ORT_DYLIB_PATH and the model paths are set"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_captioning"));
    cmd.current_dir(repo_root())
        .arg("worker")
        .env("CAPTIONING_QUEUE_URL", queue_url)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_LAMBDA_FUNCTION_NAME")
        .env("COLDPATH_OBJECT_STORE", "local:events/data")
        .env(
            "COLDPATH_RESULT_SINK",
            format!("local:{}", results.display()),
        )
        .env("COLDPATH_LOG_FORMAT", "json")
        .env("COLDPATH_INTRA_THREADS", "1")
        .env("CAPTIONING_WAIT_SECS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}
