//! A host's state loaded in the background: started at init, awaited by each invocation.
//!
//! Lambda gives an on-demand sandbox's init 10 s; an init that runs past them is cut off and run
//! again inside the first invocation, so everything it had done is lost. A model whose fetch and
//! session build take longer than that (captioning's real-size model) therefore loads in the
//! background: init starts the load and returns, the runtime asks for the first event at once,
//! and that event waits for the load. Nothing is done twice, and the sandbox is never frozen in
//! between, because Lambda freezes a sandbox only while no event is waiting for it.

use std::future::Future;
use std::sync::Arc;

use coldpath_core::ErrorType;
use tokio::sync::watch;

use crate::HandlerError;

/// What the load left: the state, or why there is none.
type Outcome<S> = Option<Result<Arc<S>, HandlerError>>;

/// State `S` being loaded on its own thread; [`Deferred::get`] waits for it.
#[derive(Debug)]
pub struct Deferred<S> {
    outcome: watch::Receiver<Outcome<S>>,
}

impl<S: Send + Sync + 'static> Deferred<S> {
    /// Starts `load` on a thread of its own, driven by the current Tokio runtime. A load does
    /// blocking work (reading files, building ONNX Runtime sessions) that would otherwise hold
    /// one of the runtime's workers, which the Lambda runtime loop needs meanwhile.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn spawn<F>(load: F) -> Deferred<S>
    where
        F: Future<Output = Result<S, HandlerError>> + Send + 'static,
    {
        let (tx, outcome) = watch::channel(None);
        let runtime = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("coldpath-load".to_string())
            .spawn(move || {
                let result = runtime.block_on(load).map(Arc::new);
                // Nobody waiting (the process is ending) is not an error.
                let _ = tx.send(Some(result));
            });
        if let Err(e) = spawned {
            // The sender went with the closure: `get` reports the load as ended without a result.
            tracing::error!("cannot start the loading thread: {e}");
        }
        Deferred { outcome }
    }

    /// The state once loaded, or the load's error. A load that panicked or could not start is an
    /// `Internal` error.
    pub async fn get(&self) -> Result<Arc<S>, HandlerError> {
        let mut outcome = self.outcome.clone();
        match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().expect("waited for Some"),
            Err(_) => Err(HandlerError::new(
                ErrorType::Internal,
                "the model load ended without a result (it panicked or its thread did not start)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_caller_waits_for_the_one_load() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&loads);
        let deferred = Arc::new(Deferred::spawn(async move {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            released.await.unwrap();
            Ok::<_, HandlerError>(42u32)
        }));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let d = Arc::clone(&deferred);
                tokio::spawn(async move { *d.get().await.unwrap() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            deferred.outcome.borrow().is_none(),
            "nothing finished the load yet"
        );
        assert!(waiters.iter().all(|w| !w.is_finished()));
        release.send(()).unwrap();
        for w in waiters {
            assert_eq!(w.await.unwrap(), 42);
        }
        assert!(deferred.outcome.borrow().is_some());
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_load_is_every_callers_error() {
        let deferred = Deferred::<u32>::spawn(async {
            Err(HandlerError::new(ErrorType::Config, "no such model"))
        });
        for _ in 0..2 {
            let err = deferred.get().await.unwrap_err();
            assert_eq!(err.error_type, ErrorType::Config);
            assert_eq!(err.message, "no such model");
        }
    }

    #[tokio::test]
    async fn a_panicking_load_is_an_internal_error_not_a_hang() {
        let deferred = Deferred::<u32>::spawn(async { panic!("boom") });
        let err = tokio::time::timeout(Duration::from_secs(10), deferred.get())
            .await
            .expect("get must not hang after the load panicked")
            .unwrap_err();
        assert_eq!(err.error_type, ErrorType::Internal, "{}", err.message);
    }

    /// The load runs on its own thread: a blocking load leaves a one-worker runtime free to
    /// answer, as the Lambda runtime loop must while the model loads.
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocking_load_does_not_hold_the_runtime() {
        let deferred = Deferred::spawn(async {
            std::thread::sleep(Duration::from_millis(300));
            Ok::<_, HandlerError>(())
        });
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "the runtime was held by the load"
        );
        deferred.get().await.unwrap();
    }
}
