//! What an initiator and a host say to each other on `/brume/deploy/1`.
//!
//! One request per stream, as length-prefixed CBOR frames ([`brume_overlay::frames`]). A deploy request
//! is answered by any number of [`AgentReply::Phase`] frames (what the host is doing: fetching
//! the artifact's chunks, building, starting) and then exactly one final frame. Every name that
//! ends up in a container name, a file name or an environment variable is checked here, on the
//! host, before anything is done with it: the request comes from the network.

use std::collections::BTreeMap;

use brume_overlay::StreamProtocol;
use serde::{Deserialize, Serialize};

use brume_artifact::chunks::ArtifactManifest;

pub const DEPLOY_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/deploy/1");

/// Largest request or reply frame (logs are cut to fit).
pub const MAX_FRAME: usize = 4 << 20;

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A content-addressed artifact the host fetches from the initiator.
    Artifact(ArtifactManifest),
    /// An argv run as-is on the host (process engine only; nothing is shipped).
    Command(Vec<String>),
}

/// Where each replica of a called task runs: the host's peer id, in replica order, and where
/// to dial it. The addresses let a host that never met the callee's host reach it (a caller
/// moved to a node outside the callee's neighbourhood); empty when unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallTarget {
    pub task: String,
    pub hosts: Vec<String>,
    /// Per host, in the same order (may be shorter: a missing entry is "none known").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<Vec<String>>,
}

/// At most this many addresses per host in a [`CallTarget`], each at most this long.
const MAX_HOST_ADDRS: usize = 16;
const MAX_ADDR_LEN: usize = 512;

/// One task instance for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub service: String,
    /// Deployment epoch: a newer epoch replaces an older one; a stale one is refused.
    pub epoch: u64,
    pub task: String,
    pub replica: u32,
    pub payload: Payload,
    pub cpu_millis: u64,
    pub memory_mb: u64,
    pub env: BTreeMap<String, String>,
    pub calls: Vec<CallTarget>,
    /// Restarts allowed after a crash (0: never restarted).
    pub max_restarts: u32,
    /// How the instance's state moves with it when it is migrated.
    #[serde(default)]
    pub checkpoint: CheckpointMode,
    /// The peer id of the node that deployed the service (it keeps the service's ledger and is
    /// told when the instance moves); empty when unknown.
    #[serde(default)]
    pub initiator: String,
}

/// How an instance's state moves when it is migrated (the manifest's `checkpoint`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointMode {
    /// Stateless: a new instance starts on the target and the old one stops (cold restart).
    #[default]
    None,
    /// The task exports its own state: it answers `CHECKPOINT` on its port with one line, and
    /// a new instance started with that line in `BRUME_RESTORE` continues from it.
    App,
    /// The process is checkpointed with CRIU.
    Criu,
}

impl CheckpointMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointMode::None => "none",
            CheckpointMode::App => "app",
            CheckpointMode::Criu => "criu",
        }
    }
}

/// What the host is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    Deploy(InstanceSpec),
    /// Fetches and builds an instance's image without starting it (a move does this before
    /// it holds the instance's callers).
    Prepare(InstanceSpec),
    /// Stops and removes a service's instances here (of one epoch, or all).
    Stop {
        service: String,
        epoch: Option<u64>,
    },
    /// The instances running here (of one service, or all).
    List {
        service: Option<String>,
    },
    Logs {
        service: String,
        task: String,
        replica: u32,
        tail: usize,
    },
    /// Moves an instance running on this host to `to` (a peer id), or to a host this node picks
    /// from its map within `budget_ms` when `to` is `None`.
    Migrate {
        service: String,
        task: String,
        replica: u32,
        to: Option<String>,
        budget_ms: u64,
        /// Restart the task cold instead of carrying its state (a `checkpoint = "criu"` task
        /// that cannot move live is refused without it).
        allow_cold: bool,
        /// Give up, leaving the instance where it is, if the move takes longer.
        #[serde(default)]
        deadline_ms: Option<u64>,
        /// The longest freeze a live move may predict before it gives up.
        #[serde(default)]
        max_downtime_ms: Option<u64>,
    },
    /// Stops and removes one instance of the given epoch (a move that gave up undoes its start
    /// on the target); calls to it from here then go to `back_to` (a peer id) if given.
    Remove {
        service: String,
        task: String,
        replica: u32,
        epoch: u64,
        back_to: Option<String>,
    },
    /// An instance now runs on `peer`: calls to it go there from now on.
    Moved {
        service: String,
        task: String,
        replica: u32,
        peer: String,
        /// The new host's node id and dialable addresses, for the initiator's ledger.
        host: String,
        addrs: Vec<String>,
    },
}

