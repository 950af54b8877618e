//! The latency-bounded neighbourhood mapping protocol of seed 004, as a sans-IO state machine.
//!
//! One [`MappingNode`] runs per node. It is fed messages ([`MappingNode::handle_message`]), timer
//! expiries ([`MappingNode::handle_timeout`]) and RTT samples, always with the current [`Time`] as a
//! parameter, and answers with [`Output`]s: messages to send and completed maps. The shell (libp2p,
//! or the simulator in [`crate::sim`]) does the I/O and calls back at [`MappingNode::poll_timeout`].
//!
//! # The protocol
//!
//! The originator sends `MapRequest { id, origin, budget_ms, .. }` to its neighbours. A receiver:
//! * that has already seen `id` only acknowledges: `Ack { answer_follows: false }`: the part of the
//!   network behind it is being mapped along another path;
//! * otherwise acknowledges at once (`Ack { answer_follows: true }`; the sender measures the RTT
//!   from its request to this ack and records the link), forwards the request to the neighbours
//!   whose predicted RTT fits the remaining budget, waits for their answers, merges them with its
//!   own record and measured links and answers its parent. The answers climb back the tree the
//!   request grew: recursive aggregation, ending at the originator with a [`NeighbourhoodMap`].
//!
//! # How the budget shrinks (what the map contains)
//!
//! `budget_ms` in a request is what is left of the originator's budget for the path from the
//! receiver onwards. A node holding budget `R` forwards to peer `p` when `upper(p) <= R` and gives
//! `p` the budget `R - est(p)`, where `est` is the smoothed RTT (SRTT) and `upper = SRTT + k *
//! RTTVAR` (the variance margin, `k = MapConfig::margin_k`). A never-pinged peer with a known
//! coordinate uses the Vivaldi prediction `v` for `est` and `v * (1 + vivaldi_margin * error)` for
//! `upper`, `error` being the sum of both ends' Vivaldi errors; a peer with neither, or whose
//! coordinates are too uncertain (`error >= 1`: a fresh node's), is not forwarded to. So the budget is consumed by the sum of the
//! link RTTs along the path, and the map holds the nodes whose overlay path from the originator
//! has an RTT sum within the budget: the nodes reachable within the budget over the overlay.
//!
//! Duplicates are answered with an ack only, so a node is mapped along the path by which the
//! request reached it first. Requests are forwarded the moment they arrive and travel at the
//! network's own speed, so the first copy to arrive is the one that came along the path with the
//! smallest latency: the flood computes shortest paths by itself (it is Dijkstra run by physics),
//! and the first-arrival budget is the largest one the node could have received. Jitter or
//! processing delays can break a near-tie the wrong way and shave a little off the budget behind
//! such a node; the simulator measures the resulting recall.
//!
//! To spare messages on the links among siblings, a request carries a `skip` list: the sender, its
//! own parent, the other peers it forwarded the same request to, then the skip list it received
//! itself (at most `MapConfig::max_skip` ids in all). They already have the request, so the receiver does not forward to
//! them. The price: if a path through the receiver to a skipped sibling is shorter than the direct
//! link (a triangle-inequality violation), the sibling keeps the smaller budget of the direct link.
//!
//! # Time bounds (why a dead peer cannot stall a map)
//!
//! The originator waits at most `budget + grace` (`grace = max(grace_min_ms, grace_fraction *
//! budget)`). Each request carries `wait_ms`, the time the receiver may take before answering:
//! the sender's own time left minus the child's `upper` RTT (the request and the answer travel one
//! way each) minus `hop_guard_ms`. So every node answers before its parent gives up on it, and the
//! whole map ends by the originator's deadline whatever happens below. A child that has not even
//! acknowledged within `ack_timeout_factor * upper + ack_timeout_min_ms` is given up earlier.
//!
//! Completed maps are cached for `cache_ttl_ms` ([`MappingNode::start_map`] answers from the cache);
//! seen ids are forgotten after `seen_ttl_ms`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ids::{MapId, NodeId, Time};
use crate::neighbourhood::{Link, NeighbourhoodMap, NodeRecord};
use crate::rtt::RttEstimator;
use crate::vivaldi::{Coord, Vivaldi};

