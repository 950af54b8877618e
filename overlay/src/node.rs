//! The public face of the overlay: [`Overlay::spawn`] starts a node on the tokio runtime and
//! returns an [`OverlayHandle`] to talk to it.
//!
//! The handle is cheap to clone; every call sends a command over an mpsc channel to the swarm
//! task (see [`crate::swarm`]) and waits for its reply on a oneshot channel. Bulk streams go
//! around the task: the handle holds its own libp2p-stream control.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::behaviour::BULK_PROTOCOL;
use crate::ids::NodeId;
use crate::mapping::MapConfig;
use crate::membership::MembershipConfig;
use crate::neighbourhood::{NeighbourhoodMap, NodeRecord};
use crate::vivaldi::Coord;

/// Incoming bulk streams: a `futures::Stream` of `(PeerId, libp2p::Stream)`.
pub use libp2p_stream::IncomingStreams as BulkIncoming;

/// How a node gets its libp2p identity.
#[derive(Debug, Clone, Default)]
pub enum Identity {
    /// A fresh random ed25519 key.
    #[default]
    Generate,
    /// An ed25519 key derived from 32 secret bytes (the same seed gives the same peer id).
    Seed([u8; 32]),
    /// A given key.
    Keypair(Keypair),
}

/// Periods and timeouts of the node.
#[derive(Debug, Clone)]
pub struct Timings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub identify_interval: Duration,
    /// How often state records are exchanged with every peer.
    pub state_interval: Duration,
    /// request-response timeout of the join, state and map protocols.
    pub request_timeout: Duration,
    /// Mean time between two shuffles.
    pub shuffle_interval: Duration,
    /// How often degree bounds are checked.
    pub maintain_interval: Duration,
    /// How long [`Overlay::spawn`] waits for its listeners to report their addresses.
    pub listen_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(10),
            identify_interval: Duration::from_secs(300),
            state_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            shuffle_interval: Duration::from_secs(10),
            maintain_interval: Duration::from_secs(1),
            listen_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything needed to start a node.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// Addresses to listen on (`/ip4/127.0.0.1/tcp/0` picks a free port).
    pub listen: Vec<Multiaddr>,
    /// Members to join through (any member will do); empty for the first node.
    pub bootstrap: Vec<Multiaddr>,
    pub min_degree: usize,
    pub max_degree: usize,
    pub identity: Identity,
    /// The resources this node advertises (its id and coordinate are filled in by the node).
    pub record: Option<NodeRecord>,
    pub timings: Timings,
    /// Mapping protocol tuning.
    pub map: MapConfig,
    /// Membership tuning; `min_degree`, `max_degree` and the shuffle and maintenance intervals
    /// above override the corresponding fields.
    pub membership: MembershipConfig,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("a valid multiaddr")],
            bootstrap: Vec::new(),
            min_degree: 4,
            max_degree: 12,
            identity: Identity::Generate,
            record: None,
            timings: Timings::default(),
            map: network_map_config(),
            membership: MembershipConfig::default(),
        }
    }
}

/// The mapping core's tuning for real networks: [`MapConfig::default`] is tuned for the
/// simulator, where handling a message takes no time. Over libp2p every message opens a yamux
/// stream and crosses two tasks, which on a loaded two-core machine in a debug build can take
/// tens of milliseconds even on loopback, so a child gets at least 250 ms to acknowledge and each
/// hop keeps 2 ms in hand; the originator's grace is at least 20 ms.
pub fn network_map_config() -> MapConfig {
    MapConfig {
        ack_timeout_min_ms: 250.0,
        hop_guard_ms: 2.0,
        grace_min_ms: 20.0,
        ..MapConfig::default()
    }
}

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
    #[error("cannot open a bulk stream to {peer}: {reason}")]
    OpenStream { peer: PeerId, reason: String },
    #[error("bulk streams are already being accepted by another caller")]
    AlreadyAccepting,
}

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

/// A handle to a running node.
#[derive(Clone)]
pub struct OverlayHandle {
    pub(crate) peer_id: PeerId,
    pub(crate) node_id: NodeId,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) bulk: libp2p_stream::Control,
}

impl std::fmt::Debug for OverlayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayHandle")
            .field("peer_id", &self.peer_id)
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// Starts overlay nodes.
pub struct Overlay;

impl Overlay {
    /// Builds the swarm, starts listening, waits until every listener has an address, dials the
    /// bootstrap members and runs the node on a tokio task. The task ends on
    /// [`OverlayHandle::shutdown`] or when every handle is dropped.
    pub async fn spawn(
        config: OverlayConfig,
    ) -> Result<(OverlayHandle, JoinHandle<Result<(), OverlayError>>), OverlayError> {
        crate::swarm::spawn(config).await
    }
}

