//! A plan under construction: which host each placed unit sits on and what it uses there.
//!
//! Rounding, greedy and the exact solver all grow a prefix of the unit order with [`Partial::place`]
//! and ask [`Partial::candidates`] for the hosts a unit may take. Feasibility lives only here:
//! labels, free CPU and memory after what the plan already put there, distinct hosts for replicas,
//! and every call's latency bound and bandwidth towards the units already placed.

use std::fmt::Write as _;

use crate::network::HostId;
use crate::problem::Problem;

/// Why a host cannot take a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Too far (or of unknown distance) from a task this one calls or is called by.
    Latency,
    Label,
    Cpu,
    Memory,
    /// Already holds another replica of the same task.
    Replica,
    Bandwidth,
}

/// Placed units and the load they add to each host.
#[derive(Debug, Clone)]
pub struct Partial<'p, 'a> {
    pub problem: &'p Problem<'a>,
    host_of: Vec<HostId>,
    used_cpu: Vec<u64>,
    used_mem: Vec<u64>,
    /// Hosts with at least one unit, with the number of units on each.
    touched: Vec<(HostId, u32)>,
    max_util: f64,
}

impl<'p, 'a> Partial<'p, 'a> {
    pub fn new(problem: &'p Problem<'a>) -> Self {
        let n = problem.net.len();
        Self {
            problem,
            host_of: Vec::with_capacity(problem.units().len()),
            used_cpu: vec![0; n],
            used_mem: vec![0; n],
            touched: Vec::new(),
            max_util: 0.0,
        }
    }

    /// Forgets every placement, in time proportional to what was placed.
    pub fn reset(&mut self) {
        while !self.host_of.is_empty() {
            self.unplace();
        }
    }

    /// Number of units placed so far (a prefix of the unit order).
    pub fn placed(&self) -> usize {
        self.host_of.len()
    }

    pub fn is_complete(&self) -> bool {
        self.host_of.len() == self.problem.units().len()
    }

    /// Host of the unit at `unit`, if placed.
    pub fn host_of(&self, unit: usize) -> Option<HostId> {
        self.host_of.get(unit).copied()
    }

    pub fn hosts(&self) -> &[HostId] {
        &self.host_of
    }

