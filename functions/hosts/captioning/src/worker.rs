//! `captioning worker`: a long-running queue consumer for a serverless GPU runtime or container.
//!
//! The worker long-polls the queue, assembles a batch (receiving until the batch is full or a
//! short fill time has passed), captions it with the same pipeline as the Lambda handler, and
//! deletes only the messages whose result was written. While a batch is in flight a heartbeat
//! extends the messages' visibility at half the visibility timeout, so a slow batch is not
//! handed to a second consumer; if the worker dies, the heartbeat stops and the messages come
//! back after the timeout.
//!
//! Ownership is explicit. An extension that fails transiently (throttling, a 5xx, a timeout, a
//! dropped connection) says nothing about who owns the message, so the heartbeat retries it with
//! a short backoff for as long as the message is known to be hidden, and the worker keeps it. A
//! definitive refusal (a stale receipt handle: the message is deleted or received again), or no
//! extension within the visibility window, gives the message up: it is extended no more and
//! never handed back, since it may belong to another consumer by now. A message whose result is
//! written is deleted whatever the heartbeat concluded: the delete works while the receive is
//! still the latest, and if it does not, the result write is idempotent (keyed by the request
//! id), so a redelivery only rewrites it. Deletes and hand-backs wait for the heartbeat to stop,
//! so no extension races them. A failed message is handed back at once (visibility 0), or after
//! a short backoff when the failure is transient, and the queue's redrive policy moves a message
//! that keeps failing to its dead-letter queue.
//!
//! It stops on its own in two ways, both exit 0. On SIGTERM it receives no more, lets the batch
//! in flight run until the stop deadline, deletes what was written, hands every other message it
//! holds back to the queue (visibility 0) and exits, so right after it exits no message it held
//! is still hidden; a second signal exits at once. After `idle_exit` with an empty queue it exits
//! so a scale-to-zero platform stops billing. A deep backlog switches it to bulk mode (a larger
//! batch).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coldpath_aws::{Queue, QueueError, ReceivedMessage};
use coldpath_core::{Classify, ErrorType};
use coldpath_runtime::metrics::Metrics;
use tokio::sync::watch;

use coldpath_captioning::config::WorkerSettings;
use coldpath_captioning::service::{
    Captioner, CaptioningService, ImageSource, Outcome, Progress, ResultWriter,
};

/// SQS returns at most 10 messages per receive.
pub const MAX_RECEIVE: usize = 10;
/// SQS deletes and changes visibility of at most 10 messages per batch call.
pub const MAX_BATCH_CALL: usize = 10;
/// The longest hand-back delay for a transiently failed message; the first retry waits 1 s and
/// each redelivery doubles it.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// The `Function` dimension of the worker's metrics.
pub const METRICS_FUNCTION: &str = "captioning-worker";
/// Exit status after a second stop signal: 128 + SIGTERM, as a shell reports a killed process.
pub const FORCED_EXIT_CODE: i32 = 143;
/// The first retry of a visibility extension that failed transiently waits this long (or an
/// eighth of the visibility timeout, if less), and each further retry doubles it...
pub const EXTEND_RETRY_FIRST: Duration = Duration::from_millis(100);
/// ...up to this, so a throttled queue is not hammered, and never past the time the message is
/// known to be hidden.
pub const EXTEND_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a delete or a hand-back is tried when it fails transiently.
const SETTLE_ATTEMPTS: u32 = 3;

/// Ends the process now with `code`, without running `atexit` handlers or C++ static destructors.
///
/// `std::process::exit` runs them, and ONNX Runtime's destructors then tear down its
/// environment while a session may still be in use on another thread: a model call the stop
/// deadline cut off, or a session being built when a stop arrives during the cold start. The
/// soak caught that as a SIGSEGV on SIGTERM. Nothing needs flushing: logs go unbuffered to
/// stderr, stdout is unused, and every message was settled before this is called.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it ends the process without returning.
    unsafe { libc::_exit(code) }
}

/// Where this process's worker is: [`COLD`] until its loop starts, then [`RUNNING`]; a stop
/// signal during the cold start moves it to [`STOPPED_COLD`] and exits at once. Before its loop
/// a worker holds no message, and the cold start (model load, warm-up: seconds for a real model,
/// and synchronous, so no await point would see the signal) need not finish. One atomic decides
/// the race: either the loop starts or the early exit wins, never both. Process-wide because
/// signals are.
static PHASE: AtomicU8 = AtomicU8::new(COLD);
const COLD: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED_COLD: u8 = 2;

/// The queue operations the worker needs. Messages are the SDK adapter's [`ReceivedMessage`]
/// from receive to delete.
pub trait WorkQueue: Send + Sync + 'static {
    type Error: std::error::Error + Classify + Send + Sync + 'static;

    /// Receives up to `max` (at most [`MAX_RECEIVE`]) messages, waiting up to `wait` for the
    /// first, and hides them for `visibility`.
    fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<ReceivedMessage>, Self::Error>> + Send;

    /// Deletes the messages; returns the ones the queue did not delete, each with why.
    fn delete(
        &self,
        receipt_handles: &[String],
    ) -> impl Future<Output = Result<Vec<Refused<Self::Error>>, Self::Error>> + Send;

    /// Sets the messages' remaining invisibility to `visibility` from now: more extends the
    /// time this worker has, zero hands them back. Returns the ones whose change failed, each
    /// with why: a transient error (`Retryable`) says nothing about ownership, any other (a
    /// stale handle: the message is deleted or owned by another receive) is the queue's answer.
    fn set_visibility(
        &self,
        receipt_handles: &[String],
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<Refused<Self::Error>>, Self::Error>> + Send;

    /// The approximate number of visible messages.
    fn backlog(&self) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}

/// One message of a batch call that failed: its receipt handle and the error for it.
#[derive(Debug)]
pub struct Refused<E> {
    pub receipt_handle: String,
    pub error: E,
}

