//! The Lambda handler for an SQS event source mapping with `ReportBatchItemFailures`.
//!
//! The response lists only the messages that failed (`itemIdentifier` = SQS `messageId`); Lambda
//! deletes the rest from the queue and makes the failed ones visible again, so a poison message
//! is retried on its own until the queue's redrive policy moves it to the dead-letter queue.
//!
//! The handler respects the invocation's deadline, counted in photos, not messages: one message
//! may carry many photos (an S3 notification, up to `CAPTIONING_MAX_PHOTOS_PER_MESSAGE`), and
//! the SQS batch size is the model batch size, so a batch is one chunk of messages. It works to
//! a stop time, the deadline less the safety margin (`CAPTIONING_DEADLINE_MARGIN_MS`): it packs
//! the messages into groups of at most a model batch of photos (a message with more is a group
//! of its own), and starts a group only while its photos fit the time left at the slowest
//! per-photo time seen so far, with a quarter to spare. A group still running at the stop time
//! is stopped. Every message that is not finished then (unstarted, or cut off before all its
//! results were written) is reported as a failure, so only it returns to the queue, and a
//! finished one never is: a timed-out invocation would have returned the whole batch.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::event::sqs::SqsBatchResponse;
use coldpath_core::config::{self, EnvSource};
use coldpath_core::{Classify, EnvVar, ErrorType};
use coldpath_runtime::{HandlerError, LambdaEvent};
use serde_json::Value;

use coldpath_captioning::service::{
    Captioner, CaptioningService, ImageSource, Progress, QueueMessage, ResultWriter,
};

pub use crate::event::messages;

/// How Lambda started this sandbox, which decides when the model loads.
pub const INITIALIZATION_TYPE: EnvVar = EnvVar::platform(
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "set by Lambda: on-demand sandboxes load the model behind the first event",
);

/// Whether the model loads in the background (`coldpath_runtime::Deferred`) rather than in init:
/// yes in an on-demand sandbox, where an init past Lambda's 10 s is cut off and repeated; no in
/// a provisioned-concurrency or SnapStart one, whose init runs ahead of any event (and whose
/// snapshot must hold the loaded model).
pub fn load_in_background(env: &impl EnvSource) -> bool {
    matches!(
        config::get(env, INITIALIZATION_TYPE.name).as_deref(),
        None | Some("on-demand")
    )
}

/// When the handler stops working: the invocation's deadline less `margin`; `None` without a
/// deadline (local `invoke`).
fn stop_time(context: &coldpath_runtime::Context, margin: Duration) -> Option<Instant> {
    if context.deadline == 0 {
        return None;
    }
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(context.deadline);
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left.saturating_sub(margin))
}

/// Whether a group of `photos` may start with `left` before the stop time, given the slowest
/// time per photo so far (`None` before the first group: only the stop time itself bounds it).
pub fn group_fits(left: Duration, photos: usize, per_photo: Option<Duration>) -> bool {
    if left.is_zero() {
        return false;
    }
    let photos = u32::try_from(photos).unwrap_or(u32::MAX);
    let needed = per_photo.map_or(Duration::ZERO, |p| {
        let total = p.saturating_mul(photos);
        total.saturating_add(total / 4)
    });
    left >= needed
}

/// Packs consecutive messages into groups of at most `max_photos` photos (`photos[i]` is message
/// `i`'s); a message with more is a group of its own, and one with none joins its neighbours.
/// Returns each group's range of messages.
pub fn plan_groups(photos: &[usize], max_photos: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut count = 0usize;
    for (i, &p) in photos.iter().enumerate() {
        if i > start && count.saturating_add(p) > max_photos {
            groups.push(start..i);
            start = i;
            count = 0;
        }
        count = count.saturating_add(p);
    }
    if start < photos.len() {
        groups.push(start..photos.len());
    }
    groups
}

