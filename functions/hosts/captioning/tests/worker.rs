//! `captioning worker` as a platform runs it: the real binary as a child process, configured by
//! the environment only, reading a queue on a moto server on 127.0.0.1, writing results to a
//! temporary directory, and stopped by SIGKILL, SIGTERM or idleness.
//!
//! These tests live in this crate rather than in `tests/integration/` because cargo hands a
//! crate's own tests its binaries' paths (`CARGO_BIN_EXE_captioning`), always freshly built.
//! Model: the tiny ViT-GPT2 from `tests/fixtures/captioning/gen_tiny_model.py`; photos:
//! `events/data/photos/`. A batch of the tiny model takes well under a second, so the tests that
//! need a batch in flight set `CAPTIONING_FAULT_BATCH_DELAY_MS` (a pause before each model call,
//! read only by builds with the `fault-injection` feature, which `make test` turns on).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coldpath_aws::Queue;
use coldpath_test_support::moto::{MotoServer, create_queue, queue_counts};
use coldpath_test_support::{repo_root, sigterm};

mod common;
use common::worker_command;
use serde_json::{Value, json};

/// A running worker whose stderr (JSON log lines) is read on a thread.
struct WorkerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl WorkerProcess {
    fn start(queue_url: &str, moto: &MotoServer, results: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = worker_command(queue_url, &moto.endpoint, results);
        cmd.stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start captioning worker");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        WorkerProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line whose message is `message` and returns it as JSON.
    fn wait_for_log(&mut self, message: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["message"] == message
                    {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no {message:?} log line within {timeout:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to exit and returns its status and the rest of its log.
    fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "worker still running after {timeout:?}; stderr:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread ends at EOF, after the process has exited.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let logs = self
            .seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (status, logs)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A test that fails early must not leave a worker polling a dead moto.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn logs_with<'a>(logs: &'a [Value], message: &str) -> Vec<&'a Value> {
    logs.iter().filter(|v| v["message"] == message).collect()
}

fn result_ids(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir.join("captioning")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            // Only finished results: the sink writes a temporary file and renames it.
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn photo_body(id: &str, photo: &str) -> String {
    json!({"id": id, "image": {"s3": format!("s3://photos/{photo}")}}).to_string()
}

/// A queue on a fresh moto server holding `n` caption requests, and their ids.
fn queue_with(
    rt: &tokio::runtime::Runtime,
    name: &str,
    n: usize,
) -> (MotoServer, aws_sdk_sqs::Client, String, BTreeSet<String>) {
    let moto = MotoServer::start();
    let (client, url) = rt.block_on(async {
        let client = moto.sqs_client().await;
        let url = create_queue(&client, name, 30).await;
        (client, url)
    });
    let photos = ["kafka.jpg", "astronaut.jpg", "cat.jpg", "grey.png"];
    let queue = Queue::new(client.clone(), &url);
    let ids: BTreeSet<String> = (0..n).map(|i| format!("photo-{i}")).collect();
    rt.block_on(async {
        for (i, id) in ids.iter().enumerate() {
            queue
                .send(&photo_body(id, photos[i % photos.len()]))
                .await
                .unwrap();
        }
    });
    (moto, client, url, ids)
}

/// (visible, in flight) message counts.
fn counts(rt: &tokio::runtime::Runtime, client: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    rt.block_on(queue_counts(client, url))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_worker_killed_mid_batch_loses_nothing() {
    let rt = runtime();
    let (moto, client, url, ids) = queue_with(&rt, "captions-kill", 4);
    let results = tempfile::tempdir().unwrap();

    // First worker: takes all four in one batch, then dies (SIGKILL) before captioning them.
    let mut first = WorkerProcess::start(
        &url,
        &moto,
        results.path(),
        &[
            ("CAPTIONING_MAX_BATCH", "4"),
            ("CAPTIONING_FAULT_BATCH_DELAY_MS", "60000"),
            ("CAPTIONING_VISIBILITY_TIMEOUT_SECS", "2"),
            ("CAPTIONING_IDLE_EXIT_SECS", "60"),
        ],
    );
    let started = first.wait_for_log("batch started", Duration::from_secs(60));
    assert_eq!(started["batch_size"], 4, "{started}");
    // Longer than the 2 s visibility timeout: only the heartbeat (every second) keeps the
    // messages hidden from other consumers while the batch is in flight.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        counts(&rt, &client, &url),
        (0, 4),
        "all four still in flight"
    );
    first.child.kill().expect("SIGKILL");
    let (status, _) = first.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        result_ids(results.path()).is_empty(),
        "killed before any result"
    );

    // Second worker: once the visibility timeout runs out (no heartbeat any more) the messages
    // come back, and it captions all of them.
    let second = WorkerProcess::start(
        &url,
        &moto,
        results.path(),
        &[
            ("CAPTIONING_MAX_BATCH", "4"),
            ("CAPTIONING_VISIBILITY_TIMEOUT_SECS", "2"),
            ("CAPTIONING_IDLE_EXIT_SECS", "4"),
        ],
    );
    let (status, logs) = second.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}");
    let redelivered: u64 = logs_with(&logs, "batch started")
        .iter()
        .map(|v| v["redelivered"].as_u64().unwrap())
        .sum();
    assert_eq!(
        redelivered, 4,
        "every message came back from the dead worker"
    );
    // Exactly one result per id (the sink keys results by id), and the queue is empty.
    assert_eq!(result_ids(results.path()), ids);
    assert_eq!(counts(&rt, &client, &url), (0, 0));
}

#[test]
fn sigterm_finishes_the_batch_in_flight_and_deletes_only_it() {
    let rt = runtime();
    let (moto, client, url, _ids) = queue_with(&rt, "captions-term", 6);
    let results = tempfile::tempdir().unwrap();
    let mut worker = WorkerProcess::start(
        &url,
        &moto,
        results.path(),
        &[
            ("CAPTIONING_MAX_BATCH", "3"),
            ("CAPTIONING_FAULT_BATCH_DELAY_MS", "1500"),
            ("CAPTIONING_VISIBILITY_TIMEOUT_SECS", "30"),
            ("CAPTIONING_IDLE_EXIT_SECS", "60"),
        ],
    );
    let started = worker.wait_for_log("batch started", Duration::from_secs(60));
    assert_eq!(started["batch_size"], 3, "{started}");
    sigterm(worker.child.id());
    let (status, logs) = worker.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");
    let done = logs_with(&logs, "batch done");
    assert_eq!(done.len(), 1, "no batch after SIGTERM");
    assert_eq!(done[0]["deleted"], 3);
    assert_eq!(result_ids(results.path()).len(), 3);
    // The batch in flight was deleted; the other three were never received.
    assert_eq!(counts(&rt, &client, &url), (3, 0));
}

/// Regression: after SIGTERM the batch in flight ran to completion however long it
/// took; the platform's SIGKILL then left its messages hidden for the visibility timeout.
#[test]
fn sigterm_hands_back_a_batch_that_cannot_finish_by_the_deadline() {
    let rt = runtime();
    let (moto, client, url, ids) = queue_with(&rt, "captions-deadline", 4);
    let results = tempfile::tempdir().unwrap();
    let mut worker = WorkerProcess::start(
        &url,
        &moto,
        results.path(),
        &[
            ("CAPTIONING_MAX_BATCH", "4"),
            ("CAPTIONING_FAULT_BATCH_DELAY_MS", "60000"),
            ("CAPTIONING_VISIBILITY_TIMEOUT_SECS", "300"),
            ("CAPTIONING_STOP_DEADLINE_SECS", "2"),
            ("CAPTIONING_IDLE_EXIT_SECS", "60"),
        ],
    );
    let started = worker.wait_for_log("batch started", Duration::from_secs(60));
    assert_eq!(started["batch_size"], 4, "{started}");
    let term_at = Instant::now();
    sigterm(worker.child.id());
    let (status, logs) = worker.wait_exit(Duration::from_secs(30));
    let took = term_at.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "a stop at the deadline is a clean exit"
    );
    assert!(
        took < Duration::from_secs(6),
        "2 s deadline, exited after {took:?}"
    );
    // Right after the exit nothing is hidden: all four are back in the queue, none deleted.
    assert_eq!(counts(&rt, &client, &url), (4, 0));
    let done = logs_with(&logs, "batch done");
    assert_eq!(done.len(), 1);
    assert_eq!(
        (&done[0]["released"], &done[0]["cut_off"]),
        (&json!(4), &json!(true))
    );
    assert!(result_ids(results.path()).is_empty());

    // A fresh worker captions all four at once: no visibility timeout to wait out.
    let second = WorkerProcess::start(
        &url,
        &moto,
        results.path(),
        &[
            ("CAPTIONING_MAX_BATCH", "4"),
            ("CAPTIONING_IDLE_EXIT_SECS", "2"),
        ],
    );
    let (status, _) = second.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert_eq!(result_ids(results.path()), ids);
    assert_eq!(counts(&rt, &client, &url), (0, 0));
}

#[test]
fn a_second_signal_exits_at_once() {
    let rt = runtime();
    let (moto, _client, url, _) = queue_with(&rt, "captions-twice", 2);
    let results = tempfile::tempdir().unwrap();
    let mut worker = WorkerProcess::start(
        &url,
        &moto,
        results.path(),
        &[
            ("CAPTIONING_FAULT_BATCH_DELAY_MS", "60000"),
            ("CAPTIONING_STOP_DEADLINE_SECS", "60"),
        ],
    );
    worker.wait_for_log("batch started", Duration::from_secs(60));
    let pid = worker.child.id();
    sigterm(pid);
    worker.wait_for_log(
        "stop requested: the batch in flight has until the deadline",
        Duration::from_secs(10),
    );
    let second_at = Instant::now();
    sigterm(pid);
    let (status, _) = worker.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(143), "{status}");
    assert!(
        second_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        second_at.elapsed()
    );
}

