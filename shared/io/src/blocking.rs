//! Running CPU-bound work (inference, image decoding) from async handlers.

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::panic::{TaskError, call_caught};

/// Runs `f` without stalling the async executor; a panic in `f` is [`TaskError::Panicked`].
///
/// On a multi-threaded runtime (the Lambda runtime's) `block_in_place` runs it right here after
/// handing this worker's other tasks to another thread: no hop to a second thread and back,
/// which on a small Lambda costs a noticeable share of a 4 ms query. A current-thread runtime
/// (tests) cannot do that, so there it goes to the blocking pool. Either way a panic is caught
/// at this boundary: `block_in_place` alone would unwind through the handler and fail the whole
/// event, where the promise is that one bad record fails only itself. Code that must keep other
/// futures of the *same* task running meanwhile (a heartbeat beside the work) wants
/// [`spawn_blocking`] instead.
pub async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TaskError> {
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        return tokio::task::block_in_place(|| call_caught(f));
    }
    spawn_blocking(f).await
}

/// Runs `f` on tokio's blocking pool, so the calling task's other futures keep running; a
/// panic in `f` is [`TaskError::Panicked`], a runtime shutting down [`TaskError::Cancelled`].
pub async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TaskError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(TaskError::from_join)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_in_place_on_a_multi_threaded_runtime() {
        let here = std::thread::current().id();
        let ran_on = run_blocking(|| std::thread::current().id()).await.unwrap();
        assert_eq!(ran_on, here);
    }

    /// Regression: on the multi-threaded runtime Lambda uses, `block_in_place` let
    /// the panic unwind through the caller, so the typed error never fired and a decoder panic
    /// on one record failed the whole event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_place_is_a_typed_error_not_an_unwind() {
        let r = run_blocking(|| -> u32 { panic!("decoder blew up") }).await;
        assert_eq!(r, Err(TaskError::Panicked("decoder blew up".into())));
        // The runtime and this task are fine afterwards.
        assert_eq!(run_blocking(|| 2 + 2).await, Ok(4));
    }

    #[tokio::test]
    async fn uses_the_blocking_pool_on_a_current_thread_runtime() {
        let here = std::thread::current().id();
        let ran_on = run_blocking(|| std::thread::current().id()).await.unwrap();
        assert_ne!(ran_on, here);
        assert_eq!(
            run_blocking(|| -> () { panic!("boom") }).await,
            Err(TaskError::Panicked("boom".into()))
        );
        assert_eq!(
            spawn_blocking(|| -> () { panic!("{}", String::from("owned")) }).await,
            Err(TaskError::Panicked("owned".into()))
        );
    }
}
