//! `Queue` (the SQS operations of the captioning worker) against moto's SQS on 127.0.0.1:
//! receive and batch delete, visibility changes, the backlog count, and the dead-letter redrive
//! that `create_queue_with_dlq` sets up.

use std::collections::BTreeSet;
use std::time::Duration;

use coldpath_aws::{Queue, QueueError};
use coldpath_core::{Classify, ErrorType, MapEnv};
use coldpath_test_support::moto::{MotoServer, create_queue, create_queue_with_dlq};

async fn queue(moto: &MotoServer, name: &str, visibility_secs: i32) -> Queue {
    let client = moto.sqs_client().await;
    let url = create_queue(&client, name, visibility_secs).await;
    Queue::new(client, url)
}

fn epoch_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[tokio::test]
async fn receive_then_delete_batch_in_chunks_reports_each_entry() {
    let moto = MotoServer::start();
    let queue = queue(&moto, "captions", 30).await;
    let start = epoch_ms();
    let sent: BTreeSet<String> = (0..12).map(|i| format!("job-{i:02}")).collect();
    for body in &sent {
        queue.send(body).await.unwrap();
    }
    assert_eq!(queue.approximate_backlog().await.unwrap(), 12);

    let mut received = Vec::new();
    while received.len() < sent.len() {
        let batch = queue.receive(10, 1, None).await.unwrap();
        assert!(!batch.is_empty(), "only {} of 12 received", received.len());
        assert!(batch.len() <= 10);
        received.extend(batch);
    }
    let bodies: BTreeSet<String> = received.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, sent);
    assert!(received.iter().all(|m| m.receive_count == 1));
    // Sent during this test (1 s of slack for moto's clock rounding).
    let end = epoch_ms();
    for m in &received {
        let sent = m.sent_at_ms.expect("SentTimestamp");
        assert!(
            start <= sent + 1000 && sent <= end + 1000,
            "{start} {sent} {end}"
        );
    }

    // Twelve handles take two DeleteMessageBatch calls; a bogus handle and an empty one fail on
    // their own without hiding the others.
    let mut handles: Vec<String> = received.iter().map(|m| m.receipt_handle.clone()).collect();
    handles.insert(3, "not-a-receipt-handle".to_string());
    handles.push(String::new());
    let results = queue.delete_batch(&handles).await;
    assert_eq!(results.len(), 14);
    for (i, result) in results.iter().enumerate() {
        match i {
            3 => match result {
                Err(QueueError::EntryFailed {
                    code, sender_fault, ..
                }) => {
                    assert_eq!(code, "ReceiptHandleIsInvalid");
                    assert!(sender_fault);
                }
                other => panic!("entry 3: {other:?}"),
            },
            13 => {
                let err = result.as_ref().unwrap_err();
                assert_eq!(err.error_type(), ErrorType::InvalidInput, "{err}");
            }
            _ => assert!(result.is_ok(), "entry {i}: {result:?}"),
        }
    }
    assert_eq!(queue.approximate_backlog().await.unwrap(), 0);
    assert!(queue.receive(10, 1, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn visibility_zero_hands_a_message_back_and_an_extension_keeps_it_hidden() {
    let moto = MotoServer::start();
    let queue = queue(&moto, "captions", 30).await;
    let id = queue.send("job-1").await.unwrap();
    let once = |got: Vec<coldpath_aws::ReceivedMessage>, count: u32| {
        assert_eq!(got.len(), 1, "receive #{count}");
        assert_eq!(got[0].message_id, id);
        assert_eq!(got[0].receive_count, count);
        got[0].receipt_handle.clone()
    };

    let handle = once(queue.receive(1, 1, None).await.unwrap(), 1);
    // In flight for the queue's 30 s: not received again.
    assert!(queue.receive(1, 1, None).await.unwrap().is_empty());

    // A worker that gives up hands it back at once; the next receive sees it again, this time
    // with a 1 s visibility of its own.
    queue.change_visibility(&handle, 0).await.unwrap();
    let handle = once(queue.receive(1, 1, Some(1)).await.unwrap(), 2);

    // A worker that needs longer extends it: still hidden after the receive's 1 s has passed.
    let results = queue.change_visibility_batch(&[handle.as_str()], 30).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(queue.receive(1, 1, None).await.unwrap().is_empty());

    // Without an extension the 1 s lapses and the message comes back by itself.
    queue.change_visibility(&handle, 0).await.unwrap();
    once(queue.receive(1, 1, Some(1)).await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let handle = once(queue.receive(1, 1, None).await.unwrap(), 4);

    // An out-of-range visibility is refused before any call.
    let err = queue.change_visibility(&handle, 43_201).await.unwrap_err();
    assert_eq!(err.error_type(), ErrorType::InvalidInput, "{err}");
}

#[tokio::test]
async fn backlog_counts_waiting_messages_not_those_in_flight() {
    let moto = MotoServer::start();
    let queue = queue(&moto, "captions", 30).await;
    assert_eq!(queue.approximate_backlog().await.unwrap(), 0);
    for i in 0..3 {
        queue.send(&format!("job-{i}")).await.unwrap();
    }
    assert_eq!(queue.approximate_backlog().await.unwrap(), 3);
    let taken = queue.receive(2, 1, None).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert_eq!(queue.approximate_backlog().await.unwrap(), 1);
}

#[tokio::test]
async fn queue_from_env_reaches_the_configured_queue() {
    let moto = MotoServer::start();
    let url = create_queue(&moto.sqs_client().await, "captions", 30).await;
    let env = MapEnv::new([("CAPTIONING_QUEUE_URL", url.as_str())]);
    let sdk = moto.sdk_config().await;
    let queue = Queue::from_env_with_sdk_config(&env, "CAPTIONING_QUEUE_URL", &sdk).unwrap();
    assert_eq!(queue.url(), url);
    assert!(!queue.is_fifo());
    queue.send("hello").await.unwrap();
    assert_eq!(queue.approximate_backlog().await.unwrap(), 1);

    let env = MapEnv::new([("CAPTIONING_QUEUE_URL", "captions")]);
    let err = Queue::from_env_with_sdk_config(&env, "CAPTIONING_QUEUE_URL", &sdk).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CAPTIONING_QUEUE_URL: expected"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_arguments_are_typed_errors_before_any_call() {
    let moto = MotoServer::start();
    let queue = queue(&moto, "captions", 30).await;
    for (max, wait, visibility) in [(0, 0, None), (11, 0, None), (1, 21, None), (1, 0, Some(-1))] {
        let err = queue.receive(max, wait, visibility).await.unwrap_err();
        assert!(matches!(err, QueueError::InvalidArgument { .. }), "{err}");
        assert_eq!(err.error_type(), ErrorType::InvalidInput);
    }
    let results = queue.change_visibility_batch(&["h1", "h2"], 50_000).await;
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(QueueError::InvalidArgument { .. })))
    );
}

