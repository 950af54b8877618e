//! A move's decisions, as a state machine with no I/O: what to do next, and what a failure at
//! each step leaves behind.
//!
//! The mover ([`super::mover`]) performs each [`Action`] (asking the target, holding callers,
//! capturing the state, switching routes) and feeds what happened back as an [`Input`]; the
//! machine answers with the next action, until [`Action::Done`]. Make-before-break is its one
//! rule: the old instance is untouched until the new one runs and callers are switched, so
//! every failure before [`Action::Switch`] ends with the instance still running here, its
//! callers released, and nothing left on the target:
//!
//! ```text
//!  ChooseTarget ─▶ Prepare ─▶ Hold ─▶ Capture ─▶ Start ─▶ Switch ─▶ Done(Moved)
//!                     │          (app only)        │ refused: Release ─▶ Done(Untouched)
//!                     └▶ MoveLive (CRIU)            │ lost reply / late: Undo ─▶ Release ─▶ Done(Untouched)
//! ```
//!
//! A reply that never came is not a refusal: the target may have started the instance, so it
//! is told to remove that epoch (and to send its calls back here) before callers are released.
//! An undo the target never confirms still releases the callers: the old instance never
//! stopped, and the target's copy (the next generation) gets no calls, since no route points
//! at it, but it may run until the target hears of a newer epoch (a known gap of this path).
//! The live CRIU path has its own pipeline ([`super::live`]) once the image is prepared, and
//! its end after the final dump is [`Finish`] below.

use std::time::Duration;

/// What a move is asked to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// Nothing: a new instance starts cold on the target.
    Nothing,
    /// The task's own checkpoint line (`checkpoint = "app"`).
    AppState,
    /// The whole process, live, with CRIU.
    Live,
}

/// The next thing the mover does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pick the target: the one named, or the nearest node with room.
    ChooseTarget,
    /// Have the target fetch and build the image while callers still reach the old instance.
    Prepare,
    /// Hand the move to the live CRIU pipeline, which ends it.
    MoveLive,
    /// Hold the instance's callers: new calls wait, open ones are cut.
    Hold,
    /// Ask the task for its state line.
    Capture,
    /// Ask the target to start the instance (with the state, if any).
    Start,
    /// Have the target remove what it may have started of this epoch and send its calls to
    /// the instance back here.
    Undo,
    /// Let the held callers reach the old instance again.
    Release,
    /// Route calls to the target, release them, tell the overlay, stop the old instance.
    Switch,
    /// The move is over.
    Done(End),
}

/// What happened when the mover performed the last action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A target was chosen (after `ChooseTarget`).
    Chosen,
    /// The action was carried out (`Prepare`, `Hold`, `Capture`, `Start`, `Release`, `Switch`).
    Completed,
    /// The target answered no (or no target could be chosen).
    Refused(String),
    /// No answer: the target could not be reached, or its reply was lost.
    Unreachable(String),
    /// The move's deadline passed during the step.
    Late,
    /// The task gave no state.
    CaptureFailed(String),
    /// After `Undo`: whether the target confirmed.
    Undone { confirmed: bool },
}

/// How a move ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The instance runs on the target and no longer here.
    Moved,
    /// The live pipeline ended the move (its reply says how).
    Live,
    /// Nothing moved: the instance still runs here. The reason says why.
    Untouched(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Choosing,
    Preparing,
    Live,
    Holding,
    Capturing,
    Starting,
    Undoing,
    Releasing,
    Switching,
    Over,
}

/// One move, from the source's side.
#[derive(Debug)]
pub struct Move {
    carry: Carry,
    what: String,
    deadline: Option<Duration>,
    step: Step,
    /// Why the move is being given up (set when a failure starts the undo/release path).
    failure: Option<String>,
}

impl Move {
    /// A move of `what` (for messages), carrying `carry`; `deadline` only words the message
    /// of a late move (the mover enforces it). Returns the first action.
    pub fn start(
        what: impl Into<String>,
        carry: Carry,
        deadline: Option<Duration>,
    ) -> (Self, Action) {
        let m = Move {
            carry,
            what: what.into(),
            deadline,
            step: Step::Choosing,
            failure: None,
        };
        (m, Action::ChooseTarget)
    }

