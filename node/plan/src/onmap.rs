//! From a manifest and a neighbourhood map to "which replica of which task runs on which peer".
//!
//! The map becomes placement's network model ([`crate::mapnet`]), the manifest its call graph,
//! and breadth-first randomized rounding places the graph with the root pinned to this node.
//! What comes out names hosts by placement's host ids; this module turns them back into the
//! libp2p peers (and their addresses) that the deploy requests go to, using the peer ids the
//! hosts advertise in their state records.

use std::collections::HashMap;

use brume_overlay::ids::NodeId;
use brume_overlay::neighbourhood::NeighbourhoodMap;
use brume_overlay::{Multiaddr, PeerId};
use brume_placement::{policy, rounding, Problem};

use crate::manifest::Manifest;
use crate::mapnet;

/// One task instance and the host chosen for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub task: String,
    pub replica: u32,
    pub node: NodeId,
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    /// The RTT from the host of the task's parent in the call tree, if known.
    pub parent_rtt_ms: Option<f64>,
}

/// How placement is asked.
#[derive(Debug, Clone)]
pub struct PlaceOptions {
    pub policy: String,
    pub seed: u64,
    pub rounds: u32,
}

impl Default for PlaceOptions {
    fn default() -> Self {
        PlaceOptions {
            policy: "latency".into(),
            seed: 1,
            rounds: 32,
        }
    }
}

/// Places the manifest's call graph on the map; `origin` (this node) gets the root.
pub fn place(
    manifest: &Manifest,
    map: &NeighbourhoodMap,
    origin: NodeId,
    options: &PlaceOptions,
) -> anyhow::Result<Vec<Assignment>> {
    let policy = policy::by_name(&options.policy).map_err(anyhow::Error::msg)?;
    let net = mapnet::network(map, origin, &mapnet::HostDefaults::default())
        .map_err(|e| anyhow::anyhow!("the neighbourhood map is not a usable network: {e}"))?;
    let graph = manifest.call_graph();
    let problem = Problem::new(&graph, &net)
        .map_err(|e| anyhow::anyhow!("the call graph is invalid: {e}"))?;
    let cfg = rounding::RoundingConfig {
        rounds: options.rounds,
        seed: options.seed,
        ..Default::default()
    };
    let outcome = rounding::place(&problem, policy.as_ref(), &cfg).map_err(|e| {
        anyhow::anyhow!(
            "no placement on the {} node(s) of the map: {e} (map with a larger --budget, free \
             resources, or ask for less)",
            map.nodes.len()
        )
    })?;
    let by_host: HashMap<String, &brume_overlay::neighbourhood::NodeRecord> = map
        .nodes
        .iter()
        .map(|n| (mapnet::host_id(n.id), n))
        .collect();
    let mut out = Vec::new();
    for p in &outcome.plan.placements {
        let host = net.host(p.host);
        let task = graph.task(p.task).name.clone();
        let record = by_host.get(&host.id).ok_or_else(|| {
            anyhow::anyhow!("placement chose {}, which is not in the map", host.id)
        })?;
        let peer: PeerId = record.peer.ok_or_else(|| {
            anyhow::anyhow!(
                "host {} advertises no peer id: it runs an older brume?",
                host.id
            )
        })?;
        let addrs = record.addrs.clone();
        out.push(Assignment {
            task,
            replica: p.replica,
            node: record.id,
            peer,
            addrs,
            parent_rtt_ms: p.parent_rtt_ms,
        });
    }
    Ok(out)
}
