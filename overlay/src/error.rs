//! The one error type of the overlay's handle: each variant says what the caller can do next.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

/// Why an overlay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}; check the address and that the port is free")]
    Listen { addr: Multiaddr, reason: String },
    #[error("listeners did not report an address within {0:?}")]
    ListenTimeout(Duration),
    #[error("invalid identity: {0}")]
    Identity(String),
    #[error("the overlay node has stopped; spawn a new one")]
    Stopped,
    #[error("map budget {0:?} is not usable: give a positive budget of at most 10 s")]
    BadBudget(Duration),
    #[error("cannot open a stream to {peer}: {reason}")]
    OpenStream { peer: PeerId, reason: String },
    #[error("streams of this protocol are already being accepted by another caller")]
    AlreadyAccepting,
}
