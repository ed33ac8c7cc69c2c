//! A stream wrapper that ends connections on which nothing moves: hyper times out
//! reading a request's headers, but never a write, so a client that stops reading a
//! response would hold its connection (and whatever produces the response) for ever.

use crate::metrics::{ApiMetrics, ReasonLabel};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that fails with `TimedOut` once a read or write has waited `timeout`
/// since bytes last moved either way.
pub struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    metrics: ApiMetrics,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, timeout: Duration, metrics: ApiMetrics) -> Self {
        IdleTimeout {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            metrics,
        }
    }

    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.timeout;
        self.deadline.as_mut().reset(next);
    }

    /// While an operation waits: has the deadline passed?
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.metrics
                .timeouts
                .get_or_create(&ReasonLabel { reason: "idle" })
                .inc();
            // Counted once: the next poll sees a fresh deadline (the connection is
            // closing anyway after this error).
            self.progressed();
            return true;
        }
        false
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no progress on the connection",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow reader that keeps taking bytes is never timed out, however long it takes.
    #[tokio::test]
    async fn a_slow_but_moving_transfer_is_not_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(16);
        let timeout = Duration::from_millis(300);
        let mut io = IdleTimeout::new(server, timeout, ApiMetrics::default());
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 16];
            while got < 160 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                got += client.read(&mut buf).await.unwrap();
            }
        });
        let started = std::time::Instant::now();
        io.write_all(&[0u8; 160]).await.unwrap();
        assert!(
            started.elapsed() > timeout * 2,
            "the transfer outlasted the timeout"
        );
        reader.await.unwrap();
    }

    /// A write that cannot proceed fails after the idle timeout.
    #[tokio::test]
    async fn a_stalled_write_times_out() {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(16);
        let metrics = ApiMetrics::default();
        let timeout = Duration::from_millis(300);
        let mut io = IdleTimeout::new(server, timeout, metrics.clone());
        io.write_all(&[0u8; 16]).await.unwrap();
        let started = std::time::Instant::now();
        let err = io.write_all(&[0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= timeout && waited < timeout * 5, "{waited:?}");
        assert_eq!(
            metrics
                .timeouts
                .get_or_create(&ReasonLabel { reason: "idle" })
                .get(),
            1
        );
        drop(client);
    }
}
