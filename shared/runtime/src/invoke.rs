use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use coldpath_core::ErrorType;
use lambda_runtime::{Context, LambdaEvent, service_fn};
use serde_json::Value;

use crate::HandlerError;

/// How the binary was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No arguments: serve the Lambda Runtime API (also what `cargo lambda watch` drives).
    Lambda,
    /// `invoke <EVENT_FILE>`: run the handler once in-process on a sample event.
    Invoke(PathBuf),
    /// `prepare <OUT_DIR>`: the packaging step. Init runs as in Lambda, with the same
    /// environment, except that each session is built from its original model and its optimised
    /// graph is written to `OUT_DIR` (and loaded back); the binary then lists what it wrote and
    /// exits. The function must pass `OUT_DIR` on to its session options (coldpath-models'
    /// `SessionConfig::preparing_into`): this crate knows nothing about models.
    Prepare(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("usage: {program} [invoke <EVENT_FILE> | prepare <OUT_DIR> | contract]\n{problem}")]
pub struct UsageError {
    program: String,
    problem: String,
}

impl Mode {
    /// Whether this is local `invoke <EVENT_FILE>` mode (local image paths are allowed only there,
    /// and a failed init is printed on stdout as a handler error would be).
    pub fn is_invoke(&self) -> bool {
        matches!(self, Mode::Invoke(_))
    }

    /// The output directory in `prepare <OUT_DIR>` mode, for the function's session options.
    pub fn prepare_dir(&self) -> Option<&Path> {
        match self {
            Mode::Prepare(dir) => Some(dir),
            _ => None,
        }
    }

    /// Parses the arguments after the program name.
    pub fn from_args(program: &str, args: &[String]) -> Result<Mode, UsageError> {
        let usage = |problem: &str| UsageError {
            program: program.to_string(),
            problem: problem.to_string(),
        };
        match args {
            [] => Ok(Mode::Lambda),
            [cmd, file] if cmd == "invoke" => Ok(Mode::Invoke(PathBuf::from(file))),
            [cmd] if cmd == "invoke" => Err(usage("invoke needs an event file")),
            [cmd, dir] if cmd == "prepare" => Ok(Mode::Prepare(PathBuf::from(dir))),
            [cmd] if cmd == "prepare" => Err(usage("prepare needs an output directory")),
            _ => Err(usage(&format!("unexpected arguments: {}", args.join(" ")))),
        }
    }
}

