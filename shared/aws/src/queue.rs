//! The SQS operations a queue worker needs, typed: receive, delete in batches, change visibility,
//! read the backlog, and send (for tests and tools).
//!
//! The captioning worker polls a queue, processes each message, deletes the ones it finished and
//! hands the rest back (visibility 0) or lets SQS redeliver them (and, after the queue's
//! `maxReceiveCount`, move them to its dead-letter queue). Batch calls report each entry on its
//! own, so one stale receipt handle never hides the fate of the others.

use std::collections::HashMap;
use std::future::Future;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::{Classify, ErrorType};
use sha2::{Digest, Sha256};

use crate::queue_url::{is_fifo, is_queue_url};
use crate::sdk::{sdk_is_transient, sdk_message};

/// SQS limits that the API enforces; checked here so a bad argument is a typed error, not a 400.
pub const MAX_RECEIVE: i32 = 10;
pub const MAX_WAIT_SECS: i32 = 20;
pub const MAX_VISIBILITY_SECS: i32 = 43_200;
pub const MAX_BATCH: usize = 10;

/// One SQS queue and a client to reach it.
#[derive(Debug, Clone)]
pub struct Queue {
    client: Client,
    url: String,
}

/// A message as received. `receipt_handle` is what delete and change-visibility take; it is
/// valid for this receive only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// SQS's `ApproximateReceiveCount`: 1 on the first delivery. 0 when SQS did not report it.
    pub receive_count: u32,
    /// SQS's `SentTimestamp` (milliseconds since the Unix epoch), so a worker can log how long a
    /// message waited; `None` when SQS did not report it.
    pub sent_at_ms: Option<u64>,
    /// The message's `String` (and `Number`) message attributes; binary ones are left out.
    pub attributes: HashMap<String, String>,
}

impl coldpath_io::QueueMessage for ReceivedMessage {
    fn message_id(&self) -> &str {
        &self.message_id
    }

    fn body(&self) -> Option<&str> {
        Some(&self.body)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("{name}: expected {expected}, found {found}")]
    InvalidArgument {
        name: &'static str,
        expected: &'static str,
        found: String,
    },
    /// Throttling, a 5xx, a timeout or a dropped connection: the same call may succeed later.
    #[error("{action} on {queue_url} failed, worth retrying: {message}")]
    Transient {
        action: &'static str,
        queue_url: String,
        message: String,
    },
    /// SQS refused the call (permissions, a missing queue, a malformed request).
    #[error("{action} on {queue_url} was refused: {message}")]
    Rejected {
        action: &'static str,
        queue_url: String,
        message: String,
    },
    /// One entry of a batch call failed while the call itself succeeded. `sender_fault` is SQS's
    /// verdict: false means the service failed and the entry may be retried.
    #[error("{action} entry failed with {code}: {message}")]
    EntryFailed {
        action: &'static str,
        code: String,
        message: String,
        sender_fault: bool,
    },
    /// SQS answered without something it always sends (a count, an entry's result).
    #[error("{action} on {queue_url}: unexpected reply: {message}")]
    Malformed {
        action: &'static str,
        queue_url: String,
        message: String,
    },
}

impl Classify for QueueError {
    fn error_type(&self) -> ErrorType {
        match self {
            QueueError::InvalidArgument { .. } => ErrorType::InvalidInput,
            QueueError::Transient { .. } => ErrorType::Retryable,
            QueueError::EntryFailed {
                sender_fault: false,
                ..
            } => ErrorType::Retryable,
            QueueError::EntryFailed { .. }
            | QueueError::Rejected { .. }
            | QueueError::Malformed { .. } => ErrorType::Internal,
        }
    }
}

fn queue_url_from_env(env: &impl EnvSource, var: &str) -> Result<String, ConfigError> {
    let url = config::get(env, var).ok_or_else(|| ConfigError::Missing {
        name: var.to_string(),
        hint: "the URL of the SQS queue, https://sqs.<region>.amazonaws.com/<account>/<name>"
            .to_string(),
    })?;
    if !is_queue_url(&url) {
        return Err(ConfigError::invalid(
            var,
            "an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)",
            url,
        ));
    }
    Ok(url)
}

fn check_range(
    name: &'static str,
    value: i32,
    min: i32,
    max: i32,
    expected: &'static str,
) -> Result<(), QueueError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(QueueError::InvalidArgument {
            name,
            expected,
            found: value.to_string(),
        })
    }
}

