//! One queue message's body, in any of the shapes the caption queue receives.
//!
//! - The documented request `{"id": "...", "image": <ImageRef>, "max_new_tokens"?: n}`.
//! - An S3 `Object Created` event delivered by EventBridge (a rule on source `aws.s3`, detail-type
//!   `Object Created`, with the queue as its target): the body is the EventBridge event, and the
//!   photo is `detail.bucket.name` / `detail.object.key`.
//! - An S3 event notification sent to the queue directly: `{"Records": [...]}`, one request per
//!   record (S3 sends one record per message, but the format allows more, and none may be lost:
//!   each record is parsed on its own and the message succeeds only when every record's result is
//!   written).
//! - S3's `s3:TestEvent`, sent once when a notification configuration is saved: acknowledged with
//!   no work, so it never goes round the queue into the dead-letter queue.
//!
//! A photo that arrives from S3 is named `<bucket>/<key>`, the same result id faces gives it
//! ([`coldpath_aws::photo_result_id`]), so both results of one photo sit side by side in the
//! sink. A caller's own id keeps the stricter [`is_safe_id`] rule (no `/`), so the two kinds can
//! never collide.
//!
//! Each SQS record's body is parsed here on its own, so one malformed body fails only its own
//! message (a typed `SqsEventObj<T>` would fail the whole batch on the first bad body).

use aws_lambda_events::eventbridge::EventBridgeEvent;
use coldpath_core::{Classify, ErrorType};
use coldpath_image::ImageRef;
use serde::Deserialize;
use serde_json::Value;

/// The longest `id`; it names the result object, and S3 keys stop at 1024 bytes with the prefix.
pub const MAX_ID_LEN: usize = 200;

/// EventBridge's `source` and `detail-type` for an S3 upload, and its `detail`: shared with the
/// other functions that take uploads from EventBridge.
pub use coldpath_aws::{
    EVENTBRIDGE_DETAIL_TYPE, EVENTBRIDGE_SOURCE, Keyed, Named, S3ObjectCreated,
};

/// A validated caption request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionRequest {
    /// The caller's id for this image, or `<bucket>/<key>` for a photo that arrived from S3; the
    /// result is stored under it, so a redelivered message overwrites its own result instead of
    /// adding a second one.
    pub id: String,
    pub image: ImageRef,
    /// Overrides the model's default generation length, up to the configured cap.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
}

/// Which shape a body had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `{"id", "image", "max_new_tokens"?}`.
    Request,
    /// An S3 `Object Created` event from EventBridge.
    EventBridge,
    /// An S3 event notification (`Records`).
    S3Notification,
    /// S3's `s3:TestEvent`: nothing to caption.
    S3TestEvent,
}

impl BodyKind {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyKind::Request => "request",
            BodyKind::EventBridge => "eventbridge",
            BodyKind::S3Notification => "s3-notification",
            BodyKind::S3TestEvent => "s3-test-event",
        }
    }
}

/// A parsed body: the caption requests one message carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: BodyKind,
    /// One per photo, each validated on its own: exactly one for a request or an EventBridge
    /// event, one per record for an S3 notification, none for a test event. The message is done
    /// when every entry is `Ok` and its result written.
    pub requests: Vec<Result<CaptionRequest, MessageError>>,
}

/// Why a message body (or one record of it) is not a caption request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("message has no body: expected a JSON object with id and image")]
    NoBody,
    #[error(
        "message body: expected a JSON object {{\"id\": string, \"image\": {{\"s3\"|\"base64\"|\"path\": string}}, \"max_new_tokens\"?: integer}}, an S3 event notification or an S3 Object Created event from EventBridge: {0}"
    )]
    Json(String),
    #[error(
        "id: expected 1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 . _ - not starting with '.', found {0:?}"
    )]
    BadId(String),
    #[error("max_new_tokens: expected 1 to {cap}, found {found}")]
    MaxNewTokens { found: usize, cap: usize },
    #[error(
        "EventBridge event: expected source \"{EVENTBRIDGE_SOURCE}\", detail-type \"{EVENTBRIDGE_DETAIL_TYPE}\" and detail.bucket.name, detail.object.key: {0}"
    )]
    EventBridge(String),
    #[error("S3 event notification: expected a non-empty Records array: {0}")]
    S3Notification(String),
    #[error("S3 event record {index}: {reason}")]
    S3Record { index: usize, reason: String },
}

