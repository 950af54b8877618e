//! What an initiator and a host say to each other on `/brume/deploy/3`: run, prepare, list,
//! show the logs of, stop and remove task instances. (Moves have a protocol of their own,
//! [`crate::migrate::wire`].)
//!
//! One request per stream, as length-prefixed CBOR frames ([`brume_overlay::frames`]). A deploy request
//! is answered by any number of [`AgentReply::Phase`] frames (what the host is doing: fetching
//! the artifact's chunks, building, starting) and then exactly one final frame. Every name that
//! ends up in a container name, a file name or an environment variable is checked here, on the
//! host, before anything is done with it: the request comes from the network.

use std::collections::BTreeMap;

use brume_overlay::{Multiaddr, PeerId, StreamProtocol};
use brume_tunnel::InstanceId;
use serde::{Deserialize, Serialize};

use brume_artifact::chunks::ArtifactManifest;

use crate::heal::criu_images::CriuImages;

/// Version 4: specs are signed by the service's owner, and hosts obey only the owner (3); the
/// state a new instance starts from is a field of its spec, no longer a variable of its
/// environment (4).
pub const DEPLOY_PROTOCOL: StreamProtocol = StreamProtocol::new("/brume/deploy/4");

/// Largest request or reply frame (logs are cut to fit).
pub const MAX_FRAME: usize = 4 << 20;

/// The owner's signature of a spec and the public key it verifies with (protobuf-encoded, as
/// libp2p encodes keys); made and checked in [`super::grant`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub key: Vec<u8>,
    pub signature: Vec<u8>,
}

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
    pub hosts: Vec<PeerId>,
    /// Per host, in the same order (may be shorter: a missing entry is "none known").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<Vec<Multiaddr>>,
}

/// At most this many addresses per host in a [`CallTarget`], each at most this long.
const MAX_HOST_ADDRS: usize = 16;
const MAX_ADDR_LEN: usize = 512;

/// One task instance for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub id: InstanceId,
    /// Deployment epoch: a newer epoch replaces an older one; a stale one is refused.
    pub epoch: u64,
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
    /// Every how many seconds the host captures the instance's state (`checkpoint = "app"`)
    /// and sends it to the owner ([`crate::heal::checkpointer`]); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every_s: Option<u32>,
    /// The node that deployed the service (it keeps the service's ledger and is told when the
    /// instance moves), when known.
    #[serde(default)]
    pub initiator: Option<PeerId>,
    /// Which copy of the instance this is: 0 as deployed, one more with every move. The node
    /// that runs it keeps it in its instance table, and a fence names it ("stop it if it runs
    /// at this generation"), so a copy left behind by a failed move is never confused with the
    /// one that runs now.
    #[serde(default)]
    pub generation: Generation,
    /// The owner's signature ([`super::grant`]): without a good one no host acts on the spec.
    #[serde(default)]
    pub grant: Option<Grant>,
    /// Who the task runs as (the manifest's `user`); `None`: an unprivileged user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The longest freeze a live move of the instance may be predicted to take (the manifest's
    /// `downtime_budget_ms`): the final freeze is entered only when the prediction fits, else
    /// the move is deferred. `None`: the planner's default (or the move's own limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_budget_ms: Option<u64>,
    /// The longest this instance runs on one host, seconds (the manifest's `max_runtime_s`):
    /// the host moves it on before then ([`crate::migrate::max_runtime`]). `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runtime_s: Option<u32>,
    /// The state line the instance starts from (`checkpoint = "app"`: what the instance it
    /// replaces answered to `CHECKPOINT`, set by a move or by a re-placement from a kept
    /// checkpoint). Left out of the owner's signature ([`super::grant`]). The engine hands it to
    /// the task as a file named in `BRUME_RESTORE_FILE`, never in the environment, which Linux
    /// caps at 128 KiB a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// The CRIU images the instance is restored from (`checkpoint = "criu"`: the latest
    /// periodic checkpoint of the instance it replaces, set by its owner's re-placement). Left
    /// out of the owner's signature, and taken by a host only from the owner itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_images: Option<Box<CriuImages>>,
}

/// The generation of an instance (see [`InstanceSpec::generation`]).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation of the copy a move of this one makes.
    pub fn next(self) -> Generation {
        Generation(self.0.saturating_add(1))
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// How an instance's state moves when it is migrated (the manifest's `checkpoint`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointMode {
    /// Stateless: a new instance starts on the target and the old one stops (cold restart).
    #[default]
    None,
    /// The task exports its own state: it answers `CHECKPOINT` on its port with one line, and
    /// a new instance started with that line in the file `BRUME_RESTORE_FILE` names continues
    /// from it.
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
pub enum Request {
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
        instance: InstanceId,
        tail: usize,
    },
    /// Stops and removes one instance of the given epoch (a move that gave up undoes its start
    /// on the target; an initiator retires a copy it placed again elsewhere); calls to it from
    /// here then go to `back_to` if given. A holder of the service's record that re-placed the
    /// instance for a dead owner shows the owner's `delegation` naming it.
    Remove {
        instance: InstanceId,
        epoch: u64,
        back_to: Option<PeerId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delegation: Option<Box<crate::heal::delegation::Delegation>>,
    },
    /// The latest state of an instance that asks for periodic checkpoints, sent by its host
    /// to the service's owner, which keeps it for a re-placement ([`crate::heal::checkpoints`]).
    /// `seq` orders the checkpoints of one generation; answered `Taken` or `Refused`.
    Checkpointed {
        instance: InstanceId,
        generation: Generation,
        epoch: u64,
        seq: u64,
        state: String,
        /// A `checkpoint = "criu"` task's CRIU images (`state` is then empty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        images: Option<Box<CriuImages>>,
    },
    /// The latest checkpoint of an instance of one of the sender's services, passed on by its
    /// owner to the holders of the service's record ([`crate::heal::holder`]), so that a holder
    /// re-placing the instance after the owner died starts it from there; answered `Taken` or
    /// `Refused`.
    HeldCheckpoint {
        instance: InstanceId,
        generation: Generation,
        epoch: u64,
        seq: u64,
        state: String,
    },
    /// The record of one of the sender's services (or, from a holder that re-placed some of
    /// its instances, of its owner's), for this node to keep as one of its holders
    /// ([`crate::heal::record_replicas`]); answered `Taken` or `Refused`.
    Replica(Box<ServiceRecord>),
    /// The records this node holds of the sender's services (an owner back from the dead
    /// learns what its holders did meanwhile); answered `Records`.
    HeldRecords,
    /// The sender stopped its service: the record held of it is dropped (a holder must not
    /// bring back a stopped service); answered `Taken`.
    ForgetRecord {
        service: String,
    },
}

