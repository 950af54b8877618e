//! A discrete-event simulator of the mapping protocol over thousands of nodes.
//!
//! The protocol must be judged at a scale no test bed on two cores can host, so the sans-IO
//! [`MappingNode`]s run here in one process: events (a message arriving, a node's timer) sit in a
//! binary heap ordered by virtual time; a message from `a` to `b` arrives `rtt(a, b) / 2` after it
//! was sent. RTTs come from any [`LatencyModel`].
//!
//! The overlay graph imitates what joining produces: every node links to its `near` nearest nodes
//! (by RTT) and to `far` uniformly random ones; links are undirected, so degrees vary.
//!
//! Ground truth for a map from `origin` with budget `B` is **over the overlay**: the nodes whose
//! shortest-path RTT from the origin along overlay links (true RTTs as weights) is at most `B`.
//! That is what "reachable within B" can mean for a protocol that only talks over overlay links,
//! and what the map's links let placement use. The direct-RTT set (`rtt(origin, v) <= B`) is
//! reported beside it ([`MapStats::recall_direct`]) to show what overlay detours cost.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::latency::LatencyModel;
use brume_overlay::cones::{sticky_cone_choices, Stickiness};
use brume_overlay::ids::{MapId, NodeId, Time};
use brume_overlay::mapping::{MapConfig, MappingNode, Message, Output};
use brume_overlay::neighbourhood::{NeighbourhoodMap, NodeRecord, RttHow};
use brume_overlay::vivaldi::Coord;

mod wire_size;
use wire_size::WireSize;

/// An undirected overlay graph over node indices.
#[derive(Debug, Clone)]
pub struct OverlayGraph {
    adj: Vec<Vec<usize>>,
}

impl OverlayGraph {
    /// Each node links to its `near` nearest nodes and `far` random ones (only pairs whose RTT
    /// the model knows are linked).
    pub fn near_and_far(model: &dyn LatencyModel, near: usize, far: usize, seed: u64) -> Self {
        let n = model.len();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x000E_71A7);
        let mut sets: Vec<HashSet<usize>> = vec![HashSet::new(); n];
        let mut cand: Vec<(f64, usize)> = Vec::with_capacity(n);
        for i in 0..n {
            cand.clear();
            cand.extend(
                (0..n)
                    .filter(|&j| j != i)
                    .filter_map(|j| model.rtt(i, j).map(|r| (r, j))),
            );
            let k = near.min(cand.len());
            if k > 0 && k < cand.len() {
                cand.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
            }
            let mut picks: Vec<usize> = cand[..k].iter().map(|c| c.1).collect();
            for _ in 0..far {
                if cand.is_empty() {
                    break;
                }
                picks.push(cand[rng.random_range(0..cand.len())].1);
            }
            for j in picks {
                sets[i].insert(j);
                sets[j].insert(i);
            }
        }
        let adj = sets
            .into_iter()
            .map(|s| {
                let mut v: Vec<usize> = s.into_iter().collect();
                v.sort_unstable();
                v
            })
            .collect();
        OverlayGraph { adj }
    }

    pub fn len(&self) -> usize {
        self.adj.len()
    }

    /// Links `i` and `j` (undirected); false if they already were.
    pub fn link(&mut self, i: usize, j: usize) -> bool {
        if i == j || self.adj[i].binary_search(&j).is_ok() {
            return false;
        }
        for (a, b) in [(i, j), (j, i)] {
            let at = self.adj[a].binary_search(&b).unwrap_or_else(|e| e);
            self.adj[a].insert(at, b);
        }
        true
    }

    /// Unlinks `i` and `j`; false if they were not linked.
    pub fn unlink(&mut self, i: usize, j: usize) -> bool {
        let Ok(at) = self.adj[i].binary_search(&j) else {
            return false;
        };
        self.adj[i].remove(at);
        if let Ok(at) = self.adj[j].binary_search(&i) {
            self.adj[j].remove(at);
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.adj.is_empty()
    }

    pub fn neighbours(&self, i: usize) -> &[usize] {
        &self.adj[i]
    }

    /// Number of undirected links.
    pub fn links(&self) -> usize {
        self.adj.iter().map(Vec::len).sum::<usize>() / 2
    }

    /// Shortest-path RTT from `src` to every node over the overlay (Dijkstra; infinite if cut off).
    pub fn shortest_rtt(&self, model: &dyn LatencyModel, src: usize) -> Vec<f64> {
        let mut dist = vec![f64::INFINITY; self.len()];
        let mut heap = BinaryHeap::new();
        dist[src] = 0.0;
        heap.push(Reverse((OrdF64(0.0), src)));
        while let Some(Reverse((OrdF64(d), u))) = heap.pop() {
            if d > dist[u] {
                continue;
            }
            for &v in &self.adj[u] {
                let Some(w) = model.rtt(u, v) else { continue };
                let nd = d + w;
                if nd < dist[v] {
                    dist[v] = nd;
                    heap.push(Reverse((OrdF64(nd), v)));
                }
            }
        }
        dist
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Parameters of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub near: usize,
    pub far: usize,
    pub seed: u64,
    /// Warm-up rounds: each round every node pings every overlay neighbour once and
    /// `random_pings` random nodes (those only feed Vivaldi).
    pub warmup_rounds: usize,
    pub random_pings: usize,
    /// Ping samples are the true RTT times `1 + jitter * u`, `u` uniform in [-1, 1].
    pub jitter: f64,
    /// Links per node chosen by Vivaldi distance across the space after the warm-up (see
    /// [`Simulation::spread_links`]); 0 keeps the near-and-far overlay of joining.
    pub spread: usize,
    pub map: MapConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            near: 4,
            far: 1,
            seed: 1,
            warmup_rounds: 32,
            random_pings: 4,
            jitter: 0.02,
            spread: 0,
            map: MapConfig::default(),
        }
    }
}