#[tokio::test]
async fn a_missing_queue_is_refused_not_retried() {
    let moto = MotoServer::start();
    let client = moto.sqs_client().await;
    let queue = Queue::new(client, format!("{}/123456789012/nope", moto.endpoint));
    let err = queue.approximate_backlog().await.unwrap_err();
    assert!(matches!(err, QueueError::Rejected { .. }), "{err}");
    assert_eq!(err.error_type(), ErrorType::Internal);
    // A failed batch call is reported on every one of its entries.
    let results = queue.delete_batch(&["h1", "h2"]).await;
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(QueueError::Rejected { .. })))
    );
}

#[tokio::test]
async fn a_message_received_max_receive_count_times_moves_to_the_dead_letter_queue() {
    let moto = MotoServer::start();
    let client = moto.sqs_client().await;
    let pair = create_queue_with_dlq(&client, "captions", 2, 30).await;
    let queue = Queue::new(client.clone(), pair.url);
    let dlq = Queue::new(client, pair.dlq_url);
    let id = queue.send("poison").await.unwrap();

    for attempt in 1..=2 {
        let got = queue.receive(1, 1, None).await.unwrap();
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].receive_count, attempt);
        // The worker failed and hands it back.
        queue
            .change_visibility(&got[0].receipt_handle, 0)
            .await
            .unwrap();
    }
    assert!(queue.receive(1, 1, None).await.unwrap().is_empty());
    let dead = dlq.receive(1, 1, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].message_id.as_str(), dead[0].body.as_str()),
        (id.as_str(), "poison")
    );
}
