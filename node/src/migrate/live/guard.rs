//! Exactly one copy, in I/O: the fence table of this node with the wake-ups around it, the
//! restorer that consults it, the lease, and both ends of a fence (the source asking, the
//! target answering). The rules are the machines' ([`crate::migrate::machine::Finish`] on the
//! source, [`crate::migrate::fence::Fences`] on the target).
//!
//! The lease: a target kills a restored copy whose `Released` did not come within [`LEASE`]
//! of its own last message to the source before the restore, and starts no restore after that.
//! The source's clock for the same lease starts when it read that message (later, in real
//! time), so once it has waited [`LEASE`] plus [`LEASE_MARGIN`] from then, no copy runs on the
//! target whatever it heard. The source releases the task only within half the lease
//! ([`COMMIT_WITHIN`]), so a `Released` reaches a target that still keeps its copy. A
//! post-copy's copy, restored before its pages come, is killed when the lease runs out even if
//! pages are still coming (`Mover::receive_guarded`), and its source closes its page server,
//! which ends its own task, only if the target held every page within [`COMMIT_WITHIN`]. The lease is the fallback: a source
//! in doubt first fences the target and restores as soon as the target answers; it waits the
//! lease out only when the target cannot be reached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use brume_migration::checkpointer::{CheckpointError, Restored, Restorer};
use brume_overlay::PeerId;
use brume_tunnel::InstanceId;
use tracing::{info, warn};

use super::book::FenceBook;
use super::fault::{Link, LiveFault};
use super::Mover;
use crate::deploy::wire::Generation;
use crate::migrate::client::ask;
use crate::migrate::fence::FenceStep;
use crate::migrate::machine::FinishInput;
use crate::migrate::mover::Destination;
use crate::migrate::wire::{Reply, Request};

/// How long a target keeps a restored copy the source has not released, counted from its last
/// message to the source before the restore.
pub(crate) const LEASE: Duration = Duration::from_secs(60);

/// What the source adds to [`LEASE`] before it counts the target's copy dead: clocks that run
/// at slightly different rates, and the kill itself.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// The source gives its copy up only if the target's `Restored` came within this of the last
/// message it heard from the target before the final round.
pub(crate) const COMMIT_WITHIN: Duration = Duration::from_secs(30);

/// How long one fence request may take to be answered.
const FENCE_ATTEMPT: Duration = Duration::from_secs(10);

/// How long the target's answer to a fence waits for a restore under way to end.
const FENCE_WAIT: Duration = Duration::from_secs(8);

