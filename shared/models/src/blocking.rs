//! Running CPU-bound work (inference, image decoding) from async handlers.

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinError;

/// Runs `f` without stalling the async executor.
///
/// On a multi-threaded runtime (the Lambda runtime's) `block_in_place` runs it right here after
/// handing this worker's other tasks to another thread: no hop to a second thread and back,
/// which on a small Lambda costs a noticeable share of a 4 ms query. A current-thread runtime
/// (tests) cannot do that, so there it goes to the blocking pool. Code that must keep other
/// futures of the *same* task running meanwhile (a heartbeat beside the work) wants
/// `tokio::task::spawn_blocking` instead. The error is the blocking task dying (a panic in `f`,
/// or the runtime shutting down); callers turn it into their own typed error.
pub async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JoinError> {
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        return Ok(tokio::task::block_in_place(f));
    }
    tokio::task::spawn_blocking(f).await
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

    #[tokio::test]
    async fn uses_the_blocking_pool_on_a_current_thread_runtime() {
        let here = std::thread::current().id();
        let ran_on = run_blocking(|| std::thread::current().id()).await.unwrap();
        assert_ne!(ran_on, here);
        assert!(
            run_blocking(|| panic!("boom"))
                .await
                .unwrap_err()
                .is_panic()
        );
    }
}
