//! Every sample event is a fixture too: it parses into its type and round-trips.

use std::path::{Path, PathBuf};

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::lambda_function_urls::LambdaFunctionUrlRequest;
use aws_lambda_events::sqs::SqsEvent;
use coldpath_embeddings::api::{Limits, parse_request};
use coldpath_test_support::repo_root;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(json_files(&path));
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn load(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses `value` as `T`, writes it back and parses that again: the typed value must survive.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
    path: &Path,
    value: &Value,
) -> T {
    let typed: T =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let again: T = serde_json::from_value(serde_json::to_value(&typed).unwrap()).unwrap();
    assert_eq!(typed, again, "{} does not round-trip", path.display());
    typed
}

#[test]
fn every_sample_event_parses_into_its_type_and_round_trips() {
    let files = json_files(&repo_root().join("events"));
    assert!(
        files.len() >= 3,
        "expected the embeddings sample events, found {files:?}"
    );
    let limits = Limits {
        max_inputs: 256,
        max_request_bytes: 1 << 20,
    };
    for path in &files {
        let rel = path
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        let value = load(path);
        match rel.as_str() {
            r if r.starts_with("events/embeddings/function-url") => {
                let url: LambdaFunctionUrlRequest = round_trip(path, &value);
                assert_eq!(
                    url.request_context.http.method.as_deref(),
                    Some("POST"),
                    "{rel}"
                );
                let http: ApiGatewayV2httpRequest = round_trip(path, &value);
                assert!(http.body.is_some(), "{rel}");
            }
            r if r.starts_with("events/embeddings/http-api") => {
                let http: ApiGatewayV2httpRequest = round_trip(path, &value);
                assert_eq!(http.version.as_deref(), Some("2.0"), "{rel}");
                assert_eq!(
                    http.route_key.as_deref(),
                    Some("POST /v1/embeddings"),
                    "{rel}"
                );
            }
            "events/embeddings/direct.json" => {
                let req = parse_request(&value, "all-MiniLM-L6-v2", 384, &limits).unwrap();
                assert_eq!(req.input.len(), 3);
            }
            "events/captioning/sqs-batch.json" => {
                let event: SqsEvent = round_trip(path, &value);
                assert_eq!(event.records.len(), 5, "{rel}");
                let mut malformed = 0;
                for r in &event.records {
                    assert_eq!(r.event_source.as_deref(), Some("aws:sqs"), "{rel}");
                    assert!(
                        r.message_id.as_deref().is_some_and(|m| !m.is_empty()),
                        "{rel}"
                    );
                    assert!(
                        r.receipt_handle.is_some() && r.event_source_arn.is_some(),
                        "{rel}"
                    );
                    let body = r.body.as_deref().unwrap_or_default();
                    // SQS always sends md5OfBody, a hex MD5 digest of the body.
                    assert_eq!(r.md5_of_body.as_deref().map(str::len), Some(32), "{rel}");
                    if coldpath_captioning::message::parse(Some(body), 128).is_err() {
                        malformed += 1;
                    }
                }
                assert_eq!(malformed, 1, "{rel}: exactly one malformed record");
            }
            "events/captioning/sqs-phone-photos.json" => {
                // A phone's HEIC and a browser's AVIF upload, named by S3 reference.
                let event: SqsEvent = round_trip(path, &value);
                assert_eq!(event.records.len(), 2, "{rel}");
                for r in &event.records {
                    let body = r.body.as_deref().unwrap_or_default();
                    assert_eq!(r.md5_of_body.as_deref().map(str::len), Some(32), "{rel}");
                    let message = coldpath_captioning::message::parse(Some(body), 128)
                        .unwrap_or_else(|e| panic!("{rel}: {e}"));
                    for request in message.requests {
                        let request = request.unwrap_or_else(|e| panic!("{rel}: {e}"));
                        let coldpath_image::ImageRef::S3 { bucket, key } = &request.image else {
                            panic!("{rel}: {:?}", request.image);
                        };
                        let file = repo_root().join("events/data").join(bucket).join(key);
                        let bytes = std::fs::read(&file)
                            .unwrap_or_else(|e| panic!("{rel}: {}: {e}", file.display()));
                        let (w, h) = coldpath_image::dimensions(&bytes)
                            .unwrap_or_else(|e| panic!("{rel}: {key}: {e}"));
                        assert!(w > 0 && h > 0, "{rel}: {key}");
                    }
                }
            }
            "events/captioning/sqs-eventbridge-s3.json" => {
                // Photo uploads routed to the caption queue by an EventBridge rule: each SQS
                // body is S3's `Object Created` event, naming a photo that exists locally.
                let event: SqsEvent = round_trip(path, &value);
                assert!(!event.records.is_empty(), "{rel}");
                for r in &event.records {
                    assert_eq!(r.event_source.as_deref(), Some("aws:sqs"), "{rel}");
                    let body = r.body.as_deref().unwrap_or_default();
                    assert_eq!(r.md5_of_body.as_deref().map(str::len), Some(32), "{rel}");
                    let message = coldpath_captioning::message::parse(Some(body), 128)
                        .unwrap_or_else(|e| panic!("{rel}: {e}"));
                    assert_eq!(
                        message.kind,
                        coldpath_captioning::message::BodyKind::EventBridge,
                        "{rel}"
                    );
                    for request in message.requests {
                        let request = request.unwrap_or_else(|e| panic!("{rel}: {e}"));
                        let coldpath_image::ImageRef::S3 { bucket, key } = &request.image else {
                            panic!("{rel}: {:?}", request.image);
                        };
                        assert_eq!(request.id, format!("{bucket}/{key}"), "{rel}");
                        let file = repo_root().join("events/data").join(bucket).join(key);
                        assert!(file.is_file(), "{rel}: {} is missing", file.display());
                    }
                }
            }
            "events/faces/direct.json"
            | "events/faces/direct-path.json"
            | "events/faces/direct-heic.json"
            | "events/faces/direct-avif.json" => {
                let defaults =
                    coldpath_faces::FacesConfig::from_env(&coldpath_core::MapEnv::default())
                        .unwrap()
                        .detect;
                let req = coldpath_faces::request::parse_request(&value, &defaults)
                    .unwrap_or_else(|e| panic!("{rel}: {e}"));
                // The image it names must exist where local runs look for it.
                let file = match &req.image {
                    coldpath_image::ImageRef::S3 { bucket, key } => {
                        repo_root().join("events/data").join(bucket).join(key)
                    }
                    coldpath_image::ImageRef::Path(p) => repo_root().join(p),
                    other => panic!("{rel}: unexpected image reference {other:?}"),
                };
                assert!(file.is_file(), "{rel}: {} is missing", file.display());
            }
            "events/clip/eventbridge-s3.json" | "events/clip/s3-put.json" => {
                // The raw shape round-trips as its AWS type, and every upload it names is a photo
                // in events/data, so a local invoke embeds each.
                if rel.ends_with("s3-put.json") {
                    let _: aws_lambda_events::s3::S3Event = round_trip(path, &value);
                } else {
                    let _: aws_lambda_events::eventbridge::EventBridgeEvent<
                        coldpath_aws::S3ObjectCreated,
                    > = round_trip(path, &value);
                }
                let coldpath_clip_function::ClipEvent::Uploads(uploads) =
                    coldpath_clip_function::ClipEvent::from_payload(value.clone())
                else {
                    panic!("{rel}: not an upload event")
                };
                assert!(!uploads.is_empty(), "{rel}");
                for u in uploads {
                    let u = u.unwrap_or_else(|e| panic!("{rel}: {e:?}"));
                    let file = repo_root().join("events/data").join(&u.bucket).join(&u.key);
                    assert!(file.is_file(), "{rel}: {} is missing", file.display());
                }
            }
            "events/clip/direct-image.json" => {
                let limits = coldpath_clip::api::RequestLimits {
                    text: limits,
                    max_images: 16,
                };
                let req =
                    coldpath_clip::api::parse_request(&value, "m", 16, &limits, true).unwrap();
                assert_eq!(req.modality(), coldpath_clip::api::Modality::Image, "{rel}");
                assert_eq!(req.len(), 2, "{rel}");
            }
            "events/faces/s3-put.json" => {
                let event: aws_lambda_events::s3::S3Event = round_trip(path, &value);
                assert!(event.records.len() >= 3, "{rel}");
                for r in &event.records {
                    assert_eq!(r.event_source.as_deref(), Some("aws:s3"), "{rel}");
                    assert_eq!(r.event_name.as_deref(), Some("ObjectCreated:Put"), "{rel}");
                    let key = r.s3.object.key.as_deref().unwrap_or_default();
                    coldpath_faces_function::decode_s3_key(key)
                        .unwrap_or_else(|e| panic!("{rel}: {e}"));
                }
            }
            other => panic!("{other}: a sample event with no parse test; add it to this match"),
        }
    }
}
