//! Where to dial peers this node is not connected to.
//!
//! Why: a stream to a peer opened by id alone (`libp2p-stream`, the node's tunnels) needs the
//! swarm to find an address for it, and libp2p asks the behaviours. Without this one only peers
//! connected before had any, so a task moved to a node that had never met its callee's host could
//! not call it ("no addresses for peer"). The node learns addresses from identify, from the
//! membership view, from every state record it receives (maps carry records of hosts many hops
//! away) and from what the daemon is told ([`crate::OverlayHandle::add_addresses`], e.g. a call
//! target's hosts); all of it goes through `Swarm::add_peer_address`, which this behaviour
//! stores (bounded: `PEERS` peers, ten addresses each) and hands out on every dial by peer id.
//! Addresses that fail a dial are dropped.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, PeerAddresses, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// How many peers' addresses are kept (least recently used go first).
const PEERS: usize = 4096;

/// A `NetworkBehaviour` that only remembers addresses and offers them when dialling.
pub struct AddressBook {
    known: PeerAddresses,
}

impl Default for AddressBook {
    fn default() -> Self {
        AddressBook {
            known: PeerAddresses::new(NonZeroUsize::new(PEERS).unwrap_or(NonZeroUsize::MIN)),
        }
    }
}

impl AddressBook {
    /// The addresses known for `peer` (each ending in `/p2p/<peer>`).
    pub fn get(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        self.known.get(peer).collect()
    }
}

impl NetworkBehaviour for AddressBook {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        _addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(maybe_peer.map(|p| self.get(&p)).unwrap_or_default())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.known.on_swarm_event(&event);
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// The peer id a multiaddr ends with, if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}
