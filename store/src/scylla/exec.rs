//! Running the async driver behind the blocking [`crate::Store`] trait.
//!
//! The backend owns a small multi-threaded Tokio runtime (two workers, threads named
//! `tsunagu-scylla`) on which the driver's connections live. A store call polls its
//! request future on the caller's own thread, inside that runtime's context (so the
//! driver's timers and channels work), parking the thread between wake-ups. This
//! works from any thread: plain threads, `spawn_blocking` workers, and, as the
//! embedded store is used at start, a worker of the node's own runtime (where
//! `Runtime::block_on` would panic). The caller's thread is blocked for the
//! duration, as with SQLite.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread, inside `runtime`'s context.
pub fn block_on<F: Future>(runtime: &tokio::runtime::Handle, future: F) -> F::Output {
    let _context = runtime.enter();
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        // A wake-up before this park leaves a token: park returns at once.
        std::thread::park();
    }
}

/// The backend's runtime.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tsunagu-scylla")
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futures_using_the_runtime_complete_from_a_plain_thread_and_from_inside_a_runtime() {
        let rt = runtime().unwrap();
        let sleep = || async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            7
        };
        assert_eq!(block_on(rt.handle(), sleep()), 7);
        // From a worker of another runtime (where Runtime::block_on would panic).
        let other = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let got = other.block_on(async move { block_on(&handle, sleep()) });
        assert_eq!(got, 7);
        rt.shutdown_background();
    }
}
