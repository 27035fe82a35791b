//! Dynamic batching: one bounded queue and one batching task per model.
//!
//! Callers [`Batcher::submit`] one request's prepared work. Whenever the model is free, the
//! batching task takes what is queued, in arrival order, up to a maximum of items and a weight
//! budget (tokens, as text-embeddings-inference does), runs it once on the blocking pool, and
//! answers each caller on its own `oneshot`. A full queue is refused at once ([`BatchError::
//! QueueFull`], 429); a request still queued at its deadline gets [`BatchError::Deadline`]
//! (503); a caller that went away (its client disconnected, or its deadline passed) is dropped
//! before it is batched, so it costs nothing further. A request whose batch has started gets
//! that batch's answer even past its deadline: the work is committed, and answering 503 would
//! throw it away (under overload, long batches straddling deadlines wasted most of the work).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coldpath_io::{TaskError, spawn_blocking};
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::BatchPolicy;
use crate::metrics::ModelMetrics;

/// A model the batcher can feed: many requests' inputs in, one output per input, in order.
pub trait BatchModel: Send + Sync + 'static {
    /// One request's prepared work (tokenized texts, a decoded photo).
    type Input: Send + 'static;
    type Output: Send + 'static;
    type Error: Send + 'static;

    /// The request's items (texts, photos), counted against the policy's `max_items`.
    fn items(input: &Self::Input) -> usize;
    /// The request's weight (tokens), counted against the policy's `max_weight`.
    fn weight(input: &Self::Input) -> usize;
    /// Runs a batch on a blocking thread: exactly one result per input, in order.
    fn run(&self, inputs: Vec<Self::Input>) -> Vec<Result<Self::Output, Self::Error>>;
}

/// Why a batched request got no output.
#[derive(Debug, thiserror::Error)]
pub enum BatchError<E> {
    #[error("the {model} queue is full ({capacity} requests waiting); retry later")]
    QueueFull {
        model: &'static str,
        capacity: usize,
    },
    #[error(
        "the {model} request was not answered within its deadline of {deadline:?}; retry later"
    )]
    Deadline {
        model: &'static str,
        deadline: Duration,
    },
    #[error("the {model} model is shutting down")]
    Closed { model: &'static str },
    #[error("the {model} batch failed: {source}")]
    Task {
        model: &'static str,
        #[source]
        source: TaskError,
    },
    /// The model's own error for this request.
    #[error(transparent)]
    Model(E),
}

type Reply<M> = Result<<M as BatchModel>::Output, BatchError<<M as BatchModel>::Error>>;

struct Entry<M: BatchModel> {
    input: M::Input,
    items: usize,
    weight: usize,
    admitted: Instant,
    deadline: Instant,
    /// Set when the entry's batch starts: from then its caller waits for the answer.
    started: Arc<AtomicBool>,
    reply: oneshot::Sender<Reply<M>>,
}

/// When the model call now running started, for the watchdog: a model call that never returns
/// must show, or the queue behind it stalls while the server still looks ready.
#[derive(Debug)]
struct Running {
    /// The clock's zero; `since` counts from it.
    epoch: Instant,
    /// Microseconds from `epoch` to the start of the running call, plus one; 0 when idle.
    since: AtomicU64,
}

impl Running {
    fn new() -> Self {
        Running {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
        }
    }

    fn start(&self) {
        let now = self.epoch.elapsed().as_micros() as u64 + 1;
        self.since.store(now, Ordering::Release);
    }

    fn stop(&self) {
        self.since.store(0, Ordering::Release);
    }

    /// How long the running call has taken so far; `None` when the model is idle.
    fn elapsed(&self) -> Option<Duration> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_micros(since - 1)),
            ),
        }
    }
}

/// The submitting side of one model's queue; cheap to share behind an `Arc`.
pub struct Batcher<M: BatchModel> {
    name: &'static str,
    tx: mpsc::Sender<Entry<M>>,
    running: Arc<Running>,
    /// Requests admitted and not yet answered: those queued, those in the batch running, and
    /// those still being prepared (tokenized, decoded), which would otherwise be unbounded.
    admission: Semaphore,
    policy: BatchPolicy,
    metrics: ModelMetrics,
}

