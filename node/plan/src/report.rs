//! Shows a plan: to a person as a table that says why each replica landed where it did, to a
//! program as JSON with task names and host ids (indices mean nothing outside this process).

use std::fmt::Write as _;

use brume_placement::{HostId, Plan, Problem};
use serde_json::{json, Value};

use crate::manifest::Manifest;
use crate::verdict::{Algorithm, Search, Verdict};

/// What a report needs besides the verdict.
pub struct View<'a> {
    pub manifest: &'a Manifest,
    pub problem: &'a Problem<'a>,
    /// The policy as it names itself (a mix spells out its weights).
    pub policy: String,
    pub algorithm: Algorithm,
    pub seed: u64,
    pub node_limit: u64,
}

/// One replica's row, in placement order.
struct Row {
    task: String,
    replica: u32,
    replicas: u32,
    host: String,
    parent: Option<Parent>,
    probability: Option<f64>,
    /// Utilisation (CPU, memory) of the host before and after this replica, counting the host's
    /// own load and the replicas placed before it.
    cpu: (f64, f64),
    mem: (f64, f64),
}

struct Parent {
    task: String,
    host: String,
    rtt_ms: Option<f64>,
    bound_ms: f64,
}

impl View<'_> {
    fn rows(&self, plan: &Plan) -> Vec<Row> {
        let pr = self.problem;
        let (g, net) = (pr.graph, pr.net);
        let mut used: Vec<(u64, u64)> = vec![(0, 0); net.len()];
        let util = |host: HostId, used: (u64, u64)| {
            let h = net.host(host);
            let frac = |busy: u64, total: u64| {
                if total == 0 {
                    1.0
                } else {
                    busy as f64 / total as f64
                }
            };
            (
                frac(h.cpu_millis - h.free_cpu_millis + used.0, h.cpu_millis),
                frac(h.memory_mb - h.free_memory_mb + used.1, h.memory_mb),
            )
        };
        plan.placements
            .iter()
            .map(|p| {
                let task = g.task(p.task);
                let unit = pr.units()[pr.unit_of(p.task, p.replica)];
                let before = util(p.host, used[p.host.index()]);
                let u = &mut used[p.host.index()];
                u.0 += task.demand.cpu_millis;
                u.1 += task.demand.memory_mb;
                let after = util(p.host, *u);
                let parent = unit.parent.map(|(pt, call)| Parent {
                    task: g.task(pt).name.clone(),
                    host: plan
                        .host_of(pt, 0)
                        .map_or_else(|| "?".into(), |h| net.host(h).id.clone()),
                    rtt_ms: p.parent_rtt_ms,
                    bound_ms: call.latency_bound_ms,
                });
                Row {
                    task: task.name.clone(),
                    replica: p.replica,
                    replicas: task.replicas,
                    host: net.host(p.host).id.clone(),
                    parent,
                    // The root is pinned to the initiator, not drawn, whatever the placer recorded.
                    probability: p.probability.filter(|_| unit.parent.is_some()),
                    cpu: (before.0, after.0),
                    mem: (before.1, after.1),
                }
            })
            .collect()
    }

    /// The plan as a table, then a summary line.
    pub fn table(&self, plan: &Plan, search: &Search) -> String {
        let rows: Vec<[String; 4]> = self
            .rows(plan)
            .iter()
            .map(|r| {
                [
                    r.task.clone(),
                    format!("{}/{}", r.replica + 1, r.replicas),
                    r.host.clone(),
                    why(r),
                ]
            })
            .collect();
        let head = ["task", "replica", "host", "why"].map(String::from);
        let mut width = [0usize; 3];
        for row in std::iter::once(&head).chain(&rows) {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&head).chain(&rows) {
            let _ = writeln!(
                out,
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2]
            );
        }
        let _ = writeln!(out, "\n{}", self.summary(plan, search));
        out
    }

    fn summary(&self, plan: &Plan, search: &Search) -> String {
        let net = self.problem.net;
        let used: std::collections::BTreeSet<HostId> =
            plan.placements.iter().map(|p| p.host).collect();
        let head = format!(
            "service {}: {} replicas of {} tasks on {} of {} hosts; policy {}, objective {:.3}, algorithm {}",
            self.manifest.service.name,
            plan.placements.len(),
            self.problem.graph.task_count(),
            used.len(),
            net.len(),
            self.policy,
            plan.objective,
            self.algorithm.as_str(),
        );
        match search {
            Search::Rounding {
                rounds,
                feasible_rounds,
                best_round,
            } => format!(
                "{head} (seed {}): {feasible_rounds}/{rounds} rounds feasible, best round {best_round}",
                self.seed
            ),
            Search::Greedy => format!("{head}: one pass, cheapest feasible host each time"),
            Search::Exact {
                nodes,
                optimal: true,
            } => format!("{head}: optimal, proven after {nodes} search nodes"),
            Search::Exact {
                nodes,
                optimal: false,
            } => format!(
                "{head}: stopped at the node limit ({nodes} search nodes), best plan found so far, not proven optimal (raise --node-limit to search further)"
            ),
        }
    }

    /// The verdict as one JSON document.
    pub fn json(&self, verdict: &Verdict) -> Value {
        let mut doc = json!({
            "service": self.manifest.service.name,
            "policy": self.policy,
            "algorithm": self.algorithm.as_str(),
            "seed": self.seed,
        });
        match verdict {
            Verdict::Placed { plan, search } => {
                doc["feasible"] = json!(true);
                doc["objective"] = json!(plan.objective);
                let plan_rows: Vec<Value> = self
                    .rows(plan)
                    .iter()
                    .map(|r| {
                        json!({
                            "task": r.task,
                            "replica": r.replica,
                            "host": r.host,
                            "parent": r.parent.as_ref().map(|p| json!({
                                "task": p.task,
                                "host": p.host,
                                "rtt_ms": p.rtt_ms,
                                "bound_ms": p.bound_ms,
                            })),
                            "probability": r.probability,
                            "cpu_util": [r.cpu.0, r.cpu.1],
                            "memory_util": [r.mem.0, r.mem.1],
                        })
                    })
                    .collect();
                doc["plan"] = Value::Array(plan_rows);
                match search {
                    Search::Rounding {
                        rounds,
                        feasible_rounds,
                        best_round,
                    } => {
                        doc["rounds"] = json!(rounds);
                        doc["feasible_rounds"] = json!(feasible_rounds);
                        doc["best_round"] = json!(best_round);
                    }
                    Search::Greedy => {}
                    Search::Exact { nodes, optimal } => {
                        doc["optimal"] = json!(optimal);
                        doc["search_nodes"] = json!(nodes);
                        doc["node_limit"] = json!(self.node_limit);
                        doc["node_limit_hit"] = json!(!optimal);
                    }
                }
            }
            Verdict::NoPlan { task, reason } => {
                doc["feasible"] = json!(false);
                doc["task"] = json!(task);
                doc["reason"] = json!(reason);
                doc["error"] = json!(verdict.message());
            }
        }
        doc
    }
}

/// Why a replica sits where it does, e.g.
/// `rtt 4.2 ms to aggregator@gw-0 (bound 20 ms), drawn p=0.31, cpu 35%→60%, mem 10%→22%`.
fn why(r: &Row) -> String {
    let mut parts = Vec::with_capacity(4);
    match &r.parent {
        None => parts.push("root: runs on the initiator".to_string()),
        Some(p) => {
            let rtt = p
                .rtt_ms
                .map_or_else(|| "rtt unknown".into(), |x| format!("rtt {x:.1} ms"));
            parts.push(format!(
                "{rtt} to {}@{} (bound {} ms)",
                p.task, p.host, p.bound_ms
            ));
        }
    }
    if let Some(p) = r.probability {
        parts.push(format!("drawn p={p:.2}"));
    }
    let pct = |x: f64| (x * 100.0).round();
    parts.push(format!("cpu {}%→{}%", pct(r.cpu.0), pct(r.cpu.1)));
    parts.push(format!("mem {}%→{}%", pct(r.mem.0), pct(r.mem.1)));
    parts.join(", ")
}