impl Queue {
    pub fn new(client: Client, url: impl Into<String>) -> Queue {
        Queue {
            client,
            url: url.into(),
        }
    }

    /// The queue whose URL is in the variable `var` (e.g. `CAPTIONING_QUEUE_URL`), with a client
    /// from the standard AWS configuration chain (so `AWS_ENDPOINT_URL_SQS` points it at a local
    /// server). Unset or not a queue URL is a `ConfigError` naming the variable.
    pub async fn from_env(env: &impl EnvSource, var: &str) -> Result<Queue, ConfigError> {
        let url = queue_url_from_env(env, var)?;
        Ok(Queue::new(
            Client::new(crate::sdk::shared_config().await),
            url,
        ))
    }

    /// [`Queue::from_env`] with an AWS configuration the caller already loaded.
    pub fn from_env_with_sdk_config(
        env: &impl EnvSource,
        var: &str,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Queue, ConfigError> {
        Ok(Queue::new(Client::new(sdk), queue_url_from_env(env, var)?))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn is_fifo(&self) -> bool {
        is_fifo(&self.url)
    }

    fn sdk_error<E>(&self, action: &'static str, err: SdkError<E>) -> QueueError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let queue_url = self.url.clone();
        let message = sdk_message(&err);
        if sdk_is_transient(&err) {
            QueueError::Transient {
                action,
                queue_url,
                message,
            }
        } else {
            QueueError::Rejected {
                action,
                queue_url,
                message,
            }
        }
    }

    fn malformed(&self, action: &'static str, message: impl Into<String>) -> QueueError {
        QueueError::Malformed {
            action,
            queue_url: self.url.clone(),
            message: message.into(),
        }
    }

    /// Receives up to `max` (1 to 10) messages, long-polling up to `wait_secs` (0 to 20) when
    /// none is ready. `visibility` (0 to 43200 seconds) overrides the queue's visibility timeout
    /// for these messages. An empty vector means the wait ended with nothing to do.
    pub async fn receive(
        &self,
        max: i32,
        wait_secs: i32,
        visibility: Option<i32>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        check_range("max", max, 1, MAX_RECEIVE, "1 to 10 messages")?;
        check_range("wait_secs", wait_secs, 0, MAX_WAIT_SECS, "0 to 20 seconds")?;
        if let Some(secs) = visibility {
            check_range(
                "visibility",
                secs,
                0,
                MAX_VISIBILITY_SECS,
                "0 to 43200 seconds",
            )?;
        }
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait_secs)
            .set_visibility_timeout(visibility)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| self.sdk_error("ReceiveMessage", e))?;
        let mut messages = Vec::with_capacity(out.messages().len());
        for m in out.messages() {
            // SQS always sends both; without a receipt handle a message could not be deleted, so
            // it is left to reappear after its visibility timeout rather than processed twice.
            let (Some(message_id), Some(receipt_handle)) = (m.message_id(), m.receipt_handle())
            else {
                tracing::warn!(
                    queue = %self.url,
                    "received a message without an id or receipt handle; leaving it to reappear"
                );
                continue;
            };
            let system = |name| {
                m.attributes()
                    .and_then(|a| a.get(&name))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let receive_count = system(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0);
            let sent_at_ms = system(MessageSystemAttributeName::SentTimestamp);
            let attributes = m
                .message_attributes()
                .map(|attrs| {
                    attrs
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            messages.push(ReceivedMessage {
                message_id: message_id.to_string(),
                receipt_handle: receipt_handle.to_string(),
                body: m.body().unwrap_or_default().to_string(),
                receive_count,
                sent_at_ms,
                attributes,
            });
        }
        Ok(messages)
    }

    /// Deletes the messages behind `receipt_handles`, ten per `DeleteMessageBatch` call. The
    /// result has one entry per handle, in order: `Ok` when deleted, otherwise why not (an entry
    /// SQS refused, or the error of the whole call its chunk was in).
    pub async fn delete_batch(
        &self,
        receipt_handles: &[impl AsRef<str>],
    ) -> Vec<Result<(), QueueError>> {
        const ACTION: &str = "DeleteMessageBatch";
        self.in_chunks(ACTION, receipt_handles, |chunk| async move {
            let mut request = self.client.delete_message_batch().queue_url(&self.url);
            for (id, handle) in chunk {
                let entry = DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(handle)
                    .build()
                    .map_err(|e| self.malformed(ACTION, e.to_string()))?;
                request = request.entries(entry);
            }
            let out = request
                .send()
                .await
                .map_err(|e| self.sdk_error(ACTION, e))?;
            Ok(ChunkReply {
                ok: out
                    .successful()
                    .iter()
                    .map(|e| e.id().to_string())
                    .collect(),
                failed: out.failed().to_vec(),
            })
        })
        .await
    }

    /// Sets one message's remaining invisibility to `secs` (0 to 43200): 0 hands it back to the
    /// queue now, more extends the time this worker has to finish it.
    pub async fn change_visibility(
        &self,
        receipt_handle: &str,
        secs: i32,
    ) -> Result<(), QueueError> {
        check_range(
            "visibility",
            secs,
            0,
            MAX_VISIBILITY_SECS,
            "0 to 43200 seconds",
        )?;
        if receipt_handle.is_empty() {
            return Err(empty_handle());
        }
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| self.sdk_error("ChangeMessageVisibility", e))?;
        Ok(())
    }

    /// [`Queue::change_visibility`] for many messages, ten per `ChangeMessageVisibilityBatch`
    /// call, reported per handle like [`Queue::delete_batch`].
    pub async fn change_visibility_batch(
        &self,
        receipt_handles: &[impl AsRef<str>],
        secs: i32,
    ) -> Vec<Result<(), QueueError>> {
        const ACTION: &str = "ChangeMessageVisibilityBatch";
        if let Err(e) = check_range(
            "visibility",
            secs,
            0,
            MAX_VISIBILITY_SECS,
            "0 to 43200 seconds",
        ) {
            return receipt_handles.iter().map(|_| Err(e.clone())).collect();
        }
        self.in_chunks(ACTION, receipt_handles, |chunk| async move {
            let mut request = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url);
            for (id, handle) in chunk {
                let entry = ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(handle)
                    .visibility_timeout(secs)
                    .build()
                    .map_err(|e| self.malformed(ACTION, e.to_string()))?;
                request = request.entries(entry);
            }
            let out = request
                .send()
                .await
                .map_err(|e| self.sdk_error(ACTION, e))?;
            Ok(ChunkReply {
                ok: out
                    .successful()
                    .iter()
                    .map(|e| e.id().to_string())
                    .collect(),
                failed: out.failed().to_vec(),
            })
        })
        .await
    }

    /// SQS's `ApproximateNumberOfMessages`: messages waiting to be received (not those in
    /// flight). Approximate by SQS's own account; good for scaling decisions, not for counting.
    pub async fn approximate_backlog(&self) -> Result<u64, QueueError> {
        const ACTION: &str = "GetQueueAttributes";
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| self.sdk_error(ACTION, e))?;
        let raw = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .ok_or_else(|| self.malformed(ACTION, "no ApproximateNumberOfMessages"))?;
        raw.parse()
            .map_err(|_| self.malformed(ACTION, format!("ApproximateNumberOfMessages is {raw:?}")))
    }

