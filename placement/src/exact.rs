//! An exact solver for small instances: depth-first branch and bound over the same unit order and
//! the same feasibility rules as rounding, trying hosts by increasing marginal cost and pruning a
//! branch once the policy's lower bound reaches the best complete plan found. It exists to measure
//! how far randomized rounding is from optimal, so it stays simple and obviously right.

use crate::network::HostId;
use crate::partial::Partial;
use crate::plan::Plan;
use crate::policy::Policy;
use crate::problem::Problem;

/// What the search found.
#[derive(Debug, Clone)]
pub enum Exact {
    /// The best plan there is.
    Optimal(Plan),
    /// No plan satisfies every rule.
    Infeasible,
    /// The node limit stopped the search; the best plan found so far, if any.
    Limit(Option<Plan>),
}

/// The result and the number of search nodes visited.
#[derive(Debug, Clone)]
pub struct ExactOutcome {
    pub result: Exact,
    pub nodes: u64,
}

struct Search<'s, 'p, 'a> {
    policy: &'s dyn Policy,
    partial: Partial<'p, 'a>,
    best: Option<(f64, Plan)>,
    nodes: u64,
    limit: u64,
}

/// Searches at most `node_limit` placements.
pub fn solve(problem: &Problem, policy: &dyn Policy, node_limit: u64) -> ExactOutcome {
    let mut s = Search {
        policy,
        partial: Partial::new(problem),
        best: None,
        nodes: 0,
        limit: node_limit,
    };
    let complete = s.descend();
    let plan = s.best.map(|(_, p)| p);
    let result = match (complete, plan) {
        (true, Some(p)) => Exact::Optimal(p),
        (true, None) => Exact::Infeasible,
        (false, p) => Exact::Limit(p),
    };
    ExactOutcome {
        result,
        nodes: s.nodes,
    }
}

impl Search<'_, '_, '_> {
    /// Explores every completion of the current prefix; false if the node limit cut it short.
    fn descend(&mut self) -> bool {
        if self.partial.is_complete() {
            let obj = self.policy.objective(&self.partial);
            if self.best.as_ref().is_none_or(|(b, _)| obj < *b) {
                self.best = Some((obj, Plan::from_partial(&self.partial, obj, &[])));
            }
            return true;
        }
        let mut hosts: Vec<HostId> = Vec::new();
        self.partial.candidates(&mut hosts);
        let mut ordered: Vec<(f64, HostId)> = hosts
            .into_iter()
            .map(|h| (self.policy.marginal(&self.partial, h), h))
            .collect();
        ordered.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (_, h) in ordered {
            if self.nodes >= self.limit {
                return false;
            }
            self.nodes += 1;
            self.partial.place(h);
            let bound = self.policy.lower_bound(&self.partial);
            let promising = match &self.best {
                None => true,
                Some((b, _)) => bound < *b - 1e-12 * b.abs().max(1.0),
            };
            let finished = !promising || self.descend();
            self.partial.unplace();
            if !finished {
                return false;
            }
        }
        true
    }
}