/// A step of a deploy on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Fetching { done: u64, total: u64 },
    Building,
    Starting,
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
pub enum Reply {
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
    /// The image of a `Prepare` is ready here.
    Prepared,
    /// A `Checkpointed` or a `Replica` was taken (kept, or older than the one kept).
    Taken,
    /// The records held of the asker's services.
    Records(Vec<ServiceRecord>),
}

/// Why a name from a request is refused (the rule is [`brume_plan::naming`]'s, the manifest's too).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if brume_plan::naming::is_valid(name) {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} is not allowed: {}",
            brume_plan::naming::RULE
        ))
    }
}

/// Where one instance of a deployed service runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub task: String,
    pub replica: u32,
    /// The host's node id as maps print it.
    pub host: String,
    pub peer: PeerId,
    /// Where to dial it, for a node not connected to it.
    pub addrs: Vec<Multiaddr>,
    /// Which copy runs there: one more with every move or re-placement (ledgers written
    /// before it was kept read 0).
    #[serde(default)]
    pub generation: Generation,
}

/// One service as its owner's ledger knows it, with the owner's delegation: what the owner
/// replicates to a few neighbours ([`crate::heal::record_replicas`] checks and keeps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub service: String,
    pub owner: PeerId,
    /// Where to dial the owner (a holder watches it).
    pub owner_addrs: Vec<Multiaddr>,
    pub epoch: u64,
    /// One per instance, as the owner signed it.
    pub specs: Vec<InstanceSpec>,
    /// Where each instance runs, at which generation.
    pub instances: Vec<Placed>,
    /// The artifacts the specs name (a holder fetches and keeps them).
    pub artifacts: Vec<ArtifactManifest>,
    /// Where to dial each holder, in the delegation's order.
    pub holder_addrs: Vec<Vec<Multiaddr>>,
    pub delegation: crate::heal::delegation::Delegation,
}

impl InstanceSpec {
    /// A spec of `id` at `epoch` that runs `payload` with `cpu_millis` and `memory_mb`, and
    /// everything else a manifest may leave unset left so: no environment, calls, restarts,
    /// checkpoints, budgets, owner or signature, generation 0. Set the rest with struct update
    /// syntax (`InstanceSpec { user: Some(..), ..InstanceSpec::new(..) }`).
    pub fn new(
        id: InstanceId,
        epoch: u64,
        payload: Payload,
        cpu_millis: u64,
        memory_mb: u64,
    ) -> InstanceSpec {
        InstanceSpec {
            id,
            epoch,
            payload,
            cpu_millis,
            memory_mb,
            env: BTreeMap::new(),
            calls: Vec::new(),
            max_restarts: 0,
            checkpoint: CheckpointMode::default(),
            checkpoint_every_s: None,
            initiator: None,
            generation: Generation::default(),
            grant: None,
            user: None,
            downtime_budget_ms: None,
            max_runtime_s: None,
            restore: None,
            restore_images: None,
        }
    }

    /// Checks every field a host acts on.
    pub fn check(&self) -> Result<(), String> {
        check_name("service", &self.id.service)?;
        check_name("task", &self.id.task)?;
        if let Some(u) = &self.user {
            if !brume_plan::naming::is_valid_user(u) {
                return Err(format!(
                    "user {u:?} is not allowed: {}",
                    brume_plan::naming::USER_RULE
                ));
            }
        }
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
            let too_many = c.addrs.iter().any(|a| {
                a.len() > MAX_HOST_ADDRS || a.iter().any(|x| x.as_ref().len() > MAX_ADDR_LEN)
            });
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
        if self.checkpoint_every_s == Some(0) {
            return Err("a checkpoint every 0 s".to_string());
        }
        if let Some(images) = &self.restore_images {
            if self.checkpoint != CheckpointMode::Criu {
                return Err(
                    "CRIU images to restore a task that is not checkpoint = \"criu\"".into(),
                );
            }
            // The owner's cap on a kept checkpoint (`heal::checkpoints::MAX_CHECKPOINT`).
            let max = brume_migration::app::MAX_STATE;
            if images.archive.len() > max {
                return Err(format!("CRIU images of more than {max} bytes"));
            }
        }
        if self.downtime_budget_ms == Some(0) {
            return Err("a downtime budget of 0 ms".to_string());
        }
        if self.max_runtime_s == Some(0) {
            return Err("a maximum runtime of 0 s".to_string());
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
