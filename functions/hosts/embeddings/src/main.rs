//! `embeddings`: the Lambda binary. Without arguments it serves the Lambda Runtime API;
//! `embeddings invoke <EVENT_FILE>` runs one event locally and prints the response JSON;
//! `embeddings prepare <OUT_DIR>` writes the optimised graphs to ship in the package;
//! `embeddings contract` prints the variables it reads (its `contract.json`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use coldpath_aws::ObjectStore;
use coldpath_clip::Towers;
use coldpath_core::ProcessEnv;
use coldpath_embeddings::{OnnxEmbedder, init};
use coldpath_embeddings_function::{EmbeddingsFunction, HostConfig, handle};
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

/// Reads config and builds the shared resources once, before the first request: the text model,
/// and CLIP's text tower when `EMBEDDINGS_CLIP` is on. In `prepare` mode the sessions write their
/// graphs to `prepare`.
async fn start(
    prepare: Option<PathBuf>,
) -> Result<EmbeddingsFunction<OnnxEmbedder, ObjectStore>, HandlerError> {
    let HostConfig {
        embeddings: mut config,
        clip,
    } = HostConfig::from_env(&ProcessEnv).map_err(|e| HandlerError::from_error(&e))?;
    if let Some(dir) = &prepare {
        config.session = config.session.preparing_into(dir);
    }
    tracing::info!(
        model = %config.model.name,
        source = %config.model.source,
        ort_library = %config.ort_library.display(),
        provider = %config.session.provider,
        max_tokens = config.pipeline.max_tokens,
        clip_text = clip.as_ref().map(|c| c.model.name.as_str()),
        clip_source = clip.as_ref().map(|c| c.model.source.to_string()),
        "embeddings config"
    );
    let store = ObjectStore::from_env(&ProcessEnv)
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    let (service, _record) = init(&config, store.clone())
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    let mut function = EmbeddingsFunction::new(service);
    if let Some(mut clip) = clip {
        if let Some(dir) = &prepare {
            clip.session = clip.session.preparing_into(dir);
        }
        // The model comes through the object store; no photo is ever loaded here.
        let (clip_service, _record) =
            coldpath_clip::service::init(&clip, store, Towers::Text, false)
                .await
                .map_err(|e| HandlerError::from_error(&e))?;
        function = function.with_clip(clip_service);
    }
    Ok(function)
}
