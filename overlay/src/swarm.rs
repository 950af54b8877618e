//! The libp2p shell: a tokio task owning the `Swarm` ([`crate::transport`], the behaviours of
//! [`crate::behaviour`]) and the two sans-IO cores, [`MappingNode`] and [`Membership`]. The task is
//! one `tokio::select!` over swarm events, handle commands and the cores' timers; every event is
//! translated into calls on the cores, whose outputs become dials, disconnections and requests.
//!
//! Peers are named by `PeerId` on the wire and by [`NodeId`] in the cores: [`crate::ids::node_id_of`] maps one
//! to the other deterministically and the task keeps the table back.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::swarm::{DialError, ListenError};
use libp2p::{identify, identity, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

mod cone_links;

pub use crate::addresses::peer_of;
use crate::behaviour::{
    BehaviourTimings, BrumeBehaviour, BrumeBehaviourEvent, MapFrame, MembershipRequest,
    MembershipResponse,
};
use crate::commands::{Command, MapOutcome, MapSize, PeerInfo, ProbeCounts, Status};
use crate::config::{Identity, OverlayConfig};
use crate::error::OverlayError;
use crate::events::{ConnectionEvent, EVENT_BUFFER};
use crate::handle::OverlayHandle;
use crate::handshake_rtt::{self, HandshakeRtts};
use crate::ids::{node_id_of, MapId, NodeId, Time};
use crate::maplink::{LinkEvent, MapLinks};
use crate::mapping::{MappingNode, Output};
use crate::membership::{Action, Membership, Misbehaviour};
use crate::neighbourhood::{check_name, NodeRecord};
use crate::peer_state::{PeerState, PublishedLink, MAX_PUBLISHED_LINKS};
use crate::rate::RateBook;
use crate::signed_record;
use cone_links::ConeLinks;

fn msg_kind(msg: &crate::mapping::Message) -> &'static str {
    match msg {
        crate::mapping::Message::Request(_) => "request",
        crate::mapping::Message::Ack { .. } => "ack",
        crate::mapping::Message::Answer { .. } => "answer",
        crate::mapping::Message::Report { .. } => "report",
    }
}

fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if peer_of(&addr).is_some() {
        addr
    } else {
        addr.with(Protocol::P2p(peer))
    }
}

/// At most this many budgets' last map sizes are kept for [`Status::maps`].
const MAX_MAP_SIZES: usize = 16;

/// At most this many addresses of one record or identify message are remembered.
const MAX_RECORD_ADDRS: usize = 8;

fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

fn keypair(identity: &Identity) -> Result<identity::Keypair, OverlayError> {
    match identity {
        Identity::Generate => Ok(identity::Keypair::generate_ed25519()),
        Identity::Seed(seed) => identity::Keypair::ed25519_from_bytes(*seed)
            .map_err(|e| OverlayError::Identity(e.to_string())),
        Identity::Keypair(k) => Ok(k.clone()),
    }
}

/// Peers heard of (connected, remembered, or named in a join or shuffle answer) kept at most;
/// past it the ones neither connected nor remembered are forgotten.
pub const MAX_PEERS_HEARD: usize = 2048;

/// Forgets a record's name if it is not one [`check_name`] accepts: names are shown to people,
/// and the rest of the record is still good for placement.
fn drop_bad_name(record: &mut NodeRecord) {
    if let Some(Err(e)) = record.name.as_deref().map(check_name) {
        debug!(node = %record.id, error = %e, "record name dropped");
        record.name = None;
    }
}

struct PeerEntry {
    peer: PeerId,
    record: Option<NodeRecord>,
    /// The links it published with its last state ([`PeerState`]).
    links: Vec<PublishedLink>,
}

impl PeerEntry {
    /// This node's link to the peer as it would publish it (not marked as a cone link): the
    /// coordinate and an address of the peer's own, from its record; none before a record.
    fn link(&self) -> Option<PublishedLink> {
        let record = self.record.as_ref()?;
        Some(PublishedLink {
            peer: self.peer,
            coord: record.coord,
            addr: record
                .addrs
                .iter()
                .find(|a| peer_of(a) == Some(self.peer))
                .cloned(),
            cone: false,
        })
    }
}

/// What answered the probes waiting for a node, in ms.
enum ProbeAnswer {
    /// The kernel's RTT of a new connection's TCP handshake.
    Handshake(f64),
    Ping(f64),
    /// The node could not be dialled.
    Unreached,
}

