//! What a placement run found, apart from how it is shown: the algorithm asked for, how the
//! search went, and the plan or why there is none. `place` produces these and `report` shows
//! them, so both depend on this file and neither on the other.

use brume_placement::{PlacementError, Plan};

/// Which placer runs (`--algorithm`); reports name it so a plan says how it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    Rounding,
    Greedy,
    Exact,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rounding => "rounding",
            Algorithm::Greedy => "greedy",
            Algorithm::Exact => "exact",
        }
    }
}

/// How the algorithm got to its plan.
#[derive(Debug, Clone)]
pub enum Search {
    Rounding {
        rounds: u32,
        feasible_rounds: u32,
        best_round: u32,
    },
    Greedy,
    Exact {
        nodes: u64,
        /// False when the node limit stopped the search: the plan is the best found, unproven.
        optimal: bool,
    },
}

/// A plan, or why there is none.
#[derive(Debug, Clone)]
pub enum Verdict {
    Placed {
        plan: Plan,
        search: Search,
    },
    NoPlan {
        /// The task that could not be placed, when one could be named.
        task: Option<String>,
        reason: String,
    },
}

impl Verdict {
    pub(crate) fn from_error(e: PlacementError) -> anyhow::Result<Self> {
        match e {
            PlacementError::NoHost { task, why } => Ok(Verdict::NoPlan {
                task: Some(task),
                reason: why,
            }),
            // The manifest parser refuses every graph placement would; reaching this is a bug.
            PlacementError::Graph(g) => Err(anyhow::anyhow!("the call graph is invalid: {g}")),
        }
    }

    /// The one-line error a person reads when there is no plan.
    pub fn message(&self) -> Option<String> {
        match self {
            Verdict::Placed { .. } => None,
            Verdict::NoPlan {
                task: Some(task),
                reason,
            } => Some(format!("task {task} could not be placed: {reason}")),
            Verdict::NoPlan { task: None, reason } => Some(reason.clone()),
        }
    }
}
