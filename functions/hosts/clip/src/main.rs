//! `clip`: the Lambda binary. Without arguments it serves the Lambda Runtime API;
//! `clip invoke <EVENT_FILE>` runs one event locally and prints the response JSON;
//! `clip prepare <OUT_DIR>` writes the optimised graphs; `clip contract` prints the variables it
//! reads (its `contract.json`); `clip search [--top N] <RESULTS_DIR> <QUERY>` ranks the photo
//! vectors under a local result sink by a text query (it loads the text tower for that).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use coldpath_aws::{ObjectStore, ResultSink};
use coldpath_clip::{ClipConfig, ClipService, Towers};
use coldpath_clip_function::{ClipFunction, handle, search};
use coldpath_core::ProcessEnv;
use coldpath_runtime::HandlerError;

fn main() -> ExitCode {
    // The HEIC/AVIF decoder child this binary starts for itself runs here and never returns.
    coldpath_image::run_decoder_if_asked();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) =
        coldpath_runtime::contract_if_asked(&args, coldpath_clip_function::contract::contract)
    {
        return code;
    }
    run(args)
}

#[tokio::main]
async fn run(args: Vec<String>) -> ExitCode {
    if args.first().is_some_and(|a| a == "search") {
        return search_command(&args[1..]).await;
    }
    coldpath_runtime::run_function(
        "clip",
        &args,
        |mode| start(mode.is_invoke(), mode.prepare_dir().map(Path::to_path_buf)),
        handle,
    )
    .await
}

/// The config and the engine's service for `towers`, built once before the first request.
async fn service(
    towers: Towers,
    local: bool,
    prepare: Option<PathBuf>,
) -> Result<ClipService<ObjectStore>, HandlerError> {
    let mut config =
        ClipConfig::from_env(&ProcessEnv, towers).map_err(|e| HandlerError::from_error(&e))?;
    if let Some(dir) = prepare {
        config.session = config.session.preparing_into(&dir);
    }
    let store = ObjectStore::from_env(&ProcessEnv)
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    tracing::info!(
        model = %config.model.name,
        source = %config.model.source,
        towers = towers.as_str(),
        ort_library = %config.ort_library.display(),
        provider = %config.session.provider,
        object_store = store.kind(),
        "clip config"
    );
    let (service, _record) = coldpath_clip::service::init(&config, store, towers, local)
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    Ok(service)
}

/// The upload function: the vision tower and the result sink. Local image paths are allowed only
/// in local invoke mode.
async fn start(
    local: bool,
    prepare: Option<PathBuf>,
) -> Result<ClipFunction<ObjectStore>, HandlerError> {
    let sink = ResultSink::from_env(&ProcessEnv, "clip")
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    tracing::info!(result_sink = %sink, "clip sink");
    let service = service(Towers::Vision, local, prepare).await?;
    Ok(ClipFunction::new(service, sink))
}

const SEARCH_USAGE: &str = "usage: clip search [--top N] <RESULTS_DIR> <QUERY>";

async fn search_command(args: &[String]) -> ExitCode {
    coldpath_runtime::init_tracing();
    let (top, rest) = match args {
        [flag, n, rest @ ..] if flag == "--top" => match n.parse::<usize>() {
            Ok(n) if n > 0 => (n, rest),
            _ => {
                eprintln!("{SEARCH_USAGE}: --top takes a positive number, found {n:?}");
                return ExitCode::from(2);
            }
        },
        rest => (5, rest),
    };
    let [dir, query @ ..] = rest else {
        eprintln!("{SEARCH_USAGE}");
        return ExitCode::from(2);
    };
    let query = query.join(" ");
    if query.trim().is_empty() {
        eprintln!("{SEARCH_USAGE}: the query is empty");
        return ExitCode::from(2);
    }
    let service = match service(Towers::Text, true, None).await {
        Ok(s) => s,
        Err(e) => return coldpath_runtime::init_failed(true, &e),
    };
    let engine = service.engine();
    let (photos, skipped) =
        match search::load_vectors(Path::new(dir), engine.name(), engine.dimensions()) {
            Ok(found) => found,
            Err(e) => {
                eprintln!("cannot read {dir}: {e}");
                return ExitCode::FAILURE;
            }
        };
    let vector = match engine.embed_texts(std::slice::from_ref(&query)) {
        Ok(mut v) => v.remove(0),
        Err(e) => {
            eprintln!("embedding the query: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ranked = search::rank(&vector, &photos, top);
    let report = search::report(&query, engine.name(), &ranked, photos.len(), &skipped);
    match serde_json::to_string(&report) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
