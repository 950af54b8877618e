//! The end of a live move once the task is frozen for good on the source, the same on both
//! engines: the finish machine ([`Finish`]) says who runs the task, and this performs what it
//! says (give the task to the target, fence the target, restore the task here, switch the
//! callers, or give the instance up). What differs by engine is how a copy CRIU restored here
//! is taken back and what the engine still holds of the old one: a [`LocalCopy`].

use std::path::PathBuf;

use super::*;

/// The engine's side of a frozen move's end on the source.
pub(super) trait LocalCopy {
    /// What the engine's final capture is called in a reply ("final dump").
    const FINAL: &'static str;
    /// How a copy restored here runs, in a reply ("restored here").
    const RESTORED: &'static str;
    /// The log line of a move that succeeded.
    const MOVED: &'static str;

    /// The target is about to be given the task: what was kept to restore it here may go.
    async fn committing(&mut self) {}

    /// CRIU restored the task here as `pid`: the engine takes it back, or says why it cannot.
    async fn take_back(&mut self, pid: u32) -> Result<(), String>;

    /// The instance is lost: what the engine still holds of it goes.
    async fn losing(&mut self) {}

    /// The frozen task was thawed here: the same process runs on, which the engine still has.
    async fn thawed(&mut self) {}
}

/// What brings a task back on the source once the target surely runs no copy.
pub(super) enum HereAgain {
    /// Pre-copy: a restore from the final images.
    Images(PathBuf),
    /// Post-copy: the task is still frozen here with its pages; thawing it resumes it.
    Frozen(FrozenTask),
}

/// A move whose target may or may not run the task: what the finish machine starts from, and
/// what brings the task back here if the target surely runs none. Any other error comes back.
pub(super) fn in_doubt(
    e: LiveError,
) -> Result<(FinishInput, (LiveError, HereAgain, Instant)), LiveError> {
    match e {
        // Pre-copy: the final images are here.
        LiveError::InDoubt {
            cause,
            images,
            last_heard,
        } => Ok((
            FinishInput::NoAnswer(cause.to_string()),
            (*cause, HereAgain::Images(images), last_heard),
        )),
        // Post-copy: the task waits frozen here while the target is settled.
        LiveError::FrozenInDoubt {
            cause,
            frozen,
            last_heard,
        } => Ok((
            FinishInput::NoAnswer(cause.to_string()),
            (*cause, HereAgain::Frozen(frozen), last_heard),
        )),
        other => Err(other),
    }
}

/// A move whose task the final dump froze: what its end needs.
pub(super) struct Frozen<'a> {
    pub id: &'a InstanceId,
    pub hold: Hold,
    pub held: Instant,
    pub spec: &'a InstanceSpec,
    pub dest: &'a Destination,
    pub stream: &'a mut Compat<Stream>,
    pub phases: &'a mpsc::Sender<Phase>,
    pub generation: crate::deploy::wire::Generation,
    /// The options the move ran with (a restore here uses them).
    pub kept: &'a SourceOptions,
    /// The task's pid on the source before the dump.
    pub pid: u32,
    /// What the pipeline ended with.
    pub first: FinishInput,
    /// After an unanswered final step: why, what brings the task back here, and when the
    /// target was last heard.
    pub doubt: Option<(LiveError, HereAgain, Instant)>,
    /// After a restore on the target: the migration.
    pub migrated: Option<Migrated>,
}

impl Mover {
    /// Drives [`Finish`] from `f.first` to its end; the reply to the move's requester.
    pub(super) async fn finish_frozen<L: LocalCopy>(&self, f: Frozen<'_>, local: &mut L) -> Reply {
        let Frozen {
            id,
            hold,
            held,
            spec,
            dest,
            stream,
            phases,
            generation,
            kept,
            pid,
            first,
            mut doubt,
            migrated,
        } = f;
        let what = id.to_string();
        let endpoint = id.clone();
        let (mut finish, mut action) = Finish::start(first);
        let mut view = None;
        let mut restored_pid = None;
        let mut back_how = L::RESTORED;
        loop {
            let input = match action {
                FinishAction::Commit => {
                    let Some(m) = &migrated else {
                        let why = format!("internal: {what} has no migration to commit");
                        return self.lost(&endpoint, hold, why).await;
                    };
                    local.committing().await;
                    let (input, v) = self.commit(id, stream, dest, m, phases).await;
                    view = v;
                    input
                }
                FinishAction::Fence => {
                    let heard = doubt.as_ref().map_or_else(Instant::now, |d| d.2);
                    self.fence_target(dest, id, generation, heard).await
                }
                FinishAction::RestoreHere => {
                    let Some((cause, here, _)) = doubt.take() else {
                        let why = format!("internal: no final images of {what}");
                        return self.lost(&endpoint, hold, why).await;
                    };
                    match here {
                        HereAgain::Frozen(task) => {
                            back_how = "thawed here (the very process, from where it was frozen)";
                            match task.thaw(cause).await {
                                LiveError::Thawed { .. } => {
                                    local.thawed().await;
                                    restored_pid = Some(pid);
                                    FinishInput::RestoredHere
                                }
                                e => FinishInput::RestoreFailed(e.to_string()),
                            }
                        }
                        HereAgain::Images(images) => {
                            match restore_at_source(kept, pid, &images, cause).await {
                                LiveError::RestoredAtSource { pid, .. } => {
                                    match local.take_back(pid).await {
                                        Ok(()) => {
                                            restored_pid = Some(pid);
                                            FinishInput::RestoredHere
                                        }
                                        Err(e) => FinishInput::RestoreFailed(format!(
                                            "restored here as pid {pid}, but {e}"
                                        )),
                                    }
                                }
                                e => FinishInput::RestoreFailed(e.to_string()),
                            }
                        }
                    }
                }
                FinishAction::Done(FinishEnd::Moved { confirmed }) => {
                    let Some(m) = &migrated else {
                        let why = format!("internal: {what} moved without a migration");
                        return self.lost(&endpoint, hold, why).await;
                    };
                    return self
                        .switch(
                            endpoint,
                            hold,
                            held,
                            spec,
                            dest,
                            m,
                            view.take(),
                            confirmed,
                            &what,
                            L::MOVED,
                        )
                        .await;
                }
                FinishAction::Done(FinishEnd::BackHere(why)) => {
                    drop(hold);
                    let pid = restored_pid.unwrap_or_default();
                    return Reply::Refused {
                        reason: format!(
                            "the live migration to {} failed after the {} ({why}); {what} was \
                             {back_how} (pid {pid}) and runs here again",
                            dest.name,
                            L::FINAL,
                        ),
                    };
                }
                FinishAction::Done(FinishEnd::Lost(why)) => {
                    local.losing().await;
                    self.deployer.stop_instance(id).await;
                    return self
                        .lost(&endpoint, hold, format!("{what} is lost: {why}"))
                        .await;
                }
            };
            action = finish.next(input);
        }
    }
}
