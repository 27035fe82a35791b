//! `captioning`: the Lambda binary. Without arguments it serves the Lambda Runtime API (an SQS
//! event source); `captioning invoke <EVENT_FILE>` runs one event locally and prints the batch
//! response; `captioning worker` consumes `CAPTIONING_QUEUE_URL` until SIGTERM or idle;
//! `captioning prepare <OUT_DIR>` writes the optimised graphs for the model's deployment;
//! `captioning contract` prints the variables it reads (its `contract.json`).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use coldpath_aws::{ObjectStore, Queue, ResultSink};
use coldpath_captioning::config::require_result_sink;
use coldpath_captioning::{CaptioningConfig, ModelService, init};
use coldpath_captioning_function::cli::{self, Command};
use coldpath_captioning_function::contract::QUEUE_URL;
use coldpath_captioning_function::{Worker, handle, load_in_background, worker};
use coldpath_core::ProcessEnv;
use coldpath_runtime::{Deferred, HandlerError, Mode};
use tokio::sync::watch;

fn main() -> ExitCode {
    // The HEIC/AVIF decoder child this binary starts for itself runs here and never returns.
    coldpath_image::run_decoder_if_asked();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) =
        coldpath_runtime::contract_if_asked(&args, coldpath_captioning_function::contract::contract)
    {
        return code;
    }
    run_main()
}

#[tokio::main]
async fn run_main() -> ExitCode {
    coldpath_runtime::init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse_args(&args) {
        Ok(c) => c,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let invoke = matches!(&command, Command::Function(mode) if mode.is_invoke());
    let prepare = match &command {
        Command::Function(mode) => mode.prepare_dir().map(Path::to_path_buf),
        Command::Worker => None,
    };
    // The worker's queue and sink settings are checked before the model loads, so a missing
    // one fails at once.
    let run = match command {
        Command::Function(mode) => Run::Function(mode),
        Command::Worker => {
            // Listen for SIGTERM before the model loads: a platform may stop a worker during
            // its cold start, and that is a clean exit too (it holds no message yet).
            let shutdown = match worker::stop_on_signals() {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let queue = match Queue::from_env(&ProcessEnv, QUEUE_URL.name).await {
                Ok(queue) => require_result_sink(&ProcessEnv).map(|()| queue),
                Err(e) => Err(e),
            };
            match queue {
                Ok(queue) => Run::Worker(queue, shutdown),
                Err(e) => {
                    tracing::error!(error_type = "Config", "init failed: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    // An on-demand Lambda sandbox loads the model behind its first event instead of in init:
    // captioning's real-size model takes longer than Lambda's 10 s init (see `Deferred`).
    if matches!(&run, Run::Function(Mode::Lambda)) && load_in_background(&ProcessEnv) {
        tracing::info!("loading the model in the background; the first event waits for it");
        let loading = Deferred::spawn(async { start(false, None).await.map(|s| s.service) });
        return coldpath_runtime::run(
            "captioning",
            Mode::Lambda,
            Arc::new(loading),
            |loading, event| async move {
                match loading.get().await {
                    Ok(service) => handle(service, event).await,
                    Err(e) => load_failed(&e),
                }
            },
        )
        .await;
    }
    let started = match start(invoke, prepare.as_deref()).await {
        Ok(s) => s,
        Err(e) => return coldpath_runtime::init_failed(invoke, &e),
    };
    match run {
        Run::Function(mode) => {
            coldpath_runtime::run("captioning", mode, Arc::new(started.service), handle).await
        }
        Run::Worker(queue, shutdown) => run_worker(queue, shutdown, started).await,
    }
}

/// A model that failed to load in the background ends the sandbox, as a failed init does: the
/// event's messages go back to the queue untouched, and Lambda starts the next event in a fresh
/// sandbox, which loads again (a throttled fetch may well succeed there).
fn load_failed(error: &HandlerError) -> ! {
    tracing::error!(error_type = %error.error_type, "init failed: {}", error.message);
    std::process::exit(1)
}

enum Run {
    Function(Mode),
    Worker(Queue, watch::Receiver<bool>),
}

struct Started {
    config: CaptioningConfig,
    service: ModelService<ObjectStore, ResultSink>,
}

/// Reads config and builds the shared resources once, before the first message. Local paths in
/// messages are honoured only in `invoke` mode. In `prepare` mode the sessions write their
/// graphs to `prepare`.
async fn start(allow_local_paths: bool, prepare: Option<&Path>) -> Result<Started, HandlerError> {
    let mut config =
        CaptioningConfig::from_env(&ProcessEnv).map_err(|e| HandlerError::from_error(&e))?;
    if let Some(dir) = prepare {
        config.session = config.session.preparing_into(dir);
    }
    let store = ObjectStore::from_env(&ProcessEnv)
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    let sink = ResultSink::from_env(&ProcessEnv, "captioning")
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    tracing::info!(
        model = %config.model.spec.name,
        source = %config.model.spec.source,
        ort_library = %config.ort_library.display(),
        provider = %config.session.provider,
        allow_cpu_fallback = config.session.allow_cpu_fallback,
        object_store = store.kind(),
        result_sink = sink.kind(),
        max_batch = config.batch.max_batch,
        max_new_tokens_cap = config.batch.max_new_tokens_cap,
        "captioning config"
    );
    let (service, _record) = init(&config, store, sink, allow_local_paths)
        .await
        .map_err(|e| HandlerError::from_error(&e))?;
    Ok(Started { config, service })
}

/// The worker: the queue from `CAPTIONING_QUEUE_URL`, stopped by SIGTERM/SIGINT or idleness.
async fn run_worker(queue: Queue, shutdown: watch::Receiver<bool>, started: Started) -> ExitCode {
    tracing::info!(queue = queue.url(), "captioning worker");
    let worker = Worker::new(queue, Arc::new(started.service), started.config.worker);
    let code = match worker.run(shutdown).await {
        Ok(_) => 0,
        Err(e) => {
            tracing::error!(error_type = %coldpath_core::Classify::error_type(&e), "worker stopped: {e}");
            1
        }
    };
    // Exit here rather than return: dropping the runtime would wait for a model call that the
    // stop deadline cut off (it keeps running on the blocking pool), and the platform's SIGKILL
    // would come first; and skip the C++ destructors, which would pull ONNX Runtime out from
    // under that call (see `worker::exit_now`). Every message is settled by now.
    worker::exit_now(code)
}
