//! The daemon's cone links (issue 17): every [`Timings::cone_interval`] a node with
//! [`OverlayConfig::cones`] looks at what it knows with coordinates (its peers' records and the
//! links they publish, so its peers' peers), chooses the nearest in each cone
//! ([`sticky_cone_choices`]), dials the ones it is not connected to and tells membership to keep
//! them beyond its degree bound. Its state marks those links, so the node at the other end keeps
//! them too. Rounds are rare on purpose: two give maps their recall, and since Vivaldi
//! coordinates keep moving, every round replaces some choices (BENCHMARKS.md "Cone links a node
//! finds itself"). The first two come early ([`cone_round_gap`]): a round at start would find
//! nothing to choose from, and the next would wait a whole `cone_interval`.
//!
//! [`Timings::cone_interval`]: crate::config::Timings::cone_interval
//! [`OverlayConfig::cones`]: crate::config::OverlayConfig::cones

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use super::Driver;
use crate::cones::{sticky_cone_choices, Stickiness};
use crate::ids::{node_id_of, NodeId};
use crate::vivaldi::Coord;

/// The margins a held cone link keeps its place by (the simulator's defaults).
const STICKY: Stickiness = Stickiness {
    keep: 0.1,
    slack: 0.25,
    floor_ms: 0.0,
};

/// Rounds done soon after start, before the node settles to one every `cone_interval`.
pub const EARLY_CONE_ROUNDS: u32 = 2;

/// How long after the last cone round (or the start, `rounds_done` 0) the next one comes: each
/// of the [`EARLY_CONE_ROUNDS`] two state intervals later (by then the peers' records, with
/// their coordinates and published links, have arrived, and the node's own coordinate has moved
/// off the origin), every later one `cone_interval` later; never later than `cone_interval`.
pub fn cone_round_gap(
    rounds_done: u32,
    state_interval: Duration,
    cone_interval: Duration,
) -> Duration {
    if rounds_done < EARLY_CONE_ROUNDS {
        (state_interval * 2).min(cone_interval)
    } else {
        cone_interval
    }
}

/// A node's cone links: how many cones, what it chose, and which peers chose it.
#[derive(Debug, Default)]
pub(super) struct ConeLinks {
    /// Cones around the node's coordinate (0: no cone links).
    pub k: usize,
    /// This node's choices, as `(cone, node)`.
    pub chosen: Vec<(usize, NodeId)>,
    /// Connected peers whose state marks their link to this node as one of their cone links.
    pub chosen_by: HashSet<NodeId>,
}

impl ConeLinks {
    pub fn new(k: usize) -> Self {
        ConeLinks {
            k,
            ..ConeLinks::default()
        }
    }

    /// Whether this node chose `node` as a cone link.
    pub fn chose(&self, node: NodeId) -> bool {
        self.chosen.iter().any(|c| c.1 == node)
    }
}

impl Driver {
    /// One round of cone links (see the module documentation).
    pub(super) fn cone_round(&mut self) {
        let k = self.cones.k;
        if k == 0 {
            return;
        }
        let known = self.known_with_coords();
        let held: Vec<(usize, NodeId, Coord)> = self
            .cones
            .chosen
            .iter()
            .filter_map(|&(cone, n)| Some((cone, n, known.get(&n)?.1)))
            .collect();
        let own = self.mapping.vivaldi().coord();
        let choices =
            sticky_cone_choices(&own, known.iter().map(|(n, k)| (*n, k.1)), &held, STICKY, k);
        let mut dial: Vec<(NodeId, Multiaddr)> = Vec::new();
        for (_, n) in &choices {
            let Some((peer, _, addr)) = known.get(n) else {
                continue;
            };
            // Remembered by peer id, so the status can name a choice not connected yet.
            self.learn(*peer);
            if let (false, Some(addr)) = (self.connected.contains(n), addr) {
                dial.push((*n, addr.clone()));
            }
        }
        tracing::debug!(chosen = ?choices, dialling = dial.len(), "cone round");
        self.cones.chosen = choices;
        self.keep_cones(dial);
    }

    /// A peer's state said whether it chose its link to this node as a cone link.
    pub(super) fn note_cone_choice(&mut self, node: NodeId, chose: bool) {
        let changed = if chose {
            self.cones.chosen_by.insert(node)
        } else {
            self.cones.chosen_by.remove(&node)
        };
        if changed {
            self.keep_cones(Vec::new());
        }
    }

    /// Tells membership which links are cone links (kept beyond the degree bound) and which
    /// chosen ones to dial.
    fn keep_cones(&mut self, dial: Vec<(NodeId, Multiaddr)>) {
        let protected: BTreeSet<NodeId> = self
            .cones
            .chosen
            .iter()
            .map(|c| c.1)
            .chain(self.cones.chosen_by.iter().copied())
            .collect();
        let now = self.now();
        let actions = self.membership.set_cone_links(now, dial, protected);
        self.apply(actions);
    }

    /// Every node this one knows a coordinate of, with its peer id and an address to dial it
    /// at: its connected peers (from their records) and the links they published.
    fn known_with_coords(&self) -> HashMap<NodeId, (PeerId, Coord, Option<Multiaddr>)> {
        let mut known = HashMap::new();
        for n in &self.connected {
            let Some(e) = self.peers.get(n) else {
                continue;
            };
            if let Some(l) = e.link() {
                known.insert(*n, (l.peer, l.coord, l.addr));
            }
            for l in &e.links {
                let id = node_id_of(&l.peer);
                if id != self.node_id {
                    known.entry(id).or_insert((l.peer, l.coord, l.addr.clone()));
                }
            }
        }
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_two_rounds_come_two_state_intervals_apart_then_rarely() {
        let (state, cone) = (Duration::from_secs(10), Duration::from_secs(300));
        let gaps: Vec<Duration> = (0..4).map(|r| cone_round_gap(r, state, cone)).collect();
        let s = Duration::from_secs;
        assert_eq!(gaps, vec![s(20), s(20), s(300), s(300)]);
        // Never later than the interval asked for.
        assert_eq!(cone_round_gap(0, state, s(5)), s(5));
    }
}
