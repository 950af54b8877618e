//! Moving a running task instance to another node (`brume migrate`, `brume drain`).
//!
//! The node that runs the instance (the source) drives the move, because it holds the instance,
//! its spec and its state: it picks a target from its own map within a latency budget
//! ([`target`]) unless one is named, captures the instance's state the way its manifest says
//! ([`checkpoint`]: the task's own `CHECKPOINT` line, or nothing for a cold restart), and asks
//! the target to deploy the same instance (same service and epoch) with that state in
//! `BRUME_RESTORE`. The target fetches the artifact's chunks from the source, exactly as in a
//! deploy. Only when the new instance runs does the source switch callers to it ([`source`]):
//! it routes its own calls there, tells the other nodes and the service's initiator
//! ([`moved`]), and then stops the old instance. Until that point the old instance is never
//! touched, so a target that refuses, dies or is unreachable leaves the service as it was.
//!
//! ```text
//!  source: lookup ─ pick target ─ CHECKPOINT ─ Deploy(spec + BRUME_RESTORE) ──▶ target
//!          ◀── phases (fetching, building, starting) ── Started
//!          route here → target ─ Moved ──▶ every peer + the initiator ─ stop the old instance
//! ```

pub mod checkpoint;
pub mod cli;
pub mod control;
pub mod moved;
pub mod source;
pub mod target;

use std::time::Duration;

use crate::deploy::agent::Key;

/// What a source is asked to move.
#[derive(Debug, Clone)]
pub struct MoveRequest {
    /// Service, task and replica of the instance.
    pub key: Key,
    /// The target's peer id, or `None` to let the source pick one.
    pub to: Option<String>,
    /// Latency budget of the map the target is picked from.
    pub budget: Duration,
    /// Restart cold a task whose state cannot be carried, instead of refusing.
    pub allow_cold: bool,
    /// Give up (leaving the instance where it is) if the move is not done within this.
    pub deadline: Option<Duration>,
}