/// A request to map the neighbourhood of `origin` within `budget_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapRequest {
    pub id: MapId,
    pub origin: NodeId,
    /// What is left of the latency budget for paths from the receiver onwards (ms).
    pub budget_ms: f64,
    /// How long the receiver may take before answering (ms).
    pub wait_ms: f64,
    /// Nodes that already have this request; the receiver does not forward to them.
    pub skip: Vec<NodeId>,
}

/// The messages of `/brume/map/1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Request(MapRequest),
    /// Sent at once on every request. `answer_follows` is false for a duplicate id.
    Ack {
        id: MapId,
        answer_follows: bool,
    },
    /// The sender's part of the map (its subtree), sent to the node it got the request from.
    Answer {
        id: MapId,
        map: NeighbourhoodMap,
    },
}

/// Why a message was refused (the shell should lower the sender's score).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("request budget or wait is not a finite non-negative number of ms")]
    BadNumbers,
    #[error("request origin {origin} differs from its id's origin {id_origin}")]
    OriginMismatch { origin: NodeId, id_origin: NodeId },
    #[error("skip list has {len} entries, more than the {max} allowed")]
    SkipTooLong { len: usize, max: usize },
    #[error("answer holds {nodes} nodes, more than the {max} allowed")]
    AnswerTooLarge { nodes: usize, max: usize },
}

/// What the state machine asks its shell to do or tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send {
        to: NodeId,
        msg: Message,
    },
    /// A map this node originated is finished. `complete` is false if some branch was given up
    /// (a peer that did not answer in time); the map then holds what did answer.
    MapDone {
        id: MapId,
        map: NeighbourhoodMap,
        complete: bool,
        from_cache: bool,
    },
    /// A message was malformed and dropped.
    Refused {
        from: NodeId,
        reason: Refusal,
    },
}

/// Tuning of the protocol (see the module documentation for what each knob does).
#[derive(Debug, Clone, PartialEq)]
pub struct MapConfig {
    pub margin_k: f64,
    pub vivaldi_margin: f64,
    pub grace_min_ms: f64,
    pub grace_fraction: f64,
    pub hop_guard_ms: f64,
    pub ack_timeout_factor: f64,
    pub ack_timeout_min_ms: f64,
    pub max_skip: usize,
    pub max_budget_ms: f64,
    pub max_answer_nodes: usize,
    pub cache_ttl_ms: f64,
    pub seen_ttl_ms: f64,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            margin_k: 1.0,
            vivaldi_margin: 1.0,
            grace_min_ms: 2.0,
            grace_fraction: 0.1,
            hop_guard_ms: 0.2,
            ack_timeout_factor: 2.0,
            ack_timeout_min_ms: 5.0,
            max_skip: 64,
            max_budget_ms: 10_000.0,
            max_answer_nodes: 100_000,
            cache_ttl_ms: 30_000.0,
            seen_ttl_ms: 120_000.0,
        }
    }
}

/// What a node knows about one connected peer.
#[derive(Debug, Clone, Default)]
struct Peer {
    rtt: RttEstimator,
    coord: Option<(Coord, f64)>,
}

#[derive(Debug, Clone)]
struct Pending {
    ack_by: Time,
    acked: bool,
}

#[derive(Debug, Clone)]
struct Session {
    parent: Option<NodeId>,
    budget_ms: f64,
    deadline: Time,
    children: HashSet<NodeId>,
    pending: HashMap<NodeId, Pending>,
    sent_at: HashMap<NodeId, Time>,
    map: NeighbourhoodMap,
    complete: bool,
}

#[derive(Debug, Clone)]
struct CachedMap {
    budget_ms: f64,
    expires: Time,
    map: NeighbourhoodMap,
}

/// A Vivaldi prediction whose summed error (local + remote) reaches this is not used.
const VIVALDI_UNTRUSTED: f64 = 1.0;

