//! The result of a mapping: which nodes are within the budget, their state, and measured links.
//!
//! Every node that takes part answers with its own [`NodeRecord`] and the links it measured; parents
//! merge their children's answers into theirs (recursive aggregation), so a map is a union that
//! must be cheap to merge and canonical (sorted, one entry per node and per unordered link).

use std::collections::BTreeSet;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::vivaldi::Coord;

/// A record's signature and the key it verifies with (protobuf-encoded, as libp2p encodes
/// keys); made and checked in [`crate::signed_record`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSignature {
    pub key: Vec<u8>,
    pub sig: Vec<u8>,
}

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
    /// The node's libp2p peer id (none in simulations): what a deployer opens streams to.
    #[serde(default)]
    pub peer: Option<PeerId>,
    /// Its dialable addresses, each ending in `/p2p/<peer>`, for a deployer not connected to it.
    #[serde(default)]
    pub addrs: Vec<Multiaddr>,
    /// The operator's name for the node (e.g. `gw-kitchen`), for people reading maps and peer
    /// lists; see [`check_name`]. Records from nodes that predate it decode as `None`.
    #[serde(default)]
    pub name: Option<String>,
    /// The node's signature of everything above ([`crate::signed_record`]): records from the
    /// network without a good one are dropped. `None` in simulations and before the node
    /// sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<RecordSignature>,
}

/// The longest node name: short enough for a column of `brume peers`.
pub const MAX_NAME_LEN: usize = 32;

/// Why a node name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a node name cannot be empty")]
    Empty,
    #[error("node name `{0}` is longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    #[error("node name `{0}` may hold only lowercase letters a-z, digits and `-`")]
    BadChar(String),
}

/// Checks a node name: 1 to [`MAX_NAME_LEN`] characters of `[a-z0-9-]`, so that it prints the
/// same in every terminal and log and needs no quoting in scripts. Names in records from the
/// network are checked too: a peer cannot put escape sequences on an operator's screen.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(
            name.chars().take(MAX_NAME_LEN).collect(),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NameError::BadChar(name.escape_default().to_string()));
    }
    Ok(())
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
            peer: None,
            addrs: Vec::new(),
            name: None,
            signature: None,
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

/// How the RTT between a map's origin and one of its nodes was established: what an operator
/// (and placement) can trust about "this node is within the budget".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RttHow {
    /// Predicted by Vivaldi and not (yet) confirmed: only inside maps in flight. A finished map
    /// never holds a candidate: the origin probes it and keeps it only if the probe fits.
    Candidate,
    /// The sum of the smoothed RTTs along an overlay path from the origin fits the budget.
    Path,
    /// Measured directly by the origin: its own link to a peer, or one probe.
    Direct,
    /// The origin itself.
    Origin,
}

impl RttHow {
    /// The word `brume map` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            RttHow::Candidate => "candidate",
            RttHow::Path => "path",
            RttHow::Direct => "direct",
            RttHow::Origin => "origin",
        }
    }
}

/// The RTT from the origin to one node of the map and how it was established.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RttProof {
    pub id: NodeId,
    /// `Path`: the path's RTT sum; `Direct`: the measured RTT; `Candidate`: the prediction.
    pub rtt_ms: f64,
    pub how: RttHow,
}

/// The nodes reachable within a latency budget from an origin, and the links measured among them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NeighbourhoodMap {
    /// Sorted by id, one record per node.
    pub nodes: Vec<NodeRecord>,
    /// Sorted by `(a, b)`, one per unordered pair (the smallest RTT seen: queueing only adds).
    pub links: Vec<Link>,
    /// Sorted by id, at most one per node: how each node's RTT from the origin was established
    /// (the strongest evidence wins: origin, direct, path, candidate). Maps of nodes before
    /// issue 17 carry none.
    #[serde(default)]
    pub proofs: Vec<RttProof>,
}

