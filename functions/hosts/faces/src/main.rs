//! `faces`: the Lambda binary. Without arguments it serves the Lambda Runtime API;
//! `faces invoke <EVENT_FILE>` runs one event locally and prints the response JSON;
//! `faces prepare <OUT_DIR>` writes the optimised graphs to ship in the package;
//! `faces contract` prints the variables it reads (its `contract.json`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use coldpath_aws::{ObjectStore, ResultSink};
use coldpath_core::ProcessEnv;
use coldpath_faces::{FacesConfig, OnnxFaces, init};
use coldpath_faces_function::{FacesFunction, handle};
use coldpath_runtime::HandlerError;

fn main() -> ExitCode {
    // The HEIC/AVIF decoder child this binary starts for itself runs here and never returns.
    coldpath_image::run_decoder_if_asked();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) =
        coldpath_runtime::contract_if_asked(&args, coldpath_faces_function::contract::contract)
    {
        return code;
    }
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    coldpath_runtime::run_function(
        "faces",
        &args,
        |mode| start(mode.is_invoke(), mode.prepare_dir().map(Path::to_path_buf)),
        handle,
    )
    .await
}

/// Reads config and builds the shared resources once, before the first request. Local image
/// paths are allowed only in local invoke mode. In `prepare` mode the sessions write their graphs
/// to `prepare`.
async fn start(
    local: bool,
    prepare: Option<PathBuf>,
) -> Result<FacesFunction<OnnxFaces, ObjectStore>, HandlerError> {
    let mut config =
        FacesConfig::from_env(&ProcessEnv).map_err(|e| HandlerError::from_error(&e))?;
    if let Some(dir) = prepare {
        config.session = config.session.preparing_into(&dir);
    }
    let store = ObjectStore::from_env(&ProcessEnv)
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    let sink = ResultSink::from_env(&ProcessEnv, "faces")
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    tracing::info!(
        family = %config.family,
        detector = %config.detector.name,
        detector_source = %config.detector.source,
        recognizer = %config.recognizer.name,
        recognizer_source = %config.recognizer.source,
        ort_library = %config.ort_library.display(),
        provider = %config.session.provider,
        min_score = config.detect.min_score,
        max_faces = config.detect.max_faces,
        object_store = store.kind(),
        result_sink = %sink,
        "faces config"
    );
    let (service, _record) = init(&config, store, local)
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    Ok(FacesFunction::new(service, sink))
}
