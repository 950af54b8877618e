//! Asking a host: one request on a fresh stream of a protocol, any number of phase frames, one
//! final reply. A request to this node itself goes straight to its own handler (no stream).
//!
//! Used for both of brume's request protocols: the deploy protocol ([`ask`]) and, through
//! [`exchange`], the move protocol ([`crate::migrate::client`]).

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use brume_overlay::frames::{read_frame, write_frame};
use brume_overlay::{Multiaddr, OverlayHandle, PeerId, StreamProtocol};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use super::deployer::Deployer;
use super::wire::{Phase, Reply, Request, DEPLOY_PROTOCOL, MAX_FRAME};

/// How long reaching a host that is not a neighbour may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams tried when one breaks before its first answer (see [`exchange`]).
const ATTEMPTS: u32 = 3;

/// Sends one deploy-protocol request to `peer` (this node's own deployer directly) and reads
/// its phases and final reply.
pub(crate) async fn ask<F, Fut>(
    deployer: &Deployer,
    peer: PeerId,
    addrs: &[Multiaddr],
    req: &Request,
    on_phase: F,
) -> anyhow::Result<Reply>
where
    F: FnMut(Phase) -> Fut,
    Fut: Future<Output = ()>,
{
    let overlay = &deployer.overlay;
    if peer == overlay.peer_id() {
        return Ok(local(|tx| deployer.handle(peer, req.clone(), tx), on_phase).await);
    }
    let split = |r: Reply| match r {
        Reply::Phase(p) => Answer::Phase(p),
        last => Answer::Last(last),
    };
    exchange(
        overlay,
        peer,
        addrs,
        DEPLOY_PROTOCOL,
        MAX_FRAME,
        req,
        split,
        on_phase,
    )
    .await
}

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
        write_frame(&mut stream, req).await?;
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
