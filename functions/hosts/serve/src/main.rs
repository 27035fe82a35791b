//! `coldpath-serve`: init tracing, read config, build the object store once, run until SIGTERM
//! (then drain and exit 0); `coldpath-serve contract` prints the variables it reads and its
//! routes (its `contract.json`). Everything else is in the library.

use std::process::ExitCode;
use std::time::Duration;

use coldpath_aws::ObjectStore;
use coldpath_core::{Classify, ProcessEnv};
use coldpath_serve::{ServeConfig, StartError, run, shutdown_signal};

fn main() -> ExitCode {
    // The HEIC/AVIF decoder child this binary starts for itself runs here and never returns.
    coldpath_image::run_decoder_if_asked();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) =
        coldpath_runtime::contract_if_asked(&args, coldpath_serve::contract::contract)
    {
        return code;
    }
    coldpath_runtime::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("coldpath-serve failed: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(start());
    // A model call or a model load still running on the blocking pool (stuck, cut short by
    // the drain deadline, or a load interrupted by SIGTERM) must not hold the exit: dropping
    // the runtime would wait for it without bound.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(_finished) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error_type = %e.error_type(), "coldpath-serve failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start() -> Result<bool, StartError> {
    let config = ServeConfig::from_env(&ProcessEnv)?;
    let store = ObjectStore::from_env(&ProcessEnv).await?;
    tracing::info!(
        workloads = %config.workloads().join(","),
        address = %config.addr(),
        embeddings_queue = config.embeddings_batch.queue,
        embeddings_max_batch = config.embeddings_batch.max_items,
        faces_queue = config.faces_batch.queue,
        faces_max_batch = config.faces_batch.max_items,
        // The worst case the configuration allows for faces in flight, stated where the
        // operator (and the hostile-load bench) reads it.
        faces_memory_bound_bytes = config.faces_memory_bound(),
        drain_ms = config.drain.as_millis() as u64,
        object_store = store.kind(),
        "coldpath-serve config"
    );
    run(config, store, shutdown_signal()).await
}
