use std::str::FromStr;

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

impl LogFormat {
    /// `COLDPATH_LOG_FORMAT` if set; otherwise JSON inside Lambda and text elsewhere.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("COLDPATH_LOG_FORMAT") {
            Ok(v) if !v.trim().is_empty() => v.trim().parse(),
            _ if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() => Ok(LogFormat::Json),
            _ => Ok(LogFormat::Text),
        }
    }
}

/// The filter used when `RUST_LOG` is unset. ONNX Runtime's own log (forwarded by `ort`) reports
/// every graph rewrite and arena allocation at info; only its warnings are worth a log line.
pub const DEFAULT_FILTER: &str = "info,ort=warn";

/// Installs the global subscriber: stderr only, level from `RUST_LOG` (default [`DEFAULT_FILTER`]).
///
/// A malformed `COLDPATH_LOG_FORMAT` falls back to text and is reported once the subscriber is up,
/// so the mistake is visible instead of silencing all logs.
pub fn init_tracing() {
    let (format, problem) = match LogFormat::from_env() {
        Ok(f) => (f, None),
        Err(e) => (LogFormat::Text, Some(e)),
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
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

    #[test]
    fn parses_formats() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
