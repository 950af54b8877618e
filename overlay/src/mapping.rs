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
//!   A receiver with nothing to forward answers at once, and that answer stands for its ack.
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
//! # Beyond the path budget: maps by direct RTT (issue 17)
//!
//! The map seed 004 defines holds the nodes within `B` *over the overlay*; a node within `B` of
//! the origin directly but farther over the overlay (joining links each node to its nearest
//! peers, so detours add up) is missed. With `MapConfig::reach` (the default) a request also
//! carries a [`Reach`]: the origin's budget, its Vivaldi coordinate and error, and whether the
//! path so far is proven. A receiver forwards, besides the peers whose link fits the path
//! budget, to peers whose predicted RTT from the origin less `reach_margin` times the summed
//! coordinate errors fits `B * (1 + reach_slack)`, when the answer can still come back in time;
//! such requests say `proven: false` and their receivers answer as [`RttHow::Candidate`]s. The
//! origin waits `B * (1 + reach_wait_factor) + grace`, marks what it measured itself (its
//! peers' SRTT) as [`RttHow::Direct`], and asks its shell to probe the rest
//! ([`Output::Probe`]; with `confirm_paths`, path-proven nodes too, since a path within `B`
//! proves nothing about the direct RTT where routing violates the triangle inequality). A probe
//! within `B` confirms the node, anything else removes it with its links, so a finished map
//! holds only nodes whose RTT from the origin was measured within `B` (or, without
//! `confirm_paths`, proven by a path): precision against direct RTTs is 100 % by construction.
//! The price is time (answers beyond the path budget come back along paths longer than `B`)
//! and messages (requests beyond the path budget do not shrink hop by hop); `brume bench
//! overlay` measures both.
//!
//! With `MapConfig::reach_tree` (off by default; measured by `brume bench overlay --cones K
//! --tree`), requests beyond the path budget follow a tree instead of every eligible link: a
//! peer that published its links with their coordinates ([`MappingNode::set_peer_links`]) gets
//! the request only from its parents toward the origin ([`crate::reach_tree`]).
//!
//! Three economies keep the messages near seed 004's. *Listed candidates*
//! (`MapConfig::reach_rim`, on): a node sends no request to a peer that is not worth one (not
//! its child in the tree, or predicted beyond the forwarding bound) but lists the peer's state
//! record ([`MappingNode::set_peer_record`]) as a candidate in its answer when the record's
//! coordinate may fit `B * (1 + rim_slack)`: the origin probes it like any candidate, so a node
//! one link past what the requests reached costs two messages (the probe) instead of a request,
//! an ack and an answer. *A leaf's answer is its ack*: a node with nothing to forward answers at
//! once, and the sender takes the link's RTT from that answer. *Probes only where they may
//! fit*: the origin skips a candidate whose record's coordinate, less the error margin, puts it
//! beyond `B * (1 + probe_slack)` (a relay far outside the ball; it leaves the map unprobed).
//!
//! With `MapConfig::reports` (off by default; `brume bench overlay --reports`) no answer climbs
//! back: each reached node sends its own part of the map straight to the origin
//! ([`Message::Report`], naming the peers it forwarded to and listing their records), nothing
//! is acknowledged, and the origin probes each node as its report arrives; the map ends when
//! every named node reported and every probe is back, or at one deadline, the budget plus
//! one probe's timeout (`reports` module). In the simulator that ends maps at 2B + grace
//! instead of about 3B, for fewer messages and bytes.
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

use crate::ids::{MapId, NodeId, Time};
use crate::neighbourhood::{Link, NeighbourhoodMap, NodeRecord, RttHow, RttProof};
use crate::reach_tree::tree_parents;
use crate::rtt::RttEstimator;
use crate::vivaldi::{Coord, Vivaldi};

mod config;
mod confirm;
mod messages;
mod plan;
mod reports;
pub use config::MapConfig;
pub use messages::{MapRequest, Message, Output, Reach, Refusal};
use reports::Collecting;

