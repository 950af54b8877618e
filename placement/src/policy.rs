//! Policies: what makes one plan better than another.
//!
//! A policy gives two numbers. Its *objective* rates a plan (lower is better) and must be defined
//! for partial plans too; its *lower bound* on a partial plan never exceeds the objective of any
//! completion, which is what lets the exact solver prune. Its *marginal* rates putting the next
//! unit on a host given what is placed: the increase of the objective, or a proxy that orders
//! hosts the same way. Randomized rounding turns marginals into probabilities; greedy takes the
//! smallest.

use crate::network::HostId;
use crate::partial::Partial;

/// A placement objective. Lower is better.
pub trait Policy: std::fmt::Debug + Send + Sync {
    fn name(&self) -> String;
    /// Cost of putting the next unit of `p` on `host`, relative to other hosts.
    fn marginal(&self, p: &Partial, host: HostId) -> f64;
    /// Objective of the placed prefix.
    fn objective(&self, p: &Partial) -> f64;
    /// A value no completion of `p` can beat. Must equal [`Policy::objective`] on complete plans.
    fn lower_bound(&self, p: &Partial) -> f64 {
        self.objective(p)
    }
}

/// Traffic-weighted latency: the sum over calls of traffic (Mbit/s) times RTT (ms), averaged over
/// the pairs of replicas of caller and callee.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency;

/// Load balance: the highest utilisation (CPU or memory, whichever is fuller, counting the
/// host's own load) among the hosts the plan uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadBalance;

/// Energy: watts drawn by the cores the plan asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Energy;

/// Cost: price per hour of the cores the plan asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost;

/// Reliability: minus the log of the probability that every task keeps at least one replica's
/// host alive, with hosts failing independently.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reliability;

/// A weighted sum of policies.
#[derive(Debug, Default)]
pub struct Mix(pub Vec<(f64, Box<dyn Policy>)>);

/// Sum over the placed replicas of the call partners of the next unit's task: share of traffic
/// times RTT from `host`.
fn latency_to_placed(p: &Partial, host: HostId) -> f64 {
    let pr = p.problem;
    let k = p.placed();
    let task = pr.units()[k].task;
    let mut sum = 0.0;
    for partner in pr.partners(task) {
        for u in pr.units_of(partner.task).take_while(|&u| u < k) {
            sum += partner.share * pr.net.rtt(host, p.hosts()[u]).unwrap_or(f64::INFINITY);
        }
    }
    sum
}

/// Lookahead for the latency marginal. The next unit's breadth-first subtree is not placed yet;
/// its tasks will sit beside it on `host` while they fit there (in breadth-first order, one
/// replica each), and each tree call that leaves `host` pays at least the RTT of the host's
/// shortest measured link (half the call's bound when the host has none). Without this,
/// rounding fills the parent's host with light tasks and leaves no room for the heavy subtree
/// behind them. Only the first replica of a task looks ahead; later ones follow it.
fn latency_lookahead(p: &Partial, host: HostId) -> f64 {
    let pr = p.problem;
    let unit = pr.units()[p.placed()];
    if unit.replica > 0 {
        return 0.0;
    }
    let subtree = pr.subtree(unit.task);
    let h = pr.net.host(host);
    let (cpu, mem) = p.used(host);
    let d0 = &pr.graph.task(unit.task).demand;
    let mut room_cpu = h.free_cpu_millis.saturating_sub(cpu + d0.cpu_millis);
    let mut room_mem = h.free_memory_mb.saturating_sub(mem + d0.memory_mb);
    let leave = pr.net.nearest_rtt(host);
    // Bit i: descendant i sits on `host`.
    let mut on_host: u64 = 1;
    let mut cost = 0.0;
    for (i, d) in subtree.iter().enumerate().skip(1) {
        if on_host & (1 << d.parent) == 0 {
            continue;
        }
        let task = pr.graph.task(d.task);
        let need = &task.demand;
        let fits = need.cpu_millis <= room_cpu
            && need.memory_mb <= room_mem
            && need.labels.is_subset(&h.labels);
        let parent_reps = f64::from(pr.graph.task(subtree[d.parent].task).replicas);
        let mut away = f64::from(task.replicas);
        if fits {
            room_cpu -= need.cpu_millis;
            room_mem -= need.memory_mb;
            on_host |= 1 << i;
            away -= 1.0;
        }
        if away > 0.0 {
            let bound = pr
                .partners(d.task)
                .iter()
                .find(|x| x.task == subtree[d.parent].task)
                .map_or(0.0, |x| x.call.latency_bound_ms);
            cost += d.share * away * parent_reps * leave.unwrap_or(bound / 2.0);
        }
    }
    cost
}

