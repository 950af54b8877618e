//! What a deploy reports as it goes and when it ends, in the shape the control socket carries
//! to `brume deploy` (JSON) and the CLI draws (one progress bar per task instance).

use serde::{Deserialize, Serialize};

/// One step of one task instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub task: String,
    pub replica: u32,
    /// The host's node id as maps print it.
    pub host: String,
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

/// One row of the final table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub task: String,
    pub replica: u32,
    pub host: String,
    pub peer: String,
    pub engine: String,
    pub state: String,
    /// `127.0.0.1:port` on the host.
    pub address: String,
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
