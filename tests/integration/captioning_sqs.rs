//! Captioning over SQS, in process: the Lambda batch handler and the queue worker on the real
//! (generated) model, the real image loader on the sample photos, a local result sink in a
//! temporary directory, and SQS spoken to moto on 127.0.0.1.
//!
//! Model: the tiny ViT-GPT2 written by `tests/fixtures/captioning/gen_tiny_model.py` (its captions
//! are gibberish; these tests check delivery, not wording). Photos: `events/data/photos/`, from
//! `tests/fixtures/faces/gen_photos.py`. The worker's process-level behaviour (SIGKILL mid-batch,
//! SIGTERM drain, idle exit of the real binary) is tested in `functions/hosts/captioning/tests/worker.rs`,
//! where cargo hands the test the binary's path.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coldpath_aws::{Queue, ResultSink, SinkTarget};
use coldpath_captioning::{CaptioningConfig, ModelService, init};
use coldpath_captioning_function::{ExitReason, Worker, WorkerReport, handle};
use coldpath_core::MapEnv;
use coldpath_io::LocalObjectDir;
use coldpath_runtime::{Context, LambdaEvent};
use coldpath_test_support::moto::{MotoServer, create_queue_with_dlq, queue_counts as counts};
use coldpath_test_support::{repo_root, setup_var};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Batches of 4, 1 s long polls, idle exit after 1 s, a 30 s visibility timeout.
const DRAIN: [(&str, &str); 4] = [
    ("CAPTIONING_MAX_BATCH", "4"),
    ("CAPTIONING_WAIT_SECS", "1"),
    ("CAPTIONING_IDLE_EXIT_SECS", "1"),
    ("CAPTIONING_VISIBILITY_TIMEOUT_SECS", "30"),
];

/// Runs a worker with the `DRAIN` settings on `queue` until it has been idle for a second, with
/// results under `results`.
async fn drain_until_idle(queue: Queue, results: &Path) -> WorkerReport {
    let config = config(&DRAIN);
    let service = Arc::new(service(&config, results).await);
    let worker = Worker::new(queue, service, config.worker.clone());
    let (_stop, shutdown) = watch::channel(false);
    worker.run(shutdown).await.unwrap()
}

/// Settings for the real model with `extra` overrides.
fn config(extra: &[(&str, &str)]) -> CaptioningConfig {
    let mut env = MapEnv::new([
        ("ORT_DYLIB_PATH", setup_var("ORT_DYLIB_PATH")),
        (
            "CAPTIONING_MODEL_SOURCE",
            setup_var("CAPTIONING_MODEL_SOURCE"),
        ),
        ("COLDPATH_INTRA_THREADS", "1".to_string()),
        ("CAPTIONING_WARMUP", "false".to_string()),
        ("COLDPATH_LIBHEIF_PATH", setup_var("COLDPATH_LIBHEIF_PATH")),
        ("COLDPATH_LIBAVIF_PATH", setup_var("COLDPATH_LIBAVIF_PATH")),
    ]);
    for (k, v) in extra {
        env.0.insert(k.to_string(), v.to_string());
    }
    CaptioningConfig::from_env(&env).expect("captioning config")
}

type Service = ModelService<LocalObjectDir, ResultSink>;

/// The service on the real model, photos from `events/data`, results under `results`.
async fn service(config: &CaptioningConfig, results: &Path) -> Service {
    let sink = ResultSink::new("captioning", SinkTarget::Local(results.to_path_buf()))
        .expect("result sink");
    let photos = LocalObjectDir::new(repo_root().join("events/data"));
    init(config, photos, sink, false)
        .await
        .map(|(service, _)| service)
        .unwrap_or_else(|e| panic!("captioning init failed: {e}"))
}