#[derive(Debug)]
enum EventKind {
    Deliver {
        from: usize,
        to: usize,
        msg: Message,
    },
    Timer {
        node: usize,
    },
    /// The pong of an origin's confirmation probe, one RTT after its ping.
    ProbeReply {
        origin: usize,
        id: MapId,
        target: usize,
        rtt_ms: f64,
    },
}

/// What one map cost, counted while it runs.
#[derive(Debug, Clone, Default)]
struct Counts {
    messages: usize,
    requests: usize,
    probes: usize,
    /// Bytes of map messages as daemons would send them (see [`WireSize`]).
    bytes: usize,
    /// Each probed node's RTT as its probe measured it (a reply within the probe's timeout):
    /// the map's largest confirmation RTT is the largest of these among the nodes the
    /// finished map holds as direct (a reply the origin got after the map ended confirms
    /// nothing).
    probe_rtt_ms: HashMap<usize, f64>,
}

#[derive(Debug)]
struct Event {
    at: Time,
    seq: u64,
    kind: EventKind,
}
impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: invert so the earliest event pops first.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// What one map cost and how good it was.
#[derive(Debug, Clone, PartialEq)]
pub struct MapStats {
    pub origin: usize,
    pub budget_ms: f64,
    pub map: NeighbourhoodMap,
    pub complete: bool,
    /// Size of the ground truth (overlay shortest-path RTT within the budget).
    pub truth: usize,
    pub recall: f64,
    pub precision: f64,
    /// Recall against the nodes whose direct RTT from the origin is within the budget.
    pub recall_direct: f64,
    /// Overlay links with both ends in the ground truth.
    pub region_links: usize,
    /// Every message sent for this map (requests, acks, answers, and two per confirmation
    /// probe: the ping and its pong).
    pub messages: usize,
    pub requests: usize,
    /// Confirmation probes the origin sent.
    pub probes: usize,
    /// Bytes of the map's requests, acks and answers as daemons would send them (CBOR, each
    /// record as a signed one with a peer id and an address; probes not counted).
    pub bytes: usize,
    /// The largest RTT of a probe answered within the budget (0 without probes).
    pub max_confirm_ms: f64,
    /// Size of the direct-RTT truth (`rtt(origin, v) <= B`).
    pub direct: usize,
    /// Precision against the direct-RTT truth.
    pub precision_direct: f64,
    /// Overlay links with both ends in the direct-RTT truth.
    pub direct_region_links: usize,
    /// Map nodes whose RTT was proven by an overlay path, and confirmed directly.
    pub path_proven: usize,
    pub direct_confirmed: usize,
    /// Requests a plain flood of the region would send (each region node to all its neighbours
    /// but the one it heard from first).
    pub flood_requests: usize,
    /// From start to the originator's `MapDone`, in ms.
    pub completion_ms: f64,
    /// The largest RTT of an overlay link inside the region (the "one RTT" of the target).
    pub max_region_link_ms: f64,
    /// The completion floor of this overlay, whatever the protocol: the share of the direct
    /// region any map could confirm by `budget + D` (`D` the largest direct RTT in the region,
    /// the longest probe a map of it needs). The origin learns of a node `x` no sooner than
    /// an overlay message can bring it back: answers climbing back along paths (recursive
    /// aggregation, `floor_answers`) at `P(y)` for `y` = `x` or a neighbour listing it (`P`
    /// the shortest overlay path RTT from the origin); a report sent straight back instead
    /// (`floor_reports`) at `P(y) / 2 + rtt(origin, y) / 2`. Its probe then takes
    /// `rtt(origin, x)`.
    pub floor_answers: f64,
    pub floor_reports: f64,
}

