//! The one home of the AWS SDK plumbing: the process's SDK configuration, loaded once, and how
//! an SDK failure is judged (worth retrying or not) and described.

use aws_config::SdkConfig;
// The same aws-smithy types, re-exported by both SDK crates: whichever feature is on provides them.
#[cfg(not(feature = "sqs"))]
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
#[cfg(feature = "sqs")]
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tokio::sync::OnceCell;

static SHARED: OnceCell<SdkConfig> = OnceCell::const_new();

/// The standard AWS configuration chain (region, credentials, endpoint overrides such as
/// `AWS_ENDPOINT_URL_S3` / `_SQS`), loaded once per process however many clients are built from
/// it: the object store, the result sink and the queue share it. Loading resolves credentials
/// and region, which inside Lambda costs a few milliseconds of cold start each time.
pub async fn shared_config() -> &'static SdkConfig {
    SHARED
        .get_or_init(|| aws_config::load_defaults(aws_config::BehaviorVersion::latest()))
        .await
}

/// Error codes AWS services use for throttling, which some (SQS among them) send with a 400.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "KmsThrottled",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Whether an SDK failure is worth retrying later: throttling, a 5xx, a timeout, or a request
/// that never got a well-formed answer. The SDK has already retried a few times by then, so this
/// decides whether the caller's message goes back to its queue or is reported as broken.
pub(crate) fn sdk_is_transient<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            status == 429
                || status >= 500
                || service
                    .err()
                    .code()
                    .is_some_and(|code| THROTTLING_CODES.contains(&code))
        }
        _ => false,
    }
}

/// The SDK's own message is terse ("service error"); `DisplayErrorContext` adds the sources.
pub(crate) fn sdk_message<E: std::error::Error + 'static>(err: &SdkError<E>) -> String {
    DisplayErrorContext(err).to_string()
}