#[test]
fn a_deep_backlog_switches_to_bulk_batches_and_back_with_a_log_each_way() {
    let rt = runtime();
    let (moto, client, url, ids) = queue_with(&rt, "captions-bulk", 8);
    let results = tempfile::tempdir().unwrap();
    let worker = WorkerProcess::start(
        &url,
        &moto,
        results.path(),
        &[
            ("CAPTIONING_MAX_BATCH", "2"),
            ("CAPTIONING_BULK_BATCH", "4"),
            ("CAPTIONING_BULK_THRESHOLD", "4"),
            ("CAPTIONING_IDLE_EXIT_SECS", "1"),
        ],
    );
    let (status, logs) = worker.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
    // Backlog 8 > 4: bulk on, a batch of 4; backlog 4 is above half the threshold: still bulk,
    // another 4; backlog 0: bulk off.
    let on = logs_with(&logs, "bulk mode on");
    let off = logs_with(&logs, "bulk mode off");
    assert_eq!((on.len(), off.len()), (1, 1), "one switch each way");
    assert_eq!(
        (&on[0]["backlog"], &on[0]["batch_size"], &on[0]["threshold"]),
        (&json!(8), &json!(4), &json!(4))
    );
    assert_eq!(
        (&off[0]["backlog"], &off[0]["batch_size"]),
        (&json!(0), &json!(2))
    );
    let sizes: Vec<u64> = logs_with(&logs, "batch started")
        .iter()
        .map(|v| v["batch_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [4, 4]);
    assert_eq!(result_ids(results.path()), ids);
    assert_eq!(counts(&rt, &client, &url), (0, 0));
}

#[test]
fn an_idle_worker_exits_zero_after_the_idle_time() {
    let rt = runtime();
    let (moto, client, url, _) = queue_with(&rt, "captions-idle", 0);
    let results = tempfile::tempdir().unwrap();
    let worker = WorkerProcess::start(
        &url,
        &moto,
        results.path(),
        &[("CAPTIONING_IDLE_EXIT_SECS", "2")],
    );
    let begun = Instant::now();
    let (status, logs) = worker.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
    assert!(
        begun.elapsed() >= Duration::from_secs(2),
        "{:?}",
        begun.elapsed()
    );
    assert_eq!(
        logs_with(&logs, "queue empty for the idle time, exiting").len(),
        1
    );
    let stopped = logs_with(&logs, "worker stopped");
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0]["exit"], "Idle");
    assert_eq!(counts(&rt, &client, &url), (0, 0));
}