impl Policy for Latency {
    fn name(&self) -> String {
        "latency".into()
    }
    fn marginal(&self, p: &Partial, host: HostId) -> f64 {
        latency_to_placed(p, host) + latency_lookahead(p, host)
    }
    fn objective(&self, p: &Partial) -> f64 {
        let pr = p.problem;
        let k = p.placed();
        let mut sum = 0.0;
        for (a, b, call) in pr.graph.calls() {
            let share = call.traffic_mbps
                / (pr.graph.task(a).replicas as f64 * pr.graph.task(b).replicas as f64);
            for ua in pr.units_of(a).take_while(|&u| u < k) {
                for ub in pr.units_of(b).take_while(|&u| u < k) {
                    let rtt = pr.net.rtt(p.hosts()[ua], p.hosts()[ub]);
                    sum += share * rtt.unwrap_or(f64::INFINITY);
                }
            }
        }
        sum
    }
}

impl Policy for LoadBalance {
    fn name(&self) -> String {
        "load".into()
    }
    fn marginal(&self, p: &Partial, host: HostId) -> f64 {
        let d = &p
            .problem
            .graph
            .task(p.problem.units()[p.placed()].task)
            .demand;
        let after = p.util_with(host, (d.cpu_millis, d.memory_mb));
        // The rise of the maximum, plus a little of the host's own level so that among hosts
        // that leave the maximum alone the emptier ones are preferred.
        (after - p.max_util()).max(0.0) + 0.05 * after
    }
    fn objective(&self, p: &Partial) -> f64 {
        p.max_util()
    }
}

fn cores_of_next(p: &Partial) -> f64 {
    let task = p.problem.units()[p.placed()].task;
    p.problem.graph.task(task).demand.cpu_millis as f64 / 1000.0
}

fn sum_per_core(p: &Partial, per_core: impl Fn(HostId) -> f64) -> f64 {
    let pr = p.problem;
    p.hosts()
        .iter()
        .zip(pr.units())
        .map(|(h, u)| pr.graph.task(u.task).demand.cpu_millis as f64 / 1000.0 * per_core(*h))
        .sum()
}

impl Policy for Energy {
    fn name(&self) -> String {
        "energy".into()
    }
    fn marginal(&self, p: &Partial, host: HostId) -> f64 {
        cores_of_next(p) * p.problem.net.host(host).watts_per_core
    }
    fn objective(&self, p: &Partial) -> f64 {
        sum_per_core(p, |h| p.problem.net.host(h).watts_per_core)
    }
}

impl Policy for Cost {
    fn name(&self) -> String {
        "cost".into()
    }
    fn marginal(&self, p: &Partial, host: HostId) -> f64 {
        cores_of_next(p) * p.problem.net.host(host).cost_per_core_hour
    }
    fn objective(&self, p: &Partial) -> f64 {
        sum_per_core(p, |h| p.problem.net.host(h).cost_per_core_hour)
    }
}

impl Reliability {
    /// Per task: the probability that all placed replicas' hosts fail, and whether all are placed.
    fn per_task<'s>(p: &'s Partial<'_, '_>) -> impl Iterator<Item = (f64, bool)> + 's {
        let pr = p.problem;
        let k = p.placed();
        pr.graph.tasks().filter_map(move |(id, _)| {
            let units = pr.units_of(id);
            let complete = units.end <= k;
            let mut all_fail = 1.0;
            let mut any = false;
            for u in units.take_while(|&u| u < k) {
                any = true;
                all_fail *= 1.0 - pr.net.host(p.hosts()[u]).reliability;
            }
            any.then_some((all_fail, complete))
        })
    }
}