impl<E: Classify> Refused<E> {
    /// Whether the same call may succeed later (throttling, a 5xx, the network).
    pub fn is_transient(&self) -> bool {
        self.error.error_type() == ErrorType::Retryable
    }
}

/// Why the worker stopped without an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExitReason {
    /// SIGTERM (or the caller's shutdown signal): what was done was deleted, the rest handed back.
    #[default]
    Shutdown,
    /// The queue stayed empty for the idle-exit time.
    Idle,
}

/// What one run of the worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub exit: ExitReason,
    pub batches: u64,
    pub captioned: u64,
    pub failed: u64,
    pub deleted: u64,
    /// Messages handed back to the queue: failed ones, and at a stop the unfinished ones.
    pub released: u64,
    /// Messages the heartbeat gave up (a definitive refusal, or no extension within the
    /// visibility window) that had no result written: left alone for whoever owns them now.
    /// Given-up messages whose result was written are deleted and counted in `deleted`.
    pub abandoned: u64,
    /// Batches cut off by the stop deadline.
    pub cut_off: u64,
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

/// How long a failed message stays hidden before it comes back: at once for failures that
/// retrying soon cannot fix (bad input, a model error: the redrive policy counts them towards
/// the dead-letter queue), a doubling backoff from 1 s for transient ones (throttling, a network
/// failure), so a struggling dependency is not hammered.
pub fn hand_back_delay(error_type: ErrorType, receive_count: u32) -> Duration {
    if error_type != ErrorType::Retryable {
        return Duration::ZERO;
    }
    let doublings = receive_count.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_RETRY_BACKOFF)
}

/// The worker: a queue, the captioning pipeline and the worker settings.
pub struct Worker<Q, C, I, W> {
    queue: Arc<Q>,
    service: Arc<CaptioningService<C, I, W>>,
    settings: WorkerSettings,
    /// The service's metric output, reporting as `captioning-worker`: a GPU worker's batches
    /// are not the Lambda function's invocations, and mixing them would blur both.
    metrics: Metrics,
}

/// Waits until `shutdown` turns true; never returns if its sender is gone without doing so.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves `deadline` after `shutdown` turns true.
async fn stop_deadline(mut shutdown: watch::Receiver<bool>, deadline: Duration) {
    shutdown_requested(&mut shutdown).await;
    tracing::info!(
        deadline_s = deadline.as_secs_f64(),
        "stop requested: the batch in flight has until the deadline"
    );
    tokio::time::sleep(deadline).await;
}

/// The first retry delay of a transiently failed extension: [`EXTEND_RETRY_FIRST`], or less
/// for a short visibility timeout, so several retries fit its window.
fn first_extend_retry(visibility: Duration) -> Duration {
    EXTEND_RETRY_FIRST
        .min(visibility / 8)
        .max(Duration::from_millis(1))
}

/// Splits a visibility change's answer into the handles whose change failed transiently and
/// those the queue refused for good, logging why. A failed call fails every handle alike.
fn sort_refusals<E: std::error::Error + Classify>(
    action: &str,
    handles: &[String],
    answer: Result<Vec<Refused<E>>, E>,
) -> (Vec<String>, Vec<String>) {
    let mut transient = Vec::new();
    let mut refused = Vec::new();
    match answer {
        Ok(failures) => {
            for f in failures {
                if f.is_transient() {
                    tracing::warn!("{action}: one message failed, worth retrying: {}", f.error);
                    transient.push(f.receipt_handle);
                } else {
                    tracing::warn!("{action}: one message refused: {}", f.error);
                    refused.push(f.receipt_handle);
                }
            }
        }
        Err(e) if e.error_type() == ErrorType::Retryable => {
            tracing::warn!(
                messages = handles.len(),
                "{action} failed, worth retrying: {e}"
            );
            transient = handles.to_vec();
        }
        Err(e) => {
            tracing::warn!(messages = handles.len(), "{action} refused: {e}");
            refused = handles.to_vec();
        }
    }
    (transient, refused)
}

/// Extends the batch's visibility every half timeout, counted from when the messages were
/// received, until told to stop.
///
/// A message whose extension fails transiently is retried after a doubling backoff for as long
/// as it is known to be hidden (`visibility` from the receive, or from the last extension that
/// succeeded): the failure says nothing about who owns it. A definitive refusal, or no success
/// within that window (SQS has made it visible by then, and another consumer may have it), puts
/// it in `lost`, and it is extended no more.
async fn heartbeat<Q: WorkQueue>(
    queue: Arc<Q>,
    handles: Vec<String>,
    visibility: Duration,
    hidden_since: Instant,
    lost: Arc<Mutex<HashSet<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let period = (visibility / 2).max(Duration::from_millis(200));
    let mut hidden_until: HashMap<String, Instant> = handles
        .iter()
        .map(|h| (h.clone(), hidden_since + visibility))
        .collect();
    let first = tokio::time::Instant::from_std(hidden_since) + period;
    let mut ticks = tokio::time::interval_at(first, period);
    // Retries may run past a tick; the next extension then comes a period later, not at once.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let give_up = |handles: Vec<String>, why: &str| {
        if !handles.is_empty() {
            tracing::warn!(
                messages = handles.len(),
                "{why}; those messages may belong to another consumer now: no more extensions or hand-backs (a written result is still deleted)"
            );
            lost.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(handles);
        }
    };
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            // An extension in flight is never cut: the caller waits for this task to end.
            () = shutdown_requested(&mut stop) => return,
        }
        let mut pending: Vec<String> = {
            let lost = lost.lock().unwrap_or_else(|p| p.into_inner());
            handles
                .iter()
                .filter(|h| !lost.contains(*h))
                .cloned()
                .collect()
        };
        if pending.is_empty() {
            return;
        }
        let mut backoff = first_extend_retry(visibility);
        loop {
            let sent = Instant::now();
            let answer = queue.set_visibility(&pending, visibility).await;
            let (transient, refused) = sort_refusals("extending visibility", &pending, answer);
            for h in &pending {
                if !transient.contains(h) && !refused.contains(h) {
                    hidden_until.insert(h.clone(), sent + visibility);
                }
            }
            if transient.is_empty() {
                tracing::debug!(
                    messages = pending.len() - refused.len(),
                    "visibility extended"
                );
            }
            give_up(refused, "the queue refused a visibility extension");
            let now = Instant::now();
            let (expired, retry): (Vec<String>, Vec<String>) = transient
                .into_iter()
                .partition(|h| hidden_until.get(h).is_none_or(|&until| until <= now));
            give_up(
                expired,
                "no visibility extension succeeded within the visibility window",
            );
            pending = retry;
            let Some(until) = pending.iter().filter_map(|h| hidden_until.get(h)).min() else {
                break;
            };
            // The last try comes when the window closes; one that fails then gives the
            // message up above.
            let pause = backoff.min(until.saturating_duration_since(now));
            tracing::info!(
                messages = pending.len(),
                retry_ms = pause.as_millis() as u64,
                "retrying the visibility extension"
            );
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown_requested(&mut stop) => return,
            }
            backoff = (backoff * 2).min(EXTEND_RETRY_MAX);
        }
    }
}

