//! The captioning function's queue input: SQS events (`event::messages`, which reads the Lambda
//! payload as an `SqsEvent` and turns it into its messages; the host crate links the engine's
//! model, so its `event` module is compiled in from its own file) and each message body (`message::parse`: the documented
//! request, an S3 `Object Created` event from EventBridge, an S3 notification or S3's test event).
//!
//! Invariants checked: nothing panics; a refused body or record is `InvalidInput`, or
//! `RequestTooLarge` for a `max_new_tokens` over the cap; an accepted request has a safe id: a
//! caller's id is 1–200 bytes of `A-Za-z0-9._-` with no leading dot, and a photo from S3 is named
//! `<bucket>/<key>` after its `s3` image, with no empty, `.` or `..` segment; `max_new_tokens`
//! from 1 to the cap; an `ImageRef` that round-trips through JSON; a body with one photo carries
//! exactly one request, a test event none; every message of an accepted SQS event has a non-blank
//! id. The raw input is also tried as a message body on its own.
#![no_main]

use coldpath_captioning::message::{
    BodyKind, CaptionRequest, MAX_ID_LEN, MessageError, is_safe_id, parse,
};
use coldpath_core::{Classify, ErrorType};
use coldpath_image::ImageRef;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "../../functions/hosts/captioning/src/event.rs"]
mod event;

use event::messages;

const CAP: usize = 128;

fn check_request(kind: BodyKind, request: &CaptionRequest) {
    if kind == BodyKind::Request {
        assert!(is_safe_id(&request.id));
        assert!(!request.id.is_empty() && request.id.len() <= MAX_ID_LEN);
        assert!(!request.id.starts_with('.') && !request.id.contains(['/', '\\']));
    } else {
        let ImageRef::S3 { bucket, key } = &request.image else {
            panic!("a photo from S3 with image {:?}", request.image);
        };
        assert_eq!(request.id, format!("{bucket}/{key}"));
        assert!(!request.id.starts_with('/'));
        assert!(request.id.split('/').all(|s| !matches!(s, "" | "." | "..")));
        assert!(!request.id.chars().any(char::is_control));
        assert_eq!(request.max_new_tokens, None);
    }
    if let Some(n) = request.max_new_tokens {
        assert!((1..=CAP).contains(&n), "max_new_tokens {n}");
    }
    let json = serde_json::to_value(&request.image).expect("ImageRef serialises");
    let back: ImageRef = serde_json::from_value(json).expect("ImageRef reads back");
    assert_eq!(back, request.image);
}

fn check_error(e: &MessageError) {
    let expected = match e {
        MessageError::MaxNewTokens { .. } => ErrorType::RequestTooLarge,
        _ => ErrorType::InvalidInput,
    };
    assert_eq!(e.error_type(), expected, "{e}");
    assert!(!e.to_string().is_empty());
}

fn check_body(body: Option<&str>) {
    match parse(body, CAP) {
        Ok(message) => {
            match message.kind {
                BodyKind::S3TestEvent => assert!(message.requests.is_empty()),
                BodyKind::Request | BodyKind::EventBridge => {
                    assert_eq!(message.requests.len(), 1);
                }
                BodyKind::S3Notification => assert!(!message.requests.is_empty()),
            }
            for request in &message.requests {
                match request {
                    Ok(request) => check_request(message.kind, request),
                    Err(e) => {
                        assert_eq!(message.kind, BodyKind::S3Notification, "{e}");
                        assert!(matches!(e, MessageError::S3Record { .. }), "{e}");
                        check_error(e);
                    }
                }
            }
        }
        Err(e) => check_error(&e),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // SQS bodies are always UTF-8 text.
        return;
    };
    check_body(Some(text));
    let Ok(payload) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match messages(payload) {
        Ok(records) => {
            for m in &records {
                assert!(
                    !m.message_id.trim().is_empty(),
                    "accepted a record without a messageId"
                );
                check_body(m.body.as_deref());
            }
        }
        Err(e) => assert_eq!(e.error_type(), ErrorType::InvalidInput, "{e}"),
    }
});