/// The swarm task's state.
struct Driver {
    swarm: Swarm<BrumeBehaviour>,
    commands: mpsc::Receiver<Command>,
    epoch: Instant,
    local_peer: PeerId,
    node_id: NodeId,
    mapping: MappingNode,
    membership: Membership<Multiaddr>,
    /// Peers heard of, by core id (the table back from `NodeId` to `PeerId`; bounded by
    /// [`MAX_PEERS_HEARD`], see `forget_strangers`).
    peers: HashMap<NodeId, PeerEntry>,
    connected: HashSet<NodeId>,
    dials: HashMap<ConnectionId, Multiaddr>,
    /// Maps this node started: who waits for each, since when, and its budget.
    maps: HashMap<MapId, (oneshot::Sender<MapOutcome>, Instant, f64)>,
    /// The size of the last map of each recent budget, oldest first (see [`Status::maps`]).
    map_sizes: Vec<MapSize>,
    /// Outstanding join (true) and shuffle (false) requests.
    join_requests: HashMap<OutboundRequestId, bool>,
    listen_addrs: Vec<Multiaddr>,
    state_interval: Duration,
    links: MapLinks,
    link_events: mpsc::Receiver<LinkEvent>,
    /// Confirmation probes in flight: the maps waiting for the next RTT of each node (the
    /// handshake of the connection a probe dials, or the next ping).
    probes: HashMap<NodeId, Vec<MapId>>,
    /// The kernel's handshake RTT of each new connection, left by the transport.
    handshake_rtts: HandshakeRtts,
    /// How the probes were answered (see [`Status::probes`]).
    probe_counts: ProbeCounts,
    /// Where [`ConnectionEvent`]s go (nowhere when nobody listens).
    events: broadcast::Sender<ConnectionEvent>,
    /// This node's identity key: it signs the node's own record as it leaves.
    key: identity::Keypair,
    /// Join, shuffle and state requests from each peer, against [`OverlayConfig::request_rate`].
    requests: RateBook<PeerId>,
    /// This node's cone links ([`cone_links`]) and how often it chooses them.
    cones: ConeLinks,
    cone_interval: Duration,
}

/// Peers whose request rate is tracked at once.
const REQUEST_RATE_PEERS: usize = 2048;

pub(crate) async fn spawn(
    config: OverlayConfig,
) -> Result<(OverlayHandle, JoinHandle<Result<(), OverlayError>>), OverlayError> {
    let key = keypair(&config.identity)?;
    let t = &config.timings;
    let bt = BehaviourTimings {
        ping_interval: t.ping_interval,
        ping_timeout: t.ping_timeout,
        identify_interval: t.identify_interval,
        request_timeout: t.request_timeout,
    };
    let gate = crate::gate::gate(config.allowed_peers.as_ref());
    if let Some(k) = &config.network_key {
        info!(fingerprint = %k.fingerprint(), "private overlay: only holders of this network key can connect");
    }
    let signing_key = key.clone();
    let handshake_rtts = HandshakeRtts::default();
    let mut swarm = crate::transport::build(
        key.clone(),
        config.network_key,
        handshake_rtts.clone(),
        move |key| BrumeBehaviour::new(key, &bt, gate),
    )?;
    let local_peer = *swarm.local_peer_id();
    let node_id = node_id_of(&local_peer);

    // Probe every fixed port before binding any (see crate::listen_port), so this node's own
    // listeners (an IPv4 and a dual-stack IPv6 one on one port) do not refuse each other.
    for addr in &config.listen {
        crate::listen_port::check_free(addr).map_err(|reason| OverlayError::Listen {
            addr: addr.clone(),
            reason,
        })?;
    }
    let mut listeners = 0;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| OverlayError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        listeners += 1;
    }
    // Wait for every listener's first address, so the handle can report real ports at once.
    let mut listen_addrs = Vec::new();
    let mut reported = HashSet::new();
    let wait = tokio::time::timeout(t.listen_timeout, async {
        while reported.len() < listeners {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    reported.insert(listener_id);
                    listen_addrs.push(address);
                }
                SwarmEvent::ListenerError { error, .. } => return Err(error.to_string()),
                SwarmEvent::ListenerClosed {
                    addresses, reason, ..
                } => {
                    let why = match reason {
                        Ok(()) => "closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Err(format!("{addresses:?}: {why}"));
                }
                _ => {}
            }
        }
        Ok(())
    })
    .await;
    match wait {
        Err(_) => return Err(OverlayError::ListenTimeout(t.listen_timeout)),
        Ok(Err(reason)) => {
            return Err(OverlayError::Listen {
                addr: config
                    .listen
                    .first()
                    .cloned()
                    .unwrap_or_else(Multiaddr::empty),
                reason,
            })
        }
        Ok(Ok(())) => {}
    }

    let mut mconf = config.membership.clone();
    mconf.min_degree = config.min_degree;
    mconf.max_degree = config.max_degree;
    mconf.shuffle_interval_ms = t.shuffle_interval.as_secs_f64() * 1000.0;
    mconf.maintain_interval_ms = t.maintain_interval.as_secs_f64() * 1000.0;
    let mut membership = Membership::new(node_id, mconf, config.bootstrap.clone(), node_id.0);
    let mut record = config
        .record
        .clone()
        .unwrap_or_else(|| NodeRecord::bare(node_id));
    record.id = node_id;
    record.peer = Some(local_peer);
    record.addrs = listen_addrs
        .iter()
        .filter(|a| is_dialable(a))
        .take(4)
        .map(|a| with_peer(a.clone(), local_peer))
        .collect();
    let mapping = MappingNode::new(node_id, record, config.map.clone());
    if let Some(a) = listen_addrs.iter().find(|a| is_dialable(a)) {
        membership.set_self_addr(with_peer(a.clone(), local_peer));
    }

    let (tx, rx) = mpsc::channel(64);
    let streams = swarm.behaviour().streams.new_control();
    let (links, link_events) = MapLinks::start(
        streams.clone(),
        crate::wire::MAX_MESSAGE_BYTES,
        config.stream_limits.idle_timeout,
    );
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let handle = OverlayHandle {
        peer_id: local_peer,
        node_id,
        commands: tx,
        streams,
        events: events.clone(),
        keypair: std::sync::Arc::new(key),
        stream_limits: config.stream_limits,
    };
    let mut driver = Driver {
        swarm,
        commands: rx,
        epoch: Instant::now(),
        local_peer,
        node_id,
        mapping,
        membership,
        peers: HashMap::new(),
        connected: HashSet::new(),
        dials: HashMap::new(),
        maps: HashMap::new(),
        map_sizes: Vec::new(),
        join_requests: HashMap::new(),
        listen_addrs,
        state_interval: t.state_interval,
        links,
        link_events,
        probes: HashMap::new(),
        handshake_rtts,
        probe_counts: ProbeCounts::default(),
        events,
        key: signing_key,
        requests: RateBook::new(config.request_rate, REQUEST_RATE_PEERS),
        cones: ConeLinks::new(config.cones),
        cone_interval: t.cone_interval,
    };
    info!(peer = %local_peer, node = %node_id, addrs = ?driver.listen_addrs, "overlay node listening");
    let now = driver.now();
    let actions = driver.membership.start(now);
    driver.apply(actions);
    let task = tokio::spawn(driver.run());
    Ok((handle, task))
}

