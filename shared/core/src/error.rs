//! Stable error classification.
//!
//! Callers and retry policies act on the class of an error, not on its message, so every library
//! error maps to one [`ErrorType`] whose string form never changes.

use std::fmt;

/// The stable class of a failure, reported as the Lambda `errorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// The request itself is wrong; retrying it unchanged fails again.
    InvalidInput,
    /// The request is larger than the configured limits allow.
    RequestTooLarge,
    /// Configuration read at start-up is missing or malformed.
    Config,
    /// A model or the ONNX Runtime library could not be fetched, verified or loaded.
    ModelLoad,
    /// A transient failure (network, throttling); the same request may succeed later.
    Retryable,
    /// A bug or an unexpected state inside the function.
    Internal,
}

impl ErrorType {
    /// Whether the caller has to fix the request (a rejection, logged at `info`) rather than
    /// the deployment or us (a failure, logged at `error`).
    pub fn is_caller_error(self) -> bool {
        matches!(self, ErrorType::InvalidInput | ErrorType::RequestTooLarge)
    }

    /// The wire name, used as the Lambda `errorType`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidInput => "InvalidInput",
            ErrorType::RequestTooLarge => "RequestTooLarge",
            ErrorType::Config => "Config",
            ErrorType::ModelLoad => "ModelLoad",
            ErrorType::Retryable => "Retryable",
            ErrorType::Internal => "Internal",
        }
    }

    /// The HTTP status an HTTP-facing handler answers with for this class.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorType::InvalidInput => 400,
            ErrorType::RequestTooLarge => 413,
            ErrorType::Retryable => 503,
            ErrorType::Config | ErrorType::ModelLoad | ErrorType::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every library error that can reach a function's edge.
pub trait Classify {
    fn error_type(&self) -> ErrorType;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_stable() {
        let all = [
            (ErrorType::InvalidInput, "InvalidInput", 400),
            (ErrorType::RequestTooLarge, "RequestTooLarge", 413),
            (ErrorType::Config, "Config", 500),
            (ErrorType::ModelLoad, "ModelLoad", 500),
            (ErrorType::Retryable, "Retryable", 503),
            (ErrorType::Internal, "Internal", 500),
        ];
        for (kind, name, status) in all {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(kind.http_status(), status);
            // Exactly the 4xx classes are the caller's to fix.
            assert_eq!(kind.is_caller_error(), status < 500);
        }
    }
}
