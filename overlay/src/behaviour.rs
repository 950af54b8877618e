//! The libp2p behaviours of a brume node, composed the rust-libp2p way: one small
//! `NetworkBehaviour` per protocol, put together with `#[derive(NetworkBehaviour)]`.
//!
//! * [`AddressBook`]: where to dial peers by id (see [`crate::addresses`]);
//! * the gate: the optional allow-list of peer ids (see [`crate::gate`]);
//! * `connection_limits`: connections per peer and in all ([`MAX_CONNECTIONS_PER_PEER`] ...);
//! * `identify`: learns the peers' listen addresses (what membership hands out to newcomers);
//! * `ping`: RTT samples for the mapping core's estimators and Vivaldi;
//! * `/brume/join/1` (request-response, CBOR): join samples and shuffles ([`MembershipRequest`]);
//! * `/brume/state/4` (request-response, CBOR): signed state records and the links each node
//!   publishes, exchanged both ways ([`PeerState`]);
//! * `libp2p-stream`: raw streams, for the mapping core's messages on one long-lived stream per
//!   peer (`/brume/map/4`, see [`crate::maplink`]) and for the node's own stream protocols
//!   (deploy, transfer, tunnel), which it opens through [`crate::OverlayHandle::open_stream`].

use std::time::Duration;

use libp2p::request_response::{self, cbor, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;

use crate::addresses::AddressBook;
use crate::gate::Gate;
use libp2p::{connection_limits, identify, identity, ping, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::mapping::Message;
use crate::peer_state::PeerState;

pub const JOIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/join/1");
/// Version 3: the record is signed by the node it describes ([`crate::signed_record`]).
/// Version 4: the record comes with the sender's links ([`PeerState`]).
pub const STATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/state/4");
/// identify's protocol version string for brume nodes.
pub const IDENTIFY_VERSION: &str = "/brume/1.0.0";

/// Size limits of the CBOR protocols (a join or shuffle holds a few dozen addresses, a state
/// a record and up to [`crate::peer_state::MAX_PUBLISHED_LINKS`] links).
pub const MAX_JOIN_BYTES: u64 = 64 * 1024;
pub const MAX_STATE_BYTES: u64 = 16 * 1024;

/// Requests of one request-response protocol in flight at once on one connection.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Connections one peer may hold to this node at once. Nodes dial only peers they are not
/// connected to, so two (a simultaneous dial from both sides) is the most an honest peer holds;
/// the rest is room for a restarted peer whose old connection has not timed out yet.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Incoming connections still in their handshake (pnet, noise, yamux) at once.
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Established incoming connections at once, from everyone.
pub const MAX_ESTABLISHED_INCOMING: u32 = 1024;

/// A request of `/brume/join/1`. Addresses are multiaddr strings ending in `/p2p/<peer id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MembershipRequest {
    /// A newcomer asks for a sample of the member's peers.
    Join,
    /// A shuffle: the sender's offer.
    Shuffle { entries: Vec<String> },
}

/// The answer of `/brume/join/1`: a sample of addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembershipResponse {
    pub entries: Vec<String>,
}

/// One message read from a map link.
#[derive(Debug, Clone, PartialEq)]
pub enum MapFrame {
    Msg(Message),
    /// What arrived could not be used (only ever produced when reading).
    Bad {
        oversized: bool,
        reason: String,
    },
}

/// Timings the behaviours are built with.
#[derive(Debug, Clone)]
pub struct BehaviourTimings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub identify_interval: Duration,
    pub request_timeout: Duration,
}

/// Every protocol a brume node speaks.
#[derive(NetworkBehaviour)]
pub struct BrumeBehaviour {
    pub addresses: AddressBook,
    pub gate: Gate,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub join: cbor::Behaviour<MembershipRequest, MembershipResponse>,
    pub state: cbor::Behaviour<PeerState, PeerState>,
    pub streams: libp2p_stream::Behaviour,
}

impl BrumeBehaviour {
    pub fn new(key: &identity::Keypair, t: &BehaviourTimings, gate: Gate) -> Self {
        // A peer gets a few join or state requests in flight at once, not a task per request it
        // cares to open.
        let rr = request_response::Config::default()
            .with_request_timeout(t.request_timeout)
            .with_max_concurrent_streams(MAX_CONCURRENT_REQUESTS);
        let join_codec = cbor::codec::Codec::default()
            .set_request_size_maximum(MAX_JOIN_BYTES)
            .set_response_size_maximum(MAX_JOIN_BYTES);
        let state_codec = cbor::codec::Codec::default()
            .set_request_size_maximum(MAX_STATE_BYTES)
            .set_response_size_maximum(MAX_STATE_BYTES);
        BrumeBehaviour {
            addresses: AddressBook::default(),
            gate,
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                    .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING)),
            ),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.to_string(), key.public())
                    .with_interval(t.identify_interval),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(t.ping_interval)
                    .with_timeout(t.ping_timeout),
            ),
            join: request_response::Behaviour::with_codec(
                join_codec,
                [(JOIN_PROTOCOL, ProtocolSupport::Full)],
                rr.clone(),
            ),
            state: request_response::Behaviour::with_codec(
                state_codec,
                [(STATE_PROTOCOL, ProtocolSupport::Full)],
                rr,
            ),
            streams: libp2p_stream::Behaviour::new(),
        }
    }
}
