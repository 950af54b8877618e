//! Asking a host on the deploy protocol (`/brume/deploy/3`): a request to this node itself goes
//! straight to its own deployer, any other over a stream ([`crate::streams`]).

use std::future::Future;

use brume_overlay::{Multiaddr, PeerId};

use super::deployer::Deployer;
use super::wire::{Phase, Reply, Request, DEPLOY_PROTOCOL, MAX_FRAME};
use crate::streams::{exchange, local, Answer};

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
