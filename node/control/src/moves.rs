//! The move's part of the control API: how `brume migrate` and `brume drain` ask, the progress
//! a move reports (in terms of its own, not the wire's: brume turns the host's phases into
//! [`MoveStep`]s), and what they answer.

use serde::{Deserialize, Serialize};

/// How `brume migrate` asks for a move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub service: Option<String>,
    pub task: String,
    pub replica: u32,
    /// The target's peer id; `None` lets the node that runs the instance pick.
    pub to: Option<String>,
    pub budget_ms: u64,
    /// Restart cold a task whose state cannot be carried.
    pub cold: bool,
    /// Give up, leaving the instance where it is, if the move takes longer.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The longest freeze a live move may predict before it gives up (the planner's default
    /// when `None`).
    #[serde(default)]
    pub max_downtime_ms: Option<u64>,
    /// Freeze a live move's task whatever its predicted downtime (the task's
    /// `downtime_budget_ms` and `max_downtime_ms` do not hold).
    #[serde(default)]
    pub force: bool,
}

/// A phase of a move of one instance, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveProgress {
    pub service: String,
    pub task: String,
    pub replica: u32,
    pub step: MoveStep,
}

/// What a move is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum MoveStep {
    /// The target is chosen: its peer id and overlay node id.
    Target { peer: String, host: String },
    /// The instance's state is captured (`bytes` of it).
    Checkpointed { bytes: u64 },
    /// The target fetches the artifact's chunks it lacks.
    Fetching { done: u64, total: u64 },
    /// The target builds or loads the image.
    Building,
    /// The target starts the task.
    Starting,
    /// A round of a live CRIU move ended (sizes in bytes, rate in bytes/s).
    Round {
        round: u32,
        /// The final round: the task was frozen for it.
        last: bool,
        dumped_bytes: u64,
        delta_bytes: u64,
        wire_bytes: u64,
        round_ms: u64,
        dump_ms: u64,
        rate: u64,
        /// After a pre-copy round: the planner's predicted downtime if it froze now.
        predicted_downtime_ms: Option<u64>,
    },
    /// A live move's task runs on the target: how long it was frozen, the target's restore,
    /// rounds and bytes sent in all.
    Restored {
        downtime_ms: u64,
        restore_ms: u64,
        rounds: u32,
        wire_bytes: u64,
    },
    /// The new instance runs; callers are switched to it and the old one stops.
    Switching,
}

/// One finished move, as `brume migrate` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    pub service: String,
    pub task: String,
    pub replica: u32,
    /// The new host's node id and peer id.
    pub host: String,
    pub peer: String,
    /// `app` (the task's own checkpoint went along), `criu` (moved live, `state_bytes` is what
    /// the pre-copy sent) or `cold`.
    pub mode: String,
    pub state_bytes: u64,
    /// How long calls to the instance were held: the pause its callers saw.
    pub held_ms: u64,
    /// The whole move, from the request.
    pub elapsed_ms: u64,
    /// Nodes that acknowledged the new route.
    pub told: usize,
    /// Where the new instance listens on its host.
    pub address: String,
}

/// One line of a drain's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainLine {
    pub service: String,
    pub task: String,
    pub replica: u32,
    pub outcome: Result<Moved, String>,
    /// With a deadline: whether the instance ran on its new host before it.
    #[serde(default)]
    pub on_time: Option<bool>,
}
