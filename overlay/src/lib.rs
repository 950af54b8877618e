//! brume's overlay core: the sans-IO protocol logic every brume node runs.
//!
//! Data flows like this: the libp2p shell ([`swarm`], started by [`node::Overlay::spawn`] from an
//! [`config::OverlayConfig`] and driven through [`handle::OverlayHandle`] with the [`commands`]
//! both share) measures pings and feeds each sample into the per-peer [`rtt::RttEstimator`] and
//! the node's [`vivaldi::Vivaldi`] coordinate; peers exchange small state records
//! ([`neighbourhood::NodeRecord`]). When a node needs to know its neighbourhood it
//! calls [`mapping::MappingNode::start_map`] with a latency budget; the state machine returns
//! messages to send, the shell (or the simulator) delivers them to the other nodes'
//! state machines, whose outputs flow back, until the originator outputs a
//! [`neighbourhood::NeighbourhoodMap`]. A private overlay is a [`network_key::NetworkKey`] every
//! member holds (libp2p pnet) and, optionally, an allow-list of peer ids ([`gate`]). No function here reads a clock, a socket or global randomness:
//! time is a parameter ([`ids::Time`]), so the same code runs under libp2p and in a
//! discrete-event simulation of thousands of nodes (brume-testnet's `sim`). [`frames`] is how
//! brume's own stream protocols put typed messages on an overlay stream.

pub mod addresses;
pub mod behaviour;
pub mod commands;
pub mod cones;
pub mod config;
pub mod error;
pub mod events;
pub mod frames;
pub mod gate;
pub mod handle;
pub mod handshake_rtt;
pub mod idle;
pub mod ids;
pub mod limits;
mod listen_port;
pub mod maplink;
pub mod mapping;
pub mod membership;
pub mod neighbourhood;
pub mod network_key;
pub mod node;
pub mod peer_state;
pub mod rate;
pub mod reach_tree;
pub mod rtt;
pub mod signed_record;
pub mod swarm;
pub mod transport;
pub mod vivaldi;
pub mod wire;

pub use events::ConnectionEvent;
pub use libp2p::identity::{Keypair, PublicKey};
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use limits::{Limited, LimitedIncoming, StreamLimits};
pub use network_key::NetworkKey;
pub use node::{
    Identity, IncomingStreams, MapOutcome, MapSize, Overlay, OverlayConfig, OverlayError,
    OverlayHandle, PeerInfo, ProbeCounts, Status, Timings,
};
pub use rate::Rate;
