//! brume's placement engine: where each task of a service should run.
//!
//! Pure and deterministic, with no I/O. A [`CallGraph`] (tasks with demands, calls with latency
//! bounds and traffic) and a [`Network`] (hosts with free resources and qualities, measured links
//! and latency coordinates) form a [`Problem`], which unrolls the graph breadth-first from the root
//! into units, one per replica. A [`Partial`] plan grows along that order; it alone decides what is
//! feasible. A [`Policy`] says what a good plan is. Three placers share those pieces:
//! [`rounding`] (the algorithm brume uses: breadth-first randomized rounding, best of k seeded
//! rounds), [`greedy`] (a baseline) and [`exact`] (branch and bound for small instances, to measure
//! the optimality gap). [`generate`] makes random instances for tests and benchmarks.

pub mod error;
pub mod exact;
pub mod generate;
pub mod graph;
pub mod greedy;
pub mod network;
pub mod partial;
pub mod plan;
pub mod policy;
pub mod problem;
pub mod rounding;

pub use error::{GraphError, NetworkError, PlacementError};
pub use graph::{Call, CallGraph, Demand, Task, TaskId};
pub use network::{Coord, Host, HostId, Link, Network};
pub use partial::Partial;
pub use plan::{Placement, Plan};
pub use policy::Policy;
pub use problem::Problem;
pub use rounding::{Outcome, RoundingConfig};