    /// The next action, given what the last one came to.
    pub fn next(&mut self, input: Input) -> Action {
        use Input::*;
        let action = match (self.step, input) {
            (Step::Choosing, Chosen) => self.go(Step::Preparing, Action::Prepare),
            (Step::Choosing, Refused(why) | Unreachable(why)) => self.untouched(why),

            (Step::Preparing, Completed) if self.carry == Carry::Live => {
                self.go(Step::Live, Action::MoveLive)
            }
            (Step::Preparing, Completed) => self.go(Step::Holding, Action::Hold),
            (Step::Preparing, Refused(why)) => {
                self.untouched(format!("the target refused the image: {why}"))
            }
            (Step::Preparing, Unreachable(why)) => {
                self.untouched(format!("the target could not prepare the image: {why}"))
            }
            (Step::Preparing, Late) => {
                let late = self.late();
                self.untouched(late)
            }

            (Step::Live, _) => self.go(Step::Over, Action::Done(End::Live)),

            (Step::Holding, Completed) if self.carry == Carry::AppState => {
                self.go(Step::Capturing, Action::Capture)
            }
            (Step::Holding, Completed) => self.go(Step::Starting, Action::Start),

            (Step::Capturing, Completed) => self.go(Step::Starting, Action::Start),
            (Step::Capturing, CaptureFailed(why)) => {
                let what = self.what.clone();
                self.release(format!("{what} gave no checkpoint ({why})"))
            }
            (Step::Capturing, Late) => {
                let late = self.late();
                self.release(late)
            }

            (Step::Starting, Completed) => self.go(Step::Switching, Action::Switch),
            // A refusal leaves nothing on the target.
            (Step::Starting, Refused(why)) => {
                self.release(format!("the target did not start it: {why}"))
            }
            // Silence may hide a start: undo it before callers go back to the old instance.
            (Step::Starting, Unreachable(why)) => {
                self.failure = Some(format!("the target's answer to the start was lost ({why})"));
                self.go(Step::Undoing, Action::Undo)
            }
            (Step::Starting, Late) => {
                self.failure = Some(self.late());
                self.go(Step::Undoing, Action::Undo)
            }

            (Step::Undoing, Undone { confirmed }) => {
                let mut why = self.failure.take().unwrap_or_default();
                if !confirmed {
                    why += "; the target could not be told to remove its copy (it refuses this \
                            epoch's calls once it hears of a newer one)";
                }
                self.release(why)
            }

            (Step::Releasing, _) => {
                let why = self.failure.take().unwrap_or_default();
                self.untouched(why)
            }

            (Step::Switching, _) => self.go(Step::Over, Action::Done(End::Moved)),

            // An input the step does not expect (a mover bug): stop the move where the
            // instance is safest, callers released if they were held.
            (step, input) => {
                let why = format!("internal: {input:?} while {step:?}");
                if matches!(step, Step::Capturing | Step::Starting | Step::Undoing) {
                    self.release(why)
                } else {
                    self.untouched(why)
                }
            }
        };
        action
    }

    fn go(&mut self, step: Step, action: Action) -> Action {
        self.step = step;
        action
    }

    fn late(&self) -> String {
        format!(
            "the move did not finish within the deadline ({:?})",
            self.deadline.unwrap_or_default()
        )
    }

    /// Callers are held: release them, then end untouched with `why`.
    fn release(&mut self, why: String) -> Action {
        self.failure = Some(why);
        self.go(Step::Releasing, Action::Release)
    }

    fn untouched(&mut self, why: String) -> Action {
        let why = format!("{why}; {} still runs here", self.what);
        self.go(Step::Over, Action::Done(End::Untouched(why)))
    }
}

