//! Random instances for tests and benchmarks: random geometric networks of heterogeneous edge
//! hosts, and call graphs shaped like real services.
//!
//! Hosts are scattered uniformly over a square measured in milliseconds of RTT, each with an
//! access height; their coordinates predict RTT, and each host has measured links to its nearest
//! neighbours whose RTT deviates from the prediction (real links are not Euclidean). Hosts come in
//! three classes (small boards, gateways, servers) with matching capacity, background load,
//! reliability, power and price. Everything is drawn from the caller's RNG, so a seed fixes it.

use rand::Rng;

use crate::graph::{Call, CallGraph, Task};
use crate::network::{Coord, Host, Link, Network};

/// Shape of a generated network.
#[derive(Debug, Clone, Copy)]
pub struct NetSpec {
    pub hosts: usize,
    /// Side of the square hosts are scattered on, in ms.
    pub side_ms: f64,
    /// Measured links per host, to its nearest neighbours.
    pub links_per_host: usize,
    /// Largest fraction of a host already used by others.
    pub max_background: f64,
}

impl NetSpec {
    pub fn new(hosts: usize) -> Self {
        Self {
            hosts,
            side_ms: 80.0,
            links_per_host: 6,
            max_background: 0.6,
        }
    }
}

/// A random geometric network; the initiator is `h0`.
pub fn network(spec: &NetSpec, rng: &mut impl Rng) -> Network {
    let mut hosts = Vec::with_capacity(spec.hosts);
    for i in 0..spec.hosts.max(1) {
        let class = rng.random::<f64>();
        let (cpu, mem, rel, watts, cost, bw, label) = if class < 0.35 {
            // Small boards and phones' companions.
            (
                rng.random_range(2..=8u64) * 250,
                rng.random_range(1..=8u64) * 256,
                rng.random_range(0.85..0.95),
                rng.random_range(1.0..3.0),
                rng.random_range(0.001..0.004),
                rng.random_range(20.0..100.0),
                ("camera", 0.4),
            )
        } else if class < 0.85 {
            // Gateways.
            (
                rng.random_range(2..=8u64) * 500,
                rng.random_range(2..=16u64) * 256,
                rng.random_range(0.95..0.995),
                rng.random_range(3.0..8.0),
                rng.random_range(0.004..0.012),
                rng.random_range(50.0..300.0),
                ("camera", 0.15),
            )
        } else {
            // Small servers.
            (
                rng.random_range(4..=16u64) * 1000,
                rng.random_range(8..=64u64) * 1024,
                rng.random_range(0.99..0.999),
                rng.random_range(10.0..25.0),
                rng.random_range(0.02..0.06),
                1000.0,
                ("gpu", 0.3),
            )
        };
        let mut h = Host::new(format!("h{i}"), cpu, mem);
        let bg = rng.random_range(0.0..=spec.max_background);
        h.free_cpu_millis = ((cpu as f64) * (1.0 - bg)) as u64;
        h.free_memory_mb = ((mem as f64) * (1.0 - bg * rng.random::<f64>())) as u64;
        h.reliability = rel;
        h.watts_per_core = watts;
        h.cost_per_core_hour = cost;
        h.bandwidth_mbps = bw;
        if rng.random::<f64>() < label.1 {
            h.labels.insert(label.0.to_string());
        }
        h.coord = Some(Coord {
            x: rng.random_range(0.0..spec.side_ms),
            y: rng.random_range(0.0..spec.side_ms),
            height: rng.random_range(0.2..3.0),
        });
        hosts.push(h);
    }
    let coords: Vec<Coord> = hosts.iter().map(|h| h.coord.unwrap_or_default()).collect();
    let mut links = Vec::new();
    let mut order: Vec<(f64, usize)> = Vec::with_capacity(hosts.len());
    for (i, c) in coords.iter().enumerate() {
        order.clear();
        order.extend(
            coords
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, d)| (c.rtt(d), j)),
        );
        let k = spec.links_per_host.min(order.len());
        if k == 0 {
            continue;
        }
        order.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        for &(predicted, j) in &order[..k] {
            if j < i
                && links
                    .iter()
                    .any(|(a, b, _): &(usize, usize, Link)| *a == j && *b == i)
            {
                continue;
            }
            let bw = hosts[i].bandwidth_mbps.min(hosts[j].bandwidth_mbps);
            let link = Link {
                rtt_ms: predicted * rng.random_range(0.85..1.3),
                bandwidth_mbps: bw * rng.random_range(0.5..1.0),
            };
            links.push((i, j, link));
        }
    }
    let named: Vec<_> = links
        .into_iter()
        .map(|(a, b, l)| (hosts[a].id.clone(), hosts[b].id.clone(), l))
        .collect();
    let initiator = hosts[0].id.clone();
    Network::new(hosts, &initiator, named).expect("generated hosts are valid by construction")
}

