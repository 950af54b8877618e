//! How a map is tuned: one [`MapConfig`], the same on every node of an overlay (the daemon's
//! comes from [`crate::config`], the simulator's from `brume bench overlay`'s flags).

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
    /// Map by direct RTT (issue 17): forward beyond the path budget to peers whose predicted
    /// direct RTT from the origin may fit, and probe what comes back. False: seed 004's map.
    pub reach: bool,
    /// A peer is forwarded to beyond the path budget when `v * (1 - reach_margin * e) <= B *
    /// (1 + reach_slack)`, `v` its predicted RTT from the origin and `e` both coordinates' errors.
    pub reach_margin: f64,
    pub reach_slack: f64,
    /// The origin waits `B * (1 + reach_wait_factor) + grace` for answers when it reaches beyond
    /// paths (requests beyond the path budget travel longer paths than `B`); with `reports`,
    /// that is when the whole map ends, probes included.
    pub reach_wait_factor: f64,
    /// Also probe path-proven nodes the origin has not measured itself: an overlay path within
    /// `B` does not prove a direct RTT within `B` where routing violates the triangle inequality.
    pub confirm_paths: bool,
    /// Beyond the path budget, forward only outward: to peers predicted farther from the origin
    /// than this node. The request then spreads like a wave from the origin instead of echoing
    /// inside the ball, at the price of nodes reachable only by stepping back in.
    pub reach_outward: bool,
    /// Beyond the path budget, forward along a tree instead of flooding the ball: a peer whose
    /// own links are known ([`MappingNode::set_peer_links`]) is sent the request only by the
    /// neighbours its links make its parents toward the origin ([`tree_parents`]).
    pub reach_tree: bool,
    /// How many parents each node has in that tree (more: more messages, fewer nodes lost
    /// behind a parent that was not reached).
    pub reach_tree_parents: usize,
    /// Whether requests within the path budget follow the tree as well (false: they flood as
    /// in seed 004's map, which finds nodes whose coordinates are wrong, at a price in messages).
    pub reach_tree_paths: bool,
    /// A reached node lists in its answer the state records of the peers it sends no request
    /// to (not its child in the tree, or beyond the forwarding bound) whose coordinate, less
    /// `reach_margin` times the summed errors, may fit `B * (1 + rim_slack)`: candidates the
    /// origin probes, at two messages each instead of a request, an ack and an answer.
    pub reach_rim: bool,
    pub rim_slack: f64,
    /// With `reach_tree`: a node lists its peers that are other nodes' children in the tree
    /// too, not only its own children it sends no request to (those beyond the forwarding
    /// bound). Each listing climbs the tree in every answer above it: in the simulator on cone
    /// links, listing others cost 1.7-3.3 times the bytes for -0.2 to +0.2 points of recall
    /// after 128 Vivaldi rounds (up to +1.7 after 32), so by default a candidate is listed
    /// only by its parents.
    pub rim_others: bool,
    /// Forward requests beyond the path budget (false with `reach_rim`: the map is the path
    /// region and the candidates its nodes list).
    pub reach_beyond: bool,
    /// The origin probes a candidate only while its predicted RTT, less `reach_margin` times
    /// the summed errors, fits `B * (1 + probe_slack)` (infinite: every candidate).
    pub probe_slack: f64,
    /// How long the origin waits for a probe's result, in budgets (a result within that time
    /// still counts only if its RTT fits the budget). 1 in the simulator, where a probe is one
    /// ping; a daemon must first dial a node it is not connected to, and reads the RTT of the
    /// TCP handshake only once the connection is up (the Noise handshake and stream negotiation
    /// take three RTTs or more), so a probe of a node well within the budget would time out if
    /// it waited one budget ([`crate::config`]).
    pub probe_wait_factor: f64,
    /// ... at most this much (ms) beyond one budget (a dial takes a few RTTs, not a few
    /// budgets of a map with a budget of seconds) ...
    pub probe_wait_extra_max_ms: f64,
    /// ... and at least this long (ms).
    pub probe_wait_min_ms: f64,
    /// Each reached node reports its own part of the map straight to the origin (one message,
    /// [`Message::Report`]) instead of answering its parent, and no request is acknowledged:
    /// a record reaches the origin in one hop instead of climbing every hop back, and the
    /// origin probes candidates as their reports arrive instead of after the last answer
    /// ([`MappingNode`]'s `reports` module). Off by default: a daemon must be able to send
    /// to an origin it is not connected to.
    pub reports: bool,
    /// With `reports`: the origin ends a map at the budget plus the largest RTT a probe of it
    /// confirmed so far, instead of waiting for every named node's report and every probe's
    /// timeout up to its deadline (budget + grace + `reach_wait_factor` x budget), and probes
    /// the farthest peer its own links prove at the start so that a far confirmation comes
    /// early. Meets the completion bound "budget plus the largest confirmation RTT" on every
    /// map, at a cost in recall measured in BENCHMARKS.md (issue 17); off by default.
    pub reports_end_at_confirmed: bool,
}

impl MapConfig {
    /// How long the origin waits for the result of a probe of a map with this budget.
    pub fn probe_wait_ms(&self, budget_ms: f64) -> f64 {
        (budget_ms * self.probe_wait_factor)
            .min(budget_ms + self.probe_wait_extra_max_ms)
            .max(self.probe_wait_min_ms)
    }
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
            reach: true,
            reach_margin: 0.5,
            reach_slack: 0.6,
            reach_wait_factor: 1.0,
            confirm_paths: true,
            reach_outward: false,
            reach_tree: false,
            reach_tree_parents: 1,
            reach_tree_paths: false,
            reach_rim: true,
            rim_slack: 0.0,
            rim_others: false,
            reach_beyond: true,
            probe_slack: 1.0,
            probe_wait_factor: 1.0,
            probe_wait_extra_max_ms: f64::INFINITY,
            probe_wait_min_ms: 0.0,
            reports: false,
            reports_end_at_confirmed: false,
        }
    }
}
