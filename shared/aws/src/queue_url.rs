//! What an SQS queue URL looks like: read by the SQS sink's setting (checked whether or not this
//! build has SQS, so a bad setting reads the same everywhere) and by `Queue`.

/// Whether `url` looks like an SQS queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`
/// or a local endpoint's `http://host:port/<account>/<name>`): a scheme and a non-empty path.
/// Queue names and ARNs are refused because the message APIs take only URLs.
pub(crate) fn is_queue_url(url: &str) -> bool {
    url.strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(host, path)| !host.is_empty() && !path.trim_matches('/').is_empty())
}

/// FIFO queues' URLs (like their names) end in `.fifo`.
#[cfg(feature = "sqs")]
pub(crate) fn is_fifo(url: &str) -> bool {
    url.trim_end_matches('/').ends_with(".fifo")
}
