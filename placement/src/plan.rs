//! A finished plan, and an independent check that it obeys every rule.

use serde::Serialize;

use crate::graph::TaskId;
use crate::network::HostId;
use crate::partial::Partial;
use crate::problem::Problem;

/// Where one replica of one task runs, and what led there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    pub task: TaskId,
    pub replica: u32,
    pub host: HostId,
    /// RTT from the tree parent's host, if the task has a parent.
    pub parent_rtt_ms: Option<f64>,
    /// Probability with which randomized rounding drew this host, if it drew it.
    pub probability: Option<f64>,
}

/// A complete assignment of every unit, with its objective under the policy that chose it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub objective: f64,
}

impl Plan {
    /// Builds a plan from a complete partial; `probability` gives each unit's draw probability.
    pub fn from_partial(p: &Partial, objective: f64, probability: &[Option<f64>]) -> Self {
        let problem = p.problem;
        let placements = problem
            .units()
            .iter()
            .enumerate()
            .map(|(k, u)| {
                let host = p.hosts()[k];
                let parent_rtt_ms = u.parent.and_then(|(parent, _)| {
                    problem.net.rtt(p.hosts()[problem.unit_of(parent, 0)], host)
                });
                Placement {
                    task: u.task,
                    replica: u.replica,
                    host,
                    parent_rtt_ms,
                    probability: probability.get(k).copied().flatten(),
                }
            })
            .collect();
        Self {
            placements,
            objective,
        }
    }

    /// Host of replica `replica` of `task`.
    pub fn host_of(&self, task: TaskId, replica: u32) -> Option<HostId> {
        self.placements
            .iter()
            .find(|p| p.task == task && p.replica == replica)
            .map(|p| p.host)
    }

    /// Checks the plan against the problem from scratch, without the code that built it: every
    /// replica placed once, the root on the initiator, labels, capacities, distinct hosts for
    /// replicas, latency bounds for every pair of replicas of every call. Returns each violation.
    pub fn violations(&self, problem: &Problem) -> Vec<String> {
        let g = problem.graph;
        let net = problem.net;
        let mut out = Vec::new();
        let mut hosts: Vec<Vec<Option<HostId>>> = g
            .tasks()
            .map(|(_, t)| vec![None; t.replicas as usize])
            .collect();
        for pl in &self.placements {
            match hosts
                .get_mut(pl.task.index())
                .and_then(|r| r.get_mut(pl.replica as usize))
            {
                Some(slot @ None) => *slot = Some(pl.host),
                Some(Some(_)) => out.push(format!("{:?}/{} placed twice", pl.task, pl.replica)),
                None => out.push(format!("{:?}/{} does not exist", pl.task, pl.replica)),
            }
        }
        let mut cpu = vec![0u64; net.len()];
        let mut mem = vec![0u64; net.len()];
        for (id, task) in g.tasks() {
            let reps = &hosts[id.index()];
            for (r, h) in reps.iter().enumerate() {
                let Some(h) = h else {
                    out.push(format!("{}/{r} not placed", task.name));
                    continue;
                };
                cpu[h.index()] += task.demand.cpu_millis;
                mem[h.index()] += task.demand.memory_mb;
                if !task.demand.labels.is_subset(&net.host(*h).labels) {
                    out.push(format!("{}/{r} on a host without its labels", task.name));
                }
                if reps[..r].contains(&Some(*h)) {
                    out.push(format!(
                        "{}/{r} shares a host with another replica",
                        task.name
                    ));
                }
            }
        }
        if hosts[g.root().index()][0] != Some(net.initiator()) {
            out.push("the root is not on the initiator".into());
        }
        for (id, h) in net.hosts() {
            if cpu[id.index()] > h.free_cpu_millis || mem[id.index()] > h.free_memory_mb {
                out.push(format!("host {} over capacity", h.id));
            }
        }
        for (a, b, call) in g.calls() {
            for ha in hosts[a.index()].iter().flatten() {
                for hb in hosts[b.index()].iter().flatten() {
                    match net.rtt(*ha, *hb) {
                        Some(r) if r <= call.latency_bound_ms => {}
                        r => out.push(format!(
                            "call {} -> {}: rtt {r:?} over bound {}",
                            g.task(a).name,
                            g.task(b).name,
                            call.latency_bound_ms
                        )),
                    }
                }
            }
        }
        out
    }
}
