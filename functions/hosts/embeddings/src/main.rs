//! `embeddings`: the Lambda binary. Without arguments it serves the Lambda Runtime API;
//! `embeddings invoke <EVENT_FILE>` runs one event locally and prints the response JSON;
//! `embeddings prepare <OUT_DIR>` writes the optimised graphs to ship in the package;
//! `embeddings contract` prints the variables it reads (its `contract.json`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use coldpath_core::ProcessEnv;
use coldpath_embeddings::{EmbeddingsConfig, init};
use coldpath_embeddings_function::handle;
use coldpath_runtime::HandlerError;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) =
        coldpath_runtime::contract_if_asked(&args, coldpath_embeddings_function::contract::contract)
    {
        return code;
    }
    coldpath_runtime::run_function(
        "embeddings",
        &args,
        |mode| start(mode.prepare_dir().map(Path::to_path_buf)),
        handle,
    )
    .await
}

/// Reads config and builds the shared resources once, before the first request.
/// In `prepare` mode the sessions write their graphs to `prepare`.
async fn start(
    prepare: Option<PathBuf>,
) -> Result<coldpath_embeddings::EmbeddingsService<coldpath_embeddings::OnnxEmbedder>, HandlerError>
{
    let mut config =
        EmbeddingsConfig::from_env(&ProcessEnv).map_err(|e| HandlerError::from_error(&e))?;
    if let Some(dir) = prepare {
        config.session = config.session.preparing_into(&dir);
    }
    tracing::info!(
        model = %config.model.name,
        source = %config.model.source,
        ort_library = %config.ort_library.display(),
        provider = %config.session.provider,
        max_tokens = config.pipeline.max_tokens,
        "embeddings config"
    );
    let store = coldpath_aws::ObjectStore::from_env(&ProcessEnv)
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    let (service, _record) = init(&config, store)
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    Ok(service)
}
