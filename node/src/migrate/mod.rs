//! Moving a running task instance to another node (`brume migrate`, `brume drain`).
//!
//! The node that runs the instance (the source) drives the move, because it holds the instance,
//! its spec and its state. Its decisions are a state machine with no I/O ([`machine`]: prepare,
//! hold, capture, start, switch, undo); the [`mover`] performs them. It picks a target from its
//! own map within a latency budget ([`target`]) unless one is named, has the target prepare the
//! image, holds the instance's callers, captures the state the way the manifest says
//! (`brume_migration::app`: the task's own `CHECKPOINT` line, or nothing for a cold restart), and asks
//! the target to deploy the same instance (same service and epoch) with that state in
//! `restore` (the task reads it from the file `BRUME_RESTORE_FILE` names). Only when the new instance runs does the source switch callers to it: it
//! routes its own calls there, tells the other nodes and the service's initiator ([`moved`],
//! on `/brume/move/2`: [`wire`], [`client`]), and then stops the old instance. Until that point
//! the old instance is never touched, so a target that refuses, dies or is unreachable leaves
//! the service as it was.
//!
//! ```text
//!  source: pick target ─ Prepare ──▶ target: fetch, build
//!          hold ─ CHECKPOINT ─ Deploy(spec + restore) ──▶ target: start ─ Started
//!          route here → target ─ Moved ──▶ every peer + the initiator ─ stop the old instance
//! ```
//!
//! A task with `checkpoint = "criu"` moves live instead ([`live`]): after `Prepare` and the
//! hold, brume's CRIU pre-copy carries the whole process over `/brume/live/3`, the target
//! restores and adopts it, and only then are callers switched. Here the old instance is ended
//! by the final dump, not after the switch: a failure before that dump leaves it untouched, one
//! after it restores it on the source, but only once the target's copy surely does not run
//! (its own `Failed`, an answered fence by generation, or its lease run out: [`fence`],
//! [`machine::Finish`]). Every move makes the instance's next generation. [`control`] answers
//! `brume migrate` and `brume drain` on the node's control socket. A live move's final freeze
//! is entered only when its predicted downtime fits the task's budget ([`freeze_budget`]), and
//! the node learns how long its dumps take from every one it makes ([`predictor`]).

pub mod cli;
pub mod client;
pub mod control;
pub mod fence;
pub mod live;
pub mod machine;
pub mod max_runtime;
pub mod moved;
pub mod mover;
pub mod predictor;
pub mod target;
pub mod wire;

use std::time::{Duration, Instant};

use brume_overlay::PeerId;
use brume_tunnel::InstanceId;

/// How this node moves a `checkpoint = "criu"` task on the process engine (the `live_migration`
/// setting). Docker tasks always move by pre-copy (runc checkpoints; CRIU's lazy pages need
/// the process itself).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum LiveMigration {
    /// Tracked where it can be, full dumps where it cannot: tracked when the kernel tracks
    /// written pages and the target is in another network namespace (another device, a node
    /// container), pre-copy otherwise ([`live::network`] says why).
    #[default]
    Auto,
    /// Full-dump pre-copy rounds and a final full dump, on any kernel. The task's process
    /// ends before its copy is restored, so the two never hold a port at once.
    PreCopy,
    /// Tracked pre-copy rounds, then a freeze that carries only what the task wrote since
    /// (where the kernel tracks written pages: Linux >= 6.7; else pre-copy), wherever the
    /// target is. The frozen original stays until the copy has every page, so the two exist
    /// at once for a moment: nodes on one host sharing a network namespace cannot move a task
    /// that listens on a TCP port this way (the copy's listener finds the port taken).
    Tracked,
}

/// What bounds a live move: when it must be done by, and the longest freeze the planner may
/// predict before it gives up (its default when `None`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Limits {
    pub deadline: Option<Instant>,
    pub max_downtime: Option<Duration>,
}

/// What a source is asked to move.
#[derive(Debug, Clone)]
pub struct MoveRequest {
    pub instance: InstanceId,
    /// The target, or `None` to let the source pick one.
    pub to: Option<PeerId>,
    /// Latency budget of the map the target is picked from.
    pub budget: Duration,
    /// Restart cold a task whose state cannot be carried (or a CRIU one), instead of refusing
    /// or moving it live.
    pub allow_cold: bool,
    /// Give up (leaving the instance where it is) if the move is not done within this.
    pub deadline: Option<Duration>,
    /// A live move gives up (the task keeps running here) when the planner predicts a longer
    /// freeze than this; `None` is the planner's default.
    pub max_downtime: Option<Duration>,
    /// Freeze whatever the prediction: neither this limit nor the task's downtime budget holds.
    pub force: bool,
}

/// The budget of a forced move: a freeze this long is never predicted, so the gate always lets
/// it through.
pub(crate) const FORCED_BUDGET: Duration = Duration::from_secs(24 * 3600);

/// The longest freeze a live move may be predicted to take: the tighter of the move's own limit
/// (`brume migrate --max-downtime`) and the task's `downtime_budget_ms` (manifest), `None` (the
/// planner's default) when neither is set; a forced move (`--force`) has [`FORCED_BUDGET`].
pub(crate) fn freeze_budget(
    requested: Option<Duration>,
    manifest_ms: Option<u64>,
    force: bool,
) -> Option<Duration> {
    if force {
        return Some(FORCED_BUDGET);
    }
    let manifest = manifest_ms.map(Duration::from_millis);
    match (requested, manifest) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tighter_budget_holds_and_force_lifts_both() {
        let s = Duration::from_secs;
        assert_eq!(freeze_budget(None, None, false), None);
        assert_eq!(freeze_budget(Some(s(5)), None, false), Some(s(5)));
        assert_eq!(
            freeze_budget(None, Some(250), false),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            freeze_budget(Some(s(5)), Some(250), false),
            Some(Duration::from_millis(250)),
            "the manifest's budget is tighter"
        );
        assert_eq!(freeze_budget(Some(s(1)), Some(5000), false), Some(s(1)));
        assert_eq!(
            freeze_budget(Some(s(1)), Some(1), true),
            Some(FORCED_BUDGET)
        );
    }
}