fn neg_log_survive(all_fail: f64) -> f64 {
    -(1.0 - all_fail).ln()
}

impl Policy for Reliability {
    fn name(&self) -> String {
        "reliability".into()
    }
    fn marginal(&self, p: &Partial, host: HostId) -> f64 {
        let pr = p.problem;
        let k = p.placed();
        let task = pr.units()[k].task;
        let all_fail: f64 = pr
            .units_of(task)
            .take_while(|&u| u < k)
            .map(|u| 1.0 - pr.net.host(p.hosts()[u]).reliability)
            .product();
        let before = if pr.unit_of(task, 0) < k {
            neg_log_survive(all_fail)
        } else {
            0.0
        };
        neg_log_survive(all_fail * (1.0 - pr.net.host(host).reliability)) - before
    }
    fn objective(&self, p: &Partial) -> f64 {
        Self::per_task(p).map(|(f, _)| neg_log_survive(f)).sum()
    }
    fn lower_bound(&self, p: &Partial) -> f64 {
        // A task with replicas still to place could yet reach certainty on perfect hosts.
        Self::per_task(p)
            .filter(|(_, complete)| *complete)
            .map(|(f, _)| neg_log_survive(f))
            .sum()
    }
}

impl Policy for Mix {
    fn name(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(w, p)| format!("{}={w}", p.name()))
            .collect();
        format!("mix:{}", parts.join(","))
    }
    fn marginal(&self, p: &Partial, host: HostId) -> f64 {
        self.0.iter().map(|(w, x)| w * x.marginal(p, host)).sum()
    }
    fn objective(&self, p: &Partial) -> f64 {
        self.0.iter().map(|(w, x)| w * x.objective(p)).sum()
    }
    fn lower_bound(&self, p: &Partial) -> f64 {
        self.0.iter().map(|(w, x)| w * x.lower_bound(p)).sum()
    }
}

/// Names accepted by [`by_name`], for help texts.
pub const POLICY_NAMES: &str =
    "latency, load, energy, cost, reliability, or mix:NAME=WEIGHT,NAME=WEIGHT (e.g. mix:latency=1,load=50)";

/// Parses a policy name as the CLI and the manifest spell it.
pub fn by_name(name: &str) -> Result<Box<dyn Policy>, String> {
    match name.trim() {
        "latency" => Ok(Box::new(Latency)),
        "load" | "load-balance" => Ok(Box::new(LoadBalance)),
        "energy" => Ok(Box::new(Energy)),
        "cost" => Ok(Box::new(Cost)),
        "reliability" => Ok(Box::new(Reliability)),
        other => {
            let Some(spec) = other.strip_prefix("mix:") else {
                return Err(format!("unknown policy `{other}`: use {POLICY_NAMES}"));
            };
            let mut parts = Vec::new();
            for item in spec.split(',').filter(|s| !s.trim().is_empty()) {
                let (n, w) = item
                    .split_once('=')
                    .ok_or_else(|| format!("`{item}` in `{other}` needs the form NAME=WEIGHT"))?;
                let w: f64 = w
                    .trim()
                    .parse()
                    .map_err(|_| format!("weight `{w}` of `{n}` is not a number"))?;
                if !(w.is_finite() && w >= 0.0) {
                    return Err(format!("weight of `{n}` must be a finite number >= 0"));
                }
                if n.trim().starts_with("mix:") {
                    return Err("a mix cannot contain another mix".into());
                }
                parts.push((w, by_name(n)?));
            }
            if parts.is_empty() {
                return Err(format!("`{other}` names no policy: use {POLICY_NAMES}"));
            }
            Ok(Box::new(Mix(parts)))
        }
    }
}