/// A step of a deploy on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Fetching {
        done: u64,
        total: u64,
    },
    Building,
    Starting,
    /// A migration chose its target host.
    Target {
        peer: String,
        host: String,
    },
    /// A migration captured the instance's state (`bytes` of it).
    Checkpointed {
        bytes: u64,
    },
    /// A migration's new instance runs; callers are being switched to it.
    Switching,
    /// A round of a live CRIU migration ended (sizes in bytes, rate in bytes/s).
    Round {
        round: u32,
        /// The final round: the task was frozen for it.
        last: bool,
        dumped_bytes: u64,
        delta_bytes: u64,
        wire_bytes: u64,
        /// Wall time of the round and of its dump.
        round_ms: u64,
        dump_ms: u64,
        rate: u64,
        /// After a pre-copy round: the planner's predicted downtime if it froze now.
        predicted_downtime_ms: Option<u64>,
    },
    /// A live CRIU migration's task runs on the target: how long it was frozen (final dump to
    /// restored), the target's `criu restore`, rounds and bytes sent in all.
    Restored {
        downtime_ms: u64,
        restore_ms: u64,
        rounds: u32,
        wire_bytes: u64,
    },
}

/// One instance as a host reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub service: String,
    pub epoch: u64,
    pub task: String,
    pub replica: u32,
    /// Engine-level name (container or process name).
    pub name: String,
    pub engine: String,
    /// The port the task listens on, on the host's loopback.
    pub port: u16,
    /// running, exited (code), restarting, missing...
    pub state: String,
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

/// What the host answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentReply {
    /// Progress of a deploy; more frames follow.
    Phase(Phase),
    /// The instance runs (`reused`: it already ran with this epoch, nothing was done).
    Started {
        instance: InstanceView,
        reused: bool,
    },
    /// Nothing was started, and nothing is left behind.
    Refused {
        reason: String,
    },
    Stopped {
        instances: Vec<String>,
    },
    Instances(Vec<InstanceView>),
    Logs(String),
    /// The instance moved: it runs on `to` (as `instance`) and no longer here.
    Migrated {
        to: String,
        host: String,
        instance: InstanceView,
        mode: String,
        /// Bytes of state carried.
        state_bytes: u64,
        /// How long calls to the instance were held (checkpoint, start on the target,
        /// switch), in milliseconds: the pause callers saw.
        held_ms: u64,
        /// Hosts told about the move.
        told: usize,
    },
    /// The image of a `Prepare` is ready here.
    Prepared,
    /// How many routes a `Moved` changed here.
    Rerouted {
        routes: usize,
    },
}

/// Why a name from a request is refused (the rule is [`crate::naming`]'s, the manifest's too).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if crate::naming::is_valid(name) {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} is not allowed: {}",
            crate::naming::RULE
        ))
    }
}

impl InstanceSpec {
    /// Checks every field a host acts on.
    pub fn check(&self) -> Result<(), String> {
        check_name("service", &self.service)?;
        check_name("task", &self.task)?;
        for c in &self.calls {
            check_name("called task", &c.task)?;
            if c.hosts.is_empty() || c.hosts.len() > 1024 {
                return Err(format!("call to {} lists {} hosts", c.task, c.hosts.len()));
            }
            if c.addrs.len() > c.hosts.len() {
                return Err(format!(
                    "call to {} gives addresses for {} hosts but lists {}",
                    c.task,
                    c.addrs.len(),
                    c.hosts.len()
                ));
            }
            let too_many = c
                .addrs
                .iter()
                .any(|a| a.len() > MAX_HOST_ADDRS || a.iter().any(|x| x.len() > MAX_ADDR_LEN));
            if too_many {
                return Err(format!(
                    "call to {}: at most {MAX_HOST_ADDRS} addresses of at most {MAX_ADDR_LEN} \
                     bytes per host",
                    c.task
                ));
            }
        }
        for k in self.env.keys() {
            let ok = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(format!("environment variable name {k:?} is not allowed"));
            }
        }
        match &self.payload {
            Payload::Artifact(m) => m.validate().map_err(|e| e.to_string())?,
            Payload::Command(argv) if argv.is_empty() => {
                return Err("empty command".to_string());
            }
            Payload::Command(_) => {}
        }
        if self.cpu_millis == 0 || self.memory_mb == 0 {
            return Err("a task must ask for some CPU and memory".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_network_are_checked() {
        assert!(check_name("task", "trainer-2").is_ok());
        for bad in ["", "Trainer", "a/b", "-x", "a b", "..", &"x".repeat(64)] {
            assert!(check_name("task", bad).is_err(), "{bad:?} accepted");
        }
    }
}
