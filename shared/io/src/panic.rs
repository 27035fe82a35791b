//! Panics turned into errors, so one bad record fails only itself.
//!
//! Decoders and model runtimes are large codebases that may panic on input nobody foresaw. The
//! functions promise that one bad record of a batch never fails the others, so every unit of
//! work (one record, one request, one model call) runs inside a boundary that catches an unwind
//! and reports it as a [`TaskError`] for that unit alone. The release profile keeps
//! `panic = "unwind"` for this reason.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use coldpath_core::{Classify, ErrorType};

/// A unit of work that did not finish: it panicked, or its runtime went away under it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("the work panicked: {0}")]
    Panicked(String),
    #[error("the work was cancelled before it finished (the runtime is shutting down)")]
    Cancelled,
}

impl Classify for TaskError {
    fn error_type(&self) -> ErrorType {
        ErrorType::Internal
    }
}

impl TaskError {
    /// The panic's message, when it carried a string (as `panic!` and `unwrap` do).
    pub(crate) fn from_panic(payload: &(dyn Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        TaskError::Panicked(message)
    }

    /// A joined task that did not finish: its panic, or its cancellation.
    pub fn from_join(e: tokio::task::JoinError) -> Self {
        if e.is_panic() {
            TaskError::from_panic(e.into_panic().as_ref())
        } else {
            TaskError::Cancelled
        }
    }
}

/// Runs `f`, turning a panic into [`TaskError::Panicked`].
///
/// `AssertUnwindSafe` is sound here because the callers' state that `f` touches is either owned
/// by `f` or behind a mutex that a panic poisons; the pools that hand out sessions recover from
/// poisoning by design (a session has no invariant a half-run call could break).
pub(crate) fn call_caught<T>(f: impl FnOnce() -> T) -> Result<T, TaskError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| TaskError::from_panic(p.as_ref()))
}

/// A future whose panics come out as [`TaskError::Panicked`] instead of unwinding through the
/// caller. Made by [`catch_panic`].
pub struct CatchPanic<F> {
    inner: Pin<Box<F>>,
}

/// Wraps `future` so that a panic while polling it resolves to `Err(TaskError::Panicked)`.
pub fn catch_panic<F: Future>(future: F) -> CatchPanic<F> {
    CatchPanic {
        inner: Box::pin(future),
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(TaskError::from_panic(p.as_ref()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_future_becomes_an_error_with_its_message() {
        let r: Result<(), _> = catch_panic(async { panic!("bad record") }).await;
        assert_eq!(r, Err(TaskError::Panicked("bad record".to_string())));
        let r = catch_panic(async {
            tokio::task::yield_now().await;
            let v: Vec<u8> = Vec::new();
            v.first().copied().expect("an empty batch")
        })
        .await;
        assert!(matches!(r, Err(TaskError::Panicked(m)) if m == "an empty batch"));
        assert_eq!(catch_panic(async { 7 }).await, Ok(7));
    }

    #[test]
    fn formatted_panics_keep_their_message() {
        let n = 3;
        let r: Result<(), _> = call_caught(|| panic!("index {n} out of range"));
        assert_eq!(r, Err(TaskError::Panicked("index 3 out of range".into())));
        assert_eq!(
            TaskError::Cancelled.error_type(),
            coldpath_core::ErrorType::Internal
        );
    }
}
