//! The optional allow-list of a node: with one, a connection to or from any peer id not on it
//! is refused as soon as the peer has authenticated (libp2p's `allow_block_list`), before any
//! protocol runs on it. Without one the gate is off and anyone who completes the transport
//! (and holds the network key, if there is one) may connect.

use std::collections::HashSet;

use libp2p::allow_block_list::{AllowedPeers, Behaviour};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::PeerId;

/// The gate behaviour: off, or an allow-list.
pub type Gate = Toggle<Behaviour<AllowedPeers>>;

/// The gate for `allowed` (`None`: open to anyone). The node's own id needs no place on it.
pub fn gate(allowed: Option<&HashSet<PeerId>>) -> Gate {
    Toggle::from(allowed.map(|peers| {
        let mut b = Behaviour::<AllowedPeers>::default();
        for p in peers {
            b.allow_peer(*p);
        }
        b
    }))
}