/// One node's mapping state machine.
#[derive(Debug, Clone)]
pub struct MappingNode {
    id: NodeId,
    config: MapConfig,
    record: NodeRecord,
    vivaldi: Vivaldi,
    peers: HashMap<NodeId, Peer>,
    sessions: HashMap<MapId, Session>,
    seen: HashMap<MapId, Time>,
    next_purge: Time,
    cache: Vec<CachedMap>,
    next_seq: u64,
}

impl MappingNode {
    /// A node with no peers; `record` is its advertised state (its id is forced to `id`).
    pub fn new(id: NodeId, mut record: NodeRecord, config: MapConfig) -> Self {
        record.id = id;
        MappingNode {
            id,
            config,
            record,
            vivaldi: Vivaldi::new(id.0),
            peers: HashMap::new(),
            sessions: HashMap::new(),
            seen: HashMap::new(),
            next_purge: Time(0),
            cache: Vec::new(),
            next_seq: 0,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn vivaldi(&self) -> &Vivaldi {
        &self.vivaldi
    }

    /// Replaces the advertised resources (the coordinate is always the live Vivaldi one).
    pub fn set_record(&mut self, mut record: NodeRecord) {
        record.id = self.id;
        self.record = record;
    }

    /// The record this node advertises now.
    pub fn record(&self) -> NodeRecord {
        let mut r = self.record.clone();
        r.coord = self.vivaldi.coord();
        r.coord_error = self.vivaldi.error();
        r
    }

    /// A peer connected (no RTT known yet).
    pub fn add_peer(&mut self, peer: NodeId) {
        if peer != self.id {
            self.peers.entry(peer).or_default();
        }
    }

    /// A peer disconnected.
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// The connected peers.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    /// The RTT estimator of a peer.
    pub fn peer_rtt(&self, peer: NodeId) -> Option<&RttEstimator> {
        self.peers.get(&peer).map(|p| &p.rtt)
    }

    /// The peer's coordinate and error, learnt from its state record.
    pub fn set_peer_coord(&mut self, peer: NodeId, coord: Coord, error: f64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if coord.is_finite() && error.is_finite() {
                p.coord = Some((coord, error));
            }
        }
    }

    /// One ping to a connected peer: updates its RTT estimate and, if the peer's coordinate is
    /// given (or known), this node's Vivaldi coordinate.
    pub fn on_rtt_sample(&mut self, peer: NodeId, rtt_ms: f64, remote: Option<(Coord, f64)>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.rtt.sample(rtt_ms);
        if let Some((c, e)) = remote {
            if c.is_finite() && e.is_finite() {
                p.coord = Some((c, e));
            }
        }
        if let Some((c, e)) = p.coord {
            self.vivaldi.update(&c, e, rtt_ms);
        }
    }

    /// A Vivaldi update from a node that is not a peer (e.g. a random ping during warm-up).
    pub fn on_remote_sample(&mut self, remote: &Coord, remote_error: f64, rtt_ms: f64) {
        self.vivaldi.update(remote, remote_error, rtt_ms);
    }

    /// `(est, upper)` RTT of a peer, or `None` if nothing is known.
    fn predict(&self, peer: &Peer) -> Option<(f64, f64)> {
        if let (Some(s), Some(u)) = (
            peer.rtt.srtt(),
            peer.rtt.predicted_upper(self.config.margin_k),
        ) {
            return Some((s, u));
        }
        let (c, remote_error) = peer.coord?;
        // A prediction is as uncertain as both coordinates together; while that reaches 100 %
        // (a fresh node on either side) it says nothing, and forwarding on it could put a far
        // node in the map: better to miss the peer until its first ping.
        let error = self.vivaldi.error() + remote_error.max(0.0);
        if error >= VIVALDI_UNTRUSTED {
            return None;
        }
        let v = self.vivaldi.predict(&c);
        Some((v, v * (1.0 + self.config.vivaldi_margin * error)))
    }

    fn grace_ms(&self, budget_ms: f64) -> f64 {
        self.config
            .grace_min_ms
            .max(self.config.grace_fraction * budget_ms)
    }

    /// A map served from the cache, if one for this budget has not expired.
    pub fn cached_map(&self, now: Time, budget_ms: f64) -> Option<&NeighbourhoodMap> {
        self.cache
            .iter()
            .find(|c| c.expires > now && (c.budget_ms - budget_ms).abs() < 1e-9)
            .map(|c| &c.map)
    }

    /// Starts mapping this node's neighbourhood within `budget_ms`; a fresh enough cached map for
    /// the same budget is returned at once instead.
    pub fn start_map(&mut self, now: Time, budget_ms: f64) -> (MapId, Vec<Output>) {
        let id = self.new_id();
        if let Some(map) = self.cached_map(now, budget_ms).cloned() {
            let done = Output::MapDone {
                id,
                map,
                complete: true,
                from_cache: true,
            };
            return (id, vec![done]);
        }
        (id, self.start_fresh(now, id, budget_ms))
    }

    /// Starts a map ignoring the cache.
    pub fn start_fresh_map(&mut self, now: Time, budget_ms: f64) -> (MapId, Vec<Output>) {
        let id = self.new_id();
        (id, self.start_fresh(now, id, budget_ms))
    }

    fn new_id(&mut self) -> MapId {
        self.next_seq += 1;
        MapId {
            origin: self.id,
            seq: self.next_seq,
        }
    }

    fn start_fresh(&mut self, now: Time, id: MapId, budget_ms: f64) -> Vec<Output> {
        let budget_ms = if budget_ms.is_finite() {
            budget_ms.clamp(0.0, self.config.max_budget_ms)
        } else {
            0.0
        };
        self.remember(now, id);
        let wait = budget_ms + self.grace_ms(budget_ms);
        let mut out = Vec::new();
        self.open_session(now, id, None, budget_ms, wait, &[], &mut out);
        out
    }

    fn remember(&mut self, now: Time, id: MapId) {
        if now >= self.next_purge {
            self.seen.retain(|_, exp| *exp > now);
            self.cache.retain(|c| c.expires > now);
            self.next_purge = now.plus_ms(self.config.seen_ttl_ms / 2.0);
        }
        self.seen.insert(id, now.plus_ms(self.config.seen_ttl_ms));
    }

    /// Opens a session: forwards to the peers that fit, or answers at once if none does.
    #[allow(clippy::too_many_arguments)]
    fn open_session(
        &mut self,
        now: Time,
        id: MapId,
        parent: Option<NodeId>,
        budget_ms: f64,
        wait_ms: f64,
        skip: &[NodeId],
        out: &mut Vec<Output>,
    ) {
        let mut map = NeighbourhoodMap::single(self.record());
        let mut children: Vec<(NodeId, f64, f64)> = Vec::new();
        for (&pid, peer) in &self.peers {
            if let Some(s) = peer.rtt.srtt() {
                if s <= budget_ms {
                    // Measured links near enough to matter; the originator drops those whose
                    // other end is not in the map.
                    map.links.push(Link::new(self.id, pid, s));
                }
            }
            if Some(pid) == parent || pid == id.origin || skip.contains(&pid) {
                continue;
            }
            if let Some((est, upper)) = self.predict(peer) {
                if upper <= budget_ms {
                    children.push((pid, est, upper));
                }
            }
        }
        children.sort_by_key(|c| c.0);
        let deadline = now.plus_ms(wait_ms);
        let mut session = Session {
            parent,
            budget_ms,
            deadline,
            children: children.iter().map(|c| c.0).collect(),
            pending: HashMap::new(),
            sent_at: HashMap::new(),
            map,
            complete: true,
        };
        let mut sibling_skip: Vec<NodeId> = Vec::with_capacity(children.len() + 1);
        sibling_skip.push(self.id);
        sibling_skip.extend(parent);
        sibling_skip.extend(children.iter().map(|c| c.0));
        // Whatever our sender listed has the request too: pass it on while room remains.
        for s in skip {
            if !sibling_skip.contains(s) {
                sibling_skip.push(*s);
            }
        }
        sibling_skip.truncate(self.config.max_skip);
        for &(pid, est, upper) in &children {
            let child_wait = (wait_ms - upper - self.config.hop_guard_ms).max(0.0);
            let ack_by = now
                .plus_ms(self.config.ack_timeout_factor * upper + self.config.ack_timeout_min_ms)
                .min(deadline);
            session.pending.insert(
                pid,
                Pending {
                    ack_by,
                    acked: false,
                },
            );
            session.sent_at.insert(pid, now);
            out.push(Output::Send {
                to: pid,
                msg: Message::Request(MapRequest {
                    id,
                    origin: id.origin,
                    budget_ms: (budget_ms - est).max(0.0),
                    wait_ms: child_wait,
                    skip: sibling_skip.clone(),
                }),
            });
        }
        self.sessions.insert(id, session);
        self.maybe_finish(now, id, out);
    }

    /// Handles one message from `from`.
    pub fn handle_message(&mut self, now: Time, from: NodeId, msg: Message) -> Vec<Output> {
        let mut out = Vec::new();
        match msg {
            Message::Request(req) => self.on_request(now, from, req, &mut out),
            Message::Ack { id, answer_follows } => {
                self.on_ack(now, from, id, answer_follows, &mut out)
            }
            Message::Answer { id, map } => {
                if map.nodes.len() > self.config.max_answer_nodes {
                    out.push(Output::Refused {
                        from,
                        reason: Refusal::AnswerTooLarge {
                            nodes: map.nodes.len(),
                            max: self.config.max_answer_nodes,
                        },
                    });
                    return out;
                }
                self.on_answer(now, from, id, map, &mut out)
            }
        }
        out
    }

    fn on_request(&mut self, now: Time, from: NodeId, req: MapRequest, out: &mut Vec<Output>) {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(req.budget_ms) || !ok(req.wait_ms) {
            out.push(Output::Refused {
                from,
                reason: Refusal::BadNumbers,
            });
            return;
        }
        if req.origin != req.id.origin {
            out.push(Output::Refused {
                from,
                reason: Refusal::OriginMismatch {
                    origin: req.origin,
                    id_origin: req.id.origin,
                },
            });
            return;
        }
        if req.skip.len() > self.config.max_skip {
            out.push(Output::Refused {
                from,
                reason: Refusal::SkipTooLong {
                    len: req.skip.len(),
                    max: self.config.max_skip,
                },
            });
            return;
        }
        let seen = self.seen.get(&req.id).is_some_and(|exp| *exp > now);
        out.push(Output::Send {
            to: from,
            msg: Message::Ack {
                id: req.id,
                answer_follows: !seen,
            },
        });
        if seen {
            return;
        }
        self.remember(now, req.id);
        let budget = req.budget_ms.min(self.config.max_budget_ms);
        let max_wait = self.config.max_budget_ms + self.grace_ms(self.config.max_budget_ms);
        let wait = req.wait_ms.min(max_wait);
        self.open_session(now, req.id, Some(from), budget, wait, &req.skip, out);
    }

    fn on_ack(
        &mut self,
        now: Time,
        from: NodeId,
        id: MapId,
        answer_follows: bool,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(sent) = session.sent_at.remove(&from) else {
            return;
        };
        let rtt = now.ms_since(sent);
        session.map.links.push(Link::new(self.id, from, rtt));
        if answer_follows {
            if let Some(p) = session.pending.get_mut(&from) {
                p.acked = true;
            }
        } else {
            session.pending.remove(&from);
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.rtt.sample(rtt);
        }
        self.maybe_finish(now, id, out);
    }

    fn on_answer(
        &mut self,
        now: Time,
        from: NodeId,
        id: MapId,
        map: NeighbourhoodMap,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return; // late or unsolicited: the session is over
        };
        if !session.children.contains(&from) {
            return; // we never asked this peer
        }
        // A child we gave up on may still answer while the session is open: keep its data.
        session.pending.remove(&from);
        session.map.merge(map);
        self.maybe_finish(now, id, out);
    }