/// The ids that have a result file, and each file's JSON.
fn results(dir: &Path) -> Vec<(String, Value)> {
    let dir = dir.join("captioning");
    let mut out: Vec<(String, Value)> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .map(|p| {
                let id = p.file_stem().unwrap().to_string_lossy().to_string();
                let text = std::fs::read_to_string(&p).unwrap();
                (id, serde_json::from_str(&text).unwrap())
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn ids(results: &[(String, Value)]) -> Vec<&str> {
    results.iter().map(|(id, _)| id.as_str()).collect()
}

fn body(id: &str, photo: &str) -> String {
    json!({"id": id, "image": {"s3": format!("s3://photos/{photo}")}}).to_string()
}

/// (visible, in flight) message counts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_batch_reports_only_the_poison_messages() {
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(service(&config(&[("CAPTIONING_MAX_BATCH", "2")]), dir.path()).await);
    // The sample event (one malformed body among four good ones) plus a record whose photo does
    // not exist: two poison messages, each must fail alone.
    let path = repo_root().join("events/captioning/sqs-batch.json");
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let records = event["Records"].as_array_mut().unwrap();
    let mut missing = records[0].clone();
    missing["messageId"] = json!("0f0f0f0f-0000-4000-8000-00000000dead");
    missing["body"] = json!(body("ghost", "no-such-photo.jpg"));
    records.push(missing);
    let malformed: Vec<String> = records
        .iter()
        .filter(|r| serde_json::from_str::<Value>(r["body"].as_str().unwrap()).is_err())
        .map(|r| r["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        malformed.len(),
        1,
        "the sample event has one malformed body"
    );

    let out = handle(
        Arc::clone(&service),
        LambdaEvent::new(event, Context::default()),
    )
    .await
    .unwrap();
    let failed: BTreeSet<&str> = out["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    let want: BTreeSet<&str> = [
        malformed[0].as_str(),
        "0f0f0f0f-0000-4000-8000-00000000dead",
    ]
    .into();
    assert_eq!(failed, want);

    let written = results(dir.path());
    assert_eq!(ids(&written), ["astronaut", "cat", "grey", "kafka"]);
    for (id, doc) in &written {
        assert_eq!(doc["id"], *id);
        assert_eq!(doc["model"], "tiny-vit-gpt2");
        assert!(doc["message_id"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(
            doc["caption"].as_str().is_some_and(|c| !c.is_empty()),
            "{doc}"
        );
        let tokens = doc["token_ids"].as_array().unwrap();
        assert!(!tokens.is_empty(), "{doc}");
        if id == "astronaut" {
            // This message asks for at most 8 new tokens.
            assert!(tokens.len() <= 8, "{doc}");
        }
    }
}

/// The phone-format sample event: a HEIC and an AVIF upload are both captioned and written.
/// (That their tokens are the JPEG's is `captioning::heic_and_avif_photos_caption_as_their_jpeg`,
/// under greedy search; this event runs the model's default beam search, whose near-equal beams
/// on the tiny random model flip under a level of pixel noise.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heic_and_avif_sample_event_is_captioned() {
    let dir = tempfile::tempdir().unwrap();
    let service = Arc::new(service(&config(&[]), dir.path()).await);
    let path = repo_root().join("events/captioning/sqs-phone-photos.json");
    let event: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let out = handle(
        Arc::clone(&service),
        LambdaEvent::new(event, Context::default()),
    )
    .await
    .unwrap();
    assert_eq!(out["batchItemFailures"], json!([]), "{out}");
    let written = results(dir.path());
    assert_eq!(ids(&written), ["iphone-upload", "web-upload"]);
    for (id, doc) in &written {
        assert!(
            doc["caption"].as_str().is_some_and(|c| !c.is_empty()),
            "{id}: {doc}"
        );
    }
}

/// The same message captioned alone and inside a batch gives the same caption: batching and the
/// one-by-one retry path cannot change results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_single_captions_agree() {
    let dir_batch = tempfile::tempdir().unwrap();
    let dir_single = tempfile::tempdir().unwrap();
    let photos = ["kafka.jpg", "astronaut.jpg", "cat.jpg", "grey.png"];
    let event = |ids: &[usize]| {
        let records: Vec<Value> = ids
            .iter()
            .map(|&i| {
                json!({"messageId": format!("m{i}"), "body": body(&format!("p{i}"), photos[i]),
                       "eventSource": "aws:sqs"})
            })
            .collect();
        LambdaEvent::new(json!({"Records": records}), Context::default())
    };
    let batched =
        Arc::new(service(&config(&[("CAPTIONING_MAX_BATCH", "4")]), dir_batch.path()).await);
    let single =
        Arc::new(service(&config(&[("CAPTIONING_MAX_BATCH", "1")]), dir_single.path()).await);
    handle(batched, event(&[0, 1, 2, 3])).await.unwrap();
    handle(single, event(&[0, 1, 2, 3])).await.unwrap();
    let a = results(dir_batch.path());
    let b = results(dir_single.path());
    assert_eq!(a.len(), 4);
    for ((id_a, doc_a), (id_b, doc_b)) in a.iter().zip(&b) {
        assert_eq!(id_a, id_b);
        assert_eq!(doc_a["token_ids"], doc_b["token_ids"], "{id_a}");
        assert_eq!(doc_a["caption"], doc_b["caption"], "{id_a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_drains_the_queue_and_deletes_exactly_what_it_wrote() {
    let moto = MotoServer::start();
    let client = moto.sqs_client().await;
    // Failed messages are handed back at once, so a poison message comes straight back; the
    // redrive policy (as the template sets one) moves it to the DLQ after its second receive.
    let queues = create_queue_with_dlq(&client, "captions-drain", 2, 30).await;
    let url = queues.url.clone();
    let queue = Queue::new(client.clone(), &url);
    let photos = [
        "kafka.jpg",
        "astronaut.jpg",
        "cat.jpg",
        "grey.png",
        "group.jpg",
        "kafka.jpg",
    ];
    for (i, photo) in photos.iter().enumerate() {
        queue
            .send(&body(&format!("photo-{i}"), photo))
            .await
            .unwrap();
    }
    // A message whose photo does not exist: it fails, so it must not be deleted, only handed back.
    queue
        .send(&body("ghost", "no-such-photo.jpg"))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let report = drain_until_idle(queue, dir.path()).await;

    assert_eq!(report.exit, ExitReason::Idle);
    // The ghost failed on both of its receives and was handed back each time.
    assert_eq!((report.captioned, report.failed, report.deleted), (6, 2, 6));
    assert_eq!(report.released, 2);
    let written = results(dir.path());
    assert_eq!(
        ids(&written),
        [
            "photo-0", "photo-1", "photo-2", "photo-3", "photo-4", "photo-5"
        ]
    );
    // Six deleted; nothing is left hidden (no 30 s visibility timeout to wait out): the failed
    // one is in the dead-letter queue.
    assert_eq!(counts(&client, &url).await, (0, 0));
    assert_eq!(counts(&client, &queues.dlq_url).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_fails_lands_in_the_dlq_and_nothing_else_does() {
    let moto = MotoServer::start();
    let client = moto.sqs_client().await;
    let queues = create_queue_with_dlq(&client, "captions-redrive", 2, 1).await;
    let queue = Queue::new(client.clone(), &queues.url);
    for (i, photo) in ["kafka.jpg", "cat.jpg", "grey.png"].iter().enumerate() {
        queue.send(&body(&format!("ok-{i}"), photo)).await.unwrap();
    }
    let poison =
        json!({"id": "poison", "image": {"s3": "s3://photos/not-a-photo.txt"}}).to_string();
    queue.send(&poison).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = config(&[
        ("CAPTIONING_MAX_BATCH", "4"),
        ("CAPTIONING_WAIT_SECS", "1"),
        // Long enough to see the poison message come back and be moved to the DLQ.
        ("CAPTIONING_IDLE_EXIT_SECS", "3"),
        ("CAPTIONING_VISIBILITY_TIMEOUT_SECS", "1"),
    ]);
    let service = Arc::new(service(&config, dir.path()).await);
    let worker = Worker::new(queue, service, config.worker.clone());
    let (_stop, shutdown) = watch::channel(false);
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(60), worker.run(shutdown))
        .await
        .expect("the worker goes idle once the poison message has moved")
        .unwrap();
    assert_eq!(report.exit, ExitReason::Idle);
    assert_eq!(report.deleted, 3);
    // Received twice (maxReceiveCount 2), failing both times.
    assert_eq!(report.failed, 2, "{report:?} after {:?}", started.elapsed());
    assert_eq!(ids(&results(dir.path())), ["ok-0", "ok-1", "ok-2"]);
    assert_eq!(counts(&client, &queues.url).await, (0, 0));

    let dlq = Queue::new(client.clone(), &queues.dlq_url);
    let dead = dlq.receive(10, 0, None).await.unwrap();
    let bodies: Vec<&str> = dead.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, [poison.as_str()]);
}

/// Photo uploads reach the caption queue as S3 events: EventBridge `Object Created` events (the
/// template's rule) or S3 notifications sent to the queue directly. Each photo's result is named
/// `<bucket>/<key>` (the id faces gives it), S3's test event is deleted without a result, and
/// nothing lands in the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_upload_events_are_captioned_under_the_photo_key() {
    let moto = MotoServer::start();
    let client = moto.sqs_client().await;
    let queues = create_queue_with_dlq(&client, "captions-uploads", 2, 30).await;
    let queue = Queue::new(client.clone(), &queues.url);
    // The sample event's bodies, as EventBridge's SQS target sends them.
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("events/captioning/sqs-eventbridge-s3.json"))
            .unwrap(),
    )
    .unwrap();
    for record in sample["Records"].as_array().unwrap() {
        queue.send(record["body"].as_str().unwrap()).await.unwrap();
    }
    let notification = json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-28T03:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "captions-on-upload",
               "bucket": {"name": "photos", "arn": "arn:aws:s3:::photos"},
               "object": {"key": "kafka.jpg", "size": 30000, "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                          "sequencer": "0055AED6DCD90281E5"}}
    }]});
    queue.send(&notification.to_string()).await.unwrap();
    let test_event = json!({"Service": "Amazon S3", "Event": "s3:TestEvent",
        "Time": "2026-11-28T03:00:00.000Z", "Bucket": "photos",
        "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR"});
    queue.send(&test_event.to_string()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let report = drain_until_idle(queue, dir.path()).await;
    assert_eq!((report.deleted, report.failed), (4, 0), "{report:?}");
    assert_eq!(counts(&client, &queues.url).await, (0, 0));
    assert_eq!(counts(&client, &queues.dlq_url).await, (0, 0));

    let under = dir.path().join("captioning/photos");
    let mut files: Vec<String> = std::fs::read_dir(&under)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["cat.jpg.json", "family photo.jpg.json", "kafka.jpg.json"]
    );
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(under.join("family photo.jpg.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["id"], "photos/family photo.jpg");
    assert!(
        doc["caption"].as_str().is_some_and(|c| !c.is_empty()),
        "{doc}"
    );

    // The Lambda handler on the sample event itself writes the same results.
    let lambda_dir = tempfile::tempdir().unwrap();
    let lambda = Arc::new(service(&config(&DRAIN), lambda_dir.path()).await);
    let out = handle(lambda, LambdaEvent::new(sample, Context::default()))
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    let again: Value = serde_json::from_str(
        &std::fs::read_to_string(
            lambda_dir
                .path()
                .join("captioning/photos/family photo.jpg.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(again["token_ids"], doc["token_ids"]);
}
