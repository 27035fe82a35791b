//! What the `clip` function is invoked with: photo uploads (an EventBridge `Object Created`
//! event, as the deployed rule sends them, or an S3 notification), or a direct invoke (the
//! engine's OpenAI-shaped request).

use aws_lambda_events::eventbridge::EventBridgeEvent;
use coldpath_aws::{
    EVENTBRIDGE_DETAIL_TYPE, EVENTBRIDGE_SOURCE, S3ObjectCreated, decode_event_key,
};
use serde_json::Value;

/// One uploaded photo, its key decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
}

/// One invocation's payload.
#[derive(Debug)]
pub enum ClipEvent {
    /// Uploads, each read on its own so that a bad record fails alone: `Err` carries the
    /// record's raw bucket and key (as far as they were readable) and why it was refused.
    Uploads(Vec<Result<Upload, Refused>>),
    /// A direct invoke: the request itself, validated by the engine.
    Direct(Value),
}

/// A record that names no photo the function can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub bucket: String,
    pub key: String,
    pub reason: String,
}

impl ClipEvent {
    /// An object with a `Records` array is an S3 notification; one with `detail-type` and
    /// `source` an EventBridge event; anything else a direct invoke. An EventBridge event that is
    /// not S3's `Object Created` is refused as one upload record, so the summary says why.
    pub fn from_payload(payload: Value) -> ClipEvent {
        if let Some(records) = payload.get("Records").and_then(Value::as_array) {
            return ClipEvent::Uploads(records.iter().map(notification_record).collect());
        }
        if payload.get("detail-type").is_some() && payload.get("source").is_some() {
            return ClipEvent::Uploads(vec![eventbridge(payload)]);
        }
        ClipEvent::Direct(payload)
    }
}

fn refused(bucket: Option<&str>, key: Option<&str>, reason: String) -> Refused {
    Refused {
        bucket: bucket.unwrap_or_default().to_string(),
        key: key.unwrap_or_default().to_string(),
        reason,
    }
}

/// Bucket and raw key to an upload: both present, the key URL-decoded.
fn upload(bucket: Option<&str>, raw_key: Option<&str>) -> Result<Upload, Refused> {
    let fail = |reason: String| refused(bucket, raw_key, reason);
    let bucket = bucket
        .filter(|b| !b.is_empty())
        .ok_or_else(|| fail("no bucket name".into()))?;
    let raw = raw_key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| fail("no object key".into()))?;
    let key = decode_event_key(raw).map_err(|e| fail(e.to_string()))?;
    Ok(Upload {
        bucket: bucket.to_string(),
        key,
    })
}

/// One S3 notification record: read leniently (only the fields used), `ObjectCreated:*` only.
fn notification_record(record: &Value) -> Result<Upload, Refused> {
    let bucket = record.pointer("/s3/bucket/name").and_then(Value::as_str);
    let key = record.pointer("/s3/object/key").and_then(Value::as_str);
    let name = record.get("eventName").and_then(Value::as_str);
    match name {
        Some(n) if n.starts_with("ObjectCreated:") => upload(bucket, key),
        other => Err(refused(
            bucket,
            key,
            format!("expected an ObjectCreated event, found {other:?}"),
        )),
    }
}

fn eventbridge(payload: Value) -> Result<Upload, Refused> {
    let event: EventBridgeEvent<Option<S3ObjectCreated>> = serde_json::from_value(payload)
        .map_err(|e| refused(None, None, format!("not an EventBridge event: {e}")))?;
    let detail = event.detail.unwrap_or(S3ObjectCreated {
        bucket: None,
        object: None,
    });
    let bucket = detail.bucket.and_then(|b| b.name);
    let key = detail.object.and_then(|o| o.key);
    if event.source != EVENTBRIDGE_SOURCE || event.detail_type != EVENTBRIDGE_DETAIL_TYPE {
        // Another event (`Object Deleted`, a test event) means the rule's pattern is wrong.
        return Err(refused(
            bucket.as_deref(),
            key.as_deref(),
            format!(
                "expected source {EVENTBRIDGE_SOURCE:?} and detail-type {EVENTBRIDGE_DETAIL_TYPE:?}, found {:?} and {:?}",
                event.source, event.detail_type
            ),
        ));
    }
    upload(bucket.as_deref(), key.as_deref())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample(name: &str) -> Value {
        let path = format!("{}/../../../events/clip/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn uploads_from_eventbridge_and_notifications() {
        let ClipEvent::Uploads(u) = ClipEvent::from_payload(sample("eventbridge-s3.json")) else {
            panic!("not uploads")
        };
        assert_eq!(
            u,
            [Ok(Upload {
                bucket: "photos".into(),
                key: "family photo.jpg".into()
            })]
        );
        let ClipEvent::Uploads(u) = ClipEvent::from_payload(sample("s3-put.json")) else {
            panic!("not uploads")
        };
        assert_eq!(u.len(), 4);
        assert!(u.iter().all(Result::is_ok), "{u:?}");
    }

    #[test]
    fn bad_records_are_refused_one_by_one() {
        let mut event = sample("s3-put.json");
        let good = event["Records"][0].clone();
        let mut deleted = good.clone();
        deleted["eventName"] = json!("ObjectRemoved:Delete");
        let mut no_key = good.clone();
        no_key["s3"]["object"] = json!({});
        let mut bad_key = good.clone();
        bad_key["s3"]["object"]["key"] = json!("bad%FF.jpg");
        event["Records"] = json!([deleted, good, no_key, bad_key]);
        let ClipEvent::Uploads(u) = ClipEvent::from_payload(event) else {
            panic!("not uploads")
        };
        assert!(u[0].as_ref().unwrap_err().reason.contains("ObjectCreated"));
        assert!(u[1].is_ok());
        assert_eq!(u[2].as_ref().unwrap_err().reason, "no object key");
        assert!(u[3].as_ref().unwrap_err().reason.contains("URL-encoded"));

        let mut other = sample("eventbridge-s3.json");
        other["detail-type"] = json!("Object Deleted");
        let ClipEvent::Uploads(u) = ClipEvent::from_payload(other) else {
            panic!("not uploads")
        };
        let err = u[0].as_ref().unwrap_err();
        assert!(err.reason.contains("Object Deleted"), "{err:?}");
        assert_eq!(err.bucket, "photos");
    }

    #[test]
    fn anything_else_is_a_direct_invoke() {
        for payload in [
            sample("direct-image.json"),
            json!({"input": "a dog on the beach"}),
            json!({"input": "a dog", "source": "x"}),
            json!([1]),
        ] {
            assert!(matches!(
                ClipEvent::from_payload(payload),
                ClipEvent::Direct(_)
            ));
        }
    }
}