    /// Handles timer expiry: gives up on silent children and on sessions past their deadline.
    pub fn handle_timeout(&mut self, now: Time) -> Vec<Output> {
        let mut out = Vec::new();
        let mut due = Vec::new();
        for (id, s) in &mut self.sessions {
            let before = s.pending.len();
            s.pending.retain(|_, p| p.acked || p.ack_by > now);
            if s.pending.len() != before {
                s.complete = false;
            }
            if s.deadline <= now {
                if !s.pending.is_empty() {
                    s.complete = false;
                }
                s.pending.clear();
            }
            if s.pending.is_empty() {
                due.push(*id);
            }
        }
        due.sort();
        for id in due {
            self.maybe_finish(now, id, &mut out);
        }
        out
    }

    /// The next time [`MappingNode::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.sessions
            .values()
            .flat_map(|s| {
                s.pending
                    .values()
                    .filter(|p| !p.acked)
                    .map(|p| p.ack_by)
                    .chain(std::iter::once(s.deadline))
            })
            .min()
    }

    /// Number of maps in progress at this node.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    fn maybe_finish(&mut self, now: Time, id: MapId, out: &mut Vec<Output>) {
        let done = self.sessions.get(&id).is_some_and(|s| s.pending.is_empty());
        if !done {
            return;
        }
        let Some(mut s) = self.sessions.remove(&id) else {
            return;
        };
        s.map.normalize();
        match s.parent {
            Some(parent) => out.push(Output::Send {
                to: parent,
                msg: Message::Answer { id, map: s.map },
            }),
            None => {
                let mut map = s.map;
                map.drop_dangling_links();
                if s.complete {
                    self.cache_map(now, s.budget_ms, map.clone());
                }
                out.push(Output::MapDone {
                    id,
                    map,
                    complete: s.complete,
                    from_cache: false,
                });
            }
        }
    }

    /// Stores a finished map of this node in the cache (done automatically for complete maps).
    pub fn cache_map(&mut self, now: Time, budget_ms: f64, map: NeighbourhoodMap) {
        self.cache
            .retain(|c| c.expires > now && (c.budget_ms - budget_ms).abs() >= 1e-9);
        self.cache.push(CachedMap {
            budget_ms,
            expires: now.plus_ms(self.config.cache_ttl_ms),
            map,
        });
    }
}

