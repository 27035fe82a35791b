//! `coldpath-serve`: init tracing, read config, build the object store once, run until SIGTERM
//! (then drain and exit 0). Everything else is in the library.

use std::process::ExitCode;

use coldpath_aws::ObjectStore;
use coldpath_core::{Classify, ProcessEnv};
use coldpath_serve::{ServeConfig, StartError, run, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    coldpath_runtime::init_tracing();
    match start().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error_type = %e.error_type(), "coldpath-serve failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start() -> Result<(), StartError> {
    let config = ServeConfig::from_env(&ProcessEnv)?;
    let store = ObjectStore::from_env(&ProcessEnv).await?;
    tracing::info!(
        workloads = %config.workloads().join(","),
        address = %config.addr(),
        embeddings_queue = config.embeddings_batch.queue,
        embeddings_max_batch = config.embeddings_batch.max_items,
        faces_queue = config.faces_batch.queue,
        faces_max_batch = config.faces_batch.max_items,
        drain_ms = config.drain.as_millis() as u64,
        object_store = store.kind(),
        "coldpath-serve config"
    );
    run(config, store, shutdown_signal()).await
}