    /// Sends `body` and returns SQS's message id; for tests and tools. On a FIFO queue the
    /// message goes to group `coldpath` with `hex(sha256(body))` as its deduplication id, so the
    /// same body sent twice within five minutes is delivered once.
    pub async fn send(&self, body: &str) -> Result<String, QueueError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body);
        if self.is_fifo() {
            request = request
                .message_group_id("coldpath")
                .message_deduplication_id(hex::encode(Sha256::digest(body)));
        }
        let out = request
            .send()
            .await
            .map_err(|e| self.sdk_error("SendMessage", e))?;
        out.message_id()
            .map(str::to_string)
            .ok_or_else(|| self.malformed("SendMessage", "no message id"))
    }

    /// Runs a batch call per chunk of at most ten handles and maps its reply back to one result
    /// per handle, in order. Entry ids are positions within the chunk, which SQS requires to be
    /// unique per call; an empty handle is refused here and never sent.
    async fn in_chunks<'a, F, Fut>(
        &'a self,
        action: &'static str,
        receipt_handles: &'a [impl AsRef<str>],
        call: F,
    ) -> Vec<Result<(), QueueError>>
    where
        F: Fn(Vec<(String, &'a str)>) -> Fut,
        Fut: Future<Output = Result<ChunkReply, QueueError>>,
    {
        let mut results: Vec<Result<(), QueueError>> = Vec::with_capacity(receipt_handles.len());
        for chunk in receipt_handles.chunks(MAX_BATCH) {
            let base = results.len();
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, handle) in chunk.iter().enumerate() {
                let handle = handle.as_ref();
                if handle.is_empty() {
                    results.push(Err(empty_handle()));
                } else {
                    // Filled in below from the reply; an entry SQS forgets to mention is an error.
                    results.push(Err(
                        self.malformed(action, "the reply did not mention this entry")
                    ));
                    entries.push((i.to_string(), handle));
                }
            }
            if entries.is_empty() {
                continue;
            }
            match call(entries.clone()).await {
                Ok(reply) => {
                    for id in reply.ok {
                        if let Some(i) = entry_index(&id, chunk.len()) {
                            results[base + i] = Ok(());
                        }
                    }
                    for failed in reply.failed {
                        if let Some(i) = entry_index(failed.id(), chunk.len()) {
                            results[base + i] = Err(QueueError::EntryFailed {
                                action,
                                code: failed.code().to_string(),
                                message: failed.message().unwrap_or_default().to_string(),
                                sender_fault: failed.sender_fault(),
                            });
                        }
                    }
                }
                Err(e) => {
                    for (id, _) in &entries {
                        if let Some(i) = entry_index(id, chunk.len()) {
                            results[base + i] = Err(e.clone());
                        }
                    }
                }
            }
        }
        results
    }
}

