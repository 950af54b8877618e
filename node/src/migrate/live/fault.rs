//! Failures a test makes a target node suffer on purpose (the `live_fault` setting, for
//! `node/tests/move_failures.rs` only), and the stream wrapper that also keeps the target's
//! clock for its lease.
//!
//! A real partition cannot be made between two daemons on one loopback without privileges the
//! tests should not need, so the target models one: it half-closes the live stream (the source
//! reads its end) and from then on neither reads nor believes it, as a node behind a cut link
//! would. Every fault is deterministic: it fires at a point of the protocol, not after a delay.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A failure the target of a live move suffers on purpose (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LiveFault {
    /// The target's daemon exits as the first round's pages arrive (its first read after its
    /// own first message, `Welcome`).
    ExitInPrecopy,
    /// The link is cut when the final images are in and the restore would start: nothing is
    /// restored, the source hears nothing.
    CutBeforeRestore,
    /// The restore fails (the target says so).
    FailRestore,
    /// The task is restored, then the link is cut before the source hears of it: the copy
    /// runs here, waiting for a `Released` that cannot come.
    CutAfterRestore,
}

/// What the target's end of one live stream saw: when it last wrote (its lease is counted from
/// its last message to the source), and whether a fault cut it.
#[derive(Debug)]
pub(crate) struct Link {
    last_write: Mutex<Instant>,
    cut: AtomicBool,
    shut: AtomicBool,
    /// When the restored copy's lease ends (set when the restore starts).
    lease_end: Mutex<Option<Instant>>,
    /// Woken when `lease_end` is set.
    lease_set: tokio::sync::Notify,
}

impl Link {
    /// A link whose last write counts as now (call it before the target's first message).
    pub(crate) fn new() -> Arc<Link> {
        Arc::new(Link {
            last_write: Mutex::new(Instant::now()),
            cut: AtomicBool::new(false),
            shut: AtomicBool::new(false),
            lease_end: Mutex::new(None),
            lease_set: tokio::sync::Notify::new(),
        })
    }

    /// Starts the restored copy's lease: it ends at `end`.
    pub(crate) fn start_lease(&self, end: Instant) {
        *self.lease_end.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
        self.lease_set.notify_one();
    }

    /// When the restored copy's lease ends, if a restore started.
    pub(crate) fn lease_end(&self) -> Option<Instant> {
        *self.lease_end.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns when the lease of a copy restored here has run out (never, if none is).
    pub(crate) async fn lease_out(&self) {
        loop {
            let set = self.lease_set.notified();
            if let Some(end) = self.lease_end() {
                tokio::time::sleep_until(end.into()).await;
                return;
            }
            set.await;
        }
    }

    pub(crate) fn last_write(&self) -> Instant {
        *self.last_write.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// The target's end of the live stream, as `migrate_in` uses it: every write is timed, and a
/// cut link (a fault) half-closes the stream once, then swallows writes and never reads.
pub(crate) struct Watched<'a, S> {
    inner: &'a mut S,
    link: Arc<Link>,
    exit_in_precopy: bool,
    /// Whether the target has written anything yet.
    wrote: bool,
}

impl<'a, S> Watched<'a, S> {
    pub(crate) fn new(inner: &'a mut S, link: Arc<Link>, fault: Option<LiveFault>) -> Self {
        Watched {
            inner,
            link,
            exit_in_precopy: fault == Some(LiveFault::ExitInPrecopy),
            wrote: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> Watched<'_, S> {
    /// After a cut: the stream is shut once (the source reads its end), then writes vanish.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.link.shut.load(Ordering::SeqCst) {
            let shut = Pin::new(&mut *self.inner).poll_shutdown(cx);
            if shut.is_pending() {
                return Poll::Pending;
            }
            self.link.shut.store(true, Ordering::SeqCst);
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.link.is_cut() {
            // Behind a cut link nothing arrives, ever.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if self.exit_in_precopy && self.wrote && buf.filled().len() > before {
                tracing::error!("live_fault = exit-in-precopy: this node exits mid pre-copy");
                std::process::exit(3);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.link.is_cut() {
            return self.poll_cut(cx).map(|()| Ok(buf.len()));
        }
        let polled = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = polled {
            self.wrote = true;
            *self
                .link
                .last_write
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.link.is_cut() {
            return self.poll_cut(cx).map(Ok);
        }
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.link.is_cut() {
            return self.poll_cut(cx).map(Ok);
        }
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