impl Classify for MessageError {
    fn error_type(&self) -> ErrorType {
        match self {
            MessageError::MaxNewTokens { .. } => ErrorType::RequestTooLarge,
            _ => ErrorType::InvalidInput,
        }
    }
}

/// Whether `id` can name a result object as it is: no path separators, no `..`, nothing a file
/// system or an S3 console would treat specially. The rule for ids a caller chooses.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The members that tell a body's shapes apart, read as types before the body is parsed as one
/// of them, so that each shape then reports its own typed error (a `#[serde(untagged)]` enum of
/// the shapes would answer only "did not match any variant"). `Records` is kept whatever its
/// value, so a notification with a bad `Records` is refused as a notification.
#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "Records", default, deserialize_with = "present")]
    records: Option<Value>,
    #[serde(rename = "detail-type", default, deserialize_with = "present")]
    detail_type: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    detail: Option<Value>,
}

/// `Some` for a member that is there, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// S3's `s3:TestEvent`, which aws_lambda_events has no type for (its `S3Event` is the
/// notification with `Records`). Only the two members that identify it are required; S3 also
/// sends `Time`, `Bucket`, `RequestId` and `HostId`, which the function does not read.
#[derive(Debug, Deserialize)]
pub struct S3TestEvent {
    #[serde(rename = "Service")]
    pub service: String,
    #[serde(rename = "Event")]
    pub event: String,
}

impl S3TestEvent {
    /// Both members, as S3 sends them: a body that only resembles a test event is not dropped.
    fn is_s3_test_event(&self) -> bool {
        self.service == "Amazon S3" && self.event == "s3:TestEvent"
    }
}

/// Parses one message body in any of its shapes. An error here fails the whole message (a body
/// with one photo fails here); an error in one record of an S3 notification is that record's
/// entry in [`Message::requests`], so the other records still run.
pub fn parse(body: Option<&str>, max_new_tokens_cap: usize) -> Result<Message, MessageError> {
    let body = body.ok_or(MessageError::NoBody)?;
    let value: Value = serde_json::from_str(body).map_err(|e| MessageError::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(MessageError::Json(format!("found {}", json_type(&value))));
    }
    // An object always reads as a `Shape`: every member is optional and any value.
    let shape = Shape::deserialize(&value).map_err(|e| MessageError::Json(e.to_string()))?;
    if let Some(records) = shape.records {
        return parse_s3_notification(records);
    }
    if S3TestEvent::deserialize(&value).is_ok_and(|e| e.is_s3_test_event()) {
        return Ok(Message {
            kind: BodyKind::S3TestEvent,
            requests: Vec::new(),
        });
    }
    if shape.detail_type.is_some() || shape.detail.is_some() {
        return Ok(Message {
            kind: BodyKind::EventBridge,
            requests: vec![Ok(parse_eventbridge(value)?)],
        });
    }
    Ok(Message {
        kind: BodyKind::Request,
        requests: vec![Ok(parse_request(value, max_new_tokens_cap)?)],
    })
}

/// The documented request.
fn parse_request(value: Value, max_new_tokens_cap: usize) -> Result<CaptionRequest, MessageError> {
    let request: CaptionRequest =
        serde_json::from_value(value).map_err(|e| MessageError::Json(e.to_string()))?;
    if !is_safe_id(&request.id) {
        return Err(MessageError::BadId(request.id));
    }
    if let Some(n) = request.max_new_tokens
        && (n == 0 || n > max_new_tokens_cap)
    {
        return Err(MessageError::MaxNewTokens {
            found: n,
            cap: max_new_tokens_cap,
        });
    }
    Ok(request)
}

/// The request for the photo at `bucket` / `raw_key` (URL-encoded, as S3 events carry keys), or
/// why there is none.
fn photo_request(
    bucket: Option<String>,
    raw_key: Option<String>,
) -> Result<CaptionRequest, String> {
    let bucket = bucket.filter(|b| !b.is_empty()).ok_or("no bucket name")?;
    let raw_key = raw_key.filter(|k| !k.is_empty()).ok_or("no object key")?;
    let key = coldpath_aws::decode_event_key(&raw_key).map_err(|e| e.to_string())?;
    let id = coldpath_aws::photo_result_id(&bucket, &key).map_err(|e| e.to_string())?;
    Ok(CaptionRequest {
        id,
        image: ImageRef::S3 { bucket, key },
        max_new_tokens: None,
    })
}