/// What one batch call reported: the entry ids that succeeded and those that failed.
struct ChunkReply {
    ok: Vec<String>,
    failed: Vec<BatchResultErrorEntry>,
}

fn entry_index(id: &str, len: usize) -> Option<usize> {
    id.parse::<usize>().ok().filter(|&i| i < len)
}

fn empty_handle() -> QueueError {
    QueueError::InvalidArgument {
        name: "receipt_handle",
        expected: "a receipt handle from receive",
        found: "an empty string".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;

    #[test]
    fn queue_urls_and_fifo() {
        for good in [
            "https://sqs.eu-west-1.amazonaws.com/123456789012/captions",
            "http://127.0.0.1:4566/123456789012/captions.fifo",
        ] {
            assert!(is_queue_url(good), "{good}");
        }
        for bad in [
            "captions",
            "arn:aws:sqs:eu-west-1:123456789012:captions",
            "https://sqs.eu-west-1.amazonaws.com/",
            "https:///123/captions",
            "",
        ] {
            assert!(!is_queue_url(bad), "{bad}");
        }
        assert!(is_fifo("http://127.0.0.1:4566/1/captions.fifo"));
        assert!(!is_fifo("http://127.0.0.1:4566/1/captions"));
    }

    #[tokio::test]
    async fn from_env_requires_a_queue_url_and_names_the_variable() {
        let err = Queue::from_env(&MapEnv::default(), "CAPTIONING_QUEUE_URL")
            .await
            .unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("CAPTIONING_QUEUE_URL: required")
        );
        let env = MapEnv::new([("CAPTIONING_QUEUE_URL", "captions")]);
        let err = Queue::from_env(&env, "CAPTIONING_QUEUE_URL")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CAPTIONING_QUEUE_URL: expected an SQS queue URL"),
            "{err}"
        );
    }

    #[test]
    fn errors_classify() {
        let entry = |sender_fault| QueueError::EntryFailed {
            action: "DeleteMessageBatch",
            code: "X".into(),
            message: String::new(),
            sender_fault,
        };
        assert_eq!(entry(false).error_type(), ErrorType::Retryable);
        assert_eq!(entry(true).error_type(), ErrorType::Internal);
        assert_eq!(empty_handle().error_type(), ErrorType::InvalidInput);
        let err = check_range("max", 11, 1, MAX_RECEIVE, "1 to 10 messages").unwrap_err();
        assert_eq!(err.to_string(), "max: expected 1 to 10 messages, found 11");
        assert_eq!(err.error_type(), ErrorType::InvalidInput);
        assert!(check_range("wait_secs", -1, 0, MAX_WAIT_SECS, "0 to 20 seconds").is_err());
        assert!(check_range("wait_secs", 20, 0, MAX_WAIT_SECS, "0 to 20 seconds").is_ok());
        assert_eq!(entry_index("3", 4), Some(3));
        assert_eq!(entry_index("4", 4), None);
        assert_eq!(entry_index("x", 4), None);
    }
}
