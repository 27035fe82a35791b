//! The captioning function's queue input: SQS events (`lambda::messages`, which turns the
//! Lambda event into its records) and each message body (`message::parse`, which parses an
//! `ImageRef` and checks the id that names the result object).
//!
//! Invariants checked: nothing panics; a refused body is `InvalidInput`, or `RequestTooLarge`
//! for a `max_new_tokens` over the cap; an accepted body has a safe id (no path separators, no
//! leading dot, at most 200 bytes), `max_new_tokens` from 1 to the cap, and an `ImageRef` that
//! round-trips through JSON; every message of an accepted SQS event has a non-blank id. The raw
//! input is also tried as a message body on its own.
#![no_main]

use coldpath_captioning::lambda::messages;
use coldpath_captioning::message::{MAX_ID_LEN, MessageError, is_safe_id, parse};
use coldpath_core::{Classify, ErrorType};
use coldpath_image::ImageRef;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CAP: usize = 128;

fn check_body(body: Option<&str>) {
    match parse(body, CAP) {
        Ok(request) => {
            assert!(is_safe_id(&request.id));
            assert!(!request.id.is_empty() && request.id.len() <= MAX_ID_LEN);
            assert!(!request.id.starts_with('.') && !request.id.contains(['/', '\\']));
            if let Some(n) = request.max_new_tokens {
                assert!((1..=CAP).contains(&n), "max_new_tokens {n}");
            }
            let json = serde_json::to_value(&request.image).expect("ImageRef serialises");
            let back: ImageRef = serde_json::from_value(json).expect("ImageRef reads back");
            assert_eq!(back, request.image);
        }
        Err(e) => {
            let expected = match e {
                MessageError::MaxNewTokens { .. } => ErrorType::RequestTooLarge,
                _ => ErrorType::InvalidInput,
            };
            assert_eq!(e.error_type(), expected, "{e}");
            assert!(!e.to_string().is_empty());
        }
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
    if let Ok(records) = messages(payload) {
        for m in &records {
            let id = m.message_id.as_deref().unwrap_or_default();
            assert!(!id.trim().is_empty(), "accepted a record without a messageId");
            check_body(m.body.as_deref());
        }
    }
});