/// How long a killed copy may take to be gone (its sockets closed) before a fence is answered.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Kills the copy `pid` (the init of its PID namespace: all of it goes) and waits, bounded,
/// until it no longer runs (a zombie has closed its sockets).
pub(crate) async fn kill_copy(pid: u32) {
    brume_engine::criu_task::kill(pid, libc::SIGKILL);
    let until = Instant::now() + KILL_WAIT;
    while runs(pid) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` exists and is not a zombie.
fn runs(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The target's restorer: asks the fence table before and after the real one, keeps the
/// lease, and plays the test faults of the final step.
#[derive(Debug)]
pub(crate) struct Guarded {
    pub(crate) inner: Arc<dyn Restorer>,
    pub(crate) book: Arc<FenceBook>,
    pub(crate) id: InstanceId,
    pub(crate) generation: Generation,
    pub(crate) link: Arc<Link>,
    pub(crate) fault: Option<LiveFault>,
}

fn refused(why: String) -> CheckpointError {
    CheckpointError::Unsupported(why)
}

impl Restorer for Guarded {
    fn restores_a_process(&self) -> bool {
        self.inner.restores_a_process()
    }

    fn restore(
        &self,
        images: &std::path::Path,
        dumped_pid: u32,
        log: &std::path::Path,
    ) -> Result<Restored, CheckpointError> {
        self.guard(&mut || self.inner.restore(images, dumped_pid, log))
    }

    fn guard_lazy(
        &self,
        restore: &mut dyn FnMut() -> Result<Restored, CheckpointError>,
    ) -> Result<Restored, CheckpointError> {
        self.guard(restore)
    }

    fn restores_lazily(&self) -> bool {
        self.inner.restores_lazily()
    }

    fn restore_lazy(
        &self,
        images: &std::path::Path,
        dumped_pid: u32,
    ) -> Result<Restored, CheckpointError> {
        self.guard(&mut || self.inner.restore_lazy(images, dumped_pid))
    }
}

impl Guarded {
    /// Runs `restore` (the inner restorer's, or post-copy's lazy one) behind the fault, the
    /// lease and the fence table.
    fn guard(
        &self,
        restore: &mut dyn FnMut() -> Result<Restored, CheckpointError>,
    ) -> Result<Restored, CheckpointError> {
        let (id, g) = (&self.id, self.generation);
        match self.fault {
            Some(LiveFault::CutBeforeRestore) => {
                warn!(instance = %id, "live_fault = cut-before-restore: cutting the link");
                self.link.cut();
                return Err(refused("the link was cut (test fault)".into()));
            }
            Some(LiveFault::FailRestore) => {
                return Err(refused("the restore fails on purpose (test fault)".into()));
            }
            _ => {}
        }
        let lease_end = self.link.last_write() + LEASE;
        self.link.start_lease(lease_end);
        if Instant::now() >= lease_end {
            return Err(refused(format!(
                "the final images came after this node's lease ({LEASE:?}) ran out"
            )));
        }
        if !self.book.with(|f| f.may_restore(id, g)) {
            return Err(refused(format!("generation {g} of {id} was fenced here")));
        }
        match restore() {
            Ok(r) => {
                if !self.book.with(|f| f.restored(id, g, Some(r.pid))) {
                    warn!(instance = %id, pid = r.pid, "fenced during its restore: killing it");
                    brume_engine::criu_task::kill(r.pid, libc::SIGKILL);
                    let until = Instant::now() + KILL_WAIT;
                    while runs(r.pid) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    self.book.restore_ended.notify_waiters();
                    return Err(refused(format!(
                        "generation {g} of {id} was fenced during its restore"
                    )));
                }
                self.book.restore_ended.notify_waiters();
                if self.fault == Some(LiveFault::CutAfterRestore) {
                    warn!(instance = %id, pid = r.pid, "live_fault = cut-after-restore: cutting the link");
                    self.link.cut();
                }
                Ok(r)
            }
            Err(e) => {
                self.book.with(|f| f.restored(id, g, None));
                self.book.restore_ended.notify_waiters();
                Err(e)
            }
        }
    }
}

impl Mover {
    /// Answers a fence from `from`: settles the incoming copy of `id` at `g` (killing it if it
    /// runs, waiting for a restore under way) and stops an instance here at `g`.
    pub(crate) async fn fence(&self, from: PeerId, id: &InstanceId, g: Generation) -> Reply {
        let until = Instant::now() + FENCE_WAIT;
        let killed = loop {
            let ended = self.fences.restore_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let step = self.fences.with(|f| f.fence(id, g));
            self.fences.fence_came.notify_waiters();
            match step {
                FenceStep::Settled { kill } => break kill,
                FenceStep::Wait if Instant::now() >= until => {
                    return Reply::Refused {
                        reason: format!("a restore of {id} ({g}) is under way; ask again"),
                    };
                }
                FenceStep::Wait => {
                    let _ = tokio::time::timeout_at(until.into(), ended).await;
                }
            }
        };
        if let Some(pid) = killed {
            kill_copy(pid).await;
        }
        let here = self
            .deployer
            .instances
            .get(id)
            .is_some_and(|(spec, _, _)| spec.generation == g);
        if here {
            self.deployer.remove_instance(id).await;
            self.deployer.readvertise().await;
        }
        let stopped = killed.is_some() || here;
        info!(instance = %id, generation = %g, %from, stopped, "fenced");
        Reply::Fenced { stopped }
    }

    /// The source's fence of its target: asked until the target answers, or, if it cannot be
    /// reached, until its lease has surely run out (counted from `last_heard`).
    pub(in crate::migrate) async fn fence_target(
        &self,
        dest: &Destination,
        id: &InstanceId,
        g: Generation,
        last_heard: Instant,
    ) -> FinishInput {
        let give_up = last_heard + LEASE + LEASE_MARGIN;
        let request = Request::Fence {
            instance: id.clone(),
            generation: g,
        };
        loop {
            let asked = ask(self, dest.peer, &dest.addrs, &request, |_| async {});
            match tokio::time::timeout(FENCE_ATTEMPT, asked).await {
                Ok(Ok(Reply::Fenced { stopped })) => {
                    info!(instance = %id, generation = %g, to = %dest.name, stopped, "the target is fenced");
                    return FinishInput::Fenced;
                }
                other => {
                    warn!(instance = %id, generation = %g, to = %dest.name, answer = ?other, "cannot fence the target yet");
                }
            }
            let now = Instant::now();
            if now >= give_up {
                warn!(instance = %id, generation = %g, to = %dest.name,
                      "the target never answered the fence; its lease has run out");
                return FinishInput::LeaseOver;
            }
            tokio::time::sleep((give_up - now).min(Duration::from_secs(1))).await;
        }
    }
}
