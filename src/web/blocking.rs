//! Session store calls that may wait for the network (a store with Redis or another backing
//! store behind it), moved off the async worker thread.

/// Runs `f` on tokio's blocking pool when there is a runtime, else here.
pub(crate) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return f();
    };
    match runtime.spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Cancelled: the runtime is shutting down, and this task with it.
            Err(e) => panic!("a session store call on the blocking pool did not run: {e}"),
        },
    }
}
