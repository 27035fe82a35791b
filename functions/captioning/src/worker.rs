//! `captioning worker`: a long-running queue consumer for a serverless GPU runtime or container.
//!
//! The worker long-polls the queue, assembles a batch (receiving again until the batch is full or
//! the queue has nothing more), captions it with the same pipeline as the Lambda handler, and
//! deletes only the messages whose result was written. While a batch is in flight a heartbeat
//! extends the messages' visibility at half the visibility timeout, so a slow batch is not
//! handed to a second consumer; if the worker dies, the heartbeat stops and the messages come
//! back after the timeout. Failed messages are left alone: they come back after the timeout, and
//! the queue's redrive policy moves a message that keeps failing to its dead-letter queue.
//!
//! It stops on its own in two ways, both exit 0: on SIGTERM (stop receiving, finish the batch in
//! flight, delete what completed) and after `idle_exit` with an empty queue, so a scale-to-zero
//! platform stops billing. A deep backlog switches it to bulk mode (a larger batch).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coldpath_aws::{Queue, QueueError};
use coldpath_core::{Classify, ErrorType};
use tokio::sync::watch;

use crate::config::WorkerSettings;
use crate::service::{Captioner, CaptioningService, ImageSource, Incoming, ResultWriter};

/// SQS returns at most 10 messages per receive.
pub const MAX_RECEIVE: usize = 10;
/// SQS deletes and changes visibility of at most 10 messages per batch call.
pub const MAX_BATCH_CALL: usize = 10;

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: Option<String>,
    /// How many times the queue has handed this message out (1 on first delivery).
    pub receive_count: u32,
}

/// The queue operations the worker needs.
pub trait WorkQueue: Send + Sync + 'static {
    type Error: std::error::Error + Classify + Send + Sync + 'static;

    /// Receives up to `max` (at most [`MAX_RECEIVE`]) messages, waiting up to `wait` for the
    /// first, and hides them for `visibility`.
    fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<Received>, Self::Error>> + Send;

    /// Deletes the messages; returns the receipt handles the queue did not delete.
    fn delete(
        &self,
        receipt_handles: &[String],
    ) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send;

    /// Hides the messages for another `visibility` from now.
    fn extend_visibility(
        &self,
        receipt_handles: &[String],
        visibility: Duration,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The approximate number of visible messages.
    fn backlog(&self) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}

/// Why the worker stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// SIGTERM (or the caller's shutdown signal): the batch in flight was finished first.
    Shutdown,
    /// The queue stayed empty for the idle-exit time.
    Idle,
}

/// What one run of the worker did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    pub exit: ExitReason,
    pub batches: u64,
    pub captioned: u64,
    pub failed: u64,
    pub deleted: u64,
}

/// A queue failure the worker cannot wait out (a missing queue, no permission).
#[derive(Debug, thiserror::Error)]
#[error("queue {operation} failed: {message}")]
pub struct WorkerError {
    pub operation: &'static str,
    pub error_type: ErrorType,
    pub message: String,
}

impl Classify for WorkerError {
    fn error_type(&self) -> ErrorType {
        self.error_type
    }
}

/// Whether bulk mode should be on, given the backlog. It turns on above `threshold` and off only
/// once the backlog has fallen to half of it, so a backlog hovering at the threshold does not
/// flip the batch size on every batch.
pub fn next_bulk(bulk: bool, backlog: u64, threshold: u64) -> bool {
    if bulk {
        backlog > threshold / 2
    } else {
        backlog > threshold
    }
}

/// The worker: a queue, the captioning pipeline and the worker settings.
pub struct Worker<Q, C, I, W> {
    queue: Arc<Q>,
    service: Arc<CaptioningService<C, I, W>>,
    settings: WorkerSettings,
}

