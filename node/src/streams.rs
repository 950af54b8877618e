//! brume's request protocols over overlay streams: one request per stream, any number of phase
//! frames, one final reply. [`exchange`] asks a remote node, [`local`] asks this node's own
//! handler without a stream, and [`respond`] answers on the serving side. The deploy protocol
//! ([`crate::deploy::client`]) and the move protocol ([`crate::migrate::client`]) are both this
//! shape, with their own request, reply and phase types.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use brume_overlay::frames::{read_frame, write_frame, FrameError};
use brume_overlay::{Multiaddr, OverlayHandle, PeerId, StreamProtocol};
use futures::io::{AsyncRead, AsyncWrite};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

/// How long reaching a host that is not a neighbour may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams tried when one breaks before its first answer (see [`exchange`]).
const ATTEMPTS: u32 = 3;

/// Runs a request on this node's own handler, relaying its phases as they come.
pub(crate) async fn local<P, R, W, F, Fut>(
    work: impl FnOnce(mpsc::Sender<P>) -> W,
    mut on_phase: F,
) -> R
where
    W: Future<Output = R>,
    F: FnMut(P) -> Fut,
    Fut: Future<Output = ()>,
{
    let (tx, mut rx) = mpsc::channel::<P>(16);
    let work = work(tx);
    tokio::pin!(work);
    loop {
        tokio::select! {
            reply = &mut work => break reply,
            Some(phase) = rx.recv() => on_phase(phase).await,
        }
    }
}

/// A frame of an answer: a phase (more follow) or the final reply.
pub(crate) enum Answer<P, R> {
    Phase(P),
    Last(R),
}

/// Sends `req` to `peer` on a new stream of `protocol` and reads frames until the final one;
/// `split` tells a phase frame (handed to `on_phase`) from the final reply.
///
/// An overlay node drops inbound streams that arrive faster than its acceptor takes them
/// (libp2p-stream hands them over through a one-slot channel), so a stream that breaks before
/// its first answer is opened again. Every request of brume's protocols is safe to repeat: a
/// deploy of the same epoch is a no-op on the host, a move of an instance that already left is
/// refused.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange<Q, R, P, F, Fut>(
    overlay: &OverlayHandle,
    peer: PeerId,
    addrs: &[Multiaddr],
    protocol: StreamProtocol,
    max_frame: usize,
    req: &Q,
    split: impl Fn(R) -> Answer<P, R>,
    mut on_phase: F,
) -> anyhow::Result<R>
where
    Q: Serialize,
    R: DeserializeOwned,
    F: FnMut(P) -> Fut,
    Fut: Future<Output = ()>,
{
    overlay
        .connect(peer, addrs.to_vec(), CONNECT_TIMEOUT)
        .await
        .with_context(|| format!("cannot reach host {peer}"))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut stream = overlay
            .open_stream(peer, protocol.clone())
            .await
            .with_context(|| format!("host {peer} does not take {protocol} requests"))?;
        // A stream the host dropped on arrival (its acceptor was busy: libp2p-stream hands
        // inbound streams over through a one-slot channel, and a cap refuses streams over it)
        // is reset, and yamux reports the first write to a reset stream as "<conn>/<stream>:
        // connection is closed" although the connection lives on (seen in CI). It is lost like
        // one that breaks before its answer: open another.
        if let Err(e) = write_frame(&mut stream, req).await {
            if attempt < ATTEMPTS {
                tracing::debug!(%peer, error = %e, attempt, "request not sent; opening another stream");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                continue;
            }
            return Err(e).with_context(|| format!("cannot send the request to host {peer}"));
        }
        let mut answered = false;
        let last = loop {
            match read_frame::<_, R>(&mut stream, max_frame).await {
                Ok(frame) => match split(frame) {
                    Answer::Phase(phase) => {
                        answered = true;
                        on_phase(phase).await;
                    }
                    Answer::Last(last) => break Ok(last),
                },
                Err(e) => break Err(e),
            }
        };
        match last {
            Ok(reply) => return Ok(reply),
            Err(e) if !answered && attempt < ATTEMPTS => {
                tracing::debug!(%peer, error = %e, attempt, "request stream lost; opening another");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e).with_context(|| format!("host {peer} broke off")),
        }
    }
}

/// Answers one request read from `stream` (accepted with
/// [`OverlayHandle::accept_limited`], so a peer that stalls is dropped): `handle` runs it, its phases go out as they come
/// (wrapped by `phase`), then its reply. A request that cannot be read is answered with
/// `refuse(why)`. A client gone mid-way does not stop the work: it ends either way, and the
/// protocols clean up after it (a deploy's rollback, a move's undo).
pub(crate) async fn respond<S, Q, R, P, W>(
    mut stream: S,
    max_frame: usize,
    handle: impl FnOnce(Q, mpsc::Sender<P>) -> W,
    phase: impl Fn(P) -> R,
    refuse: impl FnOnce(String) -> R,
) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Q: DeserializeOwned,
    R: Serialize,
    W: Future<Output = R>,
{
    let request: Q = match read_frame(&mut stream, max_frame).await {
        Ok(r) => r,
        Err(e) => {
            return write_frame(&mut stream, &refuse(format!("unreadable request: {e}"))).await
        }
    };
    let (tx, mut rx) = mpsc::channel::<P>(16);
    let work = handle(request, tx);
    tokio::pin!(work);
    let reply = loop {
        tokio::select! {
            reply = &mut work => break reply,
            Some(p) = rx.recv() => {
                let _ = write_frame(&mut stream, &phase(p)).await;
            }
        }
    };
    write_frame(&mut stream, &reply).await
}