/// A request's place, taken before its body is read and before its preparation (tokenizing,
/// fetching and decoding a photo), and held until it is answered, so the work and memory in
/// flight stay bounded. Its deadline runs from here: reading, fetching and decoding count.
pub struct Admission<'a, M: BatchModel> {
    batcher: &'a Batcher<M>,
    _permit: SemaphorePermit<'a>,
    admitted: Instant,
}

impl<M: BatchModel> Admission<'_, M> {
    /// When the request must be answered by (the policy's deadline after admission).
    pub fn deadline(&self) -> Instant {
        self.admitted + self.batcher.policy.deadline
    }

    /// The refusal for a request whose preparation ran past [`Admission::deadline`].
    pub fn expired(&self) -> BatchError<M::Error> {
        self.batcher.expired()
    }

    /// Queues the prepared `input` and waits for its output (see [`Batcher::submit`]).
    pub async fn submit(self, input: M::Input) -> Reply<M> {
        self.batcher.enqueue(input, self.admitted).await
    }
}

impl<M: BatchModel> Batcher<M> {
    /// Starts the batching task for `model`. The task ends when every [`Batcher`] handle is
    /// dropped and the queue is empty, so dropping the server's state drains it.
    pub fn spawn(
        name: &'static str,
        model: Arc<M>,
        policy: BatchPolicy,
        metrics: ModelMetrics,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(policy.queue);
        let running = Arc::new(Running::new());
        let task = tokio::spawn(batch_loop(
            name,
            model,
            rx,
            policy,
            metrics.clone(),
            Arc::clone(&running),
        ));
        (
            Batcher {
                name,
                tx,
                running,
                admission: Semaphore::new(policy.queue + policy.max_items),
                policy,
                metrics,
            },
            task,
        )
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How long the model call now running has taken; `None` when the model is idle.
    pub fn running_for(&self) -> Option<Duration> {
        self.running.elapsed()
    }

    /// Requests waiting in the queue (not those in the batch running now).
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Takes a place for a request about to be prepared: refused ([`BatchError::QueueFull`])
    /// when the queue and a running batch's worth of requests are already admitted.
    pub fn admit(&self) -> Result<Admission<'_, M>, BatchError<M::Error>> {
        match self.admission.try_acquire() {
            Ok(permit) => Ok(Admission {
                batcher: self,
                _permit: permit,
                admitted: Instant::now(),
            }),
            Err(TryAcquireError::NoPermits) => Err(self.full()),
            Err(TryAcquireError::Closed) => Err(BatchError::Closed { model: self.name }),
        }
    }

    /// The refusal of a request whose deadline passed before it was queued, counted.
    fn expired(&self) -> BatchError<M::Error> {
        self.metrics.rejected("deadline");
        BatchError::Deadline {
            model: self.name,
            deadline: self.policy.deadline,
        }
    }

    fn full(&self) -> BatchError<M::Error> {
        self.metrics.rejected("queue_full");
        BatchError::QueueFull {
            model: self.name,
            capacity: self.policy.queue,
        }
    }

    /// Admits and queues `input` and waits for its output, at most until the policy's deadline.
    /// Dropping the returned future (the client went away) withdraws the request if it is still
    /// queued.
    pub async fn submit(&self, input: M::Input) -> Reply<M> {
        self.admit()?.submit(input).await
    }

    async fn enqueue(&self, input: M::Input, admitted: Instant) -> Reply<M> {
        let deadline = admitted + self.policy.deadline;
        if Instant::now() >= deadline {
            // Its preparation (body, fetch, decode) used up its time: it would only be dropped.
            return Err(self.expired());
        }
        let (reply, mut rx) = oneshot::channel();
        let started = Arc::new(AtomicBool::new(false));
        let entry = Entry {
            started: Arc::clone(&started),
            items: M::items(&input),
            weight: M::weight(&input),
            input,
            admitted,
            deadline,
            reply,
        };
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(self.full()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(BatchError::Closed { model: self.name });
            }
        }
        let answer = match tokio::time::timeout_at(deadline.into(), &mut rx).await {
            Ok(answer) => Ok(answer),
            // Past the deadline but its batch is running: wait for the answer it is computing.
            Err(_) if started.load(Ordering::Acquire) => Ok(rx.await),
            Err(elapsed) => Err(elapsed),
        };
        let reply = match answer {
            Ok(Ok(reply)) => reply,
            // The batching task ended without answering: only when the runtime shuts down.
            Ok(Err(_)) => Err(BatchError::Closed { model: self.name }),
            Err(_) => Err(BatchError::Deadline {
                model: self.name,
                deadline: self.policy.deadline,
            }),
        };
        if matches!(reply, Err(BatchError::Deadline { .. })) {
            self.metrics.rejected("deadline");
        }
        reply
    }
}