#[test]
fn a_queue_that_does_not_exist_stops_the_worker_with_exit_1() {
    let moto = MotoServer::start();
    let results = tempfile::tempdir().unwrap();
    let url = format!("{}/123456789012/no-such-queue", moto.endpoint);
    let worker = WorkerProcess::start(&url, &moto, results.path(), &[]);
    let (status, logs) = worker.wait_exit(Duration::from_secs(60));
    // Refused by SQS (not a transient failure): retrying cannot fix it, so the worker stops.
    assert_eq!(status.code(), Some(1));
    let stopped: Vec<&Value> = logs
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("worker stopped: queue receive failed"))
        })
        .collect();
    assert_eq!(stopped.len(), 1, "{logs:?}");
}

#[test]
fn a_worker_without_a_queue_url_or_result_sink_fails_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_captioning"))
        .current_dir(repo_root())
        .arg("worker")
        .env_remove("CAPTIONING_QUEUE_URL")
        .env("COLDPATH_INTRA_THREADS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CAPTIONING_QUEUE_URL: required"),
        "{stderr}"
    );
}

/// A HEIC that crashes the decoder (a test build's decoder child aborts on a marker) fails its
/// own message alone: the other photos of the same batch, a HEIC decoded by a fresh child among
/// them, are captioned and deleted, the crashed one is handed back (the queue's redrive policy
/// takes it to the dead-letter queue after its receives), and the worker goes on.
#[test]
fn a_decoder_crash_fails_only_its_own_message() {
    use coldpath_test_support::{DECODER_ABORT, heic_with_marker};
    let rt = runtime();
    let (moto, client, url, _) = queue_with(&rt, "captions-crash", 0);
    let store = tempfile::tempdir().unwrap();
    let photos = store.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    std::fs::write(photos.join("crash.heic"), heic_with_marker(DECODER_ABORT)).unwrap();
    for name in ["IMG_0001.HEIC", "cat.jpg", "grey.png"] {
        std::fs::copy(
            repo_root().join("events/data/photos").join(name),
            photos.join(name),
        )
        .unwrap();
    }
    let queue = Queue::new(client.clone(), &url);
    rt.block_on(async {
        for (id, photo) in [
            ("crash", "crash.heic"),
            ("heic", "IMG_0001.HEIC"),
            ("jpeg", "cat.jpg"),
            ("png", "grey.png"),
        ] {
            queue.send(&photo_body(id, photo)).await.unwrap();
        }
    });
    let results = tempfile::tempdir().unwrap();
    let store_setting = format!("local:{}", store.path().display());
    let mut worker = WorkerProcess::start(
        &url,
        &moto,
        results.path(),
        &[
            ("CAPTIONING_MAX_BATCH", "4"),
            ("CAPTIONING_IDLE_EXIT_SECS", "60"),
            ("COLDPATH_OBJECT_STORE", &store_setting),
        ],
    );
    // Long polls may split the four into more than one batch: wait until the three good ones
    // are written, counting every batch's outcome on the way.
    let started = Instant::now();
    let (mut failed, mut deleted) = (0, 0);
    while result_ids(results.path()).len() < 3 {
        let done = worker.wait_for_log("batch done", Duration::from_secs(120));
        failed += done["failed"].as_u64().unwrap();
        deleted += done["deleted"].as_u64().unwrap();
        assert!(started.elapsed() < Duration::from_secs(180), "{done}");
    }
    assert!(
        matches!(worker.child.try_wait(), Ok(None)),
        "the worker died"
    );
    assert_eq!(
        result_ids(results.path()),
        ["heic", "jpeg", "png"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(deleted, 3);
    assert!(failed >= 1, "the crashed photo's message failed");
    let crash = worker
        .seen
        .iter()
        .find(|l| l.contains("SIGABRT"))
        .cloned()
        .unwrap_or_default();
    assert!(
        crash.contains("crash"),
        "the failure names the message and how its decoder died: {crash}"
    );
    sigterm(worker.child.id());
    let (status, _) = worker.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
}
