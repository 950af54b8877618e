//! The downtime gate: whether the final freeze may be entered, given its prediction and the
//! task's downtime budget.
//!
//! Why a pure function of its own: it is the one decision a task's owner sets a number for
//! (the manifest's `downtime_budget_ms`), so it is tested apart from the planner's other rules,
//! and [`super::Planner`] calls it wherever a stop rule says pre-copy is done. Its rule: freeze
//! when the predicted downtime's upper bound fits the budget. When only the bound is over it
//! (the expected downtime fits, the predictor's doubt does not), run another pre-copy round:
//! each one teaches the predictor, whose bound then narrows; at most `max_over_budget` of them,
//! then defer the move. When even the expected downtime is over the budget, no round the stop
//! rule already judged useless can help: defer at once. So does a budget below the floor (the
//! downtime expected with nothing left to send: dump and restore alone).

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

/// A freeze predicted to take `mean`, at most `upper` (at least `floor` with nothing left to
/// send), against `budget`, after `over_budget` rounds already run because it did not fit, out
/// of `max_over_budget` allowed.
pub fn gate(
    mean: Duration,
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
    } else if mean <= budget && over_budget < max_over_budget {
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
        assert_eq!(gate(ms(300), ms(400), ms(200), ms(500), 0, 2), Gate::Freeze);
        // Exactly the budget fits, also after the over-budget rounds.
        assert_eq!(gate(ms(300), ms(500), ms(200), ms(500), 2, 2), Gate::Freeze);
    }

    #[test]
    fn a_doubtful_prediction_runs_bounded_rounds_then_defers() {
        // Expected 400 ms, bound 800 ms, budget 500 ms: the doubt is over the budget.
        let g = |over| gate(ms(400), ms(800), ms(200), ms(500), over, 2);
        assert_eq!(g(0), Gate::AnotherRound);
        assert_eq!(g(1), Gate::AnotherRound);
        assert_eq!(g(2), Gate::Defer);
        assert_eq!(gate(ms(400), ms(800), ms(200), ms(500), 0, 0), Gate::Defer);
    }

    #[test]
    fn an_expected_downtime_over_the_budget_defers_at_once() {
        assert_eq!(gate(ms(600), ms(800), ms(200), ms(500), 0, 2), Gate::Defer);
    }

    #[test]
    fn a_budget_under_the_floor_defers_at_once() {
        // A 1 ms budget: no round can bring a dump and a restore under it.
        assert_eq!(gate(ms(200), ms(300), ms(150), ms(1), 0, 2), Gate::Defer);
        assert_eq!(gate(ms(150), ms(150), ms(150), ms(149), 0, 2), Gate::Defer);
    }
}