/// The Lambda handler: captions the records group by group while the deadline allows and reports
/// the failed and the unfinished ones. Each invocation writes one metric line when metrics are
/// on: its latency, its messages, and its failed messages by error type (the unfinished ones are
/// not errors: they return to the queue untouched).
pub async fn handle<C: Captioner, I: ImageSource, W: ResultWriter>(
    service: Arc<CaptioningService<C, I, W>>,
    event: LambdaEvent<Value>,
) -> Result<Value, HandlerError> {
    let mut invocation = service.metrics().invocation();
    let messages = messages(event.payload).map_err(|e| {
        invocation.error(e.error_type());
        HandlerError::from_error(&e)
    })?;
    invocation.set_batch_size(messages.len());
    let settings = *service.settings();
    let model_batch = settings.max_batch.max(1);
    let stop_at = stop_time(&event.context, settings.deadline_margin);
    let started = Instant::now();
    let photos: Vec<usize> = messages.iter().map(|m| service.photos(m)).collect();
    let mut per_photo: Option<Duration> = None;
    let mut response = SqsBatchResponse::default();
    let mut unfinished: Vec<&str> = Vec::new();
    let groups = plan_groups(&photos, model_batch);
    for (g, group) in groups.iter().enumerate() {
        let group_photos: usize = photos[group.clone()].iter().sum();
        if let Some(stop_at) = stop_at {
            let left = stop_at.saturating_duration_since(Instant::now());
            if !group_fits(left, group_photos, per_photo) {
                let rest = &messages[group.start..];
                tracing::warn!(
                    unstarted = rest.len(),
                    photos = photos[group.start..].iter().sum::<usize>(),
                    left_ms = left.as_millis() as u64,
                    per_photo_ms = per_photo.map(|p| p.as_millis() as u64),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "too little time left before the deadline: reporting the rest for redelivery"
                );
                unfinished.extend(rest.iter().map(|m| m.message_id()));
                break;
            }
        }
        let batch = &messages[group.clone()];
        let progress = Progress::new(batch.len());
        let group_started = Instant::now();
        let work = service.process_tracked(batch, model_batch, &progress);
        let outcomes = match stop_at {
            Some(stop_at) => tokio::time::timeout_at(stop_at.into(), work).await.ok(),
            None => Some(work.await),
        };
        let Some(outcomes) = outcomes else {
            // Stopped between awaits; a model call already running on the blocking pool
            // finishes in the background and its result is discarded. What was written is done.
            let written = progress.written();
            let cut: Vec<&str> = batch
                .iter()
                .zip(&written)
                .filter(|(_, w)| !**w)
                .map(|(m, _)| m.message_id())
                .collect();
            tracing::warn!(
                cut_off = cut.len(),
                written = written.iter().filter(|w| **w).count(),
                unstarted = messages.len() - group.end,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "the deadline stopped a group in flight: reporting the unfinished messages for redelivery"
            );
            unfinished.extend(cut);
            unfinished.extend(messages[group.end..].iter().map(|m| m.message_id()));
            break;
        };
        if group_photos > 0 {
            let took = group_started.elapsed() / u32::try_from(group_photos).unwrap_or(u32::MAX);
            per_photo = Some(per_photo.map_or(took, |p| p.max(took)));
        }
        for outcome in outcomes {
            if let Err(e) = &outcome.result {
                invocation.error(e.error_type());
                response.add_failure(outcome.message_id);
            }
        }
        tracing::debug!(group = g, photos = group_photos, "group done");
    }
    for id in unfinished {
        response.add_failure(id.to_string());
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
    use coldpath_captioning::service::testing::{
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
        let eventbridge = coldpath_captioning::message::samples::eventbridge_created("4x4");
        let deleted = json!({
            "version": "0", "detail-type": "Object Deleted", "source": "aws.s3",
            "detail": {"bucket": {"name": "photos"}, "object": {"key": "4x4"}}
        });
        let test_event = coldpath_captioning::message::samples::S3_TEST_EVENT;
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
    fn a_group_starts_only_while_its_photos_fit_the_time_left() {
        let ms = Duration::from_millis;
        // Before the first group only the stop time bounds it.
        assert!(group_fits(ms(1), 100, None));
        assert!(!group_fits(Duration::ZERO, 1, None));
        // 200 ms a photo: four photos need 1 s with a quarter to spare.
        assert!(group_fits(ms(1000), 4, Some(ms(200))));
        assert!(!group_fits(ms(999), 4, Some(ms(200))));
        assert!(group_fits(ms(10), 0, Some(ms(200))));
    }

    #[test]
    fn groups_hold_at_most_a_model_batch_of_photos() {
        assert_eq!(plan_groups(&[1, 1, 1, 1, 1], 2), [0..2, 2..4, 4..5]);
        // Many photos in one message: a group of its own; none (a test event, a bad body) joins.
        assert_eq!(plan_groups(&[3, 0, 12, 2, 0, 6], 8), [0..2, 2..3, 3..6]);
        assert_eq!(plan_groups(&[0, 0], 8), vec![(0..2)]);
        assert!(plan_groups(&[], 8).is_empty());
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

    /// A service whose model batch is `max_batch`, with a 100 ms safety margin before the
    /// deadline, around `captioner`.
    fn with_margin(max_batch: usize, captioner: FakeCaptioner) -> FakeService {
        let mut batch = settings(max_batch);
        batch.deadline_margin = Duration::from_millis(100);
        CaptioningService::new(
            captioner,
            FakeImages::default(),
            MemorySink::default(),
            "fake",
            batch,
        )
    }

    /// A model that takes `delay` for each batch.
    fn slow(max_batch: usize, delay: Duration) -> FakeService {
        with_margin(
            max_batch,
            FakeCaptioner {
                delay,
                ..Default::default()
            },
        )
    }

    /// A service as deployed (model batch 8, the SQS batch size) whose model takes `per_image`
    /// for each photo.
    fn per_photo(per_image: Duration) -> FakeService {
        with_margin(
            8,
            FakeCaptioner {
                per_image,
                ..Default::default()
            },
        )
    }

    /// An S3 notification whose records name the photos `4x4/<tag><i>`, `i` < `photos`.
    fn uploads(tag: &str, photos: usize) -> String {
        let records: Vec<Value> = (0..photos)
            .map(|i| {
                json!({
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "photos"}, "object": {"key": format!("4x4/{tag}{i}")}}
                })
            })
            .collect();
        json!({ "Records": records }).to_string()
    }

    fn failures(out: &Value) -> Vec<&str> {
        out["batchItemFailures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap())
            .collect()
    }

    fn written(service: &FakeService) -> Vec<String> {
        let results = service.sink().results.lock().unwrap();
        results.keys().cloned().collect()
    }

    /// Regression: the handler counted the deadline in chunks of the model batch size in
    /// messages, and the SQS batch size is that size, so a whole batch was one chunk and never
    /// checked against the deadline, however many photos its messages carried. Twelve photos at
    /// 100 ms each would overrun a 1 s deadline: the photos are counted, and the messages that
    /// do not fit return to the queue while the finished ones' results are written.
    #[tokio::test]
    async fn photos_that_would_overrun_the_deadline_are_reported_unfinished() {
        let service = Arc::new(per_photo(Duration::from_millis(100)));
        let records: Vec<Value> = (0..4)
            .map(|i| record(Some(&format!("m{i}")), &uploads(&format!("p{i}-"), 3)))
            .collect();
        let event = json!({ "Records": records });
        let started = Instant::now();
        let context = deadline_in(Duration::from_millis(1000));
        let out = handle(Arc::clone(&service), LambdaEvent::new(event, context))
            .await
            .unwrap();
        let took = started.elapsed();
        // m0 and m1 (six photos) took 600 ms: 100 ms a photo. m2 and m3 would need 750 ms with
        // the quarter to spare, and 300 ms are left before the stop time.
        assert_eq!(failures(&out), ["m2", "m3"]);
        assert_eq!(*service.captioner().calls.lock().unwrap(), [6]);
        let expected: Vec<String> = ["p0-", "p1-"]
            .iter()
            .flat_map(|tag| (0..3).map(move |i| format!("photos/4x4/{tag}{i}")))
            .collect();
        assert_eq!(written(&service), expected);
        assert!(took < Duration::from_millis(1000), "took {took:?}");
    }

    /// The first group has no per-photo time to go by: a message whose photos outlast the time
    /// left is stopped at the stop time, and it and the messages after it are reported, so the
    /// invocation answers before its deadline instead of timing out with the whole batch.
    #[tokio::test]
    async fn a_group_still_running_at_the_stop_time_is_reported_unfinished() {
        let service = Arc::new(per_photo(Duration::from_millis(100)));
        let event = json!({"Records": [
            record(Some("m0"), &uploads("big", 12)),
            record(Some("m1"), &body("small", "4x4")),
        ]});
        let started = Instant::now();
        let context = deadline_in(Duration::from_millis(1000));
        let out = handle(Arc::clone(&service), LambdaEvent::new(event, context))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1000), "took {took:?}");
        assert_eq!(failures(&out), ["m0", "m1"]);
        // The first model call (8 photos, 800 ms) ran; the stop came during the second.
        assert_eq!(service.captioner().calls.lock().unwrap()[0], 8);
        assert!(written(&service).is_empty());
    }

    /// Regression: the handler captioned the whole batch whatever the time left; a
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

    #[test]
    fn only_an_on_demand_sandbox_loads_in_the_background() {
        let env =
            |v: Option<&str>| coldpath_core::MapEnv::new(v.map(|v| (INITIALIZATION_TYPE.name, v)));
        assert!(load_in_background(&env(Some("on-demand"))));
        // Outside Lambda's own variable (an emulator that omits it) Lambda's default holds.
        assert!(load_in_background(&env(None)));
        assert!(!load_in_background(&env(Some("provisioned-concurrency"))));
        assert!(!load_in_background(&env(Some("snap-start"))));
    }
}