    /// Hosts carrying at least one unit.
    pub fn touched(&self) -> impl Iterator<Item = HostId> + '_ {
        self.touched.iter().map(|(h, _)| *h)
    }

    /// Highest utilisation among touched hosts, counting the hosts' own background load.
    pub fn max_util(&self) -> f64 {
        self.max_util
    }

    /// CPU millis and memory MiB the plan puts on `host`.
    pub fn used(&self, host: HostId) -> (u64, u64) {
        (self.used_cpu[host.index()], self.used_mem[host.index()])
    }

    /// Utilisation of `host` (the larger of CPU and memory) if it also took `extra` (cpu, mem).
    pub fn util_with(&self, host: HostId, extra: (u64, u64)) -> f64 {
        let h = self.problem.net.host(host);
        let i = host.index();
        let cpu = (h.cpu_millis - h.free_cpu_millis + self.used_cpu[i] + extra.0) as f64;
        let mem = (h.memory_mb - h.free_memory_mb + self.used_mem[i] + extra.1) as f64;
        let frac = |used: f64, total: u64| if total == 0 { 1.0 } else { used / total as f64 };
        frac(cpu, h.cpu_millis).max(frac(mem, h.memory_mb))
    }

    /// Places the next unit on `host`. The caller has checked feasibility.
    pub fn place(&mut self, host: HostId) {
        let unit = &self.problem.units()[self.host_of.len()];
        let d = &self.problem.graph.task(unit.task).demand;
        let i = host.index();
        self.used_cpu[i] += d.cpu_millis;
        self.used_mem[i] += d.memory_mb;
        match self.touched.iter_mut().find(|(h, _)| *h == host) {
            Some((_, n)) => *n += 1,
            None => self.touched.push((host, 1)),
        }
        self.host_of.push(host);
        self.max_util = self.max_util.max(self.util_with(host, (0, 0)));
    }

    /// Removes the last placed unit.
    pub fn unplace(&mut self) {
        let Some(host) = self.host_of.pop() else {
            return;
        };
        let unit = &self.problem.units()[self.host_of.len()];
        let d = &self.problem.graph.task(unit.task).demand;
        let i = host.index();
        self.used_cpu[i] -= d.cpu_millis;
        self.used_mem[i] -= d.memory_mb;
        if let Some(pos) = self.touched.iter().position(|(h, _)| *h == host) {
            self.touched[pos].1 -= 1;
            if self.touched[pos].1 == 0 {
                self.touched.swap_remove(pos);
            }
        }
        self.max_util = self
            .touched
            .iter()
            .map(|(h, _)| self.util_with(*h, (0, 0)))
            .fold(0.0, f64::max);
    }

    /// Whether the next unit may go on `host`, and if not, the first reason found.
    pub fn check(&self, host: HostId) -> Result<(), Refusal> {
        let p = self.problem;
        let k = self.host_of.len();
        let unit = &p.units()[k];
        let task = p.graph.task(unit.task);
        let h = p.net.host(host);
        let i = host.index();
        if !task.demand.labels.is_subset(&h.labels) {
            return Err(Refusal::Label);
        }
        if self.used_cpu[i] + task.demand.cpu_millis > h.free_cpu_millis {
            return Err(Refusal::Cpu);
        }
        if self.used_mem[i] + task.demand.memory_mb > h.free_memory_mb {
            return Err(Refusal::Memory);
        }
        if p.units_of(unit.task)
            .take_while(|&u| u < k)
            .any(|u| self.host_of[u] == host)
        {
            return Err(Refusal::Replica);
        }
        for partner in p.partners(unit.task) {
            for u in p.units_of(partner.task).take_while(|&u| u < k) {
                let there = self.host_of[u];
                match p.net.rtt(host, there) {
                    Some(rtt) if rtt <= partner.call.latency_bound_ms => {}
                    _ => return Err(Refusal::Latency),
                }
                if partner.share > p.net.bandwidth(host, there) {
                    return Err(Refusal::Bandwidth);
                }
            }
        }
        Ok(())
    }

    /// Hosts within the next unit's call bound of its tree parent's first replica (the initiator
    /// alone for the root), before any other check. The parent's own host comes first.
    pub fn reachable(&self, out: &mut Vec<HostId>) {
        let p = self.problem;
        let unit = &p.units()[self.host_of.len()];
        match unit.parent {
            None => {
                out.clear();
                out.push(p.net.initiator());
            }
            Some((parent, call)) => {
                let from = self.host_of[p.unit_of(parent, 0)];
                p.net.within(from, call.latency_bound_ms, out);
            }
        }
    }

    /// Every host the next unit may take: [`Partial::reachable`] hosts that pass [`Partial::check`].
    pub fn candidates(&self, out: &mut Vec<HostId>) {
        self.reachable(out);
        out.retain(|&h| self.check(h).is_ok());
    }

    /// At most about `cap` hosts the next unit may take, for large networks. When many hosts are
    /// in reach, the draw weighs the parent's host, its measured neighbours and theirs (the
    /// overlay's own idea of near) within the bound, up to three quarters of `cap`, then fills
    /// up with hosts drawn uniformly from the network and kept if in reach, for exploration;
    /// that costs `cap` divided by the fraction in reach instead of a scan of every host.
    /// When the sample does not fill up quickly, every reachable host is listed, and if no
    /// sampled host can take the unit, every reachable host is tried, so the cap never turns a
    /// feasible unit into a dead end.
    pub fn sample_candidates(&self, cap: usize, rng: &mut impl rand::Rng, out: &mut Vec<HostId>) {
        let p = self.problem;
        let unit = &p.units()[self.host_of.len()];
        let n = p.net.len();
        let Some((parent, call)) = unit.parent.filter(|_| cap > 0 && n > 4 * cap) else {
            return self.candidates(out);
        };
        let from = self.host_of[p.unit_of(parent, 0)];
        let bound = call.latency_bound_ms;
        let in_reach = |h: HostId| matches!(p.net.rtt(from, h), Some(r) if r <= bound);
        let mut chosen = vec![from];
        let local = cap * 3 / 4;
        let mut hop = 0;
        while hop < chosen.len() && chosen.len() < local && hop <= p.net.links(from).len() {
            for (h, _) in p.net.links(chosen[hop]) {
                if chosen.len() < local && in_reach(*h) && !chosen.contains(h) {
                    chosen.push(*h);
                }
            }
            hop += 1;
        }
        let front = chosen.len();
        let wanted = cap.saturating_sub(front).max(cap / 4);
        let mut sampled = 0;
        for _ in 0..8 * cap {
            if sampled == wanted {
                break;
            }
            let h = HostId(rng.random_range(0..n) as u32);
            if in_reach(h) && !chosen.contains(&h) {
                chosen.push(h);
                sampled += 1;
            }
        }
        if sampled < wanted {
            // Few hosts in reach, or a thin fraction of the network: list them all.
            self.reachable(out);
            if out.len() <= cap + front {
                out.retain(|&h| self.check(h).is_ok());
                return;
            }
            chosen.truncate(front);
            let m = out.len();
            for i in 1..m.min(cap + 1) {
                let j = rng.random_range(i..m);
                out.swap(i, j);
                if !chosen[..front].contains(&out[i]) {
                    chosen.push(out[i]);
                }
            }
        }
        chosen.retain(|&h| self.check(h).is_ok());
        if chosen.is_empty() {
            self.candidates(out);
        } else {
            *out = chosen;
        }
    }

    /// Says why no host can take the next unit, counting refusals by reason.
    pub fn explain(&self) -> String {
        let p = self.problem;
        let unit = &p.units()[self.host_of.len()];
        if unit.parent.is_none() {
            let init = p.net.initiator();
            return match self.check(init) {
                Ok(()) => "the initiator can take it".into(),
                Err(r) => format!(
                    "it is the root and must run on the initiator `{}`, which refuses: {}",
                    p.net.host(init).id,
                    describe(r, self)
                ),
            };
        }
        let mut counts: Vec<(Refusal, usize)> = Vec::new();
        for (host, _) in p.net.hosts() {
            if let Err(r) = self.check(host) {
                match counts.iter_mut().find(|(x, _)| *x == r) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((r, 1)),
                }
            }
        }
        counts.sort();
        let mut s = format!("all {} hosts refuse it:", p.net.len());
        for (i, (r, n)) in counts.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            let _ = write!(s, "{sep}{n} {}", describe(*r, self));
        }
        if let Some((r, _)) = counts.iter().max_by_key(|(_, n)| *n) {
            let _ = write!(s, ". To place it: {}", remedy(*r));
        }
        s
    }
}

