use std::str::FromStr;

use coldpath_core::config::{self, EnvSource, ProcessEnv};
use coldpath_core::contract::EnvVar;
use tracing_subscriber::EnvFilter;

/// How log lines are written. Both go to stderr: stdout belongs to local invoke's JSON response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for CloudWatch Logs Insights and other log pipelines.
    Json,
    /// Human-readable lines for a terminal.
    Text,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(format!(
                "COLDPATH_LOG_FORMAT: expected json or text, found {other:?}"
            )),
        }
    }
}

/// The variables [`init_tracing`] reads.
pub const ENV: &[EnvVar] = &[
    EnvVar::optional(
        "COLDPATH_LOG_FORMAT",
        "json or text (JSON inside Lambda by default)",
    ),
    EnvVar::platform(
        "AWS_LAMBDA_FUNCTION_NAME",
        "set by Lambda: logs are JSON there",
    ),
    EnvVar::optional("RUST_LOG", "the log filter (default info,ort=warn)"),
];

impl LogFormat {
    /// `COLDPATH_LOG_FORMAT` if set; otherwise JSON inside Lambda and text elsewhere.
    pub fn from_env(env: &impl EnvSource) -> Result<Self, String> {
        match config::get(env, "COLDPATH_LOG_FORMAT") {
            Some(v) => v.parse(),
            None if config::get(env, "AWS_LAMBDA_FUNCTION_NAME").is_some() => Ok(LogFormat::Json),
            None => Ok(LogFormat::Text),
        }
    }
}

/// The format (or the problem with `COLDPATH_LOG_FORMAT`) and the filter, from `env`.
fn settings(env: &impl EnvSource) -> (Result<LogFormat, String>, EnvFilter) {
    let format = LogFormat::from_env(env);
    let filter = env
        .get("RUST_LOG")
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    (format, filter)
}

/// The filter used when `RUST_LOG` is unset. ONNX Runtime's own log (forwarded by `ort`) reports
/// every graph rewrite and arena allocation at info; only its warnings are worth a log line.
pub const DEFAULT_FILTER: &str = "info,ort=warn";

/// Installs the global subscriber: stderr only, level from `RUST_LOG` (default [`DEFAULT_FILTER`]).
///
/// A malformed `COLDPATH_LOG_FORMAT` falls back to text and is reported once the subscriber is up,
/// so the mistake is visible instead of silencing all logs.
pub fn init_tracing() {
    let (format, filter) = settings(&ProcessEnv);
    let (format, problem) = match format {
        Ok(f) => (f, None),
        Err(e) => (LogFormat::Text, Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` so that tests and embedders that installed a subscriber first are left alone.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
    if let Some(problem) = problem {
        tracing::warn!("{problem}; using text logs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deploy contract: the logging settings read exactly [`ENV`].
    #[test]
    fn the_logging_settings_read_exactly_their_list() {
        let env = coldpath_core::RecordingEnv::new(coldpath_core::MapEnv::default());
        let (format, _filter) = settings(&env);
        assert_eq!(format, Ok(LogFormat::Text));
        let difference = env.difference(&[ENV]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[test]
    fn parses_formats() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
