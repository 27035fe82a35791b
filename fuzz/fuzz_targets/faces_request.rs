//! The faces function's inputs: the typed event (`event::FacesEvent::from_payload`: an `S3Event`
//! notification or a direct invoke), the direct-invoke request (`request::parse_request`, which
//! parses an `ImageRef`) and the notifications' URL-encoded object keys (`event::decode_s3_key`).
//! The Lambda host crate links the engine's models, so its `event` module is compiled in from
//! its own file.
//!
//! Invariants checked: nothing panics; a refused request is a typed `InvalidInput` error; an
//! accepted request's options stay within the configured ones (`min_score` in [0, 1],
//! `max_faces` from 1 to the cap) and its `ImageRef` round-trips through JSON; an S3 event's key
//! either decodes to UTF-8 or is refused with a message, and a decoded key, form-encoded again,
//! decodes back to itself. The raw input is also tried as an S3 key on its own.
#![no_main]

use coldpath_core::{Classify, ErrorType};
use coldpath_faces::DetectOptions;
use coldpath_faces::request::parse_request;
use coldpath_image::ImageRef;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

#[path = "../../functions/hosts/faces/src/event.rs"]
mod event;

use event::{FacesEvent, decode_s3_key};

const DEFAULTS: DetectOptions = DetectOptions {
    min_score: 0.9,
    nms_iou: 0.3,
    max_faces: 100,
    min_face_size: 0.0,
};

fn check_key(raw: &str) {
    match decode_s3_key(raw) {
        Ok(key) => {
            if !raw.contains(['%', '+']) {
                assert_eq!(key, raw, "a key without escapes changed");
            }
            // S3's own encoding of the decoded key decodes back to it.
            let encoded = utf8_percent_encode(&key, NON_ALPHANUMERIC).to_string();
            assert_eq!(decode_s3_key(&encoded).as_deref(), Ok(key.as_str()));
        }
        Err(message) => assert!(message.contains("not URL-encoded UTF-8"), "{message}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_key(text);
    }
    let Ok(payload) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let payload = match FacesEvent::from_payload(payload) {
        Ok(FacesEvent::S3(event)) => {
            for record in &event.records {
                if let Some(key) = record.s3.object.key.as_deref() {
                    check_key(key);
                }
            }
            return;
        }
        Ok(FacesEvent::Direct(payload)) => payload,
        Err(e) => {
            assert_eq!(e.error_type(), ErrorType::InvalidInput, "{e}");
            assert!(
                e.to_string().contains("not an S3 event notification"),
                "{e}"
            );
            return;
        }
    };
    match parse_request(&payload, &DEFAULTS) {
        Ok(request) => {
            let o = request.options;
            assert!(
                (0.0..=1.0).contains(&o.min_score),
                "min_score {}",
                o.min_score
            );
            assert!(
                (1..=DEFAULTS.max_faces).contains(&o.max_faces),
                "max_faces {}",
                o.max_faces
            );
            assert_eq!(o.nms_iou, DEFAULTS.nms_iou);
            let json = serde_json::to_value(&request.image).expect("ImageRef serialises");
            let back: ImageRef = serde_json::from_value(json).expect("ImageRef reads back");
            assert_eq!(back, request.image);
            if let ImageRef::S3 { bucket, key } = &request.image {
                assert!(!bucket.is_empty() && !key.is_empty());
            }
        }
        Err(e) => {
            assert_eq!(e.error_type(), ErrorType::InvalidInput, "{e}");
            assert!(!e.to_string().is_empty());
        }
    }
});
