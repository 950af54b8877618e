//! The downtime gate: whether the final freeze may be entered, given its prediction and the
//! task's downtime budget.
//!
//! Why a pure function of its own: it is the one decision a task's owner sets a number for
//! (the manifest's `downtime_budget_ms`), so it is tested apart from the planner's other rules,
//! and [`super::Planner`] calls it wherever a stop rule says pre-copy is done. Its rule: freeze
//! when the predicted downtime's upper bound fits the budget; when it does not, run another
//! pre-copy round (each one also teaches the predictor, whose bound then narrows), at most
//! `max_over_budget` of them; then defer the move. A budget below the floor (the downtime
//! expected with nothing left to send: dump and restore alone) defers at once, since no round
//! can bring the freeze under it.

use std::time::Duration;

/// What the gate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// The predicted freeze fits: enter it.
    Freeze,
    /// It does not fit yet: one more pre-copy round.
    AnotherRound,
    /// It cannot fit: the move is deferred and the task keeps running on the source.
    Defer,
}

/// A freeze predicted to take at most `upper` (at least `floor` with nothing left to send),
/// against `budget`, after `over_budget` rounds already run because it did not fit, out of
/// `max_over_budget` allowed.
pub fn gate(
    upper: Duration,
    floor: Duration,
    budget: Duration,
    over_budget: u32,
    max_over_budget: u32,
) -> Gate {
    if floor > budget {
        Gate::Defer
    } else if upper <= budget {
        Gate::Freeze
    } else if over_budget < max_over_budget {
        Gate::AnotherRound
    } else {
        Gate::Defer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_prediction_within_the_budget_freezes() {
        assert_eq!(gate(ms(400), ms(200), ms(500), 0, 2), Gate::Freeze);
        // Exactly the budget fits.
        assert_eq!(gate(ms(500), ms(200), ms(500), 2, 2), Gate::Freeze);
    }

    #[test]
    fn over_the_budget_runs_bounded_rounds_then_defers() {
        assert_eq!(gate(ms(800), ms(200), ms(500), 0, 2), Gate::AnotherRound);
        assert_eq!(gate(ms(800), ms(200), ms(500), 1, 2), Gate::AnotherRound);
        assert_eq!(gate(ms(800), ms(200), ms(500), 2, 2), Gate::Defer);
        assert_eq!(gate(ms(800), ms(200), ms(500), 0, 0), Gate::Defer);
    }

    #[test]
    fn a_budget_under_the_floor_defers_at_once() {
        // A 1 ms budget: no round can bring a dump and a restore under it.
        assert_eq!(gate(ms(300), ms(150), ms(1), 0, 2), Gate::Defer);
        assert_eq!(gate(ms(150), ms(150), ms(149), 0, 2), Gate::Defer);
    }
}
