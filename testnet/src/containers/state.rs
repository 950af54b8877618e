//! What a running testnet is made of, in a JSON file under its state directory: the containers,
//! their addresses and namespaces, the RTT source, the router's pid and the partition in force.
//! Every `brume testnet` command reads it; `up` and `join` write it; `down` deletes it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::addr::Subnet;

/// Where testnets keep their state: `/run/brume-testnet/nets/<name>/` (a tmpfs: a reboot, which
/// removes the containers' namespaces too, forgets them).
pub const STATE_ROOT: &str = "/run/brume-testnet/nets";

/// The TCP port every node listens on, at its own address.
pub const NODE_PORT: u16 = 7100;

/// Where RTTs between nodes come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RttSource {
    /// Each pair draws an RTT uniformly in `[min_ms, max_ms]` from a hash of (seed, pair), so a
    /// node added later gets the same RTTs whenever it is added.
    Range { min_ms: f64, max_ms: f64, seed: u64 },
    /// An N x N matrix (ms) read from a file at `up`; node `i` is row `i`.
    Matrix(Vec<Vec<f64>>),
}

impl RttSource {
    /// The RTT (ms) between nodes `i` and `j`, or `None` when a matrix has no such row.
    pub fn rtt(&self, i: usize, j: usize) -> Option<f64> {
        if i == j {
            return Some(0.0);
        }
        match self {
            RttSource::Range {
                min_ms,
                max_ms,
                seed,
            } => {
                let (a, b) = (i.min(j) as u64, i.max(j) as u64);
                let u = splitmix(seed ^ splitmix(a << 32 | b)) as f64 / u64::MAX as f64;
                Some(min_ms + (max_ms - min_ms) * u)
            }
            RttSource::Matrix(rows) => rows.get(i)?.get(j).copied(),
        }
    }

    /// Most nodes the source has RTTs for.
    pub fn capacity(&self) -> usize {
        match self {
            RttSource::Range { .. } => crate::addr::MAX_HOSTS,
            RttSource::Matrix(rows) => rows.len(),
        }
    }
}

/// splitmix64's finaliser: a well-mixed hash of a 64-bit value.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One node container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// The container's name (`brume-tn-<net>-<index>`), also the node's `--name`.
    pub container: String,
    /// The node's address on its `brume0` TUN device.
    pub addr: Ipv4Addr,
    /// The container's first process, whose network namespace the router attached.
    pub pid: u32,
    /// Set by `brume testnet kill`.
    pub killed: bool,
}

/// A testnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetState {
    pub name: String,
    /// The namespace tag: node `i`'s namespace is attached as `/run/netns/brume-<tag>-<i>`.
    pub tag: String,
    pub subnet_octet: u8,
    pub image: String,
    pub rtt: RttSource,
    pub nodes: Vec<NodeState>,
    /// The background router process (`brume-testnet router`), once started.
    pub router_pid: Option<u32>,
    /// Groups of node indices that cannot reach each other (empty: no partition).
    pub partition: Vec<Vec<usize>>,
    /// Extra arguments of every node's `brume node` command line (`up --node-arg`).
    #[serde(default)]
    pub node_args: Vec<String>,
    /// Nodes are `brume node` processes in namespaces, not containers (`up --processes`).
    #[serde(default)]
    pub processes: bool,
    /// The `brume` program process nodes run (and that asks them), found at `up`.
    #[serde(default)]
    pub brume: Option<PathBuf>,
}

impl NetState {
    /// The directory of testnet `name`.
    pub fn dir_of(name: &str) -> PathBuf {
        Path::new(STATE_ROOT).join(name)
    }

    pub fn dir(&self) -> PathBuf {
        Self::dir_of(&self.name)
    }

    pub fn subnet(&self) -> Subnet {
        Subnet::new(self.subnet_octet)
    }