/// Shapes of generated services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A pipeline: each task calls the next.
    Chain,
    /// A random recursive tree.
    Tree,
    /// Federated learning: one aggregator (the root) calling every trainer.
    Star,
    /// A random DAG: a random tree plus extra calls from earlier to later tasks.
    Dag,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Chain, Shape::Tree, Shape::Star, Shape::Dag];
}

/// Shape and sizes of a generated call graph.
#[derive(Debug, Clone, Copy)]
pub struct GraphSpec {
    pub shape: Shape,
    pub tasks: usize,
    /// Range of per-call latency bounds, in ms.
    pub bound_ms: (f64, f64),
    /// Probability that a non-root task has two replicas.
    pub replica_prob: f64,
    /// Probability that a non-root task needs a label (`camera` or `gpu`).
    pub label_prob: f64,
}

impl GraphSpec {
    pub fn new(shape: Shape, tasks: usize) -> Self {
        Self {
            shape,
            tasks,
            bound_ms: (15.0, 60.0),
            replica_prob: 0.15,
            label_prob: 0.1,
        }
    }
}

/// A random call graph; task 0 is the root.
pub fn call_graph(spec: &GraphSpec, rng: &mut impl Rng) -> CallGraph {
    let n = spec.tasks.max(1);
    let mut g = CallGraph::new(Task::new("t0", 100, 64));
    let mut ids = vec![g.root()];
    for i in 1..n {
        let mut t = Task::new(
            format!("t{i}"),
            rng.random_range(1..=8u64) * 125,
            rng.random_range(1..=8u64) * 64,
        );
        if rng.random::<f64>() < spec.replica_prob {
            t.replicas = 2;
        }
        if rng.random::<f64>() < spec.label_prob {
            let l = if rng.random::<bool>() {
                "camera"
            } else {
                "gpu"
            };
            t.demand.labels.insert(l.to_string());
        }
        t.stateful = rng.random::<bool>();
        ids.push(g.add_task(t));
    }
    for i in 1..n {
        let parent = match spec.shape {
            Shape::Chain => i - 1,
            Shape::Star => 0,
            Shape::Tree | Shape::Dag => rng.random_range(0..i),
        };
        let c = random_call(spec, rng);
        g.add_call(ids[parent], ids[i], c);
    }
    if spec.shape == Shape::Dag {
        for i in 1..n {
            for j in i + 1..n {
                if rng.random::<f64>() < 0.15 {
                    let c = random_call(spec, rng);
                    g.add_call(ids[i], ids[j], c);
                }
            }
        }
    }
    g
}

fn random_call(spec: &GraphSpec, rng: &mut impl Rng) -> Call {
    let (lo, hi) = spec.bound_ms;
    Call {
        latency_bound_ms: if hi > lo {
            rng.random_range(lo..hi)
        } else {
            lo
        },
        traffic_mbps: rng.random_range(0.1..20.0),
    }
}
