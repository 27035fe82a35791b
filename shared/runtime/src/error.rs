use std::fmt;

use coldpath_core::{Classify, ErrorType};

/// A failed invocation as callers see it: a stable class and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub error_type: ErrorType,
    pub message: String,
}

impl HandlerError {
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        HandlerError {
            error_type,
            message: message.into(),
        }
    }

    /// Classifies a library error, keeping its full `Display` chain as the message.
    pub fn from_error<E: Classify + fmt::Display>(err: &E) -> Self {
        HandlerError::new(err.error_type(), err.to_string())
    }

    /// The JSON body that local invoke prints, in the same shape the Lambda service reports.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "errorType": self.error_type.as_str(),
            "errorMessage": self.message,
        })
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for HandlerError {}

#[cfg(feature = "lambda")]
impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(e: HandlerError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type.as_str().to_string(),
            error_message: e.message,
        }
    }
}

/// An upload event's per-record summary (`{"records": [{"errorType"?, ...}], ...}`) as the
/// invocation's outcome. S3 and EventBridge invoke asynchronously and retry a failed invocation
/// whole, so bad input stays in the summary (retrying cannot fix it), and only a record that
/// failed transiently (`Retryable`) fails the invocation, for the retry to run it again; results
/// are keyed by their photo, so the repeat overwrites what the good records wrote.
pub fn upload_outcome(summary: serde_json::Value) -> Result<serde_json::Value, HandlerError> {
    let transient = summary["records"].as_array().is_some_and(|records| {
        records
            .iter()
            .any(|r| r["errorType"] == ErrorType::Retryable.as_str())
    });
    if transient {
        return Err(HandlerError::new(
            ErrorType::Retryable,
            format!("some records failed transiently; retry the event: {summary}"),
        ));
    }
    Ok(summary)
}

/// Logs a request's failure once, at the level its class deserves: a caller's bad request at
/// `info` (it is not ours to page on), anything else at `error`.
pub fn log_failure(e: &(impl Classify + fmt::Display)) {
    let error_type = e.error_type();
    if error_type.is_caller_error() {
        tracing::info!(error_type = %error_type, "rejected: {e}");
    } else {
        tracing::error!(error_type = %error_type, "failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_fails_only_when_a_record_failed_transiently() {
        let summary = |types: &[&str]| {
            let records: Vec<_> = types
                .iter()
                .map(|t| serde_json::json!({"status": "error", "errorType": t}))
                .collect();
            serde_json::json!({"records": records})
        };
        assert!(upload_outcome(summary(&["InvalidInput", "Internal"])).is_ok());
        let err = upload_outcome(summary(&["InvalidInput", "Retryable"])).unwrap_err();
        assert_eq!(err.error_type, ErrorType::Retryable);
        assert!(err.message.contains("retry the event"), "{err}");
        assert!(upload_outcome(serde_json::json!({"records": []})).is_ok());
    }

    #[derive(Debug, thiserror::Error)]
    #[error("input 3 is empty")]
    struct Empty;
    impl Classify for Empty {
        fn error_type(&self) -> ErrorType {
            ErrorType::InvalidInput
        }
    }

    #[cfg(feature = "lambda")]
    #[test]
    fn maps_to_lambda_diagnostic_with_stable_type() {
        let e = HandlerError::from_error(&Empty);
        let d: lambda_runtime::Diagnostic = e.clone().into();
        assert_eq!(d.error_type, "InvalidInput");
        assert_eq!(d.error_message, "input 3 is empty");
        assert_eq!(
            e.to_json(),
            serde_json::json!({"errorType": "InvalidInput", "errorMessage": "input 3 is empty"})
        );
    }
}
