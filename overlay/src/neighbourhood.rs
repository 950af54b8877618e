//! The result of a mapping: which nodes are within the budget, their state, and measured links.
//!
//! Every node that takes part answers with its own [`NodeRecord`] and the links it measured; parents
//! merge their children's answers into theirs (recursive aggregation), so a map is a union that
//! must be cheap to merge and canonical (sorted, one entry per node and per unordered link).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::vivaldi::Coord;

/// The small state record a node advertises: what placement needs to judge it as a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub coord: Coord,
    /// The node's Vivaldi error estimate (relative, 0..=1).
    pub coord_error: f64,
    /// CPU in millicores.
    pub cpu_free_milli: u32,
    pub cpu_total_milli: u32,
    pub mem_free_mb: u64,
    pub mem_total_mb: u64,
    /// Load average divided by the number of cores (0 = idle).
    pub load: f32,
    /// Fraction of time the node has been reachable (0..=1).
    pub reliability: f32,
    /// The node's libp2p peer id (empty in simulations): what a deployer opens streams to.
    #[serde(default)]
    pub peer: String,
    /// Its dialable addresses, each ending in `/p2p/<peer>`, for a deployer not connected to it.
    #[serde(default)]
    pub addrs: Vec<String>,
}

impl NodeRecord {
    /// A record with only an id (resources unknown, zero).
    pub fn bare(id: NodeId) -> Self {
        NodeRecord {
            id,
            coord: Coord::origin(),
            coord_error: 1.0,
            cpu_free_milli: 0,
            cpu_total_milli: 0,
            mem_free_mb: 0,
            mem_total_mb: 0,
            load: 0.0,
            reliability: 1.0,
            peer: String::new(),
            addrs: Vec::new(),
        }
    }
}

/// A measured link between two nodes; `a < b` always.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub a: NodeId,
    pub b: NodeId,
    pub rtt_ms: f64,
}

impl Link {
    /// A link with its ends ordered.
    pub fn new(x: NodeId, y: NodeId, rtt_ms: f64) -> Self {
        let (a, b) = if x < y { (x, y) } else { (y, x) };
        Link { a, b, rtt_ms }
    }
}

/// The nodes reachable within a latency budget from an origin, and the links measured among them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NeighbourhoodMap {
    /// Sorted by id, one record per node.
    pub nodes: Vec<NodeRecord>,
    /// Sorted by `(a, b)`, one per unordered pair (the smallest RTT seen: queueing only adds).
    pub links: Vec<Link>,
}

impl NeighbourhoodMap {
    /// A map holding one node.
    pub fn single(record: NodeRecord) -> Self {
        NeighbourhoodMap {
            nodes: vec![record],
            links: Vec::new(),
        }
    }

    /// Adds everything from `other` and restores the canonical form.
    pub fn merge(&mut self, other: NeighbourhoodMap) {
        self.nodes.extend(other.nodes);
        self.links.extend(other.links);
        self.normalize();
    }

    /// Sorts and deduplicates nodes (first record wins) and links (smallest RTT wins); drops
    /// links whose RTT is not a finite non-negative number and self-links.
    pub fn normalize(&mut self) {
        self.nodes.sort_by_key(|n| n.id);
        self.nodes.dedup_by_key(|n| n.id);
        self.links
            .retain(|l| l.a != l.b && l.rtt_ms.is_finite() && l.rtt_ms >= 0.0);
        for l in &mut self.links {
            *l = Link::new(l.a, l.b, l.rtt_ms);
        }
        self.links.sort_by(|x, y| {
            (x.a, x.b)
                .cmp(&(y.a, y.b))
                .then(x.rtt_ms.total_cmp(&y.rtt_ms))
        });
        self.links.dedup_by_key(|l| (l.a, l.b));
    }

    /// Keeps only links whose two ends are nodes of the map.
    pub fn drop_dangling_links(&mut self) {
        let ids: BTreeSet<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        self.links
            .retain(|l| ids.contains(&l.a) && ids.contains(&l.b));
    }

    /// Whether the map holds the node.
    pub fn contains(&self, id: NodeId) -> bool {
        self.nodes.binary_search_by_key(&id, |n| n.id).is_ok()
    }

    /// The ids of the nodes, sorted.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_a_canonical_union() {
        let mut a = NeighbourhoodMap::single(NodeRecord::bare(NodeId(2)));
        a.links.push(Link::new(NodeId(2), NodeId(1), 5.0));
        let mut b = NeighbourhoodMap::single(NodeRecord::bare(NodeId(1)));
        b.links.push(Link::new(NodeId(1), NodeId(2), 4.0));
        b.links.push(Link::new(NodeId(1), NodeId(9), 4.0));
        b.nodes.push(NodeRecord::bare(NodeId(2)));
        a.merge(b);
        assert_eq!(a.ids(), vec![NodeId(1), NodeId(2)]);
        assert_eq!(a.links.len(), 2);
        assert_eq!(a.links[0], Link::new(NodeId(1), NodeId(2), 4.0));
        a.drop_dangling_links();
        assert_eq!(a.links.len(), 1);
        assert!(a.contains(NodeId(2)) && !a.contains(NodeId(9)));
    }
}