/// The end of a live move, once the final dump has stopped the task here: exactly one copy
/// must run afterwards, and it must hold every write the task acknowledged (the final images
/// do). The source alone can restore from them, the target alone knows whether it restored, so
/// the rule is: the source restores here only when it knows the target's copy does not run and
/// never will, and it gives its own copy up ([`FinishAction::Commit`]) only while the target
/// surely still holds its copy.
///
/// ```text
///  RestoredThere (in time) ─▶ Commit ─ Adopted ─▶ Done(Moved)
///                                    ├ NotAdopted ─▶ Done(Lost)      (the target killed it)
///                                    └ AdoptionUnheard ─▶ Done(Moved, unconfirmed)
///  TargetFailed ─────────────────────────▶ RestoreHere ─▶ Done(BackHere) | Done(Lost)
///  NoAnswer, RestoredThere (late) ─▶ Fence ─ Fenced | LeaseOver ─▶ RestoreHere
/// ```
///
/// Failure points and what each leaves:
/// * the target dies or the link breaks before the final dump: the task was never stopped (the
///   pipeline says so before this machine starts): it runs here untouched;
/// * the target says `Failed` after the final dump (its restore failed, or it was fenced): no
///   copy runs there, the source restores here at once;
/// * the link breaks during the final step, or the target's `Restored` is lost, or it comes
///   too late to commit: the target may run a copy. The source fences it (`Fence`: "stop this
///   instance if it runs at generation G", answered only once no copy of G runs there or will),
///   and restores here only on the answer, or, if the target cannot be reached, once the
///   target's lease has surely run out: a target kills a restored copy that was not `Released`
///   within its lease, counted from its last message to the source (the source's clock for it
///   starts later: at reading that message);
/// * after `Released` the source has given its copy up (its instance is gone): a lost `Adopted`
///   leaves the task to the target, the only copy, and calls are switched there; a target that
///   says it could not take the task (it killed it) leaves none: the move ends lost.
#[derive(Debug)]
pub struct Finish {
    step: FinishStep,
    /// Why the task is not moving after all (for the message).
    why: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FinishStep {
    Committing,
    Fencing,
    RestoringHere,
    Over,
}

/// What the source does next once the task is frozen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishAction {
    /// Give the copy here up (`Released`) and wait for the target's `Adopted`.
    Commit,
    /// Have the target stop any copy of this generation (retried until it answers or its lease
    /// has run out).
    Fence,
    /// Restore the task here from the final images.
    RestoreHere,
    Done(FinishEnd),
}

/// What the source learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishInput {
    /// The target restored the task and said so; `in_time`: early enough that `Released`
    /// reaches it within its lease.
    RestoredThere {
        in_time: bool,
    },
    /// The target said it did not restore the task (and will not).
    TargetFailed(String),
    /// No usable answer after the final dump: the target may run the task.
    NoAnswer(String),
    /// The target answered the fence: no copy of this generation runs there, nor will.
    Fenced,
    /// The target never answered the fence, but its lease has surely run out.
    LeaseOver,
    /// After `Commit`: the target adopted the task / says it could not (it killed its copy) /
    /// said nothing.
    Adopted,
    NotAdopted(String),
    AdoptionUnheard(String),
    /// After `RestoreHere`.
    RestoredHere,
    RestoreFailed(String),
}

/// How a live move ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishEnd {
    /// The task runs on the target only; `confirmed` unless its `Adopted` was lost.
    Moved { confirmed: bool },
    /// The task runs here again, restored from its final images; why it did not move.
    BackHere(String),
    /// No copy runs: why.
    Lost(String),
}

