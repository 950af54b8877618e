//! [`Idle`]: a byte stream whose reads and writes fail once they make no progress for a while.
//!
//! A peer that opens a stream and then sends nothing, or stops reading what it asked for, would
//! otherwise hold the serving task (and its buffers and slot) for ever. Wrapped in [`Idle`], a
//! read that waits longer than the limit for a byte, or a write (flush, close) that waits longer
//! than the limit for the peer to take one, ends with [`std::io::ErrorKind::TimedOut`], and the
//! server drops the stream. Time spent between calls does not count: a server that works for
//! minutes before it writes its answer is not timed out, only a peer that stalls.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

/// A stream whose pending reads and writes time out after `limit` without progress.
pub struct Idle<S> {
    inner: S,
    limit: Duration,
    read: Option<Pin<Box<Sleep>>>,
    write: Option<Pin<Box<Sleep>>>,
}

impl<S> Idle<S> {
    /// Wraps `inner`; needs a tokio runtime (its timers) when polled.
    pub fn new(inner: S, limit: Duration) -> Self {
        Idle {
            inner,
            limit,
            read: None,
            write: None,
        }
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> S {
        self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

/// Turns a pending poll into a timeout once `timer` (started at the first pending poll) fires;
/// any ready poll disarms it.
fn watch<T>(
    polled: Poll<io::Result<T>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    what: &str,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    match polled {
        Poll::Ready(r) => {
            *timer = None;
            Poll::Ready(r)
        }
        Poll::Pending => {
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            if t.as_mut().poll(cx).is_ready() {
                *timer = None;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer made no progress {what} for {limit:?}; stream dropped"),
                )));
            }
            Poll::Pending
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        watch(polled, &mut this.read, this.limit, "sending", cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        watch(polled, &mut this.write, this.limit, "reading", cx)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        watch(polled, &mut this.write, this.limit, "reading", cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_close(cx);
        watch(polled, &mut this.write, this.limit, "reading", cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt, AsyncWriteExt, Cursor};

    /// A reader that never has a byte.
    struct Stalled;

    impl AsyncRead for Stalled {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Stalled {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_read_or_write_times_out_and_a_live_one_does_not() {
        let mut s = Idle::new(Stalled, Duration::from_millis(20));
        let mut b = [0u8; 4];
        let e = s.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let e = s.write_all(b"x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let mut live = Idle::new(Cursor::new(b"abcd".to_vec()), Duration::from_secs(5));
        live.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"abcd");
    }
}