/// What a node knows about one connected peer.
#[derive(Debug, Clone, Default)]
struct Peer {
    rtt: RttEstimator,
    coord: Option<(Coord, f64)>,
    /// The peer's own coordinate and its links with their coordinates, as the peer published them.
    links: Option<(Coord, Vec<(NodeId, Coord)>)>,
    /// The peer's last state record (signed by the peer in the daemon), listed as a candidate
    /// by [`MapConfig::reach_rim`].
    record: Option<NodeRecord>,
}

#[derive(Debug, Clone)]
struct Pending {
    ack_by: Time,
    acked: bool,
}

/// A peer a request goes to: `(peer, est, upper, proven)` (its estimated and upper RTT, and
/// whether the path to it fits the path budget).
type Child = (NodeId, f64, f64, bool);

/// What one request (or the origin's start of a map) asks of a node: all that the node's part
/// of the map and its own requests depend on.
#[derive(Debug, Clone, Copy)]
struct Ask<'a> {
    id: MapId,
    /// The node the request came from (none at the origin).
    parent: Option<NodeId>,
    /// What is left of the path budget from this node on.
    budget_ms: f64,
    /// The time this node may take to answer, or with reports, the time left before the map's
    /// deadline.
    wait_ms: f64,
    skip: &'a [NodeId],
    reach: Option<Reach>,
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
    reach: Option<Reach>,
}

/// An originated map waiting for the origin's confirmation probes.
#[derive(Debug, Clone)]
struct Probing {
    budget_ms: f64,
    deadline: Time,
    pending: HashSet<NodeId>,
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
    probing: HashMap<MapId, Probing>,
    /// Maps this node originated with [`MapConfig::reports`], collecting reports and probing.
    collecting: HashMap<MapId, Collecting>,
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
            probing: HashMap::new(),
            collecting: HashMap::new(),
            seen: HashMap::new(),
            next_purge: Time(0),
            cache: Vec::new(),
            next_seq: 0,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Replaces the protocol's tuning (maps already running keep what they were started with
    /// where it is stored in them; timers and margins use the new values from now on).
    pub fn set_config(&mut self, config: MapConfig) {
        self.config = config;
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

    /// The peer's state record: what a map lists for it as a candidate, judged by the
    /// coordinate in it ([`MapConfig::reach_rim`]). A record of another node, or with a
    /// non-finite coordinate, is ignored. (The coordinate used for forwarding is set apart,
    /// by [`MappingNode::set_peer_coord`] or a ping.)
    pub fn set_peer_record(&mut self, peer: NodeId, record: NodeRecord) {
        if record.id != peer || !record.coord.is_finite() || !record.coord_error.is_finite() {
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.record = Some(record);
        }
    }

    /// The peer's own coordinate and links, as it published them (for [`MapConfig::reach_tree`]).
    pub fn set_peer_links(&mut self, peer: NodeId, own: Coord, links: Vec<(NodeId, Coord)>) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.links = Some((own, links));
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
        let extend = self.config.reach;
        let mut wait = budget_ms + self.grace_ms(budget_ms);
        if extend && self.config.reach_beyond {
            wait += self.config.reach_wait_factor.max(0.0) * budget_ms;
        }
        let reach = Reach {
            budget_ms,
            coord: self.vivaldi.coord(),
            error: self.vivaldi.error(),
            proven: true,
            extend,
            report: extend && self.config.reports,
        };
        let mut out = Vec::new();
        if reach.report {
            self.start_collecting(now, id, budget_ms, wait, reach, &mut out);
        } else {
            let ask = Ask {
                id,
                parent: None,
                budget_ms,
                wait_ms: wait,
                skip: &[],
                reach: Some(reach),
            };
            self.open_session(now, ask, &mut out);
        }
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
    fn open_session(&mut self, now: Time, ask: Ask, out: &mut Vec<Output>) {
        let (map, children) = self.plan(&ask);
        let Ask {
            id,
            parent,
            budget_ms,
            wait_ms,
            reach,
            ..
        } = ask;
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
            reach,
        };
        let requests = self.requests(&ask, &children);
        for (pid, upper, req) in requests {
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
                msg: Message::Request(req),
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
            Message::Report { id, map, children } => {
                let size = map.nodes.len() + children.len();
                if size > self.config.max_answer_nodes {
                    out.push(Output::Refused {
                        from,
                        reason: Refusal::AnswerTooLarge {
                            nodes: size,
                            max: self.config.max_answer_nodes,
                        },
                    });
                    return out;
                }
                self.on_report(now, from, id, map, children, &mut out)
            }
        }
        out
    }