/// The entry if it is still worth running: its caller is waiting and has time left. An expired
/// one is answered [`BatchError::Deadline`] here (its caller's timer may not have fired yet).
fn live<M: BatchModel>(
    entry: Entry<M>,
    now: Instant,
    name: &'static str,
    policy: &BatchPolicy,
    metrics: &ModelMetrics,
) -> Option<Entry<M>> {
    if now >= entry.deadline {
        let _ = entry.reply.send(Err(BatchError::Deadline {
            model: name,
            deadline: policy.deadline,
        }));
        return None;
    }
    if entry.reply.is_closed() {
        // Gone before its deadline: the client disconnected.
        metrics.rejected("cancelled");
        return None;
    }
    Some(entry)
}

/// A batch that ran: what the next one waits to fill (`batch_loop`'s fill wait).
#[derive(Clone, Copy)]
struct Finished {
    requests: usize,
    items: usize,
    weight: usize,
    ran: Duration,
    ended: Instant,
}

/// The batch being formed: its entries and what they add up to.
struct Forming<M: BatchModel> {
    batch: Vec<Entry<M>>,
    items: usize,
    weight: usize,
    /// When the last batch ended; entries admitted since are its callers coming back.
    since: Option<Instant>,
    /// Items of the entries admitted since then.
    returned: usize,
}

impl<M: BatchModel> Forming<M> {
    fn new(first: Entry<M>, since: Option<Instant>) -> Self {
        let mut forming = Forming {
            batch: Vec::new(),
            items: 0,
            weight: 0,
            since,
            returned: 0,
        };
        forming.push(first);
        forming
    }

    fn push(&mut self, entry: Entry<M>) {
        self.items += entry.items;
        self.weight += entry.weight;
        if self.since.is_some_and(|since| entry.admitted >= since) {
            self.returned += entry.items;
        }
        self.batch.push(entry);
    }

    /// Whether to wait for more (the fill wait): there is time to wait, fewer items have come
    /// back than the `last` batch held, and a request like its average would still fit (when
    /// it would not, a returning caller would only open the next batch).
    fn awaits(&self, last: Option<Finished>, wait: Duration, policy: &BatchPolicy) -> bool {
        let Some(last) = last.filter(|l| !wait.is_zero() && self.returned < l.items) else {
            return false;
        };
        let requests = last.requests.max(1);
        let fits_weight = policy
            .max_weight
            .is_none_or(|max| self.weight + last.weight / requests <= max);
        self.items + (last.items / requests).max(1) <= policy.max_items && fits_weight
    }

    /// Adds `next` if it fits the policy's items and weight; otherwise hands it back, to open
    /// the next batch.
    fn add(&mut self, next: Entry<M>, policy: &BatchPolicy) -> Result<(), Entry<M>> {
        let over_weight = policy
            .max_weight
            .is_some_and(|max| self.weight + next.weight > max);
        if self.items + next.items > policy.max_items || over_weight {
            return Err(next);
        }
        self.push(next);
        Ok(())
    }
}