impl Driver {
    fn now(&self) -> Time {
        Time(self.epoch.elapsed().as_micros() as u64)
    }

    fn instant_of(&self, t: Time) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_micros(t.0))
    }

    async fn run(mut self) -> Result<(), OverlayError> {
        let mut state_tick = tokio::time::interval(self.state_interval);
        state_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cone_rounds = 0;
        let (state_interval, cone_interval) = (self.state_interval, self.cone_interval);
        let cone_gap =
            move |rounds| cone_links::cone_round_gap(rounds, state_interval, cone_interval);
        let mut next_cone_round = tokio::time::Instant::now() + cone_gap(0);
        loop {
            let next = match self.mapping.poll_timeout() {
                Some(m) => m.min(self.membership.poll_timeout()),
                None => self.membership.poll_timeout(),
            };
            let deadline = self.instant_of(next);
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        info!(peer = %self.local_peer, "overlay node shutting down");
                        let _ = reply.send(());
                        return Ok(());
                    }
                    Some(cmd) => self.on_command(cmd),
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(deadline) => self.on_timers(),
                _ = state_tick.tick() => self.broadcast_state(),
                _ = tokio::time::sleep_until(next_cone_round) => {
                    self.cone_round();
                    cone_rounds += 1;
                    next_cone_round = tokio::time::Instant::now() + cone_gap(cone_rounds);
                }
                Some(ev) = self.link_events.recv() => self.on_link_event(ev),
            }
        }
    }

    fn on_timers(&mut self) {
        let now = self.now();
        if self.mapping.poll_timeout().is_some_and(|t| t <= now) {
            let out = self.mapping.handle_timeout(now);
            self.apply_mapping(out);
        }
        if self.membership.poll_timeout() <= now {
            let actions = self.membership.handle_timeout(now);
            self.apply(actions);
        }
    }

    fn learn(&mut self, peer: PeerId) -> NodeId {
        let id = node_id_of(&peer);
        let entry = self.peers.entry(id).or_insert(PeerEntry {
            peer,
            record: None,
            links: Vec::new(),
        });
        if entry.peer != peer {
            warn!(%peer, other = %entry.peer, node = %id, "node id collision; keeping the newer peer");
            entry.peer = peer;
            entry.record = None;
        }
        if self.peers.len() > MAX_PEERS_HEARD {
            self.forget_strangers(id);
        }
        id
    }

    /// Keeps the table of peers heard of bounded: past [`MAX_PEERS_HEARD`] it keeps only the
    /// peers connected, remembered by membership, or `keep`.
    fn forget_strangers(&mut self, keep: NodeId) {
        let known: HashSet<NodeId> = self
            .membership
            .known()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let connected = &self.connected;
        self.peers
            .retain(|n, _| *n == keep || connected.contains(n) || known.contains(n));
    }

    fn peer_id(&self, node: NodeId) -> Option<PeerId> {
        self.peers.get(&node).map(|e| e.peer)
    }

    // ----- commands -----

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_infos());
            }
            Command::Map {
                budget_ms,
                fresh,
                reply,
            } => {
                let now = self.now();
                let (id, out) = if fresh {
                    self.mapping.start_fresh_map(now, budget_ms)
                } else {
                    self.mapping.start_map(now, budget_ms)
                };
                debug!(?id, budget_ms, "map started");
                self.maps.insert(id, (reply, Instant::now(), budget_ms));
                self.apply_mapping(out);
            }
            Command::Status(reply) => {
                let v = self.mapping.vivaldi();
                let _ = reply.send(Status {
                    peer_id: self.local_peer,
                    node_id: self.node_id,
                    listen_addrs: self.own_addrs(),
                    degree: self.connected.len(),
                    coordinate: v.coord(),
                    coord_error: v.error(),
                    uptime: self.epoch.elapsed(),
                    maps: self.map_sizes.clone(),
                    cone_links: self
                        .cones
                        .chosen
                        .iter()
                        .filter_map(|c| self.peer_id(c.1))
                        .collect(),
                    probes: self.probe_counts,
                });
            }
            Command::Dial { peer, addrs } => {
                if peer != self.local_peer {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        debug!(%peer, error = %e, "dial asked by the node refused");
                    }
                }
            }
            Command::AddAddresses { peer, addrs } => {
                for a in addrs {
                    self.remember(peer, a);
                }
            }
            Command::KnownAddresses(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour_mut().addresses.get(&peer));
            }
            Command::SetRecord(record) => {
                let record = self.stamped(record);
                self.mapping.set_record(record);
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.own_addrs());
            }
            Command::Shutdown(_) => {} // handled in run
        }
    }

    /// A record carrying this node's peer id and dialable addresses.
    fn stamped(&self, mut record: NodeRecord) -> NodeRecord {
        record.peer = Some(self.local_peer);
        record.addrs = self
            .own_addrs()
            .iter()
            .filter(|a| is_dialable(a))
            .take(4)
            .cloned()
            .collect();
        record
    }

    /// Keeps a dialable address of `peer` in the address book (see [`crate::addresses`]).
    fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer != self.local_peer && is_dialable(&addr) && peer_of(&addr).is_none_or(|p| p == peer)
        {
            self.swarm.add_peer_address(peer, with_peer(addr, peer));
        }
    }

    /// Keeps the addresses a state record gives for its node.
    fn remember_record(&mut self, record: &NodeRecord) {
        let Some(peer) = record.peer else {
            return;
        };
        for addr in record.addrs.iter().take(MAX_RECORD_ADDRS) {
            self.remember(peer, addr.clone());
        }
    }

    fn own_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs
            .iter()
            .map(|a| with_peer(a.clone(), self.local_peer))
            .collect()
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .connected
            .iter()
            .filter_map(|id| {
                let entry = self.peers.get(id)?;
                let rtt = self.mapping.peer_rtt(*id);
                let addr = self
                    .membership
                    .known()
                    .into_iter()
                    .find(|(n, _)| n == id)
                    .map(|(_, a)| a);
                Some(PeerInfo {
                    peer_id: entry.peer,
                    node_id: *id,
                    addr,
                    srtt_ms: rtt.and_then(|r| r.srtt()),
                    rttvar_ms: rtt.and_then(|r| r.rttvar()),
                    coord: entry.record.as_ref().map(|r| (r.coord, r.coord_error)),
                    record: entry.record.clone(),
                    links: entry.links.clone(),
                    score: self.membership.score(*id),
                })
            })
            .collect();
        out.sort_by_key(|p| p.node_id);
        out
    }

    // ----- core outputs -----

    fn apply(&mut self, actions: Vec<Action<Multiaddr>>) {
        for a in actions {
            match a {
                Action::Dial { addr, node } => self.dial(addr, node),
                Action::Disconnect { node, reason } => {
                    if let Some(peer) = self.peer_id(node) {
                        debug!(%peer, ?reason, "disconnecting");
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
                Action::SendJoin { to } => {
                    if let Some(peer) = self.peer_id(to) {
                        let rid = self
                            .swarm
                            .behaviour_mut()
                            .join
                            .send_request(&peer, MembershipRequest::Join);
                        self.join_requests.insert(rid, true);
                    }
                }
                Action::SendShuffle { to, entries } => {
                    if let Some(peer) = self.peer_id(to) {
                        let entries = entries.into_iter().map(|(_, a)| a.to_string()).collect();
                        let rid = self
                            .swarm
                            .behaviour_mut()
                            .join
                            .send_request(&peer, MembershipRequest::Shuffle { entries });
                        self.join_requests.insert(rid, false);
                    }
                }
            }
        }
    }

    fn dial(&mut self, addr: Multiaddr, node: Option<NodeId>) {
        let peer = node
            .and_then(|n| self.peer_id(n))
            .or_else(|| peer_of(&addr));
        if peer == Some(self.local_peer) {
            let now = self.now();
            self.membership.on_dial_failed(now, &addr);
            return;
        }
        let opts = match peer {
            Some(p) => DialOpts::peer_id(p)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let cid = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                trace!(%addr, "dialling");
                self.dials.insert(cid, addr);
            }
            Err(e) => {
                debug!(%addr, error = %e, "dial refused");
                let now = self.now();
                self.membership.on_dial_failed(now, &addr);
            }
        }
    }

    fn apply_mapping(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send { to, mut msg } => {
                    msg.sign_own(self.node_id, &self.key);
                    match self.peer_id(to).filter(|_| self.connected.contains(&to)) {
                        Some(peer) => {
                            trace!(node = %to, kind = msg_kind(&msg), "map message out");
                            if !self.links.send(peer, &msg) {
                                debug!(node = %to, "map message dropped (link queue full)");
                            }
                        }
                        None => trace!(node = %to, "map message to a peer no longer connected"),
                    }
                }
                Output::MapDone {
                    id,
                    mut map,
                    complete,
                    from_cache,
                } => {
                    for record in &mut map.nodes {
                        drop_bad_name(record);
                        self.remember_record(record);
                    }
                    self.probes.retain(|_, maps| {
                        maps.retain(|m| *m != id);
                        !maps.is_empty()
                    });
                    if let Some((reply, started, budget_ms)) = self.maps.remove(&id) {
                        self.note_map_size(MapSize {
                            budget_ms,
                            nodes: map.nodes.len(),
                            complete,
                        });
                        debug!(?id, nodes = map.nodes.len(), complete, "map done");
                        let _ = reply.send(MapOutcome {
                            map,
                            complete,
                            from_cache,
                            elapsed: started.elapsed(),
                        });
                    }
                }
                Output::Probe { id, targets, .. } => {
                    for record in targets {
                        self.probe(id, record);
                    }
                }
                Output::Refused { from, reason } => {
                    warn!(node = %from, %reason, "map message refused");
                    self.misbehaved(from, Misbehaviour::Malformed);
                }
            }
        }
    }

    /// One confirmation probe of map `id`. A connected node's SRTT answers at once if the
    /// mapping core has one, else its next ping does; any other node is dialled at the addresses
    /// its record gives, and the kernel's RTT of the new connection's TCP handshake answers
    /// (see [`crate::handshake_rtt`]; the first ping, if the kernel has no sample). A target
    /// that cannot be dialled is not reached; one whose dial hangs is left to the core's probe
    /// deadline.
    fn probe(&mut self, id: MapId, record: NodeRecord) {
        let Some(peer) = record.peer else {
            return;
        };
        if node_id_of(&peer) != record.id || peer == self.local_peer {
            return;
        }
        let node = self.learn(peer);
        self.remember_record(&record);
        if self.connected.contains(&node) {
            if let Some(srtt) = self.mapping.peer_rtt(node).and_then(|r| r.srtt()) {
                let now = self.now();
                self.probe_counts.srtt += 1;
                let out = self.mapping.handle_probe_result(now, id, node, Some(srtt));
                self.apply_mapping(out);
                return;
            }
        }
        self.probes.entry(node).or_default().push(id);
        if !self.connected.contains(&node) {
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, error = %e, "probe dial refused");
            } else {
                trace!(%peer, "dialling to probe");
            }
        }
    }

    /// Answers every probe waiting for `node`.
    fn resolve_probes(&mut self, now: Time, node: NodeId, answer: ProbeAnswer) {
        let (count, rtt_ms) = match answer {
            ProbeAnswer::Handshake(ms) => (&mut self.probe_counts.handshake, Some(ms)),
            ProbeAnswer::Ping(ms) => (&mut self.probe_counts.ping, Some(ms)),
            ProbeAnswer::Unreached => (&mut self.probe_counts.unreached, None),
        };
        let maps = self.probes.remove(&node).unwrap_or_default();
        *count += maps.len() as u64;
        for m in maps {
            let out = self.mapping.handle_probe_result(now, m, node, rtt_ms);
            self.apply_mapping(out);
        }
    }

    /// Keeps `size` as the last map of its budget; callers choose budgets, so only the
    /// [`MAX_MAP_SIZES`] most recent budgets are kept.
    fn note_map_size(&mut self, size: MapSize) {
        self.map_sizes.retain(|m| m.budget_ms != size.budget_ms);
        if self.map_sizes.len() >= MAX_MAP_SIZES {
            self.map_sizes.remove(0);
        }
        self.map_sizes.push(size);
    }

    fn misbehaved(&mut self, node: NodeId, what: Misbehaviour) {
        let now = self.now();
        let actions = self.membership.on_misbehaviour(now, node, what);
        self.apply(actions);
    }

    /// This node's record as it goes out: signed.
    fn own_record(&self) -> NodeRecord {
        let mut record = self.mapping.record();
        signed_record::sign(&mut record, &self.key);
        record
    }

    /// What this node tells its peers: its signed record and its links to the peers whose
    /// records it has, with their coordinates and an address from their records (by node id,
    /// at most [`MAX_PUBLISHED_LINKS`]).
    fn own_state(&self) -> PeerState {
        let mut links: Vec<(NodeId, PublishedLink)> = self
            .connected
            .iter()
            .filter_map(|n| {
                let link = self.peers.get(n)?.link()?;
                let cone = self.cones.chose(*n);
                Some((*n, PublishedLink { cone, ..link }))
            })
            .collect();
        links.sort_by_key(|l| l.0);
        links.truncate(MAX_PUBLISHED_LINKS);
        PeerState {
            record: self.own_record(),
            links: links.into_iter().map(|l| l.1).collect(),
        }
    }

    fn broadcast_state(&mut self) {
        let state = self.own_state();
        let peers: Vec<PeerId> = self
            .connected
            .iter()
            .filter_map(|n| self.peer_id(*n))
            .collect();
        for p in peers {
            self.swarm
                .behaviour_mut()
                .state
                .send_request(&p, state.clone());
        }
    }

    /// A state from `node`: its record (see [`Driver::on_record`]) and, if the record holds, its
    /// links, handed to the mapping core (the tree a map may follow is computed from them).
    fn on_state(&mut self, node: NodeId, state: PeerState) {
        let links = state.checked_links();
        let coord = state.record.coord;
        if !self.on_record(node, state.record) {
            return;
        }
        match links {
            Ok(links) => {
                self.mapping.set_peer_links(node, coord, links);
                let me = self.local_peer;
                let chose = state.links.iter().any(|l| l.peer == me && l.cone);
                if let Some(e) = self.peers.get_mut(&node) {
                    e.links = state.links;
                }
                self.note_cone_choice(node, chose);
            }
            Err(e) => {
                debug!(%node, error = %e, "state links refused");
                self.misbehaved(node, Misbehaviour::Malformed);
            }
        }
    }

    /// A state record from `node`: stored, its coordinate handed to the mapping core. False if
    /// it was refused (and its sender scored down).
    fn on_record(&mut self, node: NodeId, mut record: NodeRecord) -> bool {
        let claimed_other_peer = record.peer.is_some() && self.peer_id(node) != record.peer;
        if record.id != node
            || claimed_other_peer
            || !record.coord.is_finite()
            || !record.coord_error.is_finite()
        {
            debug!(%node, "state record with a wrong id or non-finite coordinate");
            self.misbehaved(node, Misbehaviour::Malformed);
            return false;
        }
        if let Err(e) = signed_record::verify(&record) {
            debug!(%node, error = %e, "state record dropped");
            self.misbehaved(node, Misbehaviour::Malformed);
            return false;
        }
        record.id = node;
        drop_bad_name(&mut record);
        self.remember_record(&record);
        self.mapping
            .set_peer_coord(node, record.coord, record.coord_error);
        self.mapping.set_peer_record(node, record.clone());
        if let Some(e) = self.peers.get_mut(&node) {
            e.record = Some(record);
        }
        self.membership.on_good(node);
        true
    }

    /// Parses membership entries; malformed ones count against the sender.
    fn parse_entries(&mut self, from: NodeId, entries: Vec<String>) -> Vec<(NodeId, Multiaddr)> {
        let mut out = Vec::new();
        let mut bad = false;
        for s in entries {
            match s
                .parse::<Multiaddr>()
                .ok()
                .and_then(|a| Some((peer_of(&a)?, a)))
            {
                Some((peer, addr)) => {
                    if peer != self.local_peer {
                        let id = self.learn(peer);
                        self.remember(peer, addr.clone());
                        out.push((id, addr));
                    }
                }
                None => bad = true,
            }
        }
        if bad {
            self.misbehaved(from, Misbehaviour::Malformed);
        }
        out
    }

    // ----- swarm events -----

    fn on_swarm_event(&mut self, ev: SwarmEvent<BrumeBehaviourEvent>) {
        let now = self.now();
        match ev {
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                self.listen_addrs.push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.dials.remove(&connection_id);
                let id = self.learn(peer_id);
                // A probe that dialled (or met a dial) is answered by the kernel's handshake.
                let handshake = handshake_rtt::socket_addr(endpoint.get_remote_address())
                    .and_then(|remote| self.handshake_rtts.take(remote));
                if let Some(rtt) = handshake {
                    trace!(node = %id, rtt_ms = rtt.as_secs_f64() * 1000.0, "handshake RTT");
                    self.resolve_probes(
                        now,
                        id,
                        ProbeAnswer::Handshake(rtt.as_secs_f64() * 1000.0),
                    );
                }
                let addr = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => {
                        Some(with_peer(address.clone(), peer_id))
                    }
                    ConnectedPoint::Listener { .. } => None,
                };
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, node = %id, "connected");
                    let _ = self
                        .events
                        .send(ConnectionEvent::Connected { peer: peer_id });
                    self.connected.insert(id);
                    self.mapping.add_peer(id);
                    // Open the map link now, so no map pays for the stream's negotiation.
                    self.links.open(peer_id);
                    let actions = self.membership.on_connected(now, id, addr);
                    self.apply(actions);
                    if self.connected.contains(&id) {
                        let state = self.own_state();
                        self.swarm
                            .behaviour_mut()
                            .state
                            .send_request(&peer_id, state);
                    }
                } else {
                    // `self.connected` holds `id` since its first connection.
                    let actions = self.membership.on_another_connection(now, id, addr);
                    self.apply(actions);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                let id = node_id_of(&peer_id);
                debug!(peer = %peer_id, node = %id, "disconnected");
                let _ = self
                    .events
                    .send(ConnectionEvent::Disconnected { peer: peer_id });
                self.connected.remove(&id);
                self.cones.chosen_by.remove(&id);
                self.mapping.remove_peer(id);
                self.links.close(peer_id);
                let actions = self.membership.on_disconnected(now, id);
                self.apply(actions);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let denied = matches!(error, DialError::Denied { .. });
                if denied {
                    info!(peer = ?peer_id, "connection to a peer not on the allow-list closed");
                }
                let _ = self.events.send(ConnectionEvent::Failed {
                    peer: peer_id,
                    incoming: false,
                    denied,
                    reason: error.to_string(),
                });
                if let Some(addr) = self.dials.remove(&connection_id) {
                    debug!(%addr, %error, "dial failed");
                    self.membership.on_dial_failed(now, &addr);
                }
                // A probe target that cannot be dialled is not reached: its maps need not wait
                // out the probe's time for it.
                if let Some(node) = peer_id.map(|p| node_id_of(&p)) {
                    if !self.connected.contains(&node) && self.probes.contains_key(&node) {
                        debug!(%node, "probe target unreachable");
                        self.resolve_probes(now, node, ProbeAnswer::Unreached);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                peer_id,
                send_back_addr,
                error,
                ..
            } => {
                let denied = matches!(error, ListenError::Denied { .. });
                let over_limit = match &error {
                    ListenError::Denied { cause } => cause
                        .downcast_ref::<libp2p::connection_limits::Exceeded>()
                        .map(|e| format!("over the connection limits: {e}")),
                    _ => None,
                };
                if let Some(why) = &over_limit {
                    info!(peer = ?peer_id, from = %send_back_addr, "connection refused: {why}");
                } else if denied {
                    info!(peer = ?peer_id, from = %send_back_addr, "connection from a peer not on the allow-list refused");
                } else {
                    // Without the network key (or with another) the handshake fails here.
                    debug!(from = %send_back_addr, %error, "incoming connection failed");
                }
                let _ = self.events.send(ConnectionEvent::Failed {
                    peer: peer_id,
                    incoming: true,
                    denied,
                    reason: over_limit.unwrap_or_else(|| error.to_string()),
                });
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(now, ev),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, now: Time, ev: BrumeBehaviourEvent) {
        match ev {
            BrumeBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let id = self.learn(peer_id);
                for a in info.listen_addrs.iter().take(MAX_RECORD_ADDRS) {
                    self.remember(peer_id, a.clone());
                }
                if let Some(a) = info.listen_addrs.iter().find(|a| is_dialable(a)) {
                    self.membership
                        .set_addr(now, id, with_peer(a.clone(), peer_id));
                }
            }
            BrumeBehaviourEvent::Identify(_) => {}
            BrumeBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                let id = node_id_of(&peer);
                let ms = rtt.as_secs_f64() * 1000.0;
                self.resolve_probes(now, id, ProbeAnswer::Ping(ms));
                if self.connected.contains(&id) {
                    self.mapping.on_rtt_sample(id, ms, None);
                    if let Some(s) = self.mapping.peer_rtt(id).and_then(|r| r.srtt()) {
                        self.membership.set_rtt(id, s);
                    }
                }
            }
            BrumeBehaviourEvent::Ping(ping::Event {
                peer,
                result: Err(e),
                ..
            }) => debug!(%peer, error = %e, "ping failed"),
            BrumeBehaviourEvent::Join(ev) => self.on_join_event(now, ev),
            BrumeBehaviourEvent::State(ev) => self.on_state_event(ev),
            BrumeBehaviourEvent::Streams(()) => {}
            BrumeBehaviourEvent::Gate(never) => match never {},
            BrumeBehaviourEvent::Limits(never) => match never {},
        }
    }

    fn on_join_event(
        &mut self,
        now: Time,
        ev: request_response::Event<MembershipRequest, MembershipResponse>,
    ) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if !self.requests.allow(&peer, Instant::now()) {
                    debug!(%peer, "join/shuffle requests over the rate; refused unanswered");
                    return;
                }
                let from = self.learn(peer);
                let entries = match request {
                    MembershipRequest::Join => self.membership.join_sample(from),
                    MembershipRequest::Shuffle { entries } => {
                        let offered = self.parse_entries(from, entries);
                        self.membership.on_shuffle(now, from, offered)
                    }
                };
                let entries = entries.into_iter().map(|(_, a)| a.to_string()).collect();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .join
                    .send_response(channel, MembershipResponse { entries });
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let from = self.learn(peer);
                let was_join = self.join_requests.remove(&request_id);
                let entries = self.parse_entries(from, response.entries);
                // Join and shuffle answers carry the same thing; only the reaction differs.
                let actions = match was_join {
                    Some(true) => self.membership.on_join_reply(now, from, entries),
                    _ => self.membership.on_shuffle_reply(now, from, entries),
                };
                self.apply(actions);
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.join_requests.remove(&request_id);
                debug!(%peer, %error, "join/shuffle request failed");
            }
            Event::InboundFailure { peer, error, .. } => {
                self.inbound_failure(peer, "join", &error);
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn inbound_failure(
        &mut self,
        peer: PeerId,
        proto: &str,
        error: &request_response::InboundFailure,
    ) {
        use request_response::InboundFailure;
        debug!(%peer, proto, %error, "inbound request failed");
        // Undecodable or oversized CBOR (the codec reads with a size limit) is the peer's fault.
        if let InboundFailure::Io(e) = error {
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::Unsupported
                    | std::io::ErrorKind::Other
            ) {
                let id = node_id_of(&peer);
                self.misbehaved(id, Misbehaviour::Malformed);
            }
        }
    }

    fn on_state_event(&mut self, ev: request_response::Event<PeerState, PeerState>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if !self.requests.allow(&peer, Instant::now()) {
                    debug!(%peer, "state requests over the rate; refused unanswered");
                    return;
                }
                let from = self.learn(peer);
                let mine = self.own_state();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_response(channel, mine);
                self.on_state(from, request);
            }
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => {
                let from = self.learn(peer);
                self.on_state(from, response);
            }
            Event::OutboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "state request failed");
            }
            Event::InboundFailure { peer, error, .. } => {
                self.inbound_failure(peer, "state", &error);
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_link_event(&mut self, ev: LinkEvent) {
        let now = self.now();
        match ev {
            LinkEvent::Closed { peer, generation } => self.links.on_closed(peer, generation),
            LinkEvent::Frame { peer, frame } => {
                let from = self.learn(peer);
                match frame {
                    MapFrame::Msg(msg) => {
                        trace!(node = %from, kind = msg_kind(&msg), "map message in");
                        let out = self.mapping.handle_message(now, from, msg);
                        self.membership.on_good(from);
                        self.apply_mapping(out);
                    }
                    MapFrame::Bad { oversized, reason } => {
                        warn!(%peer, %reason, "bad map message dropped");
                        let what = if oversized {
                            Misbehaviour::Oversized
                        } else {
                            Misbehaviour::Malformed
                        };
                        self.misbehaved(from, what);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_deterministic_and_distinct() {
        let a = identity::Keypair::ed25519_from_bytes([1u8; 32]).unwrap();
        let b = identity::Keypair::ed25519_from_bytes([2u8; 32]).unwrap();
        let pa = a.public().to_peer_id();
        let pb = b.public().to_peer_id();
        assert_eq!(node_id_of(&pa), node_id_of(&pa.clone()));
        assert_ne!(node_id_of(&pa), node_id_of(&pb));
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let full = with_peer(addr.clone(), pa);
        assert_eq!(peer_of(&full), Some(pa));
        assert_eq!(with_peer(full.clone(), pa), full);
        assert_eq!(peer_of(&addr), None);
        assert!(!is_dialable(&"/ip4/0.0.0.0/tcp/1".parse().unwrap()));
    }
}
