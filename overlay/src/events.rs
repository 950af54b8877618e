//! What happens to a node's connections, told as it happens: [`crate::OverlayHandle::connection_events`]
//! hands out a receiver. Operators see refusals in the log; tests wait on these instead of
//! sleeping (a node without the network key, or not on the allow-list, shows up here as a
//! failed connection and never as a peer).

use libp2p::PeerId;

/// How many events a slow receiver may fall behind before it misses some.
pub(crate) const EVENT_BUFFER: usize = 256;

/// One change to a node's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// A first connection to `peer` is up (it passed the network key and the allow-list).
    Connected { peer: PeerId },
    /// The last connection to `peer` closed.
    Disconnected { peer: PeerId },
    /// A connection did not complete: no or another network key, a peer not on the
    /// allow-list, an unreachable address. `peer` is known when the peer authenticated (a
    /// denied one) or when this node dialled it by id.
    Failed {
        peer: Option<PeerId>,
        incoming: bool,
        /// Denied by the allow-list or the connection limits (rather than failed in the
        /// transport); `reason` says which.
        denied: bool,
        reason: String,
    },
}