async fn batch_loop<M: BatchModel>(
    name: &'static str,
    model: Arc<M>,
    mut rx: mpsc::Receiver<Entry<M>>,
    policy: BatchPolicy,
    metrics: ModelMetrics,
    running: Arc<Running>,
) {
    // An entry taken from the queue that did not fit the batch before it: it opens the next.
    let mut held: Option<Entry<M>> = None;
    // The last batch, for the fill wait.
    let mut last: Option<Finished> = None;
    loop {
        let first = match held.take() {
            Some(e) => e,
            None => match rx.recv().await {
                Some(e) => e,
                None => break,
            },
        };
        let now = Instant::now();
        let Some(first) = live(first, now, name, &policy, &metrics) else {
            continue;
        };
        // The fill wait. Taking only what has arrived when the model frees up splits a steady
        // set of callers into batches that take turns (at 16 clients: 1 and 15, or 8 and 8, as
        // each group is answered while the other runs), and small batches cost the model more
        // a text. The last batch's callers are on their way back: until as many items have
        // arrived since it ended as it had, the batch waits for them, a short time
        // (`fill_wait`, at most an eighth of the last run) that costs a steady load nothing,
        // as the core is busy taking their requests meanwhile.
        let wait = last.map_or(Duration::ZERO, |l| policy.fill_wait.min(l.ran / 8));
        let until = tokio::time::Instant::now() + wait;
        let mut forming = Forming::new(first, last.map(|l| l.ended));
        while forming.items < policy.max_items {
            let next = match rx.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Empty) if forming.awaits(last, wait, &policy) => {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(next)) => next,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            let Some(next) = live(next, Instant::now(), name, &policy, &metrics) else {
                continue;
            };
            if let Err(next) = forming.add(next, &policy) {
                held = Some(next);
                break;
            }
        }
        let Forming {
            batch,
            items,
            weight,
            ..
        } = forming;
        let now = Instant::now();
        for e in &batch {
            e.started.store(true, Ordering::Release);
            metrics.queue_wait(now.duration_since(e.admitted));
        }
        metrics.batch(batch.len(), items);
        let (inputs, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|e| (e.input, e.reply)).unzip();
        let started = Instant::now();
        let model = Arc::clone(&model);
        running.start();
        let outcome = spawn_blocking(move || model.run(inputs)).await;
        running.stop();
        last = Some(Finished {
            requests: replies.len(),
            items,
            weight,
            ran: started.elapsed(),
            ended: Instant::now(),
        });
        tracing::debug!(
            model = name,
            batch_size = replies.len(),
            items,
            weight,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "batch"
        );
        match outcome {
            Ok(results) if results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that gave up meanwhile is simply not answered.
                    let _ = reply.send(result.map_err(BatchError::Model));
                }
            }
            Ok(results) => {
                let source = TaskError::Panicked(format!(
                    "the model answered {} results for {} requests",
                    results.len(),
                    replies.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Task {
                        model: name,
                        source: source.clone(),
                    }));
                }
            }
            Err(source) => {
                tracing::error!(model = name, error = %source, "batch failed");
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Task {
                        model: name,
                        source: source.clone(),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::metrics::Metrics;

    /// Doubles numbers; records each batch; a batch waits while the gate is shut, so tests
    /// decide when the model is busy. 13 is a per-request error and 666 panics.
    struct Doubler {
        batches: Mutex<Vec<Vec<u32>>>,
        open: AtomicBool,
        /// Batches that reached the model (and wait at the gate while it is closed).
        entered: AtomicUsize,
    }

    impl BatchModel for Doubler {
        type Input = u32;
        type Output = u32;
        type Error = String;
        fn items(_: &u32) -> usize {
            1
        }
        fn weight(x: &u32) -> usize {
            *x as usize
        }
        fn run(&self, inputs: Vec<u32>) -> Vec<Result<u32, String>> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(!inputs.contains(&666), "the model blew up");
            self.batches.lock().unwrap().push(inputs.clone());
            inputs
                .into_iter()
                .map(|x| {
                    if x == 13 {
                        Err("unlucky".into())
                    } else {
                        Ok(2 * x)
                    }
                })
                .collect()
        }
    }

    struct Fixture {
        b: Arc<Batcher<Doubler>>,
        model: Arc<Doubler>,
        metrics: Metrics,
    }

    impl Fixture {
        fn new(policy: BatchPolicy) -> Self {
            let model = Arc::new(Doubler {
                batches: Mutex::new(Vec::new()),
                open: AtomicBool::new(true),
                entered: AtomicUsize::new(0),
            });
            let metrics = Metrics::new();
            let (b, _task) = Batcher::spawn(
                "doubler",
                Arc::clone(&model),
                policy,
                metrics.model("doubler"),
            );
            Fixture {
                b: Arc::new(b),
                model,
                metrics,
            }
        }

        fn shut(&self) {
            self.model.open.store(false, Ordering::SeqCst);
        }

        fn open(&self) {
            self.model.open.store(true, Ordering::SeqCst);
        }
    }

    const POLICY: BatchPolicy = BatchPolicy {
        queue: 64,
        max_items: 4,
        max_weight: Some(100),
        deadline: Duration::from_secs(10),
        fill_wait: Duration::ZERO,
    };

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_what_queued_while_busy_within_items_and_weight() {
        let f = Fixture::new(POLICY);
        let (b, model) = (&f.b, &f.model);
        f.shut();
        // The first request runs alone and holds the model at the gate.
        let first = tokio::spawn({
            let b = Arc::clone(b);
            async move { b.submit(1).await }
        });
        wait_for(|| model.entered.load(Ordering::SeqCst) == 1).await;
        let mut rest = Vec::new();
        for x in [2, 3, 4, 5, 6, 90, 7, 13] {
            let queued = Arc::clone(b);
            rest.push(tokio::spawn(async move { queued.submit(x).await }));
            // Keep arrival order deterministic.
            wait_for(|| b.depth() == rest.len()).await;
        }
        f.open();
        assert_eq!(first.await.unwrap().unwrap(), 2);
        let mut got = Vec::new();
        for r in rest {
            got.push(r.await.unwrap());
        }
        assert_eq!(got[0].as_ref().unwrap(), &4);
        assert!(matches!(&got[7], Err(BatchError::Model(m)) if m == "unlucky"));
        // 4 items at most; 90 would push 5+6's batch past 100 tokens, so it opens the next.
        assert_eq!(
            *model.batches.lock().unwrap(),
            vec![vec![1], vec![2, 3, 4, 5], vec![6, 90], vec![7, 13]]
        );
    }

    /// A caller whose `first` request runs alone for 800 ms while `queued` wait (so the fill
    /// wait's bound is then 100 ms); answered, it sends `again` after `pause`, as a steady
    /// client does. Every answer is checked; the fixture is returned with its batches.
    async fn returning_caller(first: u32, queued: &[u32], pause: Duration, again: u32) -> Fixture {
        // A long fill wait: the bound is then an eighth of the last run (the gate's hold).
        let f = Fixture::new(BatchPolicy {
            fill_wait: Duration::from_secs(30),
            ..POLICY
        });
        f.shut();
        let caller = tokio::spawn({
            let b = Arc::clone(&f.b);
            async move {
                let answer = b.submit(first).await;
                tokio::time::sleep(pause).await;
                (answer, b.submit(again).await)
            }
        });
        wait_for(|| f.model.entered.load(Ordering::SeqCst) == 1).await;
        let others: Vec<_> = queued
            .iter()
            .map(|&x| {
                let b = Arc::clone(&f.b);
                tokio::spawn(async move { (x, b.submit(x).await) })
            })
            .collect();
        wait_for(|| f.b.depth() == queued.len()).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        f.open();
        let (answer, answer_again) = caller.await.unwrap();
        assert_eq!(
            (answer.unwrap(), answer_again.unwrap()),
            (2 * first, 2 * again)
        );
        for o in others {
            let (x, answer) = o.await.unwrap();
            assert_eq!(answer.unwrap(), 2 * x);
        }
        f
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_smaller_than_the_last_waits_for_its_callers_to_return() {
        let f = returning_caller(1, &[2, 3], Duration::ZERO, 4).await;
        // Without the wait the queued two would have run alone, and the returning caller after.
        assert_eq!(
            *f.model.batches.lock().unwrap(),
            vec![vec![1], vec![2, 3, 4]]
        );
        // Nobody returns from that batch of three (its callers are done): the next request
        // waits out the bound, an eighth of a short run, and runs alone.
        let alone = Instant::now();
        assert_eq!(f.b.submit(5).await.unwrap(), 10);
        assert!(
            alone.elapsed() < Duration::from_secs(1),
            "{:?}",
            alone.elapsed()
        );
        assert_eq!(f.model.batches.lock().unwrap().last(), Some(&vec![5]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_fill_wait_when_a_returning_caller_would_not_fit() {
        // The caller comes back within the wait's bound, but well after the next batch formed.
        let f = returning_caller(90, &[80], Duration::from_millis(20), 5).await;
        // 80 and another request of the last batch's weight (90) pass the budget of 100: the
        // 80 runs at once. (Waiting, it would have taken the light 5 that came back.)
        assert_eq!(
            *f.model.batches.lock().unwrap(),
            vec![vec![90], vec![80], vec![5]]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_is_refused_and_late_requests_expire_unrun() {
        let policy = BatchPolicy {
            queue: 2,
            deadline: Duration::from_millis(100),
            ..POLICY
        };
        let f = Fixture::new(policy);
        let (b, model, metrics) = (&f.b, &f.model, &f.metrics);
        f.shut();
        let busy = tokio::spawn({
            let b = Arc::clone(b);
            async move { b.submit(1).await }
        });
        wait_for(|| model.entered.load(Ordering::SeqCst) == 1).await;
        let queued: Vec<_> = [2, 3]
            .into_iter()
            .map(|x| {
                let b = Arc::clone(b);
                tokio::spawn(async move { b.submit(x).await })
            })
            .collect();
        wait_for(|| b.depth() == 2).await;
        assert!(matches!(
            b.submit(4).await,
            Err(BatchError::QueueFull { capacity: 2, .. })
        ));
        // Everyone's deadline passes while the model is held: the queued ones get 503.
        for q in queued {
            assert!(matches!(q.await.unwrap(), Err(BatchError::Deadline { .. })));
        }
        // The running one is past its deadline too, but its batch started: it gets the answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!busy.is_finished(), "a started batch's caller waits for it");
        f.open();
        assert_eq!(busy.await.unwrap().unwrap(), 2);
        // Expired entries hold their queue slots until the batcher passes over them.
        wait_for(|| b.depth() == 0).await;
        // The expired ones never ran: only the first batch did, then a fresh request runs.
        assert_eq!(b.submit(5).await.unwrap(), 10);
        assert_eq!(*model.batches.lock().unwrap(), vec![vec![1], vec![5]]);
        let text = metrics.encode(&[]);
        assert!(
            text.contains(
                r#"coldpath_serve_rejected_total{model="doubler",reason="queue_full"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"coldpath_serve_rejected_total{model="doubler",reason="deadline"} 2"#),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_withdrawn_request_costs_nothing() {
        let f = Fixture::new(POLICY);
        let (b, model) = (&f.b, &f.model);
        f.shut();
        let busy = tokio::spawn({
            let b = Arc::clone(b);
            async move { b.submit(1).await }
        });
        wait_for(|| model.entered.load(Ordering::SeqCst) == 1).await;
        let gone = tokio::spawn({
            let b = Arc::clone(b);
            async move { b.submit(2).await }
        });
        wait_for(|| b.depth() == 1).await;
        // The client disconnects: its handler future is dropped.
        gone.abort();
        let _ = gone.await;
        let stays = tokio::spawn({
            let b = Arc::clone(b);
            async move { b.submit(3).await }
        });
        wait_for(|| b.depth() == 2).await;
        f.open();
        assert_eq!(busy.await.unwrap().unwrap(), 2);
        assert_eq!(stays.await.unwrap().unwrap(), 6);
        assert_eq!(*model.batches.lock().unwrap(), vec![vec![1], vec![3]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_bounds_the_requests_still_being_prepared() {
        // One may wait and one batch of one may run: two places in all.
        let policy = BatchPolicy {
            queue: 1,
            max_items: 1,
            ..POLICY
        };
        let f = Fixture::new(policy);
        let first = f.b.admit().expect("a place");
        let second = f.b.admit().expect("a place");
        assert!(matches!(f.b.admit(), Err(BatchError::QueueFull { .. })));
        drop(first);
        assert_eq!(f.b.admit().expect("a place").submit(4).await.unwrap(), 8);
        assert_eq!(second.submit(5).await.unwrap(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_batch_fails_its_own_callers_only() {
        let f = Fixture::new(POLICY);
        let b = &f.b;
        assert!(matches!(b.submit(666).await, Err(BatchError::Task { .. })));
        assert_eq!(b.submit(21).await.unwrap(), 42);
    }
}