    /// The router's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("router.sock")
    }

    /// The host directory bind-mounted at `/run/brume` in node `i` (its control socket).
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir().join(format!("node-{i}"))
    }

    /// Loads testnet `name`, with an error that says how to start one.
    pub fn load(name: &str) -> anyhow::Result<NetState> {
        let path = Self::dir_of(name).join("state.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no testnet `{name}` ({} unreadable); start one with `brume testnet up --nodes N`",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    /// Writes the state atomically (a reader never sees half a file).
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let tmp = dir.join(format!(".state.json.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join("state.json")).context("replace state.json")
    }

    /// The row-major RTT matrix the router applies now: the source's RTTs, with pairs in
    /// different partition groups unreachable (-1).
    pub fn effective_rtts(&self) -> Vec<f64> {
        let n = self.nodes.len();
        let group = |i: usize| self.partition.iter().position(|g| g.contains(&i));
        let mut out = Vec::with_capacity(n * n);
        for i in 0..n {
            for j in 0..n {
                let cut = !self.partition.is_empty() && group(i) != group(j);
                out.push(if cut {
                    -1.0
                } else {
                    self.rtt.rtt(i, j).unwrap_or(-1.0)
                });
            }
        }
        out
    }

    /// Resolves a node given by index (`2`) or container name.
    pub fn node_index(&self, node: &str) -> anyhow::Result<usize> {
        let found = match node.parse::<usize>() {
            Ok(i) if i < self.nodes.len() => Some(i),
            _ => self.nodes.iter().position(|n| n.container == node),
        };
        found.with_context(|| {
            format!(
                "no node `{node}` in testnet `{}` (give an index 0..{} or a container name; \
                 `brume testnet ps` lists them)",
                self.name,
                self.nodes.len()
            )
        })
    }
}

/// Parses `5ms..80ms` (or one value, `40ms`) into (min, max) ms.
pub fn parse_latency(text: &str) -> anyhow::Result<(f64, f64)> {
    let one = |s: &str| -> anyhow::Result<f64> {
        let s = s.trim();
        let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
            (v, 1.0)
        } else if let Some(v) = s.strip_suffix('s') {
            (v, 1000.0)
        } else {
            (s, 1.0)
        };
        let v: f64 = num
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .with_context(|| format!("`{s}` is not a latency (e.g. 40ms or 0.04s)"))?;
        Ok(v * scale)
    };
    let (min, max) = match text.split_once("..") {
        Some((a, b)) => (one(a)?, one(b)?),
        None => (one(text)?, one(text)?),
    };
    anyhow::ensure!(
        min <= max,
        "--latency {text}: the lower end is above the upper"
    );
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_ranges_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_latency("5ms..80ms").unwrap(), (5.0, 80.0));
        assert_eq!(parse_latency("40ms").unwrap(), (40.0, 40.0));
        assert_eq!(parse_latency("0.01s..20").unwrap(), (10.0, 20.0));
        for bad in ["80ms..5ms", "fast", "-3ms", "5ms..", "nanms"] {
            assert!(parse_latency(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn range_rtts_are_symmetric_seeded_and_in_range() {
        let src = RttSource::Range {
            min_ms: 5.0,
            max_ms: 80.0,
            seed: 7,
        };
        for i in 0..6 {
            for j in 0..6 {
                let v = src.rtt(i, j).unwrap();
                assert_eq!(v, src.rtt(j, i).unwrap());
                assert!(i == j || (5.0..=80.0).contains(&v), "{v}");
            }
        }
        let other = RttSource::Range {
            min_ms: 5.0,
            max_ms: 80.0,
            seed: 8,
        };
        assert_ne!(src.rtt(0, 1), other.rtt(0, 1));
    }

    #[test]
    fn a_partition_cuts_only_pairs_across_groups() {
        let mut s = NetState {
            name: "t".into(),
            tag: "000000".into(),
            subnet_octet: 20,
            image: "i".into(),
            rtt: RttSource::Range {
                min_ms: 10.0,
                max_ms: 10.0,
                seed: 1,
            },
            nodes: (0..3)
                .map(|i| NodeState {
                    container: format!("c{i}"),
                    addr: Ipv4Addr::new(10, 20, 0, i + 1),
                    pid: 1,
                    killed: false,
                })
                .collect(),
            router_pid: None,
            partition: vec![vec![0], vec![1, 2]],
            node_args: Vec::new(),
            processes: false,
            brume: None,
        };
        let m = s.effective_rtts();
        assert_eq!((m[1], m[2], m[5], m[3 + 2]), (-1.0, -1.0, 10.0, 10.0));
        s.partition.clear();
        assert!(s.effective_rtts().iter().all(|&v| v >= 0.0));
    }
}