fn parse_eventbridge(value: Value) -> Result<CaptionRequest, MessageError> {
    // `Option`: a missing or null `detail` reads as `None`, refused below in the enum's words.
    let event: EventBridgeEvent<Option<S3ObjectCreated>> =
        serde_json::from_value(value).map_err(|e| MessageError::EventBridge(e.to_string()))?;
    let found = |what: &str, v: Option<&str>| match v {
        Some(v) => format!("found {what} {v:?}"),
        None => format!("found no {what}"),
    };
    if event.source != EVENTBRIDGE_SOURCE {
        return Err(MessageError::EventBridge(found(
            "source",
            Some(&event.source),
        )));
    }
    if event.detail_type != EVENTBRIDGE_DETAIL_TYPE {
        // Another S3 event (`Object Deleted`, `Object Restore Completed`) means the rule's
        // pattern is wrong; failing it sends it to the dead-letter queue, where it is seen.
        return Err(MessageError::EventBridge(found(
            "detail-type",
            Some(&event.detail_type),
        )));
    }
    let detail = event
        .detail
        .ok_or_else(|| MessageError::EventBridge("no detail".to_string()))?;
    photo_request(
        detail.bucket.and_then(|b| b.name),
        detail.object.and_then(|o| o.key),
    )
    .map_err(MessageError::EventBridge)
}

/// The parts of an S3 notification record the function reads. Not aws_lambda_events'
/// `S3EventRecord`: that type requires `eventTime`, `userIdentity` and `requestParameters`,
/// which the function never reads, so a record sent without them (by hand, by a test double, by
/// a relay that trims records) would be refused for nothing.
#[derive(Deserialize)]
struct S3Record {
    #[serde(rename = "eventSource")]
    event_source: Option<String>,
    #[serde(rename = "eventName")]
    event_name: Option<String>,
    s3: Option<S3Entity>,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: Option<Named>,
    object: Option<Keyed>,
}

/// `Records`, each record parsed on its own so that one bad record fails only itself.
fn parse_s3_notification(records: Value) -> Result<Message, MessageError> {
    let records = match records {
        Value::Array(records) if !records.is_empty() => records,
        Value::Array(_) => {
            return Err(MessageError::S3Notification("found no records".to_string()));
        }
        other => {
            return Err(MessageError::S3Notification(format!(
                "found {}",
                json_type(&other)
            )));
        }
    };
    let requests = records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            parse_s3_record(record).map_err(|reason| MessageError::S3Record { index, reason })
        })
        .collect();
    Ok(Message {
        kind: BodyKind::S3Notification,
        requests,
    })
}