    fn on_request(&mut self, now: Time, from: NodeId, req: MapRequest, out: &mut Vec<Output>) {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(req.budget_ms) || !ok(req.wait_ms) || req.reach.is_some_and(|r| !r.is_valid()) {
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
        let ack = |answer_follows| Output::Send {
            to: from,
            msg: Message::Ack {
                id: req.id,
                answer_follows,
            },
        };
        if seen {
            // With reports, nothing waits for a duplicate's word: it stays silent.
            if !req.reach.is_some_and(|r| r.report) {
                out.push(ack(false));
            }
            return;
        }
        self.remember(now, req.id);
        let budget = req.budget_ms.min(self.config.max_budget_ms);
        let max_wait = self.config.max_budget_ms + self.grace_ms(self.config.max_budget_ms);
        let wait = req.wait_ms.min(max_wait);
        let reach = req.reach.map(|r| Reach {
            budget_ms: r.budget_ms.min(self.config.max_budget_ms),
            ..r
        });
        let ask = Ask {
            id: req.id,
            parent: Some(from),
            budget_ms: budget,
            wait_ms: wait,
            skip: &req.skip,
            reach,
        };
        if reach.is_some_and(|r| r.report) {
            self.report(ask, out);
            return;
        }
        let at = out.len();
        self.open_session(now, ask, out);
        // A node with nothing to forward answers at once, and its answer is its ack (one
        // message instead of two; the sender takes the RTT from it as from an ack).
        let answered = out[at..].iter().any(|o| {
            matches!(o, Output::Send { to, msg: Message::Answer { id, .. } }
                if *to == from && *id == req.id)
        });
        if !answered {
            out.insert(at, ack(true));
        }
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
        // An answer that came instead of an ack (a leaf's) measures the link as the ack would.
        if let Some(sent) = session.sent_at.remove(&from) {
            let rtt = now.ms_since(sent);
            session.map.links.push(Link::new(self.id, from, rtt));
            if let Some(peer) = self.peers.get_mut(&from) {
                peer.rtt.sample(rtt);
            }
        }
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
        let mut expired: Vec<MapId> = self
            .probing
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        expired.sort();
        for id in expired {
            if let Some(mut p) = self.probing.remove(&id) {
                // No answer within the budget: the target is beyond it.
                for t in std::mem::take(&mut p.pending) {
                    p.map.remove_node(t);
                }
                self.finish_origin(now, id, p.budget_ms, p.map, p.complete, &mut out);
            }
        }
        self.collecting_timeouts(now, &mut out);
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
            .chain(self.probing.values().map(|p| p.deadline))
            .chain(
                self.collecting
                    .values()
                    .filter_map(Collecting::next_timeout),
            )
            .min()
    }

    /// Number of maps in progress at this node (waiting for answers or for probes).
    pub fn open_sessions(&self) -> usize {
        self.sessions.len() + self.probing.len() + self.collecting.len()
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
            None => self.confirm(now, id, s, out),
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
mod tests;

#[cfg(test)]
mod reach_tests;

#[cfg(test)]
mod report_tests;