impl NeighbourhoodMap {
    /// A map holding one node.
    pub fn single(record: NodeRecord) -> Self {
        NeighbourhoodMap {
            nodes: vec![record],
            links: Vec::new(),
            proofs: Vec::new(),
        }
    }

    /// Adds everything from `other` and restores the canonical form.
    pub fn merge(&mut self, other: NeighbourhoodMap) {
        self.nodes.extend(other.nodes);
        self.links.extend(other.links);
        self.proofs.extend(other.proofs);
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
        self.proofs
            .retain(|p| p.rtt_ms.is_finite() && p.rtt_ms >= 0.0);
        // Strongest evidence first, then the smallest RTT; dedup keeps the first.
        self.proofs.sort_by(|x, y| {
            x.id.cmp(&y.id)
                .then(y.how.cmp(&x.how))
                .then(x.rtt_ms.total_cmp(&y.rtt_ms))
        });
        self.proofs.dedup_by_key(|p| p.id);
    }

    /// How the RTT from the origin to `id` was established, if the map says.
    pub fn proof(&self, id: NodeId) -> Option<&RttProof> {
        self.proofs
            .binary_search_by_key(&id, |p| p.id)
            .ok()
            .map(|i| &self.proofs[i])
    }

    /// Sets (replaces) the proof of `id`, keeping the list sorted.
    pub fn set_proof(&mut self, proof: RttProof) {
        match self.proofs.binary_search_by_key(&proof.id, |p| p.id) {
            Ok(i) => self.proofs[i] = proof,
            Err(i) => self.proofs.insert(i, proof),
        }
    }

    /// Removes a node, its proof and its links.
    pub fn remove_node(&mut self, id: NodeId) {
        self.nodes.retain(|n| n.id != id);
        self.proofs.retain(|p| p.id != id);
        self.links.retain(|l| l.a != id && l.b != id);
    }

    /// Keeps only links (and proofs) whose nodes are nodes of the map.
    pub fn drop_dangling_links(&mut self) {
        let ids: BTreeSet<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        self.links
            .retain(|l| ids.contains(&l.a) && ids.contains(&l.b));
        self.proofs.retain(|p| ids.contains(&p.id));
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
    fn names_are_short_lowercase_words() {
        for good in ["gw-kitchen", "a", "0", "node-7", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert!(matches!(
            check_name(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong(_))
        ));
        for bad in [
            "GW",
            "gw_kitchen",
            "gw.kitchen",
            "gw kitchen",
            "café",
            "a\u{1b}[2J",
        ] {
            assert!(
                matches!(check_name(bad), Err(NameError::BadChar(_))),
                "{bad}"
            );
        }
        let msg = check_name("Gw").unwrap_err().to_string();
        assert!(msg.contains("`Gw`") && msg.contains("a-z"), "{msg}");
    }

    #[test]
    fn a_record_without_a_name_still_decodes() {
        /// The record as nodes before names sent it.
        #[derive(Serialize)]
        struct Old {
            id: NodeId,
            coord: Coord,
            coord_error: f64,
            cpu_free_milli: u32,
            cpu_total_milli: u32,
            mem_free_mb: u64,
            mem_total_mb: u64,
            load: f32,
            reliability: f32,
        }
        let b = NodeRecord::bare(NodeId(3));
        let old = Old {
            id: b.id,
            coord: b.coord,
            coord_error: b.coord_error,
            cpu_free_milli: 1,
            cpu_total_milli: 2,
            mem_free_mb: 3,
            mem_total_mb: 4,
            load: 0.5,
            reliability: 1.0,
        };
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&old, &mut bytes).unwrap();
        let got: NodeRecord = ciborium::de::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(got.name, None);
        assert_eq!(got.mem_total_mb, 4);

        let mut named = NodeRecord::bare(NodeId(4));
        named.name = Some("gw-kitchen".into());
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&named, &mut bytes).unwrap();
        let back: NodeRecord = ciborium::de::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, named);
    }

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
