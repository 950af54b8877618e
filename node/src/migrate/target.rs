//! Where an instance goes when nobody names a target: the nearest node of the source's map that
//! has room for it.
//!
//! Nearest, because the instance was placed near its callers and callees and the source is where
//! it was placed: staying close keeps the call latencies the placement chose. Room means the
//! free CPU and memory the node advertises in its state record. Distance is the measured RTT of
//! the map's link from the source, else the one the two Vivaldi coordinates predict.

use brume_overlay::ids::NodeId;
use brume_overlay::neighbourhood::{NeighbourhoodMap, NodeRecord};
use brume_overlay::PeerId;

/// The chosen node and the RTT it was chosen by (milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub peer: PeerId,
    pub record: NodeRecord,
    pub rtt_ms: f64,
}

/// The nearest node other than `me` with `cpu_millis` and `memory_mb` free and a peer id to
/// reach it by; ties go to the node with more free CPU.
pub fn pick(map: &NeighbourhoodMap, me: NodeId, cpu_millis: u64, memory_mb: u64) -> Option<Choice> {
    let mine = map.nodes.iter().find(|n| n.id == me);
    map.nodes
        .iter()
        .filter(|n| n.id != me)
        .filter(|n| u64::from(n.cpu_free_milli) >= cpu_millis && n.mem_free_mb >= memory_mb)
        .filter_map(|n| Some((n.peer?, n)))
        .map(|(peer, n)| {
            let measured = map
                .links
                .iter()
                .find(|l| (l.a == me && l.b == n.id) || (l.b == me && l.a == n.id))
                .map(|l| l.rtt_ms);
            let predicted = mine.map(|m| m.coord.predicted_rtt(&n.coord));
            let rtt_ms = measured.or(predicted).unwrap_or(f64::INFINITY);
            Choice {
                peer,
                record: n.clone(),
                rtt_ms,
            }
        })
        .min_by(|a, b| {
            a.rtt_ms
                .total_cmp(&b.rtt_ms)
                .then(b.record.cpu_free_milli.cmp(&a.record.cpu_free_milli))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use brume_overlay::neighbourhood::Link;

    /// The peer id of the node whose key is `seed` repeated (tests are deterministic).
    fn peer(seed: u8) -> PeerId {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
            .expect("32 bytes are an ed25519 key")
            .public()
            .to_peer_id()
    }

    fn node(id: u64, cpu: u32, mem: u64) -> NodeRecord {
        let mut n = NodeRecord::bare(NodeId(id));
        n.cpu_free_milli = cpu;
        n.mem_free_mb = mem;
        n.peer = Some(peer(id as u8));
        n
    }

    fn map(nodes: Vec<NodeRecord>, links: &[(u64, u64, f64)]) -> NeighbourhoodMap {
        NeighbourhoodMap {
            nodes,
            links: links
                .iter()
                .map(|&(a, b, rtt)| Link::new(NodeId(a), NodeId(b), rtt))
                .collect(),
            proofs: Vec::new(),
        }
    }

    #[test]
    fn the_nearest_node_with_room_wins_and_never_the_source() {
        let m = map(
            vec![
                node(1, 4000, 4096),
                node(2, 100, 4096),
                node(3, 2000, 4096),
                node(4, 2000, 4096),
            ],
            &[(1, 2, 1.0), (1, 3, 20.0), (1, 4, 5.0)],
        );
        // Node 2 is nearest but has 100 mCPU free; node 1 is the source.
        let c = pick(&m, NodeId(1), 500, 256).expect("a target");
        assert_eq!(c.record.id, NodeId(4));
        assert_eq!(c.rtt_ms, 5.0);
        // Nobody has 8 cores free.
        assert_eq!(pick(&m, NodeId(1), 8000, 256), None);
        // A map of the source alone has no target.
        assert_eq!(
            pick(&map(vec![node(1, 4000, 4096)], &[]), NodeId(1), 1, 1),
            None
        );
    }

    #[test]
    fn nodes_without_a_peer_id_or_memory_are_skipped() {
        let mut anonymous = node(2, 4000, 4096);
        anonymous.peer = None;
        let m = map(
            vec![
                node(1, 0, 0),
                anonymous,
                node(3, 4000, 64),
                node(5, 4000, 4096),
            ],
            &[(1, 2, 1.0), (1, 3, 2.0), (1, 5, 30.0)],
        );
        let c = pick(&m, NodeId(1), 500, 256).expect("a target");
        assert_eq!(c.record.id, NodeId(5));
    }
}
