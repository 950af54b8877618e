//! Asking a node about a move on `/brume/move/2` (this node's own mover directly).

use std::future::Future;

use brume_overlay::{Multiaddr, PeerId};

use super::mover::Mover;
use super::wire::{Phase, Reply, Request, MAX_FRAME, MOVE_PROTOCOL};
use crate::streams::{exchange, local, Answer};

/// Sends one move request to `peer` and reads its phases and final reply.
pub(crate) async fn ask<F, Fut>(
    mover: &Mover,
    peer: PeerId,
    addrs: &[Multiaddr],
    req: &Request,
    on_phase: F,
) -> anyhow::Result<Reply>
where
    F: FnMut(Phase) -> Fut,
    Fut: Future<Output = ()>,
{
    let overlay = &mover.deployer.overlay;
    if peer == overlay.peer_id() {
        return Ok(local(|tx| mover.handle(peer, req.clone(), tx), on_phase).await);
    }
    let split = |r: Reply| match r {
        Reply::Phase(p) => Answer::Phase(p),
        last => Answer::Last(last),
    };
    exchange(
        overlay,
        peer,
        addrs,
        MOVE_PROTOCOL,
        MAX_FRAME,
        req,
        split,
        on_phase,
    )
    .await
}