/// A Lambda binary's life after its own early hooks (the decoder child, `contract`): tracing,
/// the mode from `args` (usage on stderr and exit 2 when they are wrong), the shared state built
/// once by `start` for that mode (a failure is reported as the mode expects), then [`run`].
pub async fn run_function<S, Start, Started, F, Fut>(
    function: &str,
    args: &[String],
    start: Start,
    handler: F,
) -> ExitCode
where
    S: Send + Sync + 'static,
    Start: FnOnce(&Mode) -> Started,
    Started: Future<Output = Result<S, HandlerError>>,
    F: Fn(Arc<S>, LambdaEvent<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send,
{
    crate::init_tracing();
    let mode = match Mode::from_args(function, args) {
        Ok(mode) => mode,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match start(&mode).await {
        Ok(state) => run(function, mode, Arc::new(state), handler).await,
        Err(e) => init_failed(mode.is_invoke(), &e),
    }
}

/// Reports a failed init the way the mode expects and gives the exit code: the error is logged
/// (in Lambda, the runtime's init-error report comes from the process exiting), and in `invoke`
/// mode it is also printed on stdout in the Lambda error shape, like a handler error.
pub fn init_failed(invoke: bool, error: &HandlerError) -> ExitCode {
    tracing::error!(error_type = %error.error_type, "init failed: {}", error.message);
    if invoke && let Err(write_err) = print_json(&error.to_json()) {
        tracing::error!("cannot write the error to stdout: {write_err}");
    }
    ExitCode::FAILURE
}

/// Runs the handler once on the event in `path`, as the Lambda service would, without AWS.
pub async fn invoke_file<S, F, Fut>(
    path: &Path,
    state: Arc<S>,
    handler: F,
) -> Result<Value, HandlerError>
where
    F: Fn(Arc<S>, LambdaEvent<Value>) -> Fut,
    Fut: Future<Output = Result<Value, HandlerError>>,
{
    let text = std::fs::read_to_string(path).map_err(|e| {
        HandlerError::new(
            ErrorType::InvalidInput,
            format!("cannot read event file {}: {e}", path.display()),
        )
    })?;
    let payload: Value = serde_json::from_str(&text).map_err(|e| {
        HandlerError::new(
            ErrorType::InvalidInput,
            format!("event file {} is not valid JSON: {e}", path.display()),
        )
    })?;
    let mut context = Context::default();
    context.request_id = "local-invoke".to_string();
    handler(state, LambdaEvent::new(payload, context)).await
}

/// Runs the function in `mode` with shared `state` built once by the caller.
///
/// Local invoke prints only the response JSON on stdout and exits 0, or prints the error in the
/// Lambda shape (`errorType`, `errorMessage`) and exits 1. Lambda mode returns when the runtime
/// loop ends, which is only on a fatal runtime error.
pub async fn run<S, F, Fut>(function: &str, mode: Mode, state: Arc<S>, handler: F) -> ExitCode
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, LambdaEvent<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send,
{
    match mode {
        // Init already prepared the graphs (and warmed up the sessions loaded from them).
        Mode::Prepare(dir) => match prepared_listing(&dir).and_then(|v| print_json(&v)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(function, dir = %dir.display(), "cannot list the prepared graphs: {e}");
                ExitCode::FAILURE
            }
        },
        Mode::Invoke(path) => match invoke_file(&path, state, handler).await {
            Ok(response) => match print_json(&response) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(function, "cannot write the response to stdout: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(err) => {
                tracing::error!(function, error_type = %err.error_type, "{}", err.message);
                if let Err(e) = print_json(&err.to_json()) {
                    tracing::error!(function, "cannot write the error to stdout: {e}");
                }
                ExitCode::FAILURE
            }
        },
        Mode::Lambda => {
            let handler = Arc::new(handler);
            let service = service_fn(move |event: LambdaEvent<Value>| {
                let state = Arc::clone(&state);
                let handler = Arc::clone(&handler);
                async move { handler(state, event).await }
            });
            match lambda_runtime::run(service).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(function, "lambda runtime stopped: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `{"prepared_dir": …, "files": [names, sorted]}`: what `prepare <OUT_DIR>` leaves there.
fn prepared_listing(dir: &Path) -> std::io::Result<Value> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    files.sort();
    Ok(serde_json::json!({"prepared_dir": dir.display().to_string(), "files": files}))
}

/// Writes one JSON document and a newline to stdout. A closed pipe (`| head`) comes back as an
/// error for the caller to report, instead of the panic `println!` would raise.
pub fn print_json(value: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_modes() {
        assert_eq!(Mode::from_args("f", &[]), Ok(Mode::Lambda));
        assert_eq!(
            Mode::from_args("f", &args(&["invoke", "e.json"])),
            Ok(Mode::Invoke("e.json".into()))
        );
        let err = Mode::from_args("f", &args(&["invoke"])).unwrap_err();
        assert!(err.to_string().contains("invoke needs an event file"));
        assert!(Mode::from_args("f", &args(&["serve", "x"])).is_err());
        let prepare = Mode::from_args("f", &args(&["prepare", "out"])).unwrap();
        assert_eq!(prepare, Mode::Prepare("out".into()));
        assert_eq!(prepare.prepare_dir(), Some(Path::new("out")));
        assert_eq!(Mode::Lambda.prepare_dir(), None);
        let err = Mode::from_args("f", &args(&["prepare"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("prepare needs an output directory")
        );
        assert!(
            err.to_string()
                .starts_with("usage: f [invoke <EVENT_FILE> | prepare <OUT_DIR> | contract]")
        );
    }

    async fn echo(_: Arc<()>, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
        if event.payload.get("fail").is_some() {
            return Err(HandlerError::new(ErrorType::InvalidInput, "asked to fail"));
        }
        Ok(serde_json::json!({"echo": event.payload, "id": event.context.request_id}))
    }

    #[tokio::test]
    async fn prepare_mode_lists_what_init_wrote_and_exits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m-01.onnx"), b"g").unwrap();
        std::fs::write(dir.path().join("m-01.0.data"), b"w").unwrap();
        let listing = prepared_listing(dir.path()).unwrap();
        assert_eq!(
            listing["files"],
            serde_json::json!(["m-01.0.data", "m-01.onnx"])
        );
        let code = run("f", Mode::Prepare(dir.path().into()), Arc::new(()), echo).await;
        assert_eq!(code, ExitCode::SUCCESS);
        let missing = Mode::Prepare(dir.path().join("nope"));
        assert_eq!(
            run("f", missing, Arc::new(()), echo).await,
            ExitCode::FAILURE
        );
    }

    #[tokio::test]
    async fn invoke_runs_handler_on_file() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.json");
        std::fs::write(&ok, r#"{"a": 1}"#).unwrap();
        let out = invoke_file(&ok, Arc::new(()), echo).await.unwrap();
        assert_eq!(
            out,
            serde_json::json!({"echo": {"a": 1}, "id": "local-invoke"})
        );

        let fail = dir.path().join("fail.json");
        std::fs::write(&fail, r#"{"fail": true}"#).unwrap();
        let err = invoke_file(&fail, Arc::new(()), echo).await.unwrap_err();
        assert_eq!(err.error_type, ErrorType::InvalidInput);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let err = invoke_file(&bad, Arc::new(()), echo).await.unwrap_err();
        assert_eq!(err.error_type, ErrorType::InvalidInput);
        assert!(err.message.contains("not valid JSON"), "{}", err.message);

        let missing = invoke_file(&dir.path().join("nope.json"), Arc::new(()), echo)
            .await
            .unwrap_err();
        assert!(missing.message.contains("cannot read event file"));
    }
}
