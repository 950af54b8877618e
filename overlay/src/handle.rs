//! [`OverlayHandle`], how the rest of the program talks to a running node.
//!
//! The handle is cheap to clone; every call sends a [`Command`] over an mpsc channel to the swarm
//! task (see [`crate::swarm`]) and waits for its reply on a oneshot channel. Raw streams go
//! around the task: the handle holds its own libp2p-stream control.

use std::time::Duration;

use std::sync::Arc;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::commands::{Command, MapOutcome, PeerInfo, Status};
use crate::error::OverlayError;
use crate::events::ConnectionEvent;
use crate::ids::NodeId;
use crate::limits::{LimitedIncoming, StreamLimits};
use crate::neighbourhood::{NeighbourhoodMap, NodeRecord};

/// Incoming raw streams of one protocol: a `futures::Stream` of `(PeerId, libp2p::Stream)`.
pub use libp2p_stream::IncomingStreams;

/// A handle to a running node.
#[derive(Clone)]
pub struct OverlayHandle {
    pub(crate) peer_id: PeerId,
    pub(crate) node_id: NodeId,
    pub(crate) commands: mpsc::Sender<Command>,
    /// Opens and accepts the raw streams of [`OverlayHandle::open_stream`].
    pub(crate) streams: libp2p_stream::Control,
    pub(crate) events: broadcast::Sender<ConnectionEvent>,
    /// The node's identity key: what it signs with (deploy specs, its records).
    pub(crate) keypair: Arc<Keypair>,
    /// The caps [`OverlayHandle::accept_limited`] applies.
    pub(crate) stream_limits: StreamLimits,
}

impl std::fmt::Debug for OverlayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayHandle")
            .field("peer_id", &self.peer_id)
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl OverlayHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's identity key, to sign what this node vouches for (its peer id is the key's).
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// Connection events from now on (see [`ConnectionEvent`]); subscribe before causing them.
    pub fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
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
    /// A dial that fails (refused, unreachable, the handshake rejected) fails at once; only a
    /// dial that neither succeeds nor fails waits out the `timeout`.
    pub async fn connect(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        timeout: Duration,
    ) -> Result<(), OverlayError> {
        if peer == self.peer_id || self.peers().await?.iter().any(|p| p.peer_id == peer) {
            return Ok(());
        }
        // Before the dial, so its failure is not missed.
        let mut events = self.events.subscribe();
        self.commands
            .send(Command::Dial { peer, addrs })
            .await
            .map_err(|_| OverlayError::Stopped)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = poll.tick() => {
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
                event = events.recv() => match event {
                    Ok(ConnectionEvent::Connected { peer: p }) if p == peer => return Ok(()),
                    Ok(ConnectionEvent::Failed { peer: Some(p), incoming: false, reason, .. })
                        if p == peer =>
                    {
                        // A connection may have come up by another way meanwhile.
                        if self.peers().await?.iter().any(|p| p.peer_id == peer) {
                            return Ok(());
                        }
                        return Err(OverlayError::OpenStream {
                            peer,
                            reason: format!("dial failed: {reason}"),
                        });
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(OverlayError::Stopped),
                },
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

    /// Opens a raw stream of `protocol` to a peer that accepts it (see
    /// [`OverlayHandle::accept_streams`]). The bytes are the caller's: the overlay only
    /// encrypts and multiplexes them. The peer must be connected or dialable.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OverlayError> {
        let mut control = self.streams.clone();
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
    pub fn accept_streams(
        &self,
        protocol: StreamProtocol,
    ) -> Result<IncomingStreams, OverlayError> {
        let mut control = self.streams.clone();
        control
            .accept(protocol)
            .map_err(|_| OverlayError::AlreadyAccepting)
    }

    /// [`OverlayHandle::accept_streams`] under the node's [`StreamLimits`]: streams over the
    /// per-peer or total cap are dropped unserved, and a stream whose peer stalls a read or a
    /// write for the idle timeout fails. For request protocols, whose peer always has something
    /// to say; not for long-lived links that may rightly be quiet.
    pub fn accept_limited(
        &self,
        protocol: StreamProtocol,
    ) -> Result<LimitedIncoming<IncomingStreams>, OverlayError> {
        Ok(LimitedIncoming::new(
            self.accept_streams(protocol)?,
            self.stream_limits,
        ))
    }

    /// The caps of [`OverlayHandle::accept_limited`].
    pub fn stream_limits(&self) -> StreamLimits {
        self.stream_limits
    }
}
