//! The greedy baseline: each unit, in breadth-first order, on the feasible host with the smallest
//! marginal cost (ties to the lowest host index). One pass, no randomness, no second chance.

use crate::error::PlacementError;
use crate::partial::Partial;
use crate::plan::Plan;
use crate::policy::Policy;
use crate::problem::Problem;
use crate::rounding::no_host;

pub fn place(problem: &Problem, policy: &dyn Policy) -> Result<Plan, PlacementError> {
    let mut partial = Partial::new(problem);
    let mut candidates = Vec::new();
    while !partial.is_complete() {
        partial.candidates(&mut candidates);
        let best = candidates
            .iter()
            .map(|&h| (policy.marginal(&partial, h), h))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((_, h)) => partial.place(h),
            None => return Err(no_host(&partial, 0)),
        }
    }
    let objective = policy.objective(&partial);
    Ok(Plan::from_partial(&partial, objective, &[]))
}