/// Waits until `shutdown` turns true; never returns if its sender is gone without doing so.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl<Q: WorkQueue, C: Captioner, I: ImageSource, W: ResultWriter> Worker<Q, C, I, W> {
    pub fn new(
        queue: Q,
        service: Arc<CaptioningService<C, I, W>>,
        settings: WorkerSettings,
    ) -> Self {
        Worker {
            queue: Arc::new(queue),
            service,
            settings,
        }
    }

    /// Runs until `shutdown` turns true, the queue stays empty for the idle time, or the queue
    /// fails in a way retrying cannot fix.
    pub async fn run(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<WorkerReport, WorkerError> {
        let max_batch = self.service.settings().max_batch;
        let mut report = WorkerReport {
            exit: ExitReason::Shutdown,
            batches: 0,
            captioned: 0,
            failed: 0,
            deleted: 0,
        };
        let mut bulk = false;
        let mut idle_since = Instant::now();
        let mut backoff = Duration::from_millis(500);
        tracing::info!(
            max_batch,
            bulk_batch = self.settings.bulk_batch,
            bulk_threshold = self.settings.bulk_threshold,
            visibility_timeout_s = self.settings.visibility_timeout.as_secs(),
            wait_s = self.settings.wait.as_secs(),
            idle_exit_s = self.settings.idle_exit.map(|d| d.as_secs()),
            "worker started"
        );
        loop {
            if *shutdown.borrow() {
                break;
            }
            bulk = self.update_bulk(bulk, max_batch).await;
            let target = if bulk {
                self.settings.bulk_batch
            } else {
                max_batch
            };
            let received = tokio::select! {
                r = self.assemble(target) => r,
                // Dropping a receive in progress loses nothing: any message it was about to
                // return stays hidden for the visibility timeout, then comes back.
                () = shutdown_requested(&mut shutdown) => break,
            };
            let received = match received {
                Ok(r) => {
                    backoff = Duration::from_millis(500);
                    r
                }
                Err(e) if e.error_type() == ErrorType::Retryable => {
                    tracing::warn!(backoff_ms = backoff.as_millis() as u64, "{e}; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        () = shutdown_requested(&mut shutdown) => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if received.is_empty() {
                if let Some(idle) = self.settings.idle_exit
                    && idle_since.elapsed() >= idle
                {
                    tracing::info!(
                        idle_s = idle.as_secs(),
                        "queue empty for the idle time, exiting"
                    );
                    report.exit = ExitReason::Idle;
                    break;
                }
                if self.settings.wait.is_zero() {
                    // Short polling an empty queue would spin; pause as a long poll would.
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {},
                        () = shutdown_requested(&mut shutdown) => break,
                    }
                }
                continue;
            }
            self.run_batch(received, target, bulk, &mut report).await;
            idle_since = Instant::now();
        }
        tracing::info!(
            exit = ?report.exit,
            batches = report.batches,
            captioned = report.captioned,
            failed = report.failed,
            deleted = report.deleted,
            "worker stopped"
        );
        Ok(report)
    }

    /// Reads the backlog and switches bulk mode on or off, logging each switch.
    async fn update_bulk(&self, bulk: bool, max_batch: usize) -> bool {
        if self.settings.bulk_batch == max_batch {
            return false;
        }
        let backlog = match self.queue.backlog().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cannot read the queue backlog, keeping the batch size: {e}");
                return bulk;
            }
        };
        let next = next_bulk(bulk, backlog, self.settings.bulk_threshold);
        if next != bulk {
            let batch_size = if next {
                self.settings.bulk_batch
            } else {
                max_batch
            };
            tracing::info!(
                bulk = next,
                backlog,
                threshold = self.settings.bulk_threshold,
                batch_size,
                "{}",
                if next {
                    "bulk mode on"
                } else {
                    "bulk mode off"
                }
            );
        }
        next
    }

    /// Receives until `target` messages are in hand or the queue returns none. Only the first
    /// receive long-polls: once a batch has started, waiting longer for stragglers would only
    /// delay the messages already received.
    async fn assemble(&self, target: usize) -> Result<Vec<Received>, WorkerError> {
        let vis = self.settings.visibility_timeout;
        let mut batch = Vec::with_capacity(target);
        while batch.len() < target {
            let want = (target - batch.len()).min(MAX_RECEIVE);
            let wait = if batch.is_empty() {
                self.settings.wait
            } else {
                Duration::ZERO
            };
            match self.queue.receive(want, wait, vis).await {
                Ok(got) if got.is_empty() => break,
                Ok(got) => batch.extend(got),
                Err(e) if batch.is_empty() => return Err(queue_error("receive", &e)),
                Err(e) => {
                    // Work on what is already received rather than let it time out.
                    tracing::warn!(received = batch.len(), "receive failed mid-batch: {e}");
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Captions one batch with a visibility heartbeat, then deletes what completed.
    async fn run_batch(
        &self,
        received: Vec<Received>,
        target: usize,
        bulk: bool,
        report: &mut WorkerReport,
    ) {
        let handles: Vec<String> = received.iter().map(|m| m.receipt_handle.clone()).collect();
        let redelivered = received.iter().filter(|m| m.receive_count > 1).count();
        tracing::info!(
            batch_size = received.len(),
            target,
            bulk,
            redelivered,
            "batch started"
        );
        let heartbeat = tokio::spawn(heartbeat(
            Arc::clone(&self.queue),
            handles,
            self.settings.visibility_timeout,
        ));
        let incoming: Vec<Incoming> = received
            .iter()
            .map(|m| Incoming {
                message_id: m.message_id.clone(),
                body: m.body.clone(),
            })
            .collect();
        let outcomes = self.service.process(&incoming, target).await;
        heartbeat.abort();
        let done: Vec<String> = outcomes
            .iter()
            .zip(&received)
            .filter(|(o, _)| o.is_ok())
            .map(|(_, m)| m.receipt_handle.clone())
            .collect();
        let failed = (received.len() - done.len()) as u64;
        let deleted = match self.queue.delete(&done).await {
            Ok(left) => {
                if !left.is_empty() {
                    // Their results are written; a redelivery rewrites the same result.
                    tracing::warn!(
                        undeleted = left.len(),
                        "some completed messages were not deleted"
                    );
                }
                (done.len() - left.len()) as u64
            }
            Err(e) => {
                tracing::error!(
                    completed = done.len(),
                    "deleting completed messages failed: {e}"
                );
                0
            }
        };
        report.batches += 1;
        report.captioned += done.len() as u64;
        report.failed += failed;
        report.deleted += deleted;
        tracing::info!(
            batch_size = received.len(),
            captioned = done.len(),
            failed,
            deleted,
            "batch done"
        );
    }
}

/// Extends the batch's visibility every half timeout until aborted.
async fn heartbeat<Q: WorkQueue>(queue: Arc<Q>, handles: Vec<String>, visibility: Duration) {
    let period = (visibility / 2).max(Duration::from_millis(200));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        match queue.extend_visibility(&handles, visibility).await {
            Ok(()) => tracing::debug!(messages = handles.len(), "visibility extended"),
            Err(e) => tracing::warn!(messages = handles.len(), "extending visibility failed: {e}"),
        }
    }
}

fn queue_error<E: std::error::Error + Classify>(operation: &'static str, e: &E) -> WorkerError {
    WorkerError {
        operation,
        error_type: e.error_type(),
        message: e.to_string(),
    }
}

/// A shutdown flag that turns true on SIGTERM (what container platforms and serverless GPU
/// runtimes send before killing) or SIGINT (Ctrl-C in a terminal). Must be called inside a tokio
/// runtime; registration errors are returned rather than leaving the worker unstoppable.
pub fn stop_on_signals() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "stop requested: finishing the batch in flight"
        );
        // The receiver lives as long as the worker; if it is gone there is nothing to stop.
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Whole seconds for an SQS argument; the config bounds them well inside `i32`.
fn sqs_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl WorkQueue for Queue {
    type Error = QueueError;

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        let max = i32::try_from(max.min(MAX_RECEIVE)).unwrap_or(1);
        let got = Queue::receive(self, max, sqs_secs(wait), Some(sqs_secs(visibility))).await?;
        Ok(got
            .into_iter()
            .map(|m| Received {
                message_id: m.message_id,
                receipt_handle: m.receipt_handle,
                body: Some(m.body),
                receive_count: m.receive_count,
            })
            .collect())
    }

    async fn delete(&self, receipt_handles: &[String]) -> Result<Vec<String>, QueueError> {
        let results = self.delete_batch(receipt_handles).await;
        let mut left = Vec::new();
        for (handle, result) in receipt_handles.iter().zip(results) {
            if let Err(e) = result {
                tracing::warn!("delete failed for one message: {e}");
                left.push(handle.clone());
            }
        }
        Ok(left)
    }

    async fn extend_visibility(
        &self,
        receipt_handles: &[String],
        visibility: Duration,
    ) -> Result<(), QueueError> {
        let results = self
            .change_visibility_batch(receipt_handles, sqs_secs(visibility))
            .await;
        // One stale handle (a message deleted meanwhile) must not hide the others' success;
        // report the first failure for the log.
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        self.approximate_backlog().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use super::*;
    use crate::service::testing::{FakeError, body, service, settings};
    use crate::service::{CaptioningService, testing::*};

    /// An in-memory queue: messages never come back once received (the visibility timeout is
    /// the real queue's business, exercised against moto in the integration tests).
    #[derive(Default)]
    struct FakeQueue {
        visible: Mutex<VecDeque<(String, String)>>,
        in_flight: Mutex<HashMap<String, String>>,
        deleted: Mutex<Vec<String>>,
        extended: Mutex<usize>,
        next: Mutex<usize>,
    }

    impl FakeQueue {
        fn with(bodies: impl IntoIterator<Item = String>) -> Self {
            let q = FakeQueue::default();
            for (i, b) in bodies.into_iter().enumerate() {
                q.visible.lock().unwrap().push_back((format!("m{i}"), b));
            }
            q
        }
    }

    impl WorkQueue for FakeQueue {
        type Error = FakeError;

        async fn receive(
            &self,
            max: usize,
            _wait: Duration,
            _visibility: Duration,
        ) -> Result<Vec<Received>, FakeError> {
            assert!((1..=MAX_RECEIVE).contains(&max));
            let mut visible = self.visible.lock().unwrap();
            let mut out = Vec::new();
            while out.len() < max {
                let Some((id, body)) = visible.pop_front() else {
                    break;
                };
                let mut next = self.next.lock().unwrap();
                *next += 1;
                let handle = format!("h{next}");
                self.in_flight
                    .lock()
                    .unwrap()
                    .insert(handle.clone(), id.clone());
                out.push(Received {
                    message_id: id,
                    receipt_handle: handle,
                    body: Some(body),
                    receive_count: 1,
                });
            }
            Ok(out)
        }

        async fn delete(&self, handles: &[String]) -> Result<Vec<String>, FakeError> {
            for h in handles {
                let id = self.in_flight.lock().unwrap().remove(h).unwrap();
                self.deleted.lock().unwrap().push(id);
            }
            Ok(Vec::new())
        }

        async fn extend_visibility(&self, _: &[String], _: Duration) -> Result<(), FakeError> {
            *self.extended.lock().unwrap() += 1;
            Ok(())
        }

        async fn backlog(&self) -> Result<u64, FakeError> {
            Ok(self.visible.lock().unwrap().len() as u64)
        }
    }

    fn worker_settings(bulk_batch: usize, bulk_threshold: u64) -> WorkerSettings {
        WorkerSettings {
            queue_url: Some("http://127.0.0.1/1/q".into()),
            bulk_batch,
            bulk_threshold,
            idle_exit: Some(Duration::ZERO),
            visibility_timeout: Duration::from_millis(400),
            wait: Duration::from_secs(1),
        }
    }

    fn worker(
        queue: FakeQueue,
        service: FakeService,
        settings: WorkerSettings,
    ) -> Worker<FakeQueue, FakeCaptioner, FakeImages, MemorySink> {
        Worker::new(queue, Arc::new(service), settings)
    }

    #[test]
    fn bulk_mode_has_hysteresis() {
        assert!(!next_bulk(false, 10, 10));
        assert!(next_bulk(false, 11, 10));
        assert!(next_bulk(true, 6, 10));
        assert!(!next_bulk(true, 5, 10));
    }

    #[tokio::test]
    async fn drains_the_queue_and_deletes_only_what_completed() {
        let mut bodies: Vec<String> = (0..5).map(|i| body(&format!("id{i}"), "4x4")).collect();
        bodies.insert(2, body("poison", "missing.jpg"));
        let w = worker(
            FakeQueue::with(bodies),
            service(2, None),
            worker_settings(2, 100),
        );
        let (_tx, rx) = watch::channel(false);
        let report = w.run(rx).await.unwrap();
        assert_eq!(report.exit, ExitReason::Idle);
        assert_eq!((report.captioned, report.failed, report.deleted), (5, 1, 5));
        let mut deleted = w.queue.deleted.lock().unwrap().clone();
        deleted.sort();
        assert_eq!(deleted, ["m0", "m1", "m3", "m4", "m5"]);
        // The poison message is neither deleted nor hidden forever: it is still in flight, for
        // the queue to redeliver after its visibility timeout.
        assert_eq!(
            w.queue
                .in_flight
                .lock()
                .unwrap()
                .values()
                .collect::<Vec<_>>(),
            ["m2"]
        );
        assert_eq!(
            w.service
                .captioner()
                .calls
                .lock()
                .unwrap()
                .iter()
                .sum::<usize>(),
            5
        );
    }

    #[tokio::test]
    async fn a_deep_backlog_switches_to_bulk_batches_and_back() {
        let bodies = (0..10).map(|i| body(&format!("id{i}"), "4x4"));
        let w = worker(
            FakeQueue::with(bodies),
            service(2, None),
            worker_settings(4, 5),
        );
        let (_tx, rx) = watch::channel(false);
        let report = w.run(rx).await.unwrap();
        assert_eq!(report.deleted, 10);
        // Backlog 10 > 5: bulk (4); 6 > 5/2: still bulk (4); 2: back to 2.
        assert_eq!(*w.service.captioner().calls.lock().unwrap(), [4, 4, 2]);
    }

    #[tokio::test]
    async fn shutdown_finishes_the_batch_in_flight_and_receives_no_more() {
        let bodies = (0..6).map(|i| body(&format!("id{i}"), "4x4"));
        let mut batch = settings(3);
        // Long enough for the shutdown to arrive mid-batch and for heartbeats to run.
        batch.batch_delay = Duration::from_millis(600);
        let service = CaptioningService::new(
            FakeCaptioner::default(),
            FakeImages,
            MemorySink::default(),
            "fake",
            batch,
        );
        let w = worker(FakeQueue::with(bodies), service, worker_settings(3, 100));
        let (tx, rx) = watch::channel(false);
        let stop = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.send(true).unwrap();
        };
        let (report, ()) = tokio::join!(w.run(rx), stop);
        let report = report.unwrap();
        assert_eq!(report.exit, ExitReason::Shutdown);
        assert_eq!((report.batches, report.deleted), (1, 3));
        assert_eq!(w.queue.visible.lock().unwrap().len(), 3);
        assert!(w.queue.in_flight.lock().unwrap().is_empty());
        // 600 ms in flight with a 400 ms visibility timeout: extended at 200 and 400 ms.
        assert!(*w.queue.extended.lock().unwrap() >= 2);
    }

    #[tokio::test]
    async fn a_shutdown_before_start_receives_nothing() {
        let w = worker(
            FakeQueue::with([body("a", "4x4")]),
            service(2, None),
            worker_settings(2, 100),
        );
        let (_tx, rx) = watch::channel(true);
        let report = w.run(rx).await.unwrap();
        assert_eq!((report.exit, report.batches), (ExitReason::Shutdown, 0));
        assert_eq!(w.queue.visible.lock().unwrap().len(), 1);
    }
}
