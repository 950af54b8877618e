//! Caps on the inbound streams a node serves: at most so many at once from one peer and in all,
//! at most so many new ones per second from one peer ([`crate::rate`]), each dropped when the
//! peer stalls it ([`crate::idle::Idle`]).
//!
//! Without them a peer that opens streams and sends nothing holds a server task per stream for
//! ever, and a server that waits for a free slot before it accepts the next stream lets eight
//! idle streams from one peer stop every other peer's fetch. So a stream over a cap is refused
//! at once (dropped, which resets it; the opener sees a broken stream and may try again later),
//! never queued, and a slot is freed as soon as its stream ends or stalls.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};
use futures::Stream as FuturesStream;
use libp2p::PeerId;
use tracing::debug;

use crate::idle::Idle;
use crate::rate::{Rate, RateBook};

/// Peers whose stream rate is tracked at once (see [`RateBook`]).
const RATE_PEERS: usize = 1024;

/// The caps of one kind of inbound stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// A read or write that makes no progress for this long drops the stream.
    pub idle_timeout: Duration,
    /// Streams served at once for one peer.
    pub per_peer: usize,
    /// Streams served at once in all.
    pub total: usize,
    /// New streams one peer may open per second (in bursts); past it a stream is dropped
    /// unserved, before anything on it is read.
    pub rate: Rate,
}

/// Requests a deploy or move may have in flight to one host: an initiator asks for every
/// instance of a service at once, so a host running a service's tasks sees that many.
impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            idle_timeout: Duration::from_secs(30),
            per_peer: 32,
            total: 256,
            rate: Rate::per_second(32, 128),
        }
    }
}

/// Counts of streams in use, per key and in all. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Slots<K: Eq + Hash> {
    inner: Arc<Mutex<Counts<K>>>,
    per_key: usize,
    total: usize,
}

#[derive(Debug)]
struct Counts<K> {
    per_key: HashMap<K, usize>,
    total: usize,
}

/// One stream's place in [`Slots`]; given back when dropped.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash + Clone> {
    slots: Arc<Mutex<Counts<K>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    pub fn new(per_key: usize, total: usize) -> Self {
        Slots {
            inner: Arc::new(Mutex::new(Counts {
                per_key: HashMap::new(),
                total: 0,
            })),
            per_key: per_key.max(1),
            total: total.max(1),
        }
    }

    /// A slot for `key`, or `None` when `key` or everyone is at the cap. The table holds only
    /// keys with a slot in use, so it never has more than `total` entries.
    pub fn try_take(&self, key: &K) -> Option<Slot<K>> {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.total {
            return None;
        }
        let n = c.per_key.get(key).copied().unwrap_or(0);
        if n >= self.per_key {
            return None;
        }
        c.per_key.insert(key.clone(), n + 1);
        c.total += 1;
        Some(Slot {
            slots: self.inner.clone(),
            key: key.clone(),
        })
    }

    /// Slots in use (for `key`, and in all).
    pub fn in_use(&self, key: &K) -> (usize, usize) {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (c.per_key.get(key).copied().unwrap_or(0), c.total)
    }

    /// Keys with a slot in use.
    pub fn keys(&self) -> usize {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.per_key.len()
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut c = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_key.remove(&self.key);
            }
        }
    }
}

/// An accepted stream under [`StreamLimits`]: idle reads and writes time out, and its slot is
/// given back when it is dropped.
pub struct Limited<S> {
    stream: Idle<S>,
    _slot: Slot<PeerId>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

/// Inbound streams with [`StreamLimits`] applied: a `futures::Stream` of `(PeerId, Limited<S>)`
/// that drops, unserved, every stream over a cap or over its peer's rate.
pub struct LimitedIncoming<I> {
    incoming: I,
    slots: Slots<PeerId>,
    rates: RateBook<PeerId>,
    limits: StreamLimits,
}

impl<I> LimitedIncoming<I> {
    pub fn new(incoming: I, limits: StreamLimits) -> Self {
        LimitedIncoming {
            incoming,
            slots: Slots::new(limits.per_peer, limits.total),
            rates: RateBook::new(limits.rate, RATE_PEERS),
            limits,
        }
    }

    /// The slots in use (for tests and metrics).
    pub fn slots(&self) -> Slots<PeerId> {
        self.slots.clone()
    }
}

impl<I, S> FuturesStream for LimitedIncoming<I>
where
    I: FuturesStream<Item = (PeerId, S)> + Unpin,
{
    type Item = (PeerId, Limited<S>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.incoming).poll_next(cx) {
                Poll::Ready(Some((peer, stream))) if !this.rates.allow(&peer, Instant::now()) => {
                    debug!(%peer, "inbound streams over the rate; dropped");
                    drop(stream);
                }
                Poll::Ready(Some((peer, stream))) => match this.slots.try_take(&peer) {
                    Some(slot) => {
                        let stream = Idle::new(stream, this.limits.idle_timeout);
                        return Poll::Ready(Some((
                            peer,
                            Limited {
                                stream,
                                _slot: slot,
                            },
                        )));
                    }
                    None => {
                        let (mine, all) = this.slots.in_use(&peer);
                        debug!(%peer, mine, all, "inbound stream over the cap; dropped");
                        drop(stream);
                    }
                },
                other => return other.map(|_| None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_each_key_and_the_total_and_forget_idle_keys() {
        let s: Slots<u32> = Slots::new(2, 3);
        let a1 = s.try_take(&1).unwrap();
        let _a2 = s.try_take(&1).unwrap();
        assert!(s.try_take(&1).is_none(), "a third for one key");
        let b1 = s.try_take(&2).unwrap();
        assert!(s.try_take(&3).is_none(), "over the total");
        drop(a1);
        assert!(s.try_take(&3).is_some(), "a freed slot is usable");
        drop(b1);
        assert_eq!(s.in_use(&2), (0, 1));
        assert_eq!(s.keys(), 1, "a key without slots is forgotten");
    }
}