impl Finish {
    /// The first action once the pipeline ended after the final dump with `input`
    /// (`RestoredThere`, `TargetFailed` or `NoAnswer`).
    pub fn start(input: FinishInput) -> (Self, FinishAction) {
        let mut f = Finish {
            step: FinishStep::Over,
            why: None,
        };
        let action = match input {
            FinishInput::RestoredThere { in_time: true } => {
                f.go(FinishStep::Committing, FinishAction::Commit)
            }
            FinishInput::RestoredThere { in_time: false } => {
                f.why = Some("the target restored it too late to take it within its lease".into());
                f.go(FinishStep::Fencing, FinishAction::Fence)
            }
            FinishInput::TargetFailed(why) => {
                f.why = Some(format!("the target did not restore it: {why}"));
                f.go(FinishStep::RestoringHere, FinishAction::RestoreHere)
            }
            FinishInput::NoAnswer(why) => {
                f.why = Some(format!(
                    "the target's answer to the final step was lost ({why})"
                ));
                f.go(FinishStep::Fencing, FinishAction::Fence)
            }
            // Anything else cannot start the end: the target may run a copy; fence it.
            other => {
                f.why = Some(format!("internal: {other:?} after the final dump"));
                f.go(FinishStep::Fencing, FinishAction::Fence)
            }
        };
        (f, action)
    }

    pub fn next(&mut self, input: FinishInput) -> FinishAction {
        use FinishInput::*;
        match (self.step, input) {
            (FinishStep::Committing, Adopted) => self.done(FinishEnd::Moved { confirmed: true }),
            (FinishStep::Committing, NotAdopted(why)) => self.done(FinishEnd::Lost(format!(
                "it was restored on the target, which could not take it ({why})"
            ))),
            // Released: the copy here is gone; the target's is the only one.
            (FinishStep::Committing, _) => self.done(FinishEnd::Moved { confirmed: false }),

            (FinishStep::Fencing, Fenced | LeaseOver) => {
                self.go(FinishStep::RestoringHere, FinishAction::RestoreHere)
            }
            // Never restore here on anything else: fence again.
            (FinishStep::Fencing, _) => FinishAction::Fence,

            (FinishStep::RestoringHere, RestoredHere) => {
                let why = self.why.take().unwrap_or_default();
                self.done(FinishEnd::BackHere(why))
            }
            (FinishStep::RestoringHere, RestoreFailed(e)) => {
                let why = self.why.take().unwrap_or_default();
                self.done(FinishEnd::Lost(format!(
                    "{why}, and restoring it here failed: {e}"
                )))
            }
            (FinishStep::RestoringHere, other) => self.done(FinishEnd::Lost(format!(
                "internal: {other:?} while restoring here"
            ))),
            (FinishStep::Over, other) => self.done(FinishEnd::Lost(format!(
                "internal: {other:?} after the end"
            ))),
        }
    }

    fn go(&mut self, step: FinishStep, action: FinishAction) -> FinishAction {
        self.step = step;
        action
    }

    fn done(&mut self, end: FinishEnd) -> FinishAction {
        self.step = FinishStep::Over;
        FinishAction::Done(end)
    }
}

#[cfg(test)]
mod finish_tests {
    use super::FinishAction::*;
    use super::FinishInput::*;
    use super::*;

    fn run(first: FinishInput, inputs: Vec<FinishInput>) -> Vec<FinishAction> {
        let (mut f, a) = Finish::start(first);
        let mut actions = vec![a];
        for i in inputs {
            actions.push(f.next(i));
        }
        actions
    }

    #[test]
    fn a_timely_restore_is_committed_and_adopted() {
        let a = run(RestoredThere { in_time: true }, vec![Adopted]);
        assert_eq!(a, vec![Commit, Done(FinishEnd::Moved { confirmed: true })]);
    }

    #[test]
    fn a_lost_adoption_leaves_the_task_to_the_target() {
        let a = run(
            RestoredThere { in_time: true },
            vec![AdoptionUnheard("reset".into())],
        );
        assert_eq!(a[1], Done(FinishEnd::Moved { confirmed: false }));
        assert!(
            !a.contains(&RestoreHere),
            "never a second copy after Released"
        );
    }

    #[test]
    fn a_target_that_could_not_adopt_leaves_it_lost_and_nothing_restored_here() {
        let a = run(
            RestoredThere { in_time: true },
            vec![NotAdopted("ports taken".into())],
        );
        assert!(matches!(&a[1], Done(FinishEnd::Lost(w)) if w.contains("ports taken")));
        assert!(!a.contains(&RestoreHere));
    }

