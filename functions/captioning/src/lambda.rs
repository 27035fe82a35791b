//! The Lambda handler for an SQS event source mapping with `ReportBatchItemFailures`.
//!
//! The response lists only the messages that failed (`itemIdentifier` = SQS `messageId`); Lambda
//! deletes the rest from the queue and makes the failed ones visible again, so a poison message
//! is retried on its own until the queue's redrive policy moves it to the dead-letter queue.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use coldpath_core::ErrorType;
use coldpath_runtime::{HandlerError, LambdaEvent};
use serde_json::Value;

use crate::service::{Captioner, CaptioningService, ImageSource, ResultWriter};

/// Turns an SQS event into the messages to process.
///
/// A record without a `messageId` cannot be named in a batch response: leaving it out would
/// report it as processed and Lambda would delete it unprocessed, and an empty `itemIdentifier`
/// makes Lambda fail the batch anyway. So such an event fails the whole invocation with an error,
/// which returns every message of the batch to the queue and loses nothing.
pub fn messages(payload: Value) -> Result<Vec<SqsMessage>, HandlerError> {
    let event: SqsEvent = serde_json::from_value(payload).map_err(|e| {
        HandlerError::new(
            ErrorType::InvalidInput,
            format!("expected an SQS event with a Records array: {e}"),
        )
    })?;
    event
        .records
        .into_iter()
        .enumerate()
        .map(|(i, record)| match &record.message_id {
            Some(id) if !id.trim().is_empty() => Ok(record),
            _ => Err(HandlerError::new(
                ErrorType::InvalidInput,
                format!(
                    "record {i} has no messageId, so its failure could not be reported; failing the whole batch so that no message is lost"
                ),
            )),
        })
        .collect()
}

/// The Lambda handler: captions every record and reports the failed ones.
pub async fn handle<C: Captioner, I: ImageSource, W: ResultWriter>(
    service: Arc<CaptioningService<C, I, W>>,
    event: LambdaEvent<Value>,
) -> Result<Value, HandlerError> {
    let messages = messages(event.payload)?;
    let outcomes = service
        .process(&messages, service.settings().max_batch)
        .await;
    let mut response = SqsBatchResponse::default();
    for outcome in outcomes.into_iter().filter(|o| !o.is_ok()) {
        response.add_failure(outcome.message_id);
    }
    serde_json::to_value(&response).map_err(|e| {
        // Serialising a list of strings cannot fail; if it ever does, failing the invocation
        // retries the whole batch rather than dropping the failures.
        HandlerError::new(
            ErrorType::Internal,
            format!("serialising the batch response: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing::{body, service};
    use coldpath_runtime::Context;
    use serde_json::json;

    fn record(message_id: Option<&str>, body: &str) -> Value {
        let mut r = json!({
            "receiptHandle": "AQEB...",
            "body": body,
            "attributes": {"ApproximateReceiveCount": "1"},
            "messageAttributes": {},
            "md5OfBody": "x",
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:captions",
            "awsRegion": "us-east-1"
        });
        if let Some(id) = message_id {
            r["messageId"] = json!(id);
        }
        r
    }

    #[tokio::test]
    async fn reports_only_the_failed_message_ids() {
        let service = Arc::new(service(8, None));
        let event = json!({"Records": [
            record(Some("m1"), &body("a", "4x4")),
            record(Some("m2"), "{\"id\": \"b\"}"),
            record(Some("m3"), &body("c", "8x2")),
        ]});
        let out = handle(
            Arc::clone(&service),
            LambdaEvent::new(event, Context::default()),
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"batchItemFailures": [{"itemIdentifier": "m2"}]})
        );
    }

    #[tokio::test]
    async fn an_all_good_batch_reports_no_failures() {
        let service = Arc::new(service(8, None));
        let event = json!({"Records": [record(Some("m1"), &body("a", "4x4"))]});
        let out = handle(service, LambdaEvent::new(event, Context::default()))
            .await
            .unwrap();
        assert_eq!(out, json!({"batchItemFailures": []}));
    }

    #[tokio::test]
    async fn a_record_without_message_id_fails_the_whole_invocation() {
        for id in [None, Some(""), Some("  ")] {
            let service = Arc::new(service(8, None));
            let event = json!({"Records": [
                record(Some("m1"), &body("a", "4x4")),
                record(id, &body("b", "4x4")),
            ]});
            let err = handle(
                Arc::clone(&service),
                LambdaEvent::new(event, Context::default()),
            )
            .await
            .unwrap_err();
            assert_eq!(err.error_type, ErrorType::InvalidInput);
            assert!(
                err.message.contains("record 1 has no messageId"),
                "{}",
                err.message
            );
            // Nothing was processed: the whole batch goes back to the queue.
            assert!(service.captioner().calls.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn a_payload_that_is_not_an_sqs_event_is_invalid_input() {
        for payload in [json!({"id": "a"}), json!({"Records": "x"}), json!([1])] {
            let err = handle(
                Arc::new(service(8, None)),
                LambdaEvent::new(payload, Context::default()),
            )
            .await
            .unwrap_err();
            assert_eq!(err.error_type, ErrorType::InvalidInput);
            assert!(
                err.message.starts_with("expected an SQS event"),
                "{}",
                err.message
            );
        }
    }
}
