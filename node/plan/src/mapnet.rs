//! Turning the overlay's neighbourhood map into placement's network model: the one place where
//! `brume-overlay` and `brume-placement` meet.
//!
//! A map knows each node's resources, reliability and Vivaldi coordinate, and the RTTs measured
//! on overlay links. It does not (yet) know bandwidth, power, price or labels, so those take the
//! operator's defaults from [`HostDefaults`].

use brume_overlay::ids::NodeId;
use brume_overlay::neighbourhood::NeighbourhoodMap;
use brume_placement::{Coord, Host, Link, Network, NetworkError};

/// Values for what a map does not carry.
#[derive(Debug, Clone)]
pub struct HostDefaults {
    pub bandwidth_mbps: f64,
    pub watts_per_core: f64,
    pub cost_per_core_hour: f64,
}

impl Default for HostDefaults {
    fn default() -> Self {
        Self {
            bandwidth_mbps: 100.0,
            watts_per_core: 5.0,
            cost_per_core_hour: 0.01,
        }
    }
}

/// The host id placement uses for a node: its `NodeId` as the overlay prints it.
pub fn host_id(node: NodeId) -> String {
    node.to_string()
}

/// A placement network with `origin` as the initiator.
pub fn network(
    map: &NeighbourhoodMap,
    origin: NodeId,
    defaults: &HostDefaults,
) -> Result<Network, NetworkError> {
    let hosts = map
        .nodes
        .iter()
        .map(|n| {
            let mut h = Host::new(host_id(n.id), u64::from(n.cpu_total_milli), n.mem_total_mb);
            h.free_cpu_millis = u64::from(n.cpu_free_milli).min(h.cpu_millis);
            h.free_memory_mb = n.mem_free_mb.min(h.memory_mb);
            // A node that was never seen down still may go down: keep reliability below 1 so
            // the reliability policy can tell hosts apart, and above 0 so it stays defined.
            h.reliability = f64::from(n.reliability).clamp(0.01, 0.9999);
            h.bandwidth_mbps = defaults.bandwidth_mbps;
            h.watts_per_core = defaults.watts_per_core;
            h.cost_per_core_hour = defaults.cost_per_core_hour;
            h.coord = Some(Coord {
                x: n.coord.x,
                y: n.coord.y,
                height: n.coord.height.max(0.0),
            });
            h
        })
        .collect();
    let links = map.links.iter().map(|l| {
        (
            host_id(l.a),
            host_id(l.b),
            Link {
                rtt_ms: l.rtt_ms,
                bandwidth_mbps: defaults.bandwidth_mbps,
            },
        )
    });
    Network::new(hosts, &host_id(origin), links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use brume_overlay::neighbourhood::{Link as MapLink, NodeRecord};

    fn record(id: u64, cpu: u32, x: f64) -> NodeRecord {
        let mut r = NodeRecord::bare(NodeId(id));
        r.cpu_total_milli = cpu;
        r.cpu_free_milli = cpu / 2;
        r.mem_total_mb = 2048;
        r.mem_free_mb = 1024;
        r.coord.x = x;
        r
    }

    #[test]
    fn map_becomes_a_network_placement_can_use() {
        let map = NeighbourhoodMap {
            nodes: vec![record(1, 4000, 0.0), record(2, 2000, 30.0)],
            links: vec![MapLink::new(NodeId(1), NodeId(2), 7.5)],
            proofs: Vec::new(),
        };
        let net = network(&map, NodeId(1), &HostDefaults::default()).unwrap();
        let a = net.find("n1").unwrap();
        let b = net.find("n2").unwrap();
        assert_eq!(net.initiator(), a);
        assert_eq!(net.host(b).free_cpu_millis, 1000);
        // The measured link wins over the coordinates' 30 ms prediction.
        assert_eq!(net.rtt(a, b), Some(7.5));
    }

    #[test]
    fn origin_missing_from_map_is_refused() {
        let map = NeighbourhoodMap {
            nodes: vec![record(1, 4000, 0.0)],
            links: vec![],
            proofs: Vec::new(),
        };
        assert!(network(&map, NodeId(9), &HostDefaults::default()).is_err());
    }
}
