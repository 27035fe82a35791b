//! The Lambda handler for an SQS event source mapping with `ReportBatchItemFailures`.
//!
//! The response lists only the messages that failed (`itemIdentifier` = SQS `messageId`); Lambda
//! deletes the rest from the queue and makes the failed ones visible again, so a poison message
//! is retried on its own until the queue's redrive policy moves it to the dead-letter queue.
//!
//! The handler respects the invocation's deadline: it captions the batch in chunks of the model
//! batch size and starts another chunk only while the remaining time fits one (the longest chunk
//! so far, with a quarter to spare, and never less than the safety margin). Messages it did not
//! start are reported as failures, so only they return to the queue: a timed-out invocation
//! would have returned the whole batch, the finished messages included.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use coldpath_core::{Classify, ErrorType};
use coldpath_runtime::{HandlerError, LambdaEvent};
use serde_json::Value;

use crate::service::{Captioner, CaptioningService, ImageSource, QueueMessage, ResultWriter};

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

/// The time left before the invocation's deadline; `None` without one (local `invoke`).
fn time_left(context: &coldpath_runtime::Context) -> Option<Duration> {
    if context.deadline == 0 {
        return None;
    }
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(context.deadline);
    Some(
        deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Whether a chunk may start with `left` remaining, given the longest chunk so far.
pub fn chunk_fits(left: Duration, longest: Option<Duration>, margin: Duration) -> bool {
    let needed = longest.map_or(margin, |l| (l + l / 4).max(margin));
    left >= needed
}

/// The Lambda handler: captions the records chunk by chunk while the deadline allows and reports
/// the failed and the unstarted ones. Each invocation writes one metric line when metrics are on:
/// its latency, its messages, and its failed messages by error type (the unstarted ones are not
/// errors: they return to the queue untouched).
pub async fn handle<C: Captioner, I: ImageSource, W: ResultWriter>(
    service: Arc<CaptioningService<C, I, W>>,
    event: LambdaEvent<Value>,
) -> Result<Value, HandlerError> {
    let mut invocation = service.metrics().invocation();
    let messages = messages(event.payload).inspect_err(|e| invocation.error(e.error_type))?;
    invocation.set_batch_size(messages.len());
    let settings = *service.settings();
    let chunk_size = settings.max_batch.max(1);
    let started = Instant::now();
    let mut longest: Option<Duration> = None;
    let mut response = SqsBatchResponse::default();
    let mut next = 0;
    while next < messages.len() {
        if let Some(left) = time_left(&event.context)
            && !chunk_fits(left, longest, settings.deadline_margin)
        {
            tracing::warn!(
                skipped = messages.len() - next,
                left_ms = left.as_millis() as u64,
                longest_chunk_ms = longest.map(|l| l.as_millis() as u64),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "too little time left for another chunk: reporting the rest for redelivery"
            );
            for m in &messages[next..] {
                response.add_failure(m.message_id().to_string());
            }
            break;
        }
        let chunk = &messages[next..(next + chunk_size).min(messages.len())];
        let chunk_started = Instant::now();
        let outcomes = service.process(chunk, chunk_size).await;
        let took = chunk_started.elapsed();
        longest = Some(longest.map_or(took, |l| l.max(took)));
        for outcome in outcomes {
            if let Err(e) = &outcome.result {
                invocation.error(e.error_type());
                response.add_failure(outcome.message_id);
            }
        }
        next += chunk.len();
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
    use crate::service::testing::{
        FakeCaptioner, FakeImages, FakeService, MemorySink, body, service, settings,
    };
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

    /// Photo uploads arrive as EventBridge events (the template's rule) or S3 notifications; S3's
    /// test event is acknowledged, so it never reaches the dead-letter queue.
    #[tokio::test]
    async fn s3_uploads_are_captioned_and_the_test_event_is_acknowledged() {
        let service = Arc::new(service(8, None));
        let eventbridge = crate::message::samples::eventbridge_created("4x4");
        let deleted = json!({
            "version": "0", "detail-type": "Object Deleted", "source": "aws.s3",
            "detail": {"bucket": {"name": "photos"}, "object": {"key": "4x4"}}
        });
        let test_event = crate::message::samples::S3_TEST_EVENT;
        let event = json!({"Records": [
            record(Some("m1"), &eventbridge.to_string()),
            record(Some("m2"), test_event),
            record(Some("m3"), &deleted.to_string()),
        ]});
        let out = handle(
            Arc::clone(&service),
            LambdaEvent::new(event, Context::default()),
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"batchItemFailures": [{"itemIdentifier": "m3"}]})
        );
        let written: Vec<String> = service
            .sink()
            .results
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(written, ["photos/4x4"]);
    }

    #[tokio::test]
    async fn each_invocation_writes_one_metric_line_with_its_errors_by_type() {
        let (metrics, lines) = coldpath_runtime::metrics::Metrics::in_memory("captioning");
        let service = Arc::new(service(8, None).with_metrics(metrics));
        let event = json!({"Records": [
            record(Some("m1"), &body("a", "4x4")),
            record(Some("m2"), "{\"id\": \"b\"}"),
            record(Some("m3"), &body("c", "missing.jpg")),
        ]});
        handle(service, LambdaEvent::new(event, Context::default()))
            .await
            .unwrap();
        let docs = lines.documents();
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert_eq!(docs[0]["Function"], "captioning");
        assert_eq!(docs[0]["BatchSize"], 3.0);
        assert_eq!(docs[0]["Errors"], 2.0);
        assert!(docs[0]["Latency"].is_number());
        assert_eq!(docs[1]["ErrorType"], "InvalidInput");
        assert_eq!(docs[1]["Errors"], 2.0);
        assert_eq!(
            docs[1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function", "ErrorType"]])
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

    #[test]
    fn a_chunk_starts_only_while_the_time_left_fits_one() {
        let ms = Duration::from_millis;
        assert!(chunk_fits(ms(2000), None, ms(1000)));
        assert!(!chunk_fits(ms(999), None, ms(1000)));
        // The longest chunk took 2 s: another needs 2.5 s.
        assert!(chunk_fits(ms(2500), Some(ms(2000)), ms(1000)));
        assert!(!chunk_fits(ms(2400), Some(ms(2000)), ms(1000)));
        // A fast chunk never lowers the need below the margin.
        assert!(!chunk_fits(ms(900), Some(ms(10)), ms(1000)));
    }

    fn deadline_in(d: Duration) -> Context {
        let mut context = Context::default();
        let at = SystemTime::now() + d;
        context.deadline = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        context
    }

    fn slow(max_batch: usize, delay: Duration) -> FakeService {
        let mut batch = settings(max_batch);
        batch.deadline_margin = Duration::from_millis(100);
        CaptioningService::new(
            FakeCaptioner {
                delay,
                ..Default::default()
            },
            FakeImages::default(),
            MemorySink::default(),
            "fake",
            batch,
        )
    }

    /// Regression (issue 11): the handler captioned the whole batch whatever the time left; a
    /// timeout then returned every message, finished ones included, to the queue.
    #[tokio::test]
    async fn unstarted_chunks_are_reported_for_redelivery_at_the_deadline() {
        let service = Arc::new(slow(2, Duration::from_millis(600)));
        let records: Vec<Value> = (0..6)
            .map(|i| record(Some(&format!("m{i}")), &body(&format!("id{i}"), "4x4")))
            .collect();
        let event = json!({ "Records": records });
        let context = deadline_in(Duration::from_millis(1000));
        let out = handle(Arc::clone(&service), LambdaEvent::new(event, context))
            .await
            .unwrap();
        // The first chunk (600 ms) leaves at most 400 ms, less than the 750 ms another needs.
        let failed: Vec<&str> = out["batchItemFailures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap())
            .collect();
        assert_eq!(failed, ["m2", "m3", "m4", "m5"]);
        assert_eq!(*service.captioner().calls.lock().unwrap(), [2]);
        let written: Vec<String> = service
            .sink()
            .results
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(written, ["id0", "id1"]);
    }

    #[tokio::test]
    async fn no_time_left_starts_nothing_and_no_deadline_runs_everything() {
        let records: Vec<Value> = (0..3)
            .map(|i| record(Some(&format!("m{i}")), &body(&format!("id{i}"), "4x4")))
            .collect();
        let event = json!({ "Records": records });
        let service = Arc::new(slow(2, Duration::ZERO));
        let out = handle(
            Arc::clone(&service),
            LambdaEvent::new(event.clone(), deadline_in(Duration::from_millis(50))),
        )
        .await
        .unwrap();
        assert_eq!(out["batchItemFailures"].as_array().unwrap().len(), 3);
        assert!(service.captioner().calls.lock().unwrap().is_empty());
        // Local invoke has no deadline (0): everything runs.
        let out = handle(
            Arc::clone(&service),
            LambdaEvent::new(event, Context::default()),
        )
        .await
        .unwrap();
        assert_eq!(out, json!({"batchItemFailures": []}));
        assert_eq!(*service.captioner().calls.lock().unwrap(), [2, 1]);
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
