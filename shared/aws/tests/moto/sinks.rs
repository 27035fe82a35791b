//! `ResultSink` against the real S3 and SQS wire protocols (a moto server on 127.0.0.1): results
//! are keyed by id, so a redelivered input overwrites its S3 object and a FIFO queue drops the
//! repeat.

use coldpath_aws::{Queue, ResultSink, SinkError, SinkTarget};
use coldpath_core::{Classify, ErrorType, MapEnv};
use coldpath_test_support::moto::{MotoServer, create_queue};
use serde_json::{Value, json};

const BUCKET: &str = "coldpath-results";

async fn object_keys(client: &aws_sdk_s3::Client, prefix: &str) -> Vec<String> {
    let out = client
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(prefix)
        .send()
        .await
        .expect("list objects");
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

async fn object_json(client: &aws_sdk_s3::Client, key: &str) -> (Option<String>, Value) {
    let out = client
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("get object");
    let content_type = out.content_type().map(str::to_string);
    let bytes = out.body.collect().await.expect("read body").into_bytes();
    (content_type, serde_json::from_slice(&bytes).expect("JSON"))
}

/// Every message on the queue, received until a receive comes back empty (never deleted, so a
/// FIFO group stays locked and nothing is received twice within the visibility timeout).
async fn drain(queue: &Queue) -> Vec<coldpath_aws::ReceivedMessage> {
    let mut all = Vec::new();
    loop {
        let batch = queue.receive(10, 1, Some(60)).await.expect("receive");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

#[tokio::test]
async fn s3_sink_writes_one_json_object_per_id_and_a_repeat_overwrites_it() {
    let moto = MotoServer::start();
    let client = moto.s3_client().await;
    client.create_bucket().bucket(BUCKET).send().await.unwrap();
    let sink = ResultSink::new(
        "faces",
        SinkTarget::S3 {
            client: client.clone(),
            bucket: BUCKET.to_string(),
            prefix: "runs/v1".to_string(),
        },
    )
    .unwrap();
    assert_eq!(sink.to_string(), format!("s3://{BUCKET}/runs/v1"));

    // Faces keys results by `<bucket>/<key>` of the photo, so ids contain slashes.
    let id = "uploads/2026/11/franz-kafka.jpg";
    let first = json!({"faces": [{"score": 0.91}]});
    let uri = sink.put(id, &first).await.unwrap();
    let key = format!("runs/v1/faces/{id}.json");
    assert_eq!(uri, format!("s3://{BUCKET}/{key}"));
    let (content_type, body) = object_json(&client, &key).await;
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(body, first);

    // The same photo delivered again: still one object, now holding the newer result.
    let second = json!({"faces": []});
    assert_eq!(sink.put(id, &second).await.unwrap(), uri);
    assert_eq!(object_keys(&client, "runs/v1/").await, vec![key.clone()]);
    assert_eq!(object_json(&client, &key).await.1, second);

    // Another photo is another object.
    sink.put("uploads/2026/11/astronaut.png", &json!({"faces": []}))
        .await
        .unwrap();
    assert_eq!(object_keys(&client, "runs/v1/").await.len(), 2);

    // A bad id never reaches S3.
    let err = sink.put("uploads/../secrets", &first).await.unwrap_err();
    assert_eq!(err.error_type(), ErrorType::InvalidInput, "{err}");
    assert_eq!(object_keys(&client, "").await.len(), 2);
}

#[tokio::test]
async fn s3_sink_to_a_missing_bucket_is_refused_not_retried() {
    let moto = MotoServer::start();
    let sink = ResultSink::new(
        "faces",
        SinkTarget::S3 {
            client: moto.s3_client().await,
            bucket: "no-such-bucket".to_string(),
            prefix: String::new(),
        },
    )
    .unwrap();
    let err = sink.put("a.jpg", &json!({})).await.unwrap_err();
    assert!(matches!(err, SinkError::Rejected { .. }), "{err}");
    assert_eq!(err.error_type(), ErrorType::Internal);
    assert!(
        err.to_string()
            .contains("s3://no-such-bucket/faces/a.jpg.json"),
        "{err}"
    );
}

#[tokio::test]
async fn sqs_sink_delivers_one_message_with_the_id_attribute() {
    let moto = MotoServer::start();
    let client = moto.sqs_client().await;
    let url = create_queue(&client, "caption-results", 30).await;
    let sink = ResultSink::new(
        "captioning",
        SinkTarget::Sqs {
            client: client.clone(),
            queue_url: url.clone(),
        },
    )
    .unwrap();

    let result = json!({"caption": "a man in a suit", "tokens": 5});
    let sent = sink.put("msg-0001", &result).await.unwrap();

    let queue = Queue::new(client, url);
    let received = drain(&queue).await;
    assert_eq!(received.len(), 1);
    let message = &received[0];
    assert_eq!(sent, format!("sqs:{}", message.message_id));
    assert_eq!(
        message.attributes.get("id").map(String::as_str),
        Some("msg-0001")
    );
    assert_eq!(
        message.attributes.get("function").map(String::as_str),
        Some("captioning")
    );
    let body: Value = serde_json::from_str(&message.body).unwrap();
    assert_eq!(
        body,
        json!({"function": "captioning", "id": "msg-0001", "result": result})
    );
}

#[tokio::test]
async fn fifo_sink_drops_a_repeated_id_and_keeps_the_first_result() {
    let moto = MotoServer::start();
    let client = moto.sqs_client().await;
    let url = create_queue(&client, "caption-results.fifo", 30).await;
    let sink = ResultSink::new(
        "captioning",
        SinkTarget::Sqs {
            client: client.clone(),
            queue_url: url.clone(),
        },
    )
    .unwrap();

    sink.put("msg-a", &json!({"caption": "first"}))
        .await
        .unwrap();
    // A redelivered input processed again within the deduplication window.
    sink.put("msg-a", &json!({"caption": "second"}))
        .await
        .unwrap();
    sink.put("msg-b", &json!({"caption": "other"}))
        .await
        .unwrap();

    let received = drain(&Queue::new(client, url)).await;
    let ids: Vec<&str> = received
        .iter()
        .map(|m| m.attributes.get("id").map(String::as_str).unwrap_or(""))
        .collect();
    assert_eq!(ids, ["msg-a", "msg-b"]);
    let first: Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(first["result"], json!({"caption": "first"}));
}

#[tokio::test]
async fn sqs_sink_to_a_missing_queue_is_refused() {
    let moto = MotoServer::start();
    let client = moto.sqs_client().await;
    let sink = ResultSink::new(
        "captioning",
        SinkTarget::Sqs {
            client,
            queue_url: format!("{}/123456789012/no-such-queue", moto.endpoint),
        },
    )
    .unwrap();
    let err = sink.put("msg-1", &json!({})).await.unwrap_err();
    assert!(matches!(err, SinkError::Rejected { .. }), "{err}");
    assert_eq!(err.error_type(), ErrorType::Internal);
}

/// Nothing listens on this port, so the call fails before any answer: worth retrying.
#[tokio::test]
async fn sqs_sink_with_no_server_is_retryable() {
    let moto = MotoServer::start();
    let client = moto.sqs_client().await;
    let url = format!("{}/123456789012/results", moto.endpoint);
    drop(moto);
    let sink = ResultSink::new(
        "captioning",
        SinkTarget::Sqs {
            client,
            queue_url: url,
        },
    )
    .unwrap();
    let err = sink.put("msg-1", &json!({})).await.unwrap_err();
    assert!(matches!(err, SinkError::Transient { .. }), "{err}");
    assert_eq!(err.error_type(), ErrorType::Retryable);
}

/// The env-driven constructor with a loaded AWS configuration, as a function builds its sink.
#[tokio::test]
async fn sinks_from_env_reach_s3_and_sqs() {
    let moto = MotoServer::start();
    let sdk = moto.sdk_config().await;
    let s3 = moto.s3_client().await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let env = MapEnv::new([
        ("COLDPATH_RESULT_SINK", format!("s3://{BUCKET}/env/")),
        ("COLDPATH_S3_FORCE_PATH_STYLE", "true".to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "faces".to_string()),
    ]);
    let sink = ResultSink::from_env_with_sdk_config(&env, "faces", &sdk).unwrap();
    assert_eq!(sink.kind(), "s3");
    let uri = sink.put("b/k.jpg", &json!({"faces": []})).await.unwrap();
    assert_eq!(uri, format!("s3://{BUCKET}/env/faces/b/k.jpg.json"));
    assert_eq!(object_keys(&s3, "env/").await, ["env/faces/b/k.jpg.json"]);

    let url = create_queue(&moto.sqs_client().await, "results", 30).await;
    let env = MapEnv::new([("COLDPATH_RESULT_SINK", format!("sqs:{url}"))]);
    let sink = ResultSink::from_env_with_sdk_config(&env, "captioning", &sdk).unwrap();
    assert_eq!(sink.kind(), "sqs");
    sink.put("m-1", &json!({"caption": "x"})).await.unwrap();
    let got = drain(&Queue::new(moto.sqs_client().await, url)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attributes.get("id").map(String::as_str), Some("m-1"));
}

#[tokio::test]
async fn local_sink_from_env_writes_under_the_function_name() {
    let dir = tempfile::tempdir().unwrap();
    let setting = format!("local:{}", dir.path().display());
    let env = MapEnv::new([("COLDPATH_RESULT_SINK", setting.as_str())]);
    let sink = ResultSink::from_env(&env, "faces").await.unwrap();
    let path = sink
        .put("bucket/photo.jpg", &json!({"faces": []}))
        .await
        .unwrap();
    assert_eq!(
        path,
        dir.path()
            .join("faces/bucket/photo.jpg.json")
            .display()
            .to_string()
    );
    let body: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(body, json!({"faces": []}));
}
