//! The `clip` function's inputs: the upload event (`event::ClipEvent::from_payload`: S3's
//! `Object Created` through EventBridge, S3 notification records, or a direct invoke) and the
//! engine's request (`api::parse_request`: texts as an OpenAI request, photos by `modality`).
//! The host crate and the engine link the models, so both modules are compiled in from their own
//! files (neither uses a `crate::` path).
//!
//! Invariants checked: nothing panics; every upload read from an event has a non-empty bucket and
//! key, and every refused one a reason; a refused request is `InvalidInput` or `RequestTooLarge`;
//! an accepted photo request holds 1 to `max_images` references, none a path unless paths are
//! allowed, no inline data outside base64's alphabet and no `s3://` reference with an empty
//! bucket or key; an accepted text request has 1 to `max_inputs` non-blank texts; a photo's id is
//! always a version-8 UUID.
#![no_main]

use coldpath_core::{Classify, ErrorType};
use coldpath_embeddings::api::Limits;
use coldpath_image::ImageRef;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

// Whole modules compiled in for the parts the target drives; the rest is their crates' to use.
#[allow(dead_code)]
#[path = "../../functions/hosts/clip/src/event.rs"]
mod event;

#[allow(dead_code)]
#[path = "../../functions/engines/clip/src/api.rs"]
mod api;

use event::ClipEvent;

const LIMITS: api::RequestLimits = api::RequestLimits {
    text: Limits {
        max_inputs: 8,
        max_request_bytes: 4096,
    },
    max_images: 4,
};

fn check(payload: &Value, allow_paths: bool) {
    match api::parse_request(payload, "clip", 16, &LIMITS, allow_paths) {
        Ok(api::ClipRequest::Texts { input, .. }) => {
            assert!((1..=LIMITS.text.max_inputs).contains(&input.len()));
            assert!(input.iter().all(|t| !t.trim().is_empty()));
        }
        Ok(api::ClipRequest::Images { input, .. }) => {
            assert!((1..=LIMITS.max_images).contains(&input.len()));
            for image in &input {
                match image {
                    ImageRef::Path(_) => assert!(allow_paths, "a path outside local mode"),
                    ImageRef::S3 { bucket, key } => {
                        assert!(!bucket.is_empty() && !key.is_empty())
                    }
                    ImageRef::Base64(data) => assert!(
                        data.bytes().all(|b| b.is_ascii_alphanumeric()
                            || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r')),
                        "inline data outside base64's alphabet"
                    ),
                }
            }
        }
        Err(e) => {
            let kind = e.error_type();
            assert!(
                kind == ErrorType::InvalidInput || kind == ErrorType::RequestTooLarge,
                "{kind:?}: {e}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let id = api::photo_id(text);
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'8', "{id}");
    }
    let Ok(payload) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    check(&payload, false);
    check(&payload, true);
    match ClipEvent::from_payload(payload) {
        ClipEvent::Uploads(uploads) => {
            for upload in uploads {
                match upload {
                    Ok(u) => assert!(!u.bucket.is_empty() && !u.key.is_empty(), "{u:?}"),
                    Err(r) => assert!(!r.reason.is_empty(), "{r:?}"),
                }
            }
        }
        ClipEvent::Direct(_) => {}
    }
});