impl MapStats {
    /// Messages per overlay link inside the region (NaN for a region without links).
    pub fn messages_per_region_link(&self) -> f64 {
        self.messages as f64 / self.region_links as f64
    }

    /// Messages per overlay link inside the direct-RTT region (NaN without links).
    pub fn messages_per_direct_region_link(&self) -> f64 {
        self.messages as f64 / self.direct_region_links as f64
    }
}

/// N mapping state machines over a latency model and an overlay graph.
pub struct Simulation<'m> {
    model: &'m dyn LatencyModel,
    graph: OverlayGraph,
    nodes: Vec<MappingNode>,
    dead: HashSet<usize>,
    queue: BinaryHeap<Event>,
    timer_at: Vec<Option<Time>>,
    now: Time,
    seq: u64,
    rng: ChaCha8Rng,
    config: SimConfig,
    wire: WireSize,
}

impl<'m> Simulation<'m> {
    /// Builds the overlay, the nodes, and runs the warm-up pings.
    pub fn new(model: &'m dyn LatencyModel, config: SimConfig) -> Self {
        let graph = OverlayGraph::near_and_far(model, config.near, config.far, config.seed);
        let mut nodes: Vec<MappingNode> = (0..model.len())
            .map(|i| {
                let mut r = NodeRecord::bare(NodeId(i as u64));
                r.cpu_total_milli = 4000;
                r.cpu_free_milli = 2000;
                r.mem_total_mb = 8192;
                r.mem_free_mb = 4096;
                MappingNode::new(NodeId(i as u64), r, config.map.clone())
            })
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            for &j in graph.neighbours(i) {
                node.add_peer(NodeId(j as u64));
            }
        }
        let n = model.len();
        let wire = WireSize::new(
            &nodes
                .first()
                .map_or_else(|| NodeRecord::bare(NodeId(0)), MappingNode::record),
        );
        let mut sim = Simulation {
            model,
            graph,
            nodes,
            dead: HashSet::new(),
            queue: BinaryHeap::new(),
            timer_at: vec![None; n],
            now: Time(0),
            seq: 0,
            rng: ChaCha8Rng::seed_from_u64(config.seed ^ 0x51_u64),
            config,
            wire,
        };
        sim.warm_up();
        sim.publish_records();
        if sim.config.spread > 0 {
            sim.spread_links(sim.config.spread);
        }
        sim
    }

    /// Adds `k` links per node picked by Vivaldi distance across the space: for each, a
    /// distance drawn log-uniformly between the node's farthest near link and the farthest
    /// predicted RTT, and the node whose predicted RTT is closest to it. Log-uniform distances
    /// in a plane are Kleinberg's harmonic links (probability ~ 1/d^2): as many links to the
    /// next city as to the next continent, which is what a ball around any origin needs to be
    /// connected by short paths. Each new link is then pinged as in the warm-up.
    pub fn spread_links(&mut self, k: usize) {
        let n = self.nodes.len();
        let coords: Vec<_> = self.nodes.iter().map(|x| x.vivaldi().coord()).collect();
        let mut added = Vec::new();
        let mut pred: Vec<(f64, usize)> = Vec::with_capacity(n);
        for i in 0..n {
            pred.clear();
            pred.extend(
                (0..n)
                    .filter(|&j| j != i && self.model.rtt(i, j).is_some())
                    .map(|j| (coords[i].predicted_rtt(&coords[j]), j)),
            );
            if pred.is_empty() {
                continue;
            }
            pred.sort_by(|a, b| a.0.total_cmp(&b.0));
            let near = self
                .graph
                .neighbours(i)
                .iter()
                .map(|&j| coords[i].predicted_rtt(&coords[j]));
            let lo = near.fold(pred[0].0, f64::max).max(pred[0].0).max(0.1);
            let hi = pred[pred.len() - 1].0.max(lo * 1.01);
            for _ in 0..k {
                let u: f64 = self.rng.random_range(0.0..1.0);
                let d = lo * (hi / lo).powf(u);
                let at = pred.partition_point(|p| p.0 < d).min(pred.len() - 1);
                // The closest non-neighbour around the drawn distance.
                let pick = (0..pred.len())
                    .flat_map(|o| [at.checked_add(o), at.checked_sub(o)])
                    .flatten()
                    .filter(|&x| x < pred.len())
                    .map(|x| pred[x].1)
                    .find(|&j| self.graph.neighbours(i).binary_search(&j).is_err());
                if let Some(j) = pick {
                    if self.graph.link(i, j) {
                        self.nodes[i].add_peer(NodeId(j as u64));
                        self.nodes[j].add_peer(NodeId(i as u64));
                        added.push((i, j));
                    }
                }
            }
        }
        self.ping_new_links(&added);
    }

    /// Pings every new link 8 times each way, as the warm-up does for the joining overlay.
    fn ping_new_links(&mut self, added: &[(usize, usize)]) {
        for _ in 0..8 {
            for &(i, j) in added {
                for (a, b) in [(i, j), (j, i)] {
                    let Some(rtt) = self.model.rtt(a, b) else {
                        continue;
                    };
                    let sample = self.jittered(rtt);
                    let remote = (
                        self.nodes[b].vivaldi().coord(),
                        self.nodes[b].vivaldi().error(),
                    );
                    self.nodes[a].on_rtt_sample(NodeId(b as u64), sample, Some(remote));
                }
            }
        }
        self.publish_records();
    }

    /// Adds Yao-graph links by Vivaldi coordinates: the plane around each node is cut into `k`
    /// equal cones and the node links to the nearest node in the plane in each (if not linked
    /// already). A Yao graph with enough cones is a spanner: every pair has an overlay path at
    /// most a constant factor longer than their distance, which is what a map of nodes within
    /// B of an origin *directly* needs. Each new link is then pinged as in the warm-up.
    pub fn cone_links(&mut self, k: usize) {
        let n = self.nodes.len();
        let coords: Vec<_> = self.nodes.iter().map(|x| x.vivaldi().coord()).collect();
        let mut added = Vec::new();
        for i in 0..n {
            self.link_cones(k, i, 0..n, (&[], Stickiness::NONE), &coords, &mut added);
        }
        self.ping_new_links(&added);
    }

    /// Cone links as nodes find them without knowing every node (what
    /// [`brume_overlay::cones`] describes): in each of `rounds` rounds every node looks at its
    /// peers and the links they published (its peers' peers, with their coordinates) and links
    /// to the nearest it knows in each of `k` cones; the new links are pinged, so the next
    /// round sees further. A node keeps a cone's link within the margins of `sticky`
    /// ([`sticky_cone_choices`]); a cone link its node no longer chooses is dropped, unless the
    /// node at its other end chose it too or it was a joining link. Returns the links each
    /// round added and dropped.
    pub fn seen_cone_links(
        &mut self,
        k: usize,
        rounds: usize,
        sticky: Stickiness,
        pings: usize,
    ) -> Vec<(usize, usize)> {
        let n = self.nodes.len();
        let joining: Vec<Vec<usize>> = (0..n).map(|i| self.graph.neighbours(i).to_vec()).collect();
        let mut chosen: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        let mut per_round = Vec::new();
        for _ in 0..rounds {
            let coords = if pings == 0 {
                self.nodes.iter().map(|x| x.vivaldi().coord()).collect()
            } else {
                self.centroid_rounds(pings)
            };
            let mut added = Vec::new();
            let before = chosen.clone();
            for (i, chose) in chosen.iter_mut().enumerate() {
                let mut known: Vec<usize> = self
                    .graph
                    .neighbours(i)
                    .iter()
                    .flat_map(|&j| {
                        std::iter::once(j).chain(self.graph.neighbours(j).iter().copied())
                    })
                    .collect();
                known.sort_unstable();
                known.dedup();
                let held = std::mem::take(chose);
                *chose = self.link_cones(k, i, known, (&held, sticky), &coords, &mut added);
            }
            let mut dropped = 0;
            for (i, old) in before.iter().enumerate() {
                for &(_, j) in old {
                    let kept = chosen[i].iter().any(|c| c.1 == j)
                        || chosen[j].iter().any(|c| c.1 == i)
                        || joining[i].binary_search(&j).is_ok();
                    if !kept && self.graph.unlink(i, j) {
                        self.nodes[i].remove_peer(NodeId(j as u64));
                        self.nodes[j].remove_peer(NodeId(i as u64));
                        dropped += 1;
                    }
                }
            }
            per_round.push((added.len(), dropped));
            if pings == 0 {
                self.ping_new_links(&added);
            }
        }
        if pings > 0 {
            self.ping_rounds(pings);
            self.publish_records();
        }
        per_round
    }

    /// `rounds` ping rounds ([`Simulation::ping_rounds`]); returns each node's coordinate
    /// averaged over the rounds' ends (what a node would publish as its settled coordinate: a
    /// Vivaldi coordinate moves a little with every sample, around where it belongs).
    fn centroid_rounds(&mut self, rounds: usize) -> Vec<Coord> {
        let n = self.nodes.len();
        let mut sum = vec![(0.0, 0.0, 0.0); n];
        for _ in 0..rounds {
            self.ping_rounds(1);
            for (s, node) in sum.iter_mut().zip(&self.nodes) {
                let c = node.vivaldi().coord();
                *s = (s.0 + c.x, s.1 + c.y, s.2 + c.height);
            }
        }
        self.publish_records();
        let r = rounds.max(1) as f64;
        sum.into_iter()
            .map(|(x, y, h)| Coord {
                x: x / r,
                y: y / r,
                height: h / r,
            })
            .collect()
    }

    /// Links node `i` to its [`sticky_cone_choices`] among `known` (itself and nodes the model
    /// cannot reach from it left out) by `coords`, holding its current choices with a margin
    /// (`held`: its choices as `(cone, node)`, and the margins); pushes the links that are new
    /// onto `added` and returns the choices.
    fn link_cones(
        &mut self,
        k: usize,
        i: usize,
        known: impl IntoIterator<Item = usize>,
        held: (&[(usize, usize)], Stickiness),
        coords: &[Coord],
        added: &mut Vec<(usize, usize)>,
    ) -> Vec<(usize, usize)> {
        let known = known
            .into_iter()
            .filter(|&j| j != i && self.model.rtt(i, j).is_some())
            .map(|j| (NodeId(j as u64), coords[j]));
        let current: Vec<(usize, NodeId, Coord)> = held
            .0
            .iter()
            .map(|&(c, j)| (c, NodeId(j as u64), coords[j]))
            .collect();
        let choices: Vec<(usize, usize)> =
            sticky_cone_choices(&coords[i], known, &current, held.1, k)
                .into_iter()
                .map(|(c, j)| (c, j.0 as usize))
                .collect();
        for &(_, j) in &choices {
            if self.graph.link(i, j) {
                self.nodes[i].add_peer(NodeId(j as u64));
                self.nodes[j].add_peer(NodeId(i as u64));
                added.push((i, j));
            }
        }
        choices
    }

    /// Tells every node its neighbours' current state records, as the daemon does when a
    /// peer's signed record arrives (what [`brume_overlay::mapping::MapConfig::reach_rim`]
    /// lists as candidates).
    pub fn publish_records(&mut self) {
        let records: Vec<NodeRecord> = self.nodes.iter().map(|x| x.record()).collect();
        for i in 0..self.nodes.len() {
            for k in 0..self.graph.neighbours(i).len() {
                let j = self.graph.neighbours(i)[k];
                self.nodes[i].set_peer_record(NodeId(j as u64), records[j].clone());
            }
        }
    }

    /// Tells every node its neighbours' links with their coordinates, as a node's state record
    /// would (what [`brume_overlay::mapping::MapConfig::reach_tree`] forwards on).
    pub fn publish_links(&mut self) {
        let coords: Vec<_> = self.nodes.iter().map(|x| x.vivaldi().coord()).collect();
        for i in 0..self.nodes.len() {
            for k in 0..self.graph.neighbours(i).len() {
                let j = self.graph.neighbours(i)[k];
                let links = self
                    .graph
                    .neighbours(j)
                    .iter()
                    .map(|&w| (NodeId(w as u64), coords[w]))
                    .collect();
                self.nodes[i].set_peer_links(NodeId(j as u64), coords[j], links);
            }
        }
    }

    fn jittered(&mut self, rtt: f64) -> f64 {
        let u: f64 = self.rng.random_range(-1.0..=1.0);
        rtt * (1.0 + self.config.jitter * u)
    }

    fn warm_up(&mut self) {
        self.ping_rounds(self.config.warmup_rounds);
    }

    /// `rounds` rounds in which every node pings every peer once (a sample into the peer's RTT
    /// estimator and its Vivaldi coordinate) and `random_pings` random nodes.
    pub fn ping_rounds(&mut self, rounds: usize) {
        let n = self.nodes.len();
        for _ in 0..rounds {
            for i in 0..n {
                for k in 0..self.graph.neighbours(i).len() {
                    let j = self.graph.neighbours(i)[k];
                    let Some(rtt) = self.model.rtt(i, j) else {
                        continue;
                    };
                    let sample = self.jittered(rtt);
                    let remote = (
                        self.nodes[j].vivaldi().coord(),
                        self.nodes[j].vivaldi().error(),
                    );
                    self.nodes[i].on_rtt_sample(NodeId(j as u64), sample, Some(remote));
                }
                for _ in 0..self.config.random_pings {
                    let j = self.rng.random_range(0..n);
                    if j == i {
                        continue;
                    }
                    let Some(rtt) = self.model.rtt(i, j) else {
                        continue;
                    };
                    let sample = self.jittered(rtt);
                    let (c, e) = (
                        self.nodes[j].vivaldi().coord(),
                        self.nodes[j].vivaldi().error(),
                    );
                    self.nodes[i].on_remote_sample(&c, e, sample);
                }
            }
        }
    }

    /// Gives every node a new mapping configuration (e.g. seed 004's map beside issue 17's, on
    /// the same overlay and warm-up).
    pub fn set_map_config(&mut self, config: MapConfig) {
        for n in &mut self.nodes {
            n.set_config(config.clone());
        }
        self.config.map = config;
    }

    pub fn graph(&self) -> &OverlayGraph {
        &self.graph
    }

    pub fn node(&self, i: usize) -> &MappingNode {
        &self.nodes[i]
    }

    /// From now on the node drops every message (a crashed or silent peer).
    pub fn kill(&mut self, i: usize) {
        self.dead.insert(i);
    }

    /// The median relative error `|predicted - true| / true` of Vivaldi over `pairs` random pairs
    /// whose RTT is known.
    pub fn vivaldi_median_error(&mut self, pairs: usize) -> f64 {
        let n = self.nodes.len();
        let mut errs = Vec::with_capacity(pairs);
        let mut tries = 0;
        while errs.len() < pairs && tries < pairs * 10 && n > 1 {
            tries += 1;
            let (i, j) = (self.rng.random_range(0..n), self.rng.random_range(0..n));
            if i == j {
                continue;
            }
            let Some(rtt) = self.model.rtt(i, j).filter(|r| *r > 0.0) else {
                continue;
            };
            let pred = self.nodes[i]
                .vivaldi()
                .predict(&self.nodes[j].vivaldi().coord());
            errs.push((pred - rtt).abs() / rtt);
        }
        median(&mut errs)
    }

    fn push(&mut self, at: Time, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Event {
            at,
            seq: self.seq,
            kind,
        });
    }

    fn schedule_timer(&mut self, i: usize) {
        if let Some(t) = self.nodes[i].poll_timeout() {
            if self.timer_at[i].is_none_or(|s| t < s) {
                self.timer_at[i] = Some(t);
                self.push(t.max(self.now), EventKind::Timer { node: i });
            }
        }
    }

    /// Routes outputs of node `i`; returns the `MapDone` if any, and counts messages.
    fn route(
        &mut self,
        i: usize,
        outputs: Vec<Output>,
        counts: &mut Counts,
    ) -> Option<(NeighbourhoodMap, bool)> {
        let mut done = None;
        for o in outputs {
            match o {
                Output::Probe {
                    id,
                    targets,
                    timeout_ms,
                } => {
                    for t in targets {
                        let target = t.id.0 as usize;
                        counts.probes += 1;
                        counts.messages += 2;
                        if self.dead.contains(&target) {
                            continue;
                        }
                        let Some(rtt) = self.model.rtt(i, target) else {
                            continue;
                        };
                        // One ping: queueing only ever adds to the true RTT.
                        let u: f64 = self.rng.random_range(0.0..=1.0);
                        let rtt_ms = rtt * (1.0 + self.config.jitter * u);
                        if rtt_ms <= timeout_ms {
                            counts.probe_rtt_ms.insert(target, rtt_ms);
                        }
                        let at = self.now.plus_ms(rtt_ms);
                        self.push(
                            at,
                            EventKind::ProbeReply {
                                origin: i,
                                id,
                                target,
                                rtt_ms,
                            },
                        );
                    }
                }
                Output::Send { to, msg } => {
                    counts.messages += 1;
                    counts.bytes += self.wire.of(&msg);
                    if matches!(msg, Message::Request(_)) {
                        counts.requests += 1;
                    }
                    let to = to.0 as usize;
                    if let Some(rtt) = self.model.rtt(i, to) {
                        let at = self.now.plus_ms(rtt / 2.0);
                        self.push(at, EventKind::Deliver { from: i, to, msg });
                    }
                }
                Output::MapDone { map, complete, .. } => done = Some((map, complete)),
                Output::Refused { .. } => {}
            }
        }
        self.schedule_timer(i);
        done
    }

    /// Runs one fresh map from `origin` with `budget_ms` to the end (all messages drained) and
    /// scores it against the ground truth.
    pub fn run_map(&mut self, origin: usize, budget_ms: f64) -> MapStats {
        let start = self.now;
        let mut counts = Counts::default();
        let (_, outs) = self.nodes[origin].start_fresh_map(self.now, budget_ms);
        let mut result = self.route(origin, outs, &mut counts);
        let mut done_at = if result.is_some() { Some(start) } else { None };
        while let Some(ev) = self.queue.pop() {
            self.now = ev.at;
            let (i, outs) = match ev.kind {
                EventKind::Deliver { from, to, msg } => {
                    if self.dead.contains(&to) {
                        continue;
                    }
                    let outs = self.nodes[to].handle_message(self.now, NodeId(from as u64), msg);
                    (to, outs)
                }
                EventKind::Timer { node } => {
                    if self.timer_at[node] != Some(ev.at) {
                        continue;
                    }
                    self.timer_at[node] = None;
                    if self.dead.contains(&node) {
                        continue;
                    }
                    (node, self.nodes[node].handle_timeout(self.now))
                }
                EventKind::ProbeReply {
                    origin: o,
                    id,
                    target,
                    rtt_ms,
                } => {
                    let outs = self.nodes[o].handle_probe_result(
                        self.now,
                        id,
                        NodeId(target as u64),
                        Some(rtt_ms),
                    );
                    (o, outs)
                }
            };
            if let Some(r) = self.route(i, outs, &mut counts) {
                if i == origin && result.is_none() {
                    result = Some(r);
                    done_at = Some(self.now);
                }
            }
        }
        let (map, complete) = result.unwrap_or_default();
        let completion_ms = done_at.map_or(f64::INFINITY, |t| t.ms_since(start));
        self.score(origin, budget_ms, map, complete, counts, completion_ms)
    }

    fn score(
        &self,
        origin: usize,
        budget_ms: f64,
        map: NeighbourhoodMap,
        complete: bool,
        counts: Counts,
        completion_ms: f64,
    ) -> MapStats {
        let dist = self.graph.shortest_rtt(self.model, origin);
        let eps = 1e-9;
        let truth: HashSet<usize> = (0..dist.len())
            .filter(|&v| dist[v] <= budget_ms + eps && !self.dead.contains(&v))
            .collect();
        let direct: HashSet<usize> = (0..dist.len())
            .filter(|&v| {
                self.model.rtt(origin, v).is_some_and(|r| r <= budget_ms) && !self.dead.contains(&v)
            })
            .collect();
        let got: HashSet<usize> = map.nodes.iter().map(|r| r.id.0 as usize).collect();
        let hit = got.intersection(&truth).count();
        let hit_direct = got.intersection(&direct).count();
        let mut direct_region_links = 0;
        for &u in &direct {
            for &v in self.graph.neighbours(u) {
                if u < v && direct.contains(&v) {
                    direct_region_links += 1;
                }
            }
        }
        let proven = |how: RttHow| map.proofs.iter().filter(|p| p.how == how).count();
        let path_proven = proven(RttHow::Path);
        let direct_confirmed = proven(RttHow::Direct);
        let max_confirm_ms = map
            .proofs
            .iter()
            .filter(|p| p.how == RttHow::Direct)
            .filter_map(|p| counts.probe_rtt_ms.get(&(p.id.0 as usize)))
            .copied()
            .fold(0.0, f64::max);
        let mut region_links = 0;
        let mut max_region_link_ms: f64 = 0.0;
        let mut flood_requests = 0;
        for &u in &truth {
            flood_requests += self.graph.neighbours(u).len();
            for &v in self.graph.neighbours(u) {
                if u < v && truth.contains(&v) {
                    region_links += 1;
                    if let Some(r) = self.model.rtt(u, v) {
                        max_region_link_ms = max_region_link_ms.max(r);
                    }
                }
            }
        }
        flood_requests -= truth.len().saturating_sub(1);
        let (floor_answers, floor_reports) =
            self.completion_floor(origin, budget_ms, &dist, &direct);
        let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        MapStats {
            origin,
            budget_ms,
            complete,
            truth: truth.len(),
            recall: ratio(hit, truth.len()),
            precision: ratio(hit, got.len()),
            recall_direct: ratio(hit_direct, direct.len()),
            precision_direct: ratio(hit_direct, got.len()),
            direct: direct.len(),
            direct_region_links,
            path_proven,
            direct_confirmed,
            region_links,
            messages: counts.messages,
            requests: counts.requests,
            probes: counts.probes,
            bytes: counts.bytes,
            max_confirm_ms,
            flood_requests,
            completion_ms,
            max_region_link_ms,
            floor_answers,
            floor_reports,
            map,
        }
    }

    /// See [`MapStats::floor_answers`]: the shares of `direct` confirmable by `budget + D`.
    fn completion_floor(
        &self,
        origin: usize,
        budget_ms: f64,
        dist: &[f64],
        direct: &HashSet<usize>,
    ) -> (f64, f64) {
        let d = |v: usize| {
            if v == origin {
                Some(0.0)
            } else {
                self.model.rtt(origin, v)
            }
        };
        let by = budget_ms + direct.iter().filter_map(|&v| d(v)).fold(0.0, f64::max);
        let (mut answers, mut reports) = (0, 0);
        for &x in direct {
            let Some(dx) = d(x) else { continue };
            let (mut learn_a, mut learn_r) = (f64::INFINITY, f64::INFINITY);
            for y in std::iter::once(x).chain(self.graph.neighbours(x).iter().copied()) {
                learn_a = learn_a.min(dist[y]);
                if let Some(dy) = d(y) {
                    learn_r = learn_r.min(dist[y] / 2.0 + dy / 2.0);
                }
            }
            answers += usize::from(learn_a + dx <= by);
            reports += usize::from(learn_r + dx <= by);
        }
        let share = |k: usize| {
            if direct.is_empty() {
                1.0
            } else {
                k as f64 / direct.len() as f64
            }
        };
        (share(answers), share(reports))
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Averages over several maps of one budget, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSummary {
    pub budget_ms: f64,
    pub maps: usize,
    pub mean_truth: f64,
    pub mean_recall: f64,
    pub min_recall: f64,
    pub mean_precision: f64,
    pub mean_recall_direct: f64,
    /// Precision against the direct-RTT truth, mean and worst single map.
    pub mean_precision_direct: f64,
    pub min_precision_direct: f64,
    /// Sum of messages over sum of overlay links inside the direct-RTT regions.
    pub messages_per_direct_region_link: f64,
    /// Largest `completion - budget - largest confirmation RTT` over the maps.
    pub worst_confirm_overrun_ms: f64,
    /// Sum of messages over sum of region links.
    pub messages_per_region_link: f64,
    /// Sum of requests over what flooding would send.
    pub requests_vs_flood: f64,
    pub max_completion_ms: f64,
    /// Largest `completion - budget - max_region_link` over the maps (<= 0 means within target).
    pub worst_overrun_ms: f64,
}

/// Runs maps from `origins` with one budget and summarises them.
pub fn summarise(sim: &mut Simulation<'_>, origins: &[usize], budget_ms: f64) -> BudgetSummary {
    let stats: Vec<MapStats> = origins.iter().map(|&o| sim.run_map(o, budget_ms)).collect();
    let k = stats.len().max(1) as f64;
    let msgs: usize = stats.iter().map(|s| s.messages).sum();
    let links: usize = stats.iter().map(|s| s.region_links).sum();
    let reqs: usize = stats.iter().map(|s| s.requests).sum();
    let flood: usize = stats.iter().map(|s| s.flood_requests).sum();
    BudgetSummary {
        budget_ms,
        maps: stats.len(),
        mean_truth: stats.iter().map(|s| s.truth as f64).sum::<f64>() / k,
        mean_recall: stats.iter().map(|s| s.recall).sum::<f64>() / k,
        min_recall: stats.iter().map(|s| s.recall).fold(1.0, f64::min),
        mean_precision: stats.iter().map(|s| s.precision).sum::<f64>() / k,
        mean_recall_direct: stats.iter().map(|s| s.recall_direct).sum::<f64>() / k,
        mean_precision_direct: stats.iter().map(|s| s.precision_direct).sum::<f64>() / k,
        min_precision_direct: stats.iter().map(|s| s.precision_direct).fold(1.0, f64::min),
        messages_per_direct_region_link: msgs as f64
            / stats
                .iter()
                .map(|s| s.direct_region_links)
                .sum::<usize>()
                .max(1) as f64,
        worst_confirm_overrun_ms: stats
            .iter()
            .map(|s| s.completion_ms - s.budget_ms - s.max_confirm_ms)
            .fold(f64::NEG_INFINITY, f64::max),
        messages_per_region_link: msgs as f64 / links.max(1) as f64,
        requests_vs_flood: reqs as f64 / flood.max(1) as f64,
        max_completion_ms: stats.iter().map(|s| s.completion_ms).fold(0.0, f64::max),
        worst_overrun_ms: stats
            .iter()
            .map(|s| s.completion_ms - s.budget_ms - s.max_region_link_ms)
            .fold(f64::NEG_INFINITY, f64::max),
    }
}