    #[test]
    fn a_late_restore_is_fenced_before_restoring_here() {
        let a = run(RestoredThere { in_time: false }, vec![Fenced, RestoredHere]);
        assert_eq!(a[..2], [Fence, RestoreHere]);
        assert!(matches!(&a[2], Done(FinishEnd::BackHere(w)) if w.contains("too late")));
    }

    #[test]
    fn a_target_failure_restores_here_at_once() {
        let a = run(
            TargetFailed("criu restore failed".into()),
            vec![RestoredHere],
        );
        assert_eq!(a[0], RestoreHere);
        assert!(!a.contains(&Fence), "the target said it runs nothing");
        assert!(matches!(&a[1], Done(FinishEnd::BackHere(w)) if w.contains("criu restore failed")));
    }

    #[test]
    fn a_lost_answer_is_fenced_first_and_restored_here_only_after_the_fence() {
        let a = run(NoAnswer("link reset".into()), vec![Fenced, RestoredHere]);
        assert_eq!(a, vec![Fence, RestoreHere, a[2].clone()]);
        assert!(matches!(&a[2], Done(FinishEnd::BackHere(w)) if w.contains("link reset")));
    }

    #[test]
    fn an_unreachable_target_is_waited_out_to_its_lease() {
        let a = run(NoAnswer("cut".into()), vec![LeaseOver, RestoredHere]);
        assert_eq!(a[..2], [Fence, RestoreHere]);
    }

    #[test]
    fn anything_but_a_fence_answer_or_the_lease_keeps_fencing() {
        let a = run(
            NoAnswer("cut".into()),
            vec![Adopted, RestoredHere, NoAnswer("again".into()), Fenced],
        );
        assert_eq!(a, vec![Fence, Fence, Fence, Fence, RestoreHere]);
    }

    #[test]
    fn a_failed_restore_here_ends_lost_with_both_reasons() {
        let a = run(
            TargetFailed("no".into()),
            vec![RestoreFailed("pid taken".into())],
        );
        assert!(
            matches!(&a[1], Done(FinishEnd::Lost(w)) if w.contains("no") && w.contains("pid taken"))
        );
    }