fn parse_s3_record(record: Value) -> Result<CaptionRequest, String> {
    let record: S3Record = serde_json::from_value(record).map_err(|e| e.to_string())?;
    if record.event_source.as_deref() != Some("aws:s3") {
        return Err(format!(
            "expected eventSource \"aws:s3\", found {:?}",
            record.event_source
        ));
    }
    let event_name = record.event_name.as_deref().unwrap_or_default();
    if !event_name.starts_with("ObjectCreated:") {
        return Err(format!(
            "expected an ObjectCreated event, found {event_name:?}"
        ));
    }
    let s3 = record.s3.ok_or("no s3 entity")?;
    photo_request(
        s3.bucket.and_then(|b| b.name),
        s3.object.and_then(|o| o.key),
    )
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Message bodies in AWS's own shapes, shared by this crate's tests and its hosts' (the
/// `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod samples {
    /// S3's `Object Created` event for `s3://photos/<key>` as EventBridge delivers it to an SQS
    /// target, with every field of the S3 user guide's "EventBridge event message structure"
    /// example (the parser must take the fields it does not read).
    pub fn eventbridge_created(key: &str) -> serde_json::Value {
        serde_json::json!({
            "version": "0",
            "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": "111122223333",
            "time": "2026-11-28T03:00:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:s3:::photos"],
            "detail": {
                "version": "0",
                "bucket": {"name": "photos"},
                "object": {
                    "key": key,
                    "size": 80530,
                    "etag": "0f343b0931126a20f133d67c2b018a3b",
                    "sequencer": "617f08299329d189"
                },
                "request-id": "N4N7GDK58NMKJ12R",
                "requester": "111122223333",
                "source-ip-address": "203.0.113.10",
                "reason": "PutObject"
            }
        })
    }

    /// The test event S3 sends when a notification is configured.
    pub const S3_TEST_EVENT: &str = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-11-28T03:00:00.000Z","Bucket":"photos","RequestId":"5582815E1AEA5ADF","HostId":"8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR"}"#;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one request of a body that carries exactly one.
    fn one(body: Option<&str>, cap: usize) -> Result<CaptionRequest, MessageError> {
        let mut message = parse(body, cap)?;
        assert_eq!(message.requests.len(), 1, "{body:?}");
        message.requests.remove(0)
    }

    /// The EventBridge sample with a URL-encoded key, as S3 writes one with a space.
    fn eventbridge() -> String {
        samples::eventbridge_created("2026/family+photo.jpg").to_string()
    }

    /// One record of an S3 event notification sent straight to SQS.
    fn s3_record(event_name: &str, key: &str) -> Value {
        serde_json::json!({
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": "2026-11-28T03:00:00.000Z",
            "eventName": event_name,
            "userIdentity": {"principalId": "AWS:AIDAJDPLRKLG7UEXAMPLE"},
            "requestParameters": {"sourceIPAddress": "203.0.113.10"},
            "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S"},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "captions-on-upload",
                "bucket": {"name": "photos", "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": "arn:aws:s3:::photos"},
                "object": {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0055AED6DCD90281E5"}
            }
        })
    }

    fn photo(id: &str, key: &str) -> CaptionRequest {
        CaptionRequest {
            id: id.to_string(),
            image: ImageRef::S3 {
                bucket: "photos".to_string(),
                key: key.to_string(),
            },
            max_new_tokens: None,
        }
    }

    #[test]
    fn parses_a_good_body() {
        let message = parse(
            Some(r#"{"id": "photo-1.jpg", "image": {"s3": "s3://photos/kafka.jpg"}, "max_new_tokens": 12}"#),
            32,
        )
        .unwrap();
        assert_eq!(message.kind, BodyKind::Request);
        let r = message.requests[0].as_ref().unwrap();
        assert_eq!(r.id, "photo-1.jpg");
        assert_eq!(r.max_new_tokens, Some(12));
        let r = one(Some(r#"{"id": "a", "image": {"s3": "s3://b/k"}}"#), 32).unwrap();
        assert_eq!(r.max_new_tokens, None);
    }

    #[test]
    fn rejects_bad_bodies_with_typed_errors() {
        let cases: [(Option<&str>, &str); 9] = [
            (None, "no body"),
            (Some("not json"), "message body"),
            (Some(r#"["id"]"#), "message body"),
            (
                Some(r#"{"image": {"s3": "s3://b/k"}}"#),
                "missing field `id`",
            ),
            (Some(r#"{"id": "a"}"#), "missing field `image`"),
            (
                Some(r#"{"id": "a", "image": {"s3": "s3://b/k"}, "max_tokens": 3}"#),
                "unknown field",
            ),
            (
                Some(r#"{"id": "", "image": {"s3": "s3://b/k"}}"#),
                "id: expected",
            ),
            (
                Some(r#"{"id": "../etc/passwd", "image": {"s3": "s3://b/k"}}"#),
                "id: expected",
            ),
            (
                Some(r#"{"id": "a", "image": {"s3": "s3://b/k"}, "max_new_tokens": 33}"#),
                "max_new_tokens: expected 1 to 32, found 33",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body, 32).unwrap_err();
            assert!(err.to_string().contains(want), "{body:?}: {err}");
            assert_eq!(
                err.error_type(),
                if want.starts_with("max_new_tokens") {
                    ErrorType::RequestTooLarge
                } else {
                    ErrorType::InvalidInput
                }
            );
        }
        let zero = parse(
            Some(r#"{"id": "a", "image": {"s3": "s3://b/k"}, "max_new_tokens": 0}"#),
            32,
        );
        assert_eq!(
            zero.unwrap_err(),
            MessageError::MaxNewTokens { found: 0, cap: 32 }
        );
    }

    #[test]
    fn an_eventbridge_s3_event_names_its_photo_by_bucket_and_key() {
        let message = parse(Some(&eventbridge()), 32).unwrap();
        assert_eq!(message.kind, BodyKind::EventBridge);
        assert_eq!(
            message.requests,
            [Ok(photo(
                "photos/2026/family photo.jpg",
                "2026/family photo.jpg"
            ))]
        );
        // The id is the one faces gives the same photo.
        assert_eq!(
            coldpath_aws::photo_result_id("photos", "2026/family photo.jpg").unwrap(),
            "photos/2026/family photo.jpg"
        );
    }

    #[test]
    fn a_wrong_eventbridge_event_is_a_typed_error() {
        let event: Value = serde_json::from_str(&eventbridge()).unwrap();
        let with = |path: &[&str], v: Value| {
            let mut e = event.clone();
            let mut at = &mut e;
            for p in &path[..path.len() - 1] {
                at = &mut at[*p];
            }
            at[path[path.len() - 1]] = v;
            e.to_string()
        };
        let cases = [
            (
                with(&["detail-type"], "Object Deleted".into()),
                "detail-type \"Object Deleted\"",
            ),
            (with(&["source"], "aws.ec2".into()), "source \"aws.ec2\""),
            (with(&["detail"], Value::Null), "no detail"),
            (
                with(&["detail", "bucket"], serde_json::json!({})),
                "no bucket name",
            ),
            (
                with(&["detail", "object", "key"], "".into()),
                "no object key",
            ),
            (
                with(&["detail", "object", "key"], "a%FF.jpg".into()),
                "not URL-encoded UTF-8",
            ),
            (
                with(&["detail", "object", "key"], "a/../b.jpg".into()),
                "'..' path segment",
            ),
            (with(&["detail", "object"], "k".into()), "invalid type"),
        ];
        for (body, want) in cases {
            let err = one(Some(&body), 32).unwrap_err();
            assert!(matches!(err, MessageError::EventBridge(_)), "{err}");
            assert!(err.to_string().contains(want), "{want}: {err}");
            assert_eq!(err.error_type(), ErrorType::InvalidInput);
        }
    }

    #[test]
    fn an_s3_notification_becomes_one_request_per_record() {
        let body = serde_json::json!({"Records": [
            s3_record("ObjectCreated:Put", "a+b.jpg"),
            s3_record("ObjectRemoved:Delete", "gone.jpg"),
            s3_record("ObjectCreated:CompleteMultipartUpload", "dir/c%2Bd.jpg"),
            s3_record("ObjectCreated:Put", "dir//e.jpg"),
        ]})
        .to_string();
        let message = parse(Some(&body), 32).unwrap();
        assert_eq!(message.kind, BodyKind::S3Notification);
        assert_eq!(message.requests.len(), 4);
        assert_eq!(message.requests[0], Ok(photo("photos/a b.jpg", "a b.jpg")));
        assert_eq!(
            message.requests[2],
            Ok(photo("photos/dir/c+d.jpg", "dir/c+d.jpg"))
        );
        let Err(MessageError::S3Record { index: 1, reason }) = &message.requests[1] else {
            panic!("{:?}", message.requests[1]);
        };
        assert!(reason.contains("ObjectRemoved:Delete"), "{reason}");
        let Err(e @ MessageError::S3Record { index: 3, .. }) = &message.requests[3] else {
            panic!("{:?}", message.requests[3]);
        };
        assert!(e.to_string().contains("empty path segment"), "{e}");
    }

    #[test]
    fn a_bad_s3_notification_is_a_typed_error() {
        for (body, want) in [
            (r#"{"Records": []}"#, "found no records"),
            (r#"{"Records": "x"}"#, "found a string"),
        ] {
            let err = parse(Some(body), 32).unwrap_err();
            assert!(matches!(err, MessageError::S3Notification(_)), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
        let mut sqs = s3_record("ObjectCreated:Put", "a.jpg");
        sqs["eventSource"] = "aws:sqs".into();
        let body = serde_json::json!({"Records": [sqs, 3]}).to_string();
        let message = parse(Some(&body), 32).unwrap();
        let errors: Vec<String> = message
            .requests
            .iter()
            .map(|r| r.as_ref().unwrap_err().to_string())
            .collect();
        assert!(
            errors[0].contains("record 0: expected eventSource"),
            "{errors:?}"
        );
        assert!(errors[1].contains("record 1: invalid type"), "{errors:?}");
    }

    #[test]
    fn the_s3_test_event_carries_no_request() {
        let body = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-11-28T03:00:00.000Z","Bucket":"photos","RequestId":"5582815E1AEA5ADF","HostId":"8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}"#;
        assert_eq!(
            parse(Some(body), 32).unwrap(),
            Message {
                kind: BodyKind::S3TestEvent,
                requests: Vec::new()
            }
        );
        // Without S3's `Service`, it is an unknown body and fails like one.
        let err = parse(Some(r#"{"Event": "s3:TestEvent"}"#), 32).unwrap_err();
        assert!(matches!(err, MessageError::Json(_)), "{err}");
    }

    #[test]
    fn safe_ids() {
        for ok in ["a", "IMG_0001.jpg", "3f2c-11ee.b", &"x".repeat(MAX_ID_LEN)] {
            assert!(is_safe_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a b",
            "é",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(!is_safe_id(bad), "{bad}");
        }
    }
}