/// Messages received for one batch.
struct Batch {
    messages: Vec<ReceivedMessage>,
    /// When the first receive that returned messages came back: they are hidden for the
    /// visibility timeout from about then (the later receives' messages, a little longer).
    hidden_since: Instant,
}

/// The heartbeat of one batch, stopped and awaited before anything is deleted or handed back.
struct Heartbeat {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    lost: Arc<Mutex<HashSet<String>>>,
}

impl Heartbeat {
    /// Starts extending `handles`, hidden for `visibility` since `hidden_since`.
    fn start<Q: WorkQueue>(
        queue: &Arc<Q>,
        handles: Vec<String>,
        visibility: Duration,
        hidden_since: Instant,
    ) -> Self {
        let lost = Arc::new(Mutex::new(HashSet::new()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(heartbeat(
            Arc::clone(queue),
            handles,
            visibility,
            hidden_since,
            Arc::clone(&lost),
            stop_rx,
        ));
        Heartbeat { stop, task, lost }
    }

    /// Stops the heartbeat, waits for an extension in flight, and returns the handles it gave
    /// up.
    async fn finish(self) -> HashSet<String> {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!("the heartbeat task failed: {e}");
        }
        std::mem::take(&mut *self.lost.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl<Q: WorkQueue, C: Captioner, I: ImageSource, W: ResultWriter> Worker<Q, C, I, W> {
    pub fn new(
        queue: Q,
        service: Arc<CaptioningService<C, I, W>>,
        settings: WorkerSettings,
    ) -> Self {
        let metrics = service.metrics().for_function(METRICS_FUNCTION);
        Worker {
            queue: Arc::new(queue),
            service,
            settings,
            metrics,
        }
    }

    /// Runs until `shutdown` turns true, the queue stays empty for the idle time, or the queue
    /// fails in a way retrying cannot fix.
    pub async fn run(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<WorkerReport, WorkerError> {
        let max_batch = self.service.settings().max_batch;
        let mut report = WorkerReport::default();
        if PHASE
            .compare_exchange(COLD, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err_and(|phase| phase == STOPPED_COLD)
        {
            // The signal task is exiting the process: receive nothing.
            return Ok(report);
        }
        let mut bulk = false;
        let mut idle_since = Instant::now();
        let mut backoff = Duration::from_millis(500);
        tracing::info!(
            max_batch,
            bulk_batch = self.settings.bulk_batch,
            bulk_threshold = self.settings.bulk_threshold,
            visibility_timeout_s = self.settings.visibility_timeout.as_secs(),
            wait_s = self.settings.wait.as_secs(),
            fill_ms = self.settings.fill_wait.as_millis() as u64,
            stop_deadline_s = self.settings.stop_deadline.as_secs(),
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
            // Never cancelled by a stop: a receive dropped mid-call may have hidden messages
            // whose receipt handles nobody would ever see, so they could not be handed back.
            let received = match self.assemble(target, &shutdown).await {
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
            if *shutdown.borrow() {
                // Received for a batch that will not run: hand them straight back.
                let handles: Vec<String> = received
                    .messages
                    .iter()
                    .map(|m| m.receipt_handle.clone())
                    .collect();
                report.released += self.hand_back(&handles, Duration::ZERO).await;
                break;
            }
            if received.messages.is_empty() {
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
            self.run_batch(received, target, bulk, &shutdown, &mut report)
                .await;
            idle_since = Instant::now();
        }
        tracing::info!(
            exit = ?report.exit,
            batches = report.batches,
            captioned = report.captioned,
            failed = report.failed,
            deleted = report.deleted,
            released = report.released,
            abandoned = report.abandoned,
            cut_off = report.cut_off,
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

    /// Receives until `target` messages are in hand, the fill time has passed since the first
    /// arrived, or a stop is requested. The first receive long-polls; later ones short-poll, and
    /// an empty short poll is retried after a pause rather than ending the batch: SQS short
    /// polls sample a subset of its servers and can come back empty with messages waiting.
    async fn assemble(
        &self,
        target: usize,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Batch, WorkerError> {
        let vis = self.settings.visibility_timeout;
        let mut batch: Vec<ReceivedMessage> = Vec::with_capacity(target);
        let mut filling_since: Option<Instant> = None;
        while batch.len() < target {
            if *shutdown.borrow() {
                break;
            }
            let fill_left = match filling_since {
                None => None,
                Some(t) => match self.settings.fill_wait.checked_sub(t.elapsed()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break,
                },
            };
            let want = (target - batch.len()).min(MAX_RECEIVE);
            let wait = if batch.is_empty() {
                self.settings.wait
            } else {
                Duration::ZERO
            };
            match self.queue.receive(want, wait, vis).await {
                Ok(got) if got.is_empty() => match fill_left {
                    // The first receive's long poll ended empty: no batch this time.
                    None => break,
                    Some(left) => {
                        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
                    }
                },
                Ok(got) => {
                    batch.extend(got);
                    filling_since.get_or_insert_with(Instant::now);
                }
                Err(e) if batch.is_empty() => return Err(queue_error("receive", &e)),
                Err(e) => {
                    // Work on what is already received rather than let it time out.
                    tracing::warn!(received = batch.len(), "receive failed mid-batch: {e}");
                    break;
                }
            }
        }
        Ok(Batch {
            messages: batch,
            hidden_since: filling_since.unwrap_or_else(Instant::now),
        })
    }

    /// Captions one batch with a visibility heartbeat until it finishes or the stop deadline
    /// passes, then settles every message: written ones are deleted, failed ones handed back
    /// (after a backoff when transient), unfinished ones handed back at once, and ones whose
    /// ownership was lost left alone.
    async fn run_batch(
        &self,
        batch: Batch,
        target: usize,
        bulk: bool,
        shutdown: &watch::Receiver<bool>,
        report: &mut WorkerReport,
    ) {
        let received = batch.messages;
        // One metric line per batch, written when this function returns (after the settling).
        let mut invocation = self.metrics.invocation();
        invocation.set_batch_size(received.len());
        let handles: Vec<String> = received.iter().map(|m| m.receipt_handle.clone()).collect();
        let redelivered = received.iter().filter(|m| m.receive_count > 1).count();
        tracing::info!(
            batch_size = received.len(),
            target,
            bulk,
            redelivered,
            "batch started"
        );
        let heartbeat = Heartbeat::start(
            &self.queue,
            handles.clone(),
            self.settings.visibility_timeout,
            batch.hidden_since,
        );
        let progress = Progress::new(received.len());
        let outcomes: Option<Vec<Outcome>> = tokio::select! {
            outcomes = self.service.process_tracked(&received, target, &progress) => Some(outcomes),
            // Dropping the batch future stops it between awaits; a model call already running
            // on the blocking pool finishes in the background and its result is discarded.
            () = stop_deadline(shutdown.clone(), self.settings.stop_deadline) => None,
        };
        let lost = heartbeat.finish().await;
        let written = progress.written();

        let mut delete = Vec::new();
        let mut release_now = Vec::new();
        let mut release_later: Vec<(String, Duration)> = Vec::new();
        let mut failed = 0u64;
        let mut abandoned = 0u64;
        for (i, message) in received.iter().enumerate() {
            let handle = &message.receipt_handle;
            let done = match outcomes.as_ref().map(|o| &o[i].result) {
                Some(Ok(_)) => true,
                Some(Err(e)) => {
                    failed += 1;
                    invocation.error(e.error_type());
                    false
                }
                None => written[i],
            };
            if done {
                // Deleted even when the heartbeat gave it up: the delete still works while this
                // receive is the latest, and if not, a redelivery only rewrites the result.
                delete.push(handle.clone());
            } else if lost.contains(handle) {
                // It may be another consumer's by now: handing it back would expose it mid-work.
                abandoned += 1;
            } else {
                match outcomes.as_ref().map(|o| &o[i].result) {
                    Some(Err(e)) => match hand_back_delay(e.error_type(), message.receive_count) {
                        d if d.is_zero() => release_now.push(handle.clone()),
                        d => release_later.push((handle.clone(), d)),
                    },
                    _ => release_now.push(handle.clone()),
                }
            }
        }
        let cut_off = outcomes.is_none();
        if cut_off {
            tracing::warn!(
                batch_size = received.len(),
                written = written.iter().filter(|&&w| w).count(),
                "stop deadline reached with the batch in flight: deleting what was written, handing back the rest"
            );
        }
        let deleted = self.delete(&delete).await;
        let mut released = self.hand_back(&release_now, Duration::ZERO).await;
        for (handle, delay) in &release_later {
            released += self.hand_back(std::slice::from_ref(handle), *delay).await;
        }
        report.batches += 1;
        report.captioned += delete.len() as u64;
        report.failed += failed;
        report.deleted += deleted;
        report.released += released;
        report.abandoned += abandoned;
        report.cut_off += u64::from(cut_off);
        tracing::info!(
            batch_size = received.len(),
            captioned = delete.len(),
            failed,
            deleted,
            released,
            abandoned,
            cut_off,
            "batch done"
        );
    }

    /// Deletes messages whose results are written; returns how many went. A delete that fails
    /// transiently is tried again (a message left undeleted is captioned again when it comes
    /// back); one the queue refuses is logged and left: its result is written, so a redelivery
    /// only rewrites it.
    async fn delete(&self, handles: &[String]) -> u64 {
        let refused = self
            .settle("deleting completed messages", handles, None)
            .await;
        if !refused.is_empty() {
            tracing::warn!(
                undeleted = refused.len(),
                "some completed messages were not deleted; their results are written, so a redelivery rewrites the same results"
            );
        }
        (handles.len() - refused.len()) as u64
    }

    /// Hands messages back to the queue, visible again after `delay`. A transiently failed call
    /// is tried again, since a message left hidden waits out the whole visibility timeout.
    async fn hand_back(&self, handles: &[String], delay: Duration) -> u64 {
        let refused = self.settle("handing back", handles, Some(delay)).await;
        if !refused.is_empty() {
            tracing::error!(
                messages = refused.len(),
                "could not hand messages back; they return after their visibility timeout"
            );
        }
        (handles.len() - refused.len()) as u64
    }

    /// Deletes `handles` (`visibility` `None`) or sets their visibility, retrying the ones that
    /// failed transiently up to [`SETTLE_ATTEMPTS`] times in all; returns the handles that never
    /// succeeded.
    async fn settle(
        &self,
        action: &str,
        handles: &[String],
        visibility: Option<Duration>,
    ) -> Vec<String> {
        let mut pending: Vec<String> = handles.to_vec();
        let mut given_up = Vec::new();
        for attempt in 0..SETTLE_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            let answer = match visibility {
                None => self.queue.delete(&pending).await,
                Some(v) => self.queue.set_visibility(&pending, v).await,
            };
            let (transient, refused) = sort_refusals(action, &pending, answer);
            given_up.extend(refused);
            pending = transient;
        }
        given_up.extend(pending);
        given_up
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
/// runtimes send before killing) or SIGINT (Ctrl-C in a terminal); a second signal exits the
/// process at once with [`FORCED_EXIT_CODE`]. Must be called inside a tokio runtime;
/// registration errors are returned rather than leaving the worker unstoppable.
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
        if PHASE
            .compare_exchange(COLD, STOPPED_COLD, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            tracing::info!(
                signal = name,
                "stop requested during the cold start: no message was received, exiting"
            );
            exit_now(0);
        }
        tracing::info!(
            signal = name,
            "stop requested: receiving no more, handing back what cannot finish by the deadline"
        );
        // The receiver lives as long as the worker; if it is gone there is nothing to stop.
        let _ = tx.send(true);
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(
            signal = name,
            "second stop signal: exiting now; messages in flight return after their visibility timeout"
        );
        exit_now(FORCED_EXIT_CODE);
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
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = i32::try_from(max.min(MAX_RECEIVE)).unwrap_or(1);
        Queue::receive(self, max, sqs_secs(wait), Some(sqs_secs(visibility))).await
    }

    async fn delete(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<Refused<QueueError>>, QueueError> {
        let results = self.delete_batch(receipt_handles).await;
        Ok(failed_handles(receipt_handles, results))
    }

    async fn set_visibility(
        &self,
        receipt_handles: &[String],
        visibility: Duration,
    ) -> Result<Vec<Refused<QueueError>>, QueueError> {
        let results = self
            .change_visibility_batch(receipt_handles, sqs_secs(visibility))
            .await;
        Ok(failed_handles(receipt_handles, results))
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        self.approximate_backlog().await
    }
}

/// The handles whose entry failed, each with its own error: one stale receipt handle (a message
/// deleted or received again meanwhile) must not hide the fate of the others, and a failed call
/// (its error on each of its entries) is told from a refused entry by its error type.
fn failed_handles(
    handles: &[String],
    results: Vec<Result<(), QueueError>>,
) -> Vec<Refused<QueueError>> {
    handles
        .iter()
        .zip(results)
        .filter_map(|(handle, result)| {
            result.err().map(|error| Refused {
                receipt_handle: handle.clone(),
                error,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use super::*;
    use coldpath_captioning::service::testing::{
        FakeCaptioner, FakeError, FakeImages, MemorySink, body,
    };
    use coldpath_captioning::service::testing::{FakeService, service, settings};

    /// An in-memory queue. Messages received stay in flight until deleted or handed back with
    /// visibility 0, or, with `expires`, until their visibility runs out: the next receive then
    /// returns them under a new receipt handle, and the old one is stale, as in SQS (without
    /// it, the visibility timeout is the real queue's business, exercised against moto in the
    /// process tests). Every visibility change is recorded.
    #[derive(Default)]
    struct FakeQueue {
        /// Model the visibility timeout running out.
        expires: bool,
        /// receipt handle -> until when its message is hidden (with `expires`)
        hidden_until: Mutex<HashMap<String, Instant>>,
        /// How many more extension calls (visibility > 0) fail as a whole with a throttling
        /// error, as SQS answers under load.
        throttled_extensions: Mutex<usize>,
        /// How many extension calls were made, throttled ones included.
        extension_calls: Mutex<usize>,
        visible: Mutex<VecDeque<(String, String, u32)>>,
        /// receipt handle -> (message id, body, receive count)
        in_flight: Mutex<HashMap<String, (String, String, u32)>>,
        deleted: Mutex<Vec<String>>,
        /// (message id, visibility) of every change that succeeded
        visibility: Mutex<Vec<(String, Duration)>>,
        /// Message ids whose extensions (visibility > 0) are refused, as for a stale receipt
        /// handle.
        refuse_extend: Mutex<HashSet<String>>,
        /// How many short polls (wait 0) still come back empty whatever is visible.
        empty_short_polls: Mutex<usize>,
        /// At most this many messages per receive (0: as many as asked), as SQS often returns
        /// fewer than asked.
        per_receive: Mutex<usize>,
        next: Mutex<usize>,
    }

    impl FakeQueue {
        fn with(bodies: impl IntoIterator<Item = String>) -> Self {
            let q = FakeQueue::default();
            for (i, b) in bodies.into_iter().enumerate() {
                q.visible.lock().unwrap().push_back((format!("m{i}"), b, 0));
            }
            q
        }

        fn visible_ids(&self) -> Vec<String> {
            sorted(self.visible.lock().unwrap().iter().map(|m| m.0.clone()))
        }

        fn in_flight_ids(&self) -> Vec<String> {
            sorted(self.in_flight.lock().unwrap().values().map(|m| m.0.clone()))
        }

        fn deleted_ids(&self) -> Vec<String> {
            sorted(self.deleted.lock().unwrap().iter().cloned())
        }

        fn changes_of(&self, id: &str) -> Vec<Duration> {
            let changes = self.visibility.lock().unwrap();
            changes.iter().filter(|c| c.0 == id).map(|c| c.1).collect()
        }
    }

    /// SQS's answer for a receipt handle that is no longer this receive's.
    fn stale(handle: &str) -> Refused<FakeError> {
        Refused {
            receipt_handle: handle.to_string(),
            error: FakeError("ReceiptHandleIsInvalid".into()),
        }
    }

    fn sorted(ids: impl Iterator<Item = String>) -> Vec<String> {
        let mut ids: Vec<String> = ids.collect();
        ids.sort();
        ids
    }

    impl WorkQueue for FakeQueue {
        type Error = FakeError;

        async fn receive(
            &self,
            max: usize,
            wait: Duration,
            visibility: Duration,
        ) -> Result<Vec<ReceivedMessage>, FakeError> {
            assert!((1..=MAX_RECEIVE).contains(&max));
            if self.expires {
                // Expired messages are visible again, and their receipt handles stale.
                let now = Instant::now();
                let mut hidden = self.hidden_until.lock().unwrap();
                let mut in_flight = self.in_flight.lock().unwrap();
                let expired: Vec<String> = hidden
                    .iter()
                    .filter(|(_, until)| **until <= now)
                    .map(|(h, _)| h.clone())
                    .collect();
                for h in expired {
                    hidden.remove(&h);
                    if let Some(m) = in_flight.remove(&h) {
                        self.visible.lock().unwrap().push_back(m);
                    }
                }
            }
            if wait.is_zero() {
                let mut empty = self.empty_short_polls.lock().unwrap();
                if *empty > 0 {
                    *empty -= 1;
                    return Ok(Vec::new());
                }
            }
            let max = match *self.per_receive.lock().unwrap() {
                0 => max,
                n => max.min(n),
            };
            let mut visible = self.visible.lock().unwrap();
            let mut out = Vec::new();
            while out.len() < max {
                let Some((id, body, count)) = visible.pop_front() else {
                    break;
                };
                let mut next = self.next.lock().unwrap();
                *next += 1;
                let handle = format!("h{next}");
                self.hidden_until
                    .lock()
                    .unwrap()
                    .insert(handle.clone(), Instant::now() + visibility);
                self.in_flight
                    .lock()
                    .unwrap()
                    .insert(handle.clone(), (id.clone(), body.clone(), count + 1));
                out.push(ReceivedMessage {
                    message_id: id,
                    receipt_handle: handle,
                    body,
                    receive_count: count + 1,
                    sent_at_ms: None,
                    attributes: HashMap::new(),
                });
            }
            Ok(out)
        }

        async fn delete(&self, handles: &[String]) -> Result<Vec<Refused<FakeError>>, FakeError> {
            let mut refused = Vec::new();
            for h in handles {
                match self.in_flight.lock().unwrap().remove(h) {
                    Some((id, _, _)) => self.deleted.lock().unwrap().push(id),
                    None => refused.push(stale(h)),
                }
            }
            Ok(refused)
        }

        async fn set_visibility(
            &self,
            handles: &[String],
            visibility: Duration,
        ) -> Result<Vec<Refused<FakeError>>, FakeError> {
            if !visibility.is_zero() {
                *self.extension_calls.lock().unwrap() += 1;
                let mut throttled = self.throttled_extensions.lock().unwrap();
                if *throttled > 0 {
                    *throttled -= 1;
                    return Err(FakeError("ChangeMessageVisibilityBatch throttled".into()));
                }
            }
            let mut failed = Vec::new();
            for h in handles {
                let mut in_flight = self.in_flight.lock().unwrap();
                let Some((id, _, _)) = in_flight.get(h).cloned() else {
                    failed.push(stale(h));
                    continue;
                };
                if !visibility.is_zero() && self.refuse_extend.lock().unwrap().contains(&id) {
                    failed.push(stale(h));
                    continue;
                }
                self.hidden_until
                    .lock()
                    .unwrap()
                    .insert(h.clone(), Instant::now() + visibility);
                self.visibility.lock().unwrap().push((id, visibility));
                if visibility.is_zero() {
                    let (id, body, count) = in_flight.remove(h).unwrap();
                    self.visible.lock().unwrap().push_back((id, body, count));
                }
            }
            Ok(failed)
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
            fill_wait: Duration::from_millis(300),
            stop_deadline: Duration::from_secs(5),
        }
    }

    fn worker(
        queue: FakeQueue,
        service: FakeService,
        settings: WorkerSettings,
    ) -> Worker<FakeQueue, FakeCaptioner, FakeImages, MemorySink> {
        Worker::new(queue, Arc::new(service), settings)
    }

    /// A service whose model takes `delay` per call.
    fn slow_service(max_batch: usize, delay: Duration) -> FakeService {
        let captioner = FakeCaptioner {
            delay,
            ..Default::default()
        };
        CaptioningService::new(
            captioner,
            FakeImages::default(),
            MemorySink::default(),
            "fake",
            settings(max_batch),
        )
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn bulk_mode_has_hysteresis() {
        assert!(!next_bulk(false, 10, 10));
        assert!(next_bulk(false, 11, 10));
        assert!(next_bulk(true, 6, 10));
        assert!(!next_bulk(true, 5, 10));
    }

    #[test]
    fn transient_failures_back_off_and_others_come_back_at_once() {
        assert_eq!(hand_back_delay(ErrorType::InvalidInput, 1), Duration::ZERO);
        assert_eq!(hand_back_delay(ErrorType::Internal, 5), Duration::ZERO);
        assert_eq!(
            hand_back_delay(ErrorType::Retryable, 1),
            Duration::from_secs(1)
        );
        assert_eq!(
            hand_back_delay(ErrorType::Retryable, 3),
            Duration::from_secs(4)
        );
        assert_eq!(hand_back_delay(ErrorType::Retryable, 40), MAX_RETRY_BACKOFF);
    }

    /// Regression: failed messages were left hidden for the whole visibility
    /// timeout, although the docs said they were handed back.
    #[tokio::test]
    async fn deletes_what_completed_and_hands_failures_back_at_once() {
        let mut bodies: Vec<String> = (0..5).map(|i| body(&format!("id{i}"), "4x4")).collect();
        bodies.insert(2, body("poison", "missing.jpg"));
        let queue = FakeQueue::with(bodies);
        let w = worker(queue, service(2, None), worker_settings(2, 100));
        // Stop once the poison message has come back a few times, as a redrive policy would.
        let (tx, rx) = watch::channel(false);
        let hand_backs = |id: &str| {
            let changes = w.queue.changes_of(id);
            changes.iter().filter(|d| d.is_zero()).count()
        };
        let stop = async {
            while hand_backs("m2") < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tx.send(true).unwrap();
        };
        let (report, ()) = tokio::join!(w.run(rx), stop);
        let report = report.unwrap();
        assert_eq!(report.exit, ExitReason::Shutdown);
        assert_eq!(w.queue.deleted_ids(), ["m0", "m1", "m3", "m4", "m5"]);
        // Handed back with visibility 0 each time (a batch that waited to fill also had it
        // extended, since its visibility is counted from the receive), never deleted, and not
        // hidden at the end.
        assert!(hand_backs("m2") >= 3);
        assert_eq!(w.queue.changes_of("m2").last(), Some(&Duration::ZERO));
        assert_eq!(w.queue.visible_ids(), ["m2"]);
        assert!(w.queue.in_flight_ids().is_empty());
        assert_eq!(report.captioned, 5);
        assert!(report.released >= 3);
    }

    #[tokio::test]
    async fn each_batch_writes_one_metric_line_as_the_worker() {
        let (metrics, lines) = coldpath_runtime::metrics::Metrics::in_memory("captioning");
        let bodies = vec![body("a", "4x4"), body("b", "missing.jpg"), body("c", "2x2")];
        let w = worker(
            FakeQueue::with(bodies),
            service(4, None).with_metrics(metrics),
            worker_settings(4, 100),
        );
        let (tx, rx) = watch::channel(false);
        let stop = async {
            while w.queue.deleted_ids().len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tx.send(true).unwrap();
        };
        let (report, ()) = tokio::join!(w.run(rx), stop);
        report.unwrap();
        let docs = lines.documents();
        let first = &docs[0];
        assert_eq!(first["Function"], METRICS_FUNCTION);
        assert_eq!(first["BatchSize"], 3.0);
        assert_eq!(first["Errors"], 1.0);
        assert_eq!(docs[1]["ErrorType"], "InvalidInput");
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

    /// Regression: assembly stopped at the first empty short poll, so bulk batches
    /// came out under-filled while messages were waiting.
    #[tokio::test]
    async fn batches_fill_across_empty_short_polls() {
        let bodies = (0..8).map(|i| body(&format!("id{i}"), "4x4"));
        let queue = FakeQueue::with(bodies);
        *queue.empty_short_polls.lock().unwrap() = 3;
        *queue.per_receive.lock().unwrap() = 3;
        let w = worker(queue, service(8, None), worker_settings(8, 100));
        // 3 from the long poll, three empty short polls, then 3 and 2.
        let (_tx, rx) = watch::channel(false);
        let report = w.run(rx).await.unwrap();
        assert_eq!(report.deleted, 8);
        assert_eq!(*w.service.captioner().calls.lock().unwrap(), [8]);
    }

    #[tokio::test]
    async fn a_batch_that_finishes_before_the_deadline_is_deleted() {
        let bodies = (0..6).map(|i| body(&format!("id{i}"), "4x4"));
        let w = worker(
            FakeQueue::with(bodies),
            slow_service(3, Duration::from_millis(600)),
            worker_settings(3, 100),
        );
        let (tx, rx) = watch::channel(false);
        let stop = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.send(true).unwrap();
        };
        let (report, ()) = tokio::join!(w.run(rx), stop);
        let report = report.unwrap();
        assert_eq!(report.exit, ExitReason::Shutdown);
        assert_eq!((report.batches, report.deleted, report.cut_off), (1, 3, 0));
        assert_eq!(w.queue.visible_ids(), ["m3", "m4", "m5"]);
        assert!(w.queue.in_flight_ids().is_empty());
        // 600 ms in flight with a 400 ms visibility timeout: extended at 200 and 400 ms.
        let extensions = w.queue.changes_of("m0");
        assert!(extensions.len() >= 2, "{extensions:?}");
        assert!(extensions.iter().all(|d| *d == Duration::from_millis(400)));
    }

    /// Regression: after SIGTERM the batch in flight ran however long it took, and
    /// its messages then waited out the visibility timeout after the platform's SIGKILL.
    #[tokio::test]
    async fn the_stop_deadline_hands_back_an_unfinished_batch_at_once() {
        let bodies = (0..4).map(|i| body(&format!("id{i}"), "4x4"));
        let mut settings = worker_settings(4, 100);
        settings.stop_deadline = Duration::from_millis(200);
        settings.visibility_timeout = Duration::from_secs(30);
        let w = worker(
            FakeQueue::with(bodies),
            slow_service(4, Duration::from_secs(3)),
            settings,
        );
        let (tx, rx) = watch::channel(false);
        let started = Instant::now();
        let stop = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(true).unwrap();
        };
        let (report, ()) = tokio::join!(w.run(rx), stop);
        let report = report.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1500), "took {took:?}");
        assert_eq!((report.cut_off, report.deleted, report.released), (1, 0, 4));
        assert_eq!(w.queue.visible_ids(), ids(4));
        assert!(w.queue.in_flight_ids().is_empty());
        assert!(w.service.captioner().calls.lock().unwrap().len() <= 1);
    }

    /// Regression: a failed extension was once only logged, and the batch went on to hand
    /// back messages another consumer might own by then. A message the queue refuses to extend
    /// is extended no more and never handed back; its result, once written, is still deleted.
    #[tokio::test]
    async fn a_refused_extension_gives_the_message_up_but_a_written_one_is_deleted() {
        let bodies = [
            body("id0", "4x4"),
            body("id1", "4x4"),
            body("id2", "missing.jpg"),
        ];
        let queue = FakeQueue::with(bodies);
        queue.refuse_extend.lock().unwrap().insert("m1".to_string());
        queue.refuse_extend.lock().unwrap().insert("m2".to_string());
        let w = worker(
            queue,
            slow_service(3, Duration::from_millis(500)),
            worker_settings(3, 100),
        );
        let (_tx, rx) = watch::channel(false);
        // Bounded: a worker that handed m2 back would receive it again and never go idle.
        let report = tokio::time::timeout(Duration::from_secs(10), w.run(rx))
            .await
            .expect("the worker settles the batch and exits idle")
            .unwrap();
        // m1's caption is written: deleting it spares a second caption.
        assert_eq!(w.queue.deleted_ids(), ["m0", "m1"]);
        // m2 failed, and may be another consumer's: left in flight for whoever owns it.
        assert_eq!(w.queue.in_flight_ids(), ["m2"]);
        assert_eq!(
            (report.failed, report.released, report.abandoned),
            (1, 0, 1)
        );
        assert!(w.service.captioner().calls.lock().unwrap().len() == 1);
        // The heartbeat stopped extending them after the refusal.
        assert!(w.queue.changes_of("m1").is_empty());
        assert!(w.queue.changes_of("m2").is_empty());
        assert!(w.queue.changes_of("m0").len() >= 2);
    }

    /// Regression: the heartbeat took any failed extension, a throttled one included, for lost
    /// ownership. It stopped extending those messages, so they came back to other consumers
    /// mid-batch, and never deleted them although their captions were written.
    #[tokio::test]
    async fn throttled_extensions_are_retried_and_the_batch_stays_owned() {
        let bodies = (0..3).map(|i| body(&format!("id{i}"), "4x4"));
        let mut queue = FakeQueue::with(bodies);
        queue.expires = true;
        *queue.throttled_extensions.lock().unwrap() = 3;
        let mut settings = worker_settings(3, 100);
        settings.visibility_timeout = Duration::from_secs(2);
        let w = worker(queue, slow_service(3, Duration::from_secs(3)), settings);
        let (_tx, rx) = watch::channel(false);
        // Extensions at 1 s (throttled), retried at 1.1, 1.3 (throttled) and 1.7 s: within the
        // 2 s window. Another consumer polling at 2.5 s must find nothing.
        let other_consumer = async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            w.queue
                .receive(MAX_RECEIVE, Duration::ZERO, Duration::from_secs(30))
                .await
                .unwrap()
        };
        let (report, stolen) = tokio::join!(w.run(rx), other_consumer);
        let report = report.unwrap();
        assert!(stolen.is_empty(), "another consumer received {stolen:?}");
        assert_eq!(w.queue.deleted_ids(), ["m0", "m1", "m2"]);
        assert!(w.queue.in_flight_ids().is_empty());
        assert!(w.queue.visible_ids().is_empty());
        // Captioned once each.
        assert_eq!(*w.service.captioner().calls.lock().unwrap(), [3]);
        assert_eq!((report.deleted, report.abandoned), (3, 0));
        assert!(*w.queue.extension_calls.lock().unwrap() >= 4);
        assert!(!w.queue.changes_of("m0").is_empty());
    }

    /// Retries are bounded by the visibility window: once no extension has succeeded for a
    /// whole visibility timeout, SQS has made the messages visible again, so the heartbeat
    /// stops trying and gives them up. The written ones are still deleted (their receive is
    /// still the latest here); the failed one is not handed back.
    #[tokio::test]
    async fn extensions_that_keep_failing_give_messages_up_when_the_window_closes() {
        let bodies = [
            body("id0", "4x4"),
            body("id1", "4x4"),
            body("id2", "missing.jpg"),
        ];
        let queue = FakeQueue::with(bodies);
        *queue.throttled_extensions.lock().unwrap() = usize::MAX;
        let w = worker(
            queue,
            slow_service(3, Duration::from_millis(1000)),
            worker_settings(3, 100),
        );
        let (_tx, rx) = watch::channel(false);
        let report = tokio::time::timeout(Duration::from_secs(10), w.run(rx))
            .await
            .expect("the worker settles the batch and exits idle")
            .unwrap();
        // 400 ms visibility: tries at 200, 250, 350 and 400 ms, then none.
        let calls = *w.queue.extension_calls.lock().unwrap();
        assert!((2..=6).contains(&calls), "{calls} extension calls");
        assert_eq!(w.queue.deleted_ids(), ["m0", "m1"]);
        assert_eq!(w.queue.in_flight_ids(), ["m2"]);
        assert_eq!(
            (report.deleted, report.released, report.abandoned),
            (2, 0, 1)
        );
    }

    /// Regression: messages received for a batch that never ran were dropped with
    /// the receive, hidden until their visibility timeout.
    #[tokio::test]
    async fn messages_received_while_stopping_are_handed_back() {
        let bodies = (0..2).map(|i| body(&format!("id{i}"), "4x4"));
        let queue = FakeQueue::with(bodies);
        // The batch wants 8: it keeps filling (empty short polls) until the stop arrives.
        *queue.empty_short_polls.lock().unwrap() = usize::MAX;
        let mut settings = worker_settings(8, 100);
        settings.fill_wait = Duration::from_secs(10);
        let w = worker(queue, service(8, None), settings);
        let (tx, rx) = watch::channel(false);
        let stop = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.send(true).unwrap();
        };
        let (report, ()) = tokio::join!(w.run(rx), stop);
        let report = report.unwrap();
        assert_eq!((report.batches, report.released), (0, 2));
        assert_eq!(w.queue.visible_ids(), ids(2));
        assert!(w.queue.in_flight_ids().is_empty());
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