/// The distinct destinations of a batch of outputs (handy for shells and tests).
pub fn destinations(outputs: &[Output]) -> HashSet<NodeId> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, .. } => Some(*to),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vivaldi::MIN_HEIGHT;

    fn node(id: u64) -> MappingNode {
        MappingNode::new(
            NodeId(id),
            NodeRecord::bare(NodeId(id)),
            MapConfig::default(),
        )
    }

    fn requested(out: &[Output]) -> Vec<NodeId> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send {
                    to,
                    msg: Message::Request(_),
                } => Some(*to),
                _ => None,
            })
            .collect()
    }

    /// A peer never pinged is forwarded to on its Vivaldi prediction only once both ends'
    /// coordinates mean something: a fresh node's (error 1) would let a far node into the map
    /// (seen on the namespace testbed: a host at 100 ms in an 85 ms map, 1 s after start).
    #[test]
    fn an_unpinged_peer_is_mapped_on_coordinates_only_when_they_are_trusted() {
        let far = Coord {
            x: 100.0,
            y: 0.0,
            height: MIN_HEIGHT,
        };
        let mut a = node(1);
        a.add_peer(NodeId(2));
        a.set_peer_coord(NodeId(2), far, 1.0);
        let (_, out) = a.start_fresh_map(Time(0), 10_000.0);
        assert!(requested(&out).is_empty(), "fresh coordinates: {out:?}");

        // Train `a`'s coordinate against a confident node at the origin, 5 ms away.
        for _ in 0..200 {
            a.on_remote_sample(&Coord::origin(), 0.01, 5.0);
        }
        assert!(a.vivaldi().error() < 0.2, "error {}", a.vivaldi().error());
        a.set_peer_coord(NodeId(2), far, 0.05);
        let v = a.vivaldi().predict(&far);
        let (_, out) = a.start_fresh_map(Time(1), 2.0 * v);
        assert_eq!(requested(&out), vec![NodeId(2)]);
        // The upper bound carries both errors: a budget of the bare prediction is not enough.
        let (_, out) = a.start_fresh_map(Time(2), v);
        assert!(requested(&out).is_empty(), "budget {v}: {out:?}");
    }
}
