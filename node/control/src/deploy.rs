//! What `brume deploy` asks, what a deploy reports as it goes and what it answers when it
//! ends: the deploy's part of the control API, which the CLI draws
//! (one progress bar per task instance, then a table) or prints as JSON.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How `brume deploy` asks for a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The manifest, as an absolute path on the node's machine.
    pub manifest: PathBuf,
    pub budget_ms: f64,
    pub policy: String,
    pub seed: u64,
    pub rounds: u32,
}

/// One step of one task instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub task: String,
    pub replica: u32,
    /// The host's peer id.
    pub peer: String,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    /// Placed on the host; the request is on its way.
    Placed,
    Fetching {
        done: u64,
        total: u64,
    },
    Building,
    Starting,
    Running {
        port: u16,
        reused: bool,
    },
    Failed {
        reason: String,
    },
    /// Stopped again because another instance failed.
    RolledBack,
}

/// One row of the final table (and of `brume ps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub task: String,
    pub replica: u32,
    /// The host's overlay node id (`n…`, as map links name it) and its peer id.
    pub host: String,
    pub peer: String,
    pub engine: String,
    pub state: String,
    /// `127.0.0.1:port` on the host.
    pub address: String,
    /// How long ago the owner received the latest periodic checkpoint it keeps of the instance
    /// (`brume ps` on the owner; absent when it keeps none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_age_ms: Option<u64>,
}

/// What a successful deploy answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    pub service: String,
    pub epoch: u64,
    pub elapsed_ms: u64,
    pub map_nodes: usize,
    pub instances: Vec<Row>,
}
