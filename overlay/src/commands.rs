//! What the handle ([`crate::handle`]) asks the swarm task ([`crate::swarm`]) and what the task
//! answers. Both sides import these types from here, so neither imports the other's file.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use crate::ids::NodeId;
use crate::neighbourhood::{NeighbourhoodMap, NodeRecord};
use crate::peer_state::PublishedLink;
use crate::vivaldi::Coord;

/// What a node knows about one connected peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub node_id: NodeId,
    /// Its dialable address (the one we dialled, or its listen address from identify).
    pub addr: Option<Multiaddr>,
    pub srtt_ms: Option<f64>,
    pub rttvar_ms: Option<f64>,
    /// Its Vivaldi coordinate and error, from its last state record.
    pub coord: Option<(Coord, f64)>,
    /// Its last state record.
    pub record: Option<NodeRecord>,
    /// The links it published with that record: its peers, with their coordinates.
    pub links: Vec<PublishedLink>,
    /// Its membership score (starts at 100; below the ban threshold it is dropped).
    pub score: f64,
}

/// A node's view of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub peer_id: PeerId,
    pub node_id: NodeId,
    pub listen_addrs: Vec<Multiaddr>,
    pub degree: usize,
    pub coordinate: Coord,
    pub coord_error: f64,
    pub uptime: Duration,
    /// The last map this node started with each recent budget, oldest first: how big its
    /// neighbourhood is, for an operator's dashboard.
    pub maps: Vec<MapSize>,
    /// The cone links this node chose (issue 17; none unless [`crate::OverlayConfig::cones`]).
    pub cone_links: Vec<PeerId>,
    /// How this node's maps' confirmation probes were answered since it started.
    pub probes: ProbeCounts,
}

/// How a node's confirmation probes (issue 17) were answered, one count per probe of a map: by a
/// connected peer's smoothed ping RTT, by the kernel's RTT of the TCP handshake of a connection
/// the probe dialled ([`crate::handshake_rtt`]), by a ping on a connection that had no
/// handshake sample, or not at all (the target could not be dialled). Probes still out when
/// their map ended are in none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounts {
    pub srtt: u64,
    pub handshake: u64,
    pub ping: u64,
    pub unreached: u64,
}

/// How many nodes the last map of one budget held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapSize {
    pub budget_ms: f64,
    pub nodes: usize,
    /// False if some branch was given up (see [`MapOutcome::complete`]).
    pub complete: bool,
}

/// A finished map and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct MapOutcome {
    pub map: NeighbourhoodMap,
    /// False if some branch was given up (a peer did not answer in time).
    pub complete: bool,
    pub from_cache: bool,
    /// Wall-clock time from the command reaching the node to the map being done.
    pub elapsed: Duration,
}

/// One request of the handle to the swarm task; the reply, if any, comes back on the oneshot.
pub(crate) enum Command {
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Map {
        budget_ms: f64,
        /// Skip the cache of recent maps.
        fresh: bool,
        reply: oneshot::Sender<MapOutcome>,
    },
    Status(oneshot::Sender<Status>),
    SetRecord(NodeRecord),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    /// Dial a peer (not a membership decision: the connection may later be trimmed).
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    AddAddresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    KnownAddresses(PeerId, oneshot::Sender<Vec<Multiaddr>>),
    Shutdown(oneshot::Sender<()>),
}
