//! The network placement sees: hosts with their resources and qualities, measured links, and a
//! latency coordinate per host for the pairs nobody measured.
//!
//! This is what the overlay's neighbourhood map becomes once the node turns it into placement's
//! terms. The RTT between two hosts is the measured link when there is one, else the prediction
//! from the two coordinates (Vivaldi: Euclidean distance plus both heights), else unknown, and an
//! unknown RTT never satisfies a latency bound.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::error::NetworkError;

/// Index of a host in its [`Network`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostId(pub u32);

impl HostId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A latency coordinate in milliseconds: a point in the plane plus a height for the access link.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Coord {
    pub x: f64,
    pub y: f64,
    pub height: f64,
}

impl Coord {
    /// Predicted RTT between two coordinates, in ms.
    pub fn rtt(&self, other: &Coord) -> f64 {
        // Heights are summed first so that the result is the same bits in both directions.
        planar(self.x - other.x, self.y - other.y) + (self.height + other.height)
    }
}

fn planar(dx: f64, dy: f64) -> f64 {
    (dx * dx + dy * dy).sqrt()
}

/// A device that may run tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    /// Total CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Total memory in MiB.
    pub memory_mb: u64,
    /// CPU not used by anything else right now.
    pub free_cpu_millis: u64,
    /// Memory not used by anything else right now.
    pub free_memory_mb: u64,
    /// Probability that the host stays up for the service's lifetime, in (0, 1].
    pub reliability: f64,
    /// Power drawn per busy core, in watts.
    pub watts_per_core: f64,
    /// Price of one core for one hour, in any currency unit.
    pub cost_per_core_hour: f64,
    /// Uplink bandwidth in Mbit/s, used when no link between two hosts was measured.
    pub bandwidth_mbps: f64,
    pub labels: BTreeSet<String>,
    pub coord: Option<Coord>,
}

impl Host {
    /// A host with everything free, perfect reliability and unit energy and cost.
    pub fn new(id: impl Into<String>, cpu_millis: u64, memory_mb: u64) -> Self {
        Self {
            id: id.into(),
            cpu_millis,
            memory_mb,
            free_cpu_millis: cpu_millis,
            free_memory_mb: memory_mb,
            reliability: 1.0,
            watts_per_core: 1.0,
            cost_per_core_hour: 1.0,
            bandwidth_mbps: 1000.0,
            labels: BTreeSet::new(),
            coord: None,
        }
    }

    fn check(&self) -> Result<(), NetworkError> {
        let bad = |what: &str| {
            Err(NetworkError::BadHost {
                host: self.id.clone(),
                what: what.to_string(),
            })
        };
        if self.free_cpu_millis > self.cpu_millis || self.free_memory_mb > self.memory_mb {
            return bad(
                "free resources exceed the total: free cpu/memory must be at most the total",
            );
        }
        if !(self.reliability > 0.0 && self.reliability <= 1.0) {
            return bad("reliability must be in (0, 1]");
        }
        for (v, name) in [
            (self.watts_per_core, "watts_per_core"),
            (self.cost_per_core_hour, "cost_per_core_hour"),
            (self.bandwidth_mbps, "bandwidth_mbps"),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(&format!("{name} must be a finite number >= 0"));
            }
        }
        if let Some(c) = self.coord {
            if !(c.x.is_finite() && c.y.is_finite() && c.height.is_finite() && c.height >= 0.0) {
                return bad("coordinate must be finite with a height >= 0");
            }
        }
        Ok(())
    }
}

/// A measured link between two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub rtt_ms: f64,
    pub bandwidth_mbps: f64,
}

/// Hosts, measured links, and which host is the initiator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    hosts: Vec<Host>,
    initiator: HostId,
    /// Per host, its measured links sorted by the other end.
    adjacency: Vec<Vec<(HostId, Link)>>,
    /// Per host, the RTT of its shortest measured link.
    nearest: Vec<Option<f64>>,
    /// Coordinates apart from the hosts, so that scanning every host stays in cache.
    coords: Vec<Option<Coord>>,
    /// The same coordinates as columns (NaN where a host has none), for [`Network::within`].
    xs: Vec<f64>,
    ys: Vec<f64>,
    heights: Vec<f64>,
}