    #[test]
    fn an_unexpected_first_input_is_fenced() {
        let (_, a) = Finish::start(Adopted);
        assert_eq!(a, Fence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Input::*;

    /// Drives a move with the given inputs and returns every action it asked for.
    fn run(carry: Carry, inputs: Vec<Input>) -> Vec<Action> {
        let (mut m, first) = Move::start("svc/api#0", carry, Some(Duration::from_secs(5)));
        let mut actions = vec![first];
        for input in inputs {
            actions.push(m.next(input));
        }
        actions
    }

    fn untouched(actions: &[Action]) -> &str {
        match actions.last() {
            Some(Done(End::Untouched(why))) => why,
            other => panic!("the move should end untouched, ended {other:?}"),
        }
    }

    #[test]
    fn a_stateful_move_prepares_holds_captures_starts_and_switches() {
        let actions = run(
            Carry::AppState,
            vec![
                Chosen, Completed, Completed, Completed, Completed, Completed,
            ],
        );
        assert_eq!(
            actions,
            vec![
                ChooseTarget,
                Prepare,
                Hold,
                Capture,
                Start,
                Switch,
                Done(End::Moved)
            ]
        );
    }

    #[test]
    fn a_stateless_move_captures_nothing() {
        let actions = run(
            Carry::Nothing,
            vec![Chosen, Completed, Completed, Completed, Completed],
        );
        assert_eq!(
            actions,
            vec![ChooseTarget, Prepare, Hold, Start, Switch, Done(End::Moved)]
        );
    }

    #[test]
    fn a_live_move_hands_over_once_the_image_is_ready() {
        let actions = run(Carry::Live, vec![Chosen, Completed, Completed]);
        assert_eq!(
            actions,
            vec![ChooseTarget, Prepare, MoveLive, Done(End::Live)]
        );
    }

    #[test]
    fn no_target_leaves_everything_as_it_was() {
        let actions = run(Carry::AppState, vec![Refused("no node has room".into())]);
        assert_eq!(actions.len(), 2, "nothing is held or asked: {actions:?}");
        assert!(untouched(&actions).contains("no node has room"));
        assert!(untouched(&actions).ends_with("svc/api#0 still runs here"));
    }

    #[test]
    fn a_target_that_refuses_the_image_is_never_asked_to_start() {
        let actions = run(Carry::AppState, vec![Chosen, Refused("bad digest".into())]);
        assert_eq!(actions[..2], [ChooseTarget, Prepare]);
        assert!(!actions.contains(&Hold), "callers were never held");
        assert!(untouched(&actions).contains("refused the image: bad digest"));
    }

    #[test]
    fn an_unreachable_target_before_the_hold_changes_nothing() {
        let actions = run(
            Carry::Nothing,
            vec![Chosen, Unreachable("dial failed".into())],
        );
        assert!(!actions.contains(&Hold));
        assert!(untouched(&actions).contains("dial failed"));
    }

    #[test]
    fn a_deadline_while_preparing_changes_nothing() {
        let actions = run(Carry::AppState, vec![Chosen, Late]);
        assert!(!actions.contains(&Hold));
        assert!(untouched(&actions).contains("within the deadline (5s)"));
    }

    #[test]
    fn a_failed_capture_releases_the_callers_and_starts_nothing() {
        let actions = run(
            Carry::AppState,
            vec![
                Chosen,
                Completed,
                Completed,
                CaptureFailed("timed out".into()),
                Completed,
            ],
        );
        assert_eq!(
            actions[..5],
            [ChooseTarget, Prepare, Hold, Capture, Release]
        );
        assert!(!actions.contains(&Start));
        assert!(untouched(&actions).contains("gave no checkpoint (timed out)"));
    }

    #[test]
    fn a_deadline_during_the_capture_releases_the_callers() {
        let actions = run(
            Carry::AppState,
            vec![Chosen, Completed, Completed, Late, Completed],
        );
        assert_eq!(actions[4], Release);
        assert!(!actions.contains(&Start));
        assert!(untouched(&actions).contains("deadline"));
    }

    #[test]
    fn a_start_the_target_refuses_releases_the_callers_without_an_undo() {
        let actions = run(
            Carry::AppState,
            vec![
                Chosen,
                Completed,
                Completed,
                Completed,
                Refused("port taken".into()),
                Completed,
            ],
        );
        assert_eq!(actions[5], Release);
        assert!(!actions.contains(&Undo), "a refusal leaves nothing to undo");
        assert!(!actions.contains(&Switch));
        assert!(untouched(&actions).contains("did not start it: port taken"));
    }

    #[test]
    fn a_lost_start_reply_is_undone_on_the_target_before_callers_are_released() {
        let actions = run(
            Carry::AppState,
            vec![
                Chosen,
                Completed,
                Completed,
                Completed,
                Unreachable("stream reset".into()),
                Undone { confirmed: true },
                Completed,
            ],
        );
        assert_eq!(actions[5..], [Undo, Release, actions[7].clone()]);
        assert!(!actions.contains(&Switch));
        assert!(untouched(&actions).contains("answer to the start was lost (stream reset)"));
    }

    #[test]
    fn a_deadline_during_the_start_undoes_it_and_says_when_the_undo_failed() {
        let actions = run(
            Carry::Nothing,
            vec![
                Chosen,
                Completed,
                Completed,
                Late,
                Undone { confirmed: false },
                Completed,
            ],
        );
        assert_eq!(actions[4..6], [Undo, Release]);
        let why = untouched(&actions);
        assert!(why.contains("deadline"), "{why}");
        assert!(
            why.contains("could not be told to remove its copy"),
            "{why}"
        );
    }

    #[test]
    fn an_unexpected_input_while_callers_are_held_still_releases_them() {
        let actions = run(
            Carry::AppState,
            vec![Chosen, Completed, Completed, Chosen, Completed],
        );
        assert_eq!(actions[4], Release);
        assert!(untouched(&actions).contains("internal"));
    }
}