/// What an operator can change when most hosts refuse for reason `r`.
fn remedy(r: Refusal) -> &'static str {
    match r {
        Refusal::Latency => {
            "raise the latency bound of its calls, or add hosts nearer its partners"
        }
        Refusal::Label => "add hosts with the labels it needs, or drop a label from the task",
        Refusal::Cpu | Refusal::Memory => {
            "lower its cpu/memory demand or replica count, or free capacity on nearby hosts"
        }
        Refusal::Replica => "lower its replica count, or add hosts within its calls' bounds",
        Refusal::Bandwidth => "lower the traffic of its calls, or add faster links",
    }
}

fn describe(r: Refusal, p: &Partial) -> String {
    let pr = p.problem;
    let unit = &pr.units()[p.placed()];
    let task = pr.graph.task(unit.task);
    match r {
        Refusal::Latency => {
            let peers: Vec<String> = pr
                .partners(unit.task)
                .iter()
                .map(|x| {
                    format!(
                        "`{}` (bound {:.1} ms)",
                        pr.graph.task(x.task).name,
                        x.call.latency_bound_ms
                    )
                })
                .collect();
            format!(
                "are too far from, or of unknown distance to, the hosts of {}",
                peers.join(", ")
            )
        }
        Refusal::Label => format!(
            "lack one of the labels [{}]",
            task.demand
                .labels
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Refusal::Cpu => format!("lack {} free millicpu", task.demand.cpu_millis),
        Refusal::Memory => format!("lack {} MiB free memory", task.demand.memory_mb),
        Refusal::Replica => "already hold a replica of it".into(),
        Refusal::Bandwidth => "lack the bandwidth its calls need".into(),
    }
}