impl Network {
    /// Builds a network; links are symmetric and a later link between the same pair replaces an
    /// earlier one.
    pub fn new(
        hosts: Vec<Host>,
        initiator: &str,
        links: impl IntoIterator<Item = (String, String, Link)>,
    ) -> Result<Self, NetworkError> {
        if hosts.is_empty() {
            return Err(NetworkError::Empty);
        }
        let mut index = HashMap::with_capacity(hosts.len());
        for (i, h) in hosts.iter().enumerate() {
            h.check()?;
            if index.insert(h.id.clone(), HostId(i as u32)).is_some() {
                return Err(NetworkError::DuplicateHost(h.id.clone()));
            }
        }
        let initiator = *index
            .get(initiator)
            .ok_or_else(|| NetworkError::UnknownInitiator(initiator.to_string()))?;
        let mut adjacency: Vec<Vec<(HostId, Link)>> = vec![Vec::new(); hosts.len()];
        for (a, b, link) in links {
            let ia = *index.get(&a).ok_or(NetworkError::UnknownHost(a.clone()))?;
            let ib = *index.get(&b).ok_or(NetworkError::UnknownHost(b.clone()))?;
            if !(link.rtt_ms.is_finite() && link.rtt_ms >= 0.0 && link.bandwidth_mbps >= 0.0) {
                return Err(NetworkError::BadHost {
                    host: a,
                    what: format!(
                        "the link to `{b}` needs a finite rtt_ms >= 0 and bandwidth >= 0"
                    ),
                });
            }
            for (x, y) in [(ia, ib), (ib, ia)] {
                let adj = &mut adjacency[x.index()];
                adj.retain(|(o, _)| *o != y);
                adj.push((y, link));
            }
        }
        for adj in &mut adjacency {
            adj.sort_by_key(|(o, _)| *o);
        }
        let nearest = adjacency
            .iter()
            .map(|adj| adj.iter().map(|(_, l)| l.rtt_ms).min_by(f64::total_cmp))
            .collect();
        let coords: Vec<Option<Coord>> = hosts.iter().map(|h| h.coord).collect();
        let column = |f: fn(&Coord) -> f64| {
            coords
                .iter()
                .map(|c| c.as_ref().map_or(f64::NAN, f))
                .collect()
        };
        Ok(Self {
            xs: column(|c| c.x),
            ys: column(|c| c.y),
            heights: column(|c| c.height),
            hosts,
            initiator,
            adjacency,
            nearest,
            coords,
        })
    }

    pub fn initiator(&self) -> HostId {
        self.initiator
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn host(&self, id: HostId) -> &Host {
        &self.hosts[id.index()]
    }

    pub fn hosts(&self) -> impl Iterator<Item = (HostId, &Host)> + '_ {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (HostId(i as u32), h))
    }

    pub fn find(&self, id: &str) -> Option<HostId> {
        self.hosts
            .iter()
            .position(|h| h.id == id)
            .map(|i| HostId(i as u32))
    }

    /// Measured links of `host`.
    pub fn links(&self, host: HostId) -> &[(HostId, Link)] {
        &self.adjacency[host.index()]
    }

    /// RTT of the shortest measured link of `host`: the least a call leaving it costs.
    pub fn nearest_rtt(&self, host: HostId) -> Option<f64> {
        self.nearest[host.index()]
    }

    pub fn link(&self, a: HostId, b: HostId) -> Option<&Link> {
        let adj = &self.adjacency[a.index()];
        adj.binary_search_by_key(&b, |(o, _)| *o)
            .ok()
            .map(|i| &adj[i].1)
    }

    /// Best known RTT between two hosts in ms: 0 to itself, the measured link, else the
    /// coordinates' prediction, else `None`.
    pub fn rtt(&self, a: HostId, b: HostId) -> Option<f64> {
        if a == b {
            return Some(0.0);
        }
        if let Some(l) = self.link(a, b) {
            return Some(l.rtt_ms);
        }
        match (&self.hosts[a.index()].coord, &self.hosts[b.index()].coord) {
            (Some(x), Some(y)) => Some(x.rtt(y)),
            _ => None,
        }
    }

    /// Every host whose RTT from `from` is at most `bound_ms`, `from` first: the same answer as
    /// testing [`Network::rtt`] on every host, in one pass over the coordinates.
    pub fn within(&self, from: HostId, bound_ms: f64, out: &mut Vec<HostId>) {
        out.clear();
        out.push(from);
        let f = from.index();
        if let Some(o) = self.coords[f] {
            // Branchless: write every index, advance only past those in reach. Hosts without a
            // coordinate are NaN and never compare as in reach.
            let n = self.xs.len();
            out.resize(n + 1, from);
            let mut len = 1;
            for (i, ((x, y), h)) in self.xs.iter().zip(&self.ys).zip(&self.heights).enumerate() {
                let rtt = planar(o.x - x, o.y - y) + (o.height + h);
                out[len] = HostId(i as u32);
                len += usize::from(rtt <= bound_ms && i != f);
            }
            out.truncate(len);
        }
        // Measured links override the coordinates' prediction, both ways.
        let mut wrong = Vec::new();
        for (other, link) in self.links(from) {
            let predicted = match (&self.coords[from.index()], &self.coords[other.index()]) {
                (Some(a), Some(b)) => a.rtt(b) <= bound_ms,
                _ => false,
            };
            let measured = link.rtt_ms <= bound_ms;
            if measured && !predicted {
                out.push(*other);
            } else if predicted && !measured {
                wrong.push(*other);
            }
        }
        if !wrong.is_empty() {
            out.retain(|h| !wrong.contains(h));
        }
    }

    /// Bandwidth between two hosts in Mbit/s: unlimited to itself, the measured link, else the
    /// smaller of the two uplinks.
    pub fn bandwidth(&self, a: HostId, b: HostId) -> f64 {
        if a == b {
            return f64::INFINITY;
        }
        match self.link(a, b) {
            Some(l) => l.bandwidth_mbps,
            None => self.hosts[a.index()]
                .bandwidth_mbps
                .min(self.hosts[b.index()].bandwidth_mbps),
        }
    }
}
