//! The Lambda function's event, as a type: an SQS batch from the event source mapping, turned
//! into the messages the engine processes. Self-contained (no `crate::` paths), so the fuzz
//! target compiles this very file without the engine's model
//! (`fuzz/fuzz_targets/captioning_message.rs`).

use aws_lambda_events::sqs::SqsEvent;
use coldpath_core::{Classify, ErrorType};
use coldpath_io::Delivery;
use serde_json::Value;

/// Why an invocation's payload gives no messages. Either fails the whole invocation, which
/// returns every message of the batch to the queue.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("expected an SQS event with a Records array: {0}")]
    NotSqs(#[from] serde_json::Error),
    #[error(
        "record {index} has no messageId, so its failure could not be reported; failing the whole batch so that no message is lost"
    )]
    NoMessageId { index: usize },
}

impl Classify for EventError {
    fn error_type(&self) -> ErrorType {
        ErrorType::InvalidInput
    }
}

/// Reads the payload as an [`SqsEvent`] and turns it into the messages to process.
///
/// A record without a `messageId` cannot be named in a batch response: leaving it out would
/// report it as processed and Lambda would delete it unprocessed, and an empty `itemIdentifier`
/// makes Lambda fail the batch anyway. So such an event fails the whole invocation, which returns
/// every message of the batch to the queue and loses nothing. A body is not parsed here: each is
/// parsed on its own by the engine, so one bad body fails only its own message.
pub fn messages(payload: Value) -> Result<Vec<Delivery>, EventError> {
    let event: SqsEvent = serde_json::from_value(payload)?;
    event
        .records
        .into_iter()
        .enumerate()
        .map(|(index, record)| match record.message_id {
            Some(id) if !id.trim().is_empty() => Ok(Delivery::new(id, record.body)),
            _ => Err(EventError::NoMessageId { index }),
        })
        .collect()
}