impl OverlayHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, OverlayError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| OverlayError::Stopped)?;
        rx.await.map_err(|_| OverlayError::Stopped)
    }

    /// The connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, OverlayError> {
        self.ask(Command::Peers).await
    }

    /// Maps the neighbourhood within `budget` (a cached map of the same budget may be returned).
    pub async fn map(&self, budget: Duration) -> Result<NeighbourhoodMap, OverlayError> {
        Ok(self.map_outcome(budget).await?.map)
    }

    /// Like [`OverlayHandle::map`], saying whether the map is complete and how long it took.
    pub async fn map_outcome(&self, budget: Duration) -> Result<MapOutcome, OverlayError> {
        self.map_with(budget, false).await
    }

    /// Maps within `budget`; with `fresh`, ignores recent maps of the same budget (whose RTT
    /// estimates may have settled since).
    pub async fn map_with(
        &self,
        budget: Duration,
        fresh: bool,
    ) -> Result<MapOutcome, OverlayError> {
        let budget_ms = budget.as_secs_f64() * 1000.0;
        if !(budget_ms > 0.0 && budget_ms <= 10_000.0) {
            return Err(OverlayError::BadBudget(budget));
        }
        self.ask(|reply| Command::Map {
            budget_ms,
            fresh,
            reply,
        })
        .await
    }

    /// The node's own view of itself.
    pub async fn status(&self) -> Result<Status, OverlayError> {
        self.ask(Command::Status).await
    }

    /// Replaces the advertised state record (id and coordinate are kept the node's own).
    pub async fn set_record(&self, record: NodeRecord) -> Result<(), OverlayError> {
        self.commands
            .send(Command::SetRecord(record))
            .await
            .map_err(|_| OverlayError::Stopped)
    }

    /// The addresses the node listens on, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, OverlayError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Makes sure a connection to `peer` exists, dialling `addrs` if there is none, and waits
    /// for it up to `timeout`. For talking to a host found in a map that is not a neighbour.
    pub async fn connect(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        timeout: Duration,
    ) -> Result<(), OverlayError> {
        if peer == self.peer_id || self.peers().await?.iter().any(|p| p.peer_id == peer) {
            return Ok(());
        }
        self.commands
            .send(Command::Dial { peer, addrs })
            .await
            .map_err(|_| OverlayError::Stopped)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.peers().await?.iter().any(|p| p.peer_id == peer) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OverlayError::OpenStream {
                    peer,
                    reason: format!("no connection within {timeout:?}"),
                });
            }
        }
    }

    /// Remembers where `peer` can be dialled, so that streams opened to it by id find it
    /// without a connection made first (see [`crate::addresses`]).
    pub async fn add_addresses(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), OverlayError> {
        if addrs.is_empty() || peer == self.peer_id {
            return Ok(());
        }
        self.commands
            .send(Command::AddAddresses { peer, addrs })
            .await
            .map_err(|_| OverlayError::Stopped)
    }

    /// The addresses this node knows for `peer` (empty if none).
    pub async fn known_addresses(&self, peer: PeerId) -> Result<Vec<Multiaddr>, OverlayError> {
        self.ask(|reply| Command::KnownAddresses(peer, reply)).await
    }

    /// Stops the node and waits until its task has closed the swarm.
    pub async fn shutdown(&self) -> Result<(), OverlayError> {
        self.ask(Command::Shutdown).await
    }

    /// Opens a `/brume/bulk/1` stream to a connected peer (it must be accepting).
    pub async fn open_bulk(&self, peer: PeerId) -> Result<Stream, OverlayError> {
        self.open_stream(peer, BULK_PROTOCOL).await
    }

    /// Starts accepting `/brume/bulk/1` streams; only one caller at a time (dropping the returned
    /// stream stops accepting).
    pub fn accept_bulk(&self) -> Result<BulkIncoming, OverlayError> {
        self.accept_streams(BULK_PROTOCOL)
    }

    /// Opens a raw stream of `protocol` to a peer that accepts it (see
    /// [`OverlayHandle::accept_streams`]). The bytes are the caller's: the overlay only
    /// encrypts and multiplexes them. The peer must be connected or dialable.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OverlayError> {
        let mut control = self.bulk.clone();
        control
            .open_stream(peer, protocol)
            .await
            .map_err(|e| OverlayError::OpenStream {
                peer,
                reason: e.to_string(),
            })
    }

    /// Starts accepting streams of `protocol`; one acceptor per protocol at a time (dropping the
    /// returned stream stops accepting).
    pub fn accept_streams(&self, protocol: StreamProtocol) -> Result<BulkIncoming, OverlayError> {
        let mut control = self.bulk.clone();
        control
            .accept(protocol)
            .map_err(|_| OverlayError::AlreadyAccepting)
    }
}
