//! What travels on a `/brume/tunnel/2` stream before the payload, and what can go wrong.
//!
//! The opener writes one [`Hello`] frame (see [`brume_overlay::frames`]) naming the callee; the acceptor
//! answers one [`Reply`] frame; after `Reply::Ok` the stream carries the call's raw bytes. Hellos
//! are read with a [`HELLO_LIMIT`], so a hostile peer cannot make the acceptor allocate much.

use brume_overlay::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::InstanceId;

use brume_overlay::frames::FrameError;

/// Most bytes a hello or a reply frame may take.
pub const HELLO_LIMIT: usize = 4096;

/// The first frame on a tunnel stream: which task the connection is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub endpoint: InstanceId,
}

/// The acceptor's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The task's port is connected: raw bytes follow both ways.
    Ok,
    /// The acceptor will not carry this connection; the stream is closed after this frame.
    Refused { reason: String },
    /// The task moved away from the acceptor to `peer`: open the tunnel there, at `addrs` if
    /// the caller never met it (the acceptor's, possibly none).
    Moved {
        peer: PeerId,
        #[serde(default)]
        addrs: Vec<Multiaddr>,
    },
}

/// Why a tunnelled connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot listen for calls to {endpoint} on 127.0.0.1: {source}; is the loopback up?")]
    Bind {
        endpoint: InstanceId,
        source: std::io::Error,
    },
    #[error("no route to {0}: it is not deployed, or the node has not learned where it runs yet")]
    NoRoute(InstanceId),
    #[error("cannot open a tunnel stream to {peer}: {reason}; is the peer up and reachable?")]
    Open { peer: PeerId, reason: String },
    #[error("tunnel handshake: {0}")]
    Handshake(#[from] FrameError),
    #[error("the far node refused the tunnel: {0}")]
    Refused(String),
    #[error("{0} does not run on this node; the caller's route is stale or wrong")]
    NotHere(InstanceId),
    #[error("{endpoint} moved to {peer}")]
    Moved {
        endpoint: InstanceId,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("cannot connect to the task on 127.0.0.1:{port}: {source}; is the task listening?")]
    LocalConnect { port: u16, source: std::io::Error },
}
