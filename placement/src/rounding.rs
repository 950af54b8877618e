//! Breadth-first randomized rounding (seed 004, after Even, Rost and Schmid).
//!
//! The root sits on the initiator. Each later unit is drawn among the hosts within its call's
//! latency bound of its tree parent's host that can still take it, with probability falling
//! exponentially in the policy's marginal cost: `exp(-(m - m_min) / T)` where `T` is the
//! temperature times the gap between the best and the fifth-best marginal. A dead end (no host
//! can take a unit) undoes the previous draw and draws again without that host, a bounded number
//! of times, then restarts the round with wider draws, a bounded number of times. `k` independent
//! rounds run, each from its own reproducible stream, and the best plan wins.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::PlacementError;
use crate::network::HostId;
use crate::partial::Partial;
use crate::plan::Plan;
use crate::policy::Policy;
use crate::problem::Problem;

/// Rounds cycle through these multiples of the temperature, so that best-of-k mixes draws that
/// stay close to the best marginal with draws that explore (measured: better than any single
/// temperature on the quality benchmark).
const SCHEDULE: [f64; 3] = [0.5, 1.0, 2.0];

/// The rank whose gap to the best sets the temperature's scale.
const TOP: usize = 5;

/// How hard randomized rounding tries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundingConfig {
    /// Independent rounds; the best plan among them wins.
    pub rounds: u32,
    /// Draws undone and redrawn elsewhere after dead ends, per pass.
    pub backtracks: u32,
    /// Fresh passes of one round after a pass fails, each drawing more widely, before the round
    /// is given up.
    pub restarts: u32,
    /// 0 draws only among the best hosts; larger values spread the draw.
    pub temperature: f64,
    /// Hosts weighed per draw when more are in reach (0: all); see
    /// [`Partial::sample_candidates`].
    pub candidate_cap: usize,
    pub seed: u64,
}

impl Default for RoundingConfig {
    fn default() -> Self {
        Self {
            rounds: 32,
            backtracks: 32,
            restarts: 3,
            temperature: 0.3,
            candidate_cap: 64,
            seed: 0,
        }
    }
}

/// The winning plan and how the rounds went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub plan: Plan,
    /// The round that produced the plan.
    pub best_round: u32,
    /// Rounds that ended with a complete plan.
    pub feasible_rounds: u32,
    /// Passes started, counting restarts after dead ends.
    pub passes: u32,
}

/// Reusable buffers, so that rounds allocate nothing.
struct Scratch {
    candidates: Vec<HostId>,
    weights: Vec<f64>,
    probability: Vec<Option<f64>>,
    /// Per unit, hosts that led to a dead end in this pass.
    banned: Vec<Vec<HostId>>,
}

/// Runs `cfg.rounds` rounds and returns the best plan, or says which task could not be placed
/// in the pass that got furthest, and why.
pub fn place(
    problem: &Problem,
    policy: &dyn Policy,
    cfg: &RoundingConfig,
) -> Result<Outcome, PlacementError> {
    let mut partial = Partial::new(problem);
    let mut scratch = Scratch {
        candidates: Vec::new(),
        weights: Vec::new(),
        probability: vec![None; problem.units().len()],
        banned: vec![Vec::new(); problem.units().len()],
    };
    let mut best: Option<(f64, u32, Plan)> = None;
    let mut feasible_rounds = 0;
    let mut passes = 0;
    let mut furthest: Option<(usize, PlacementError)> = None;
    for round in 0..cfg.rounds.max(1) {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(u64::from(round));
        for restart in 0..=cfg.restarts {
            passes += 1;
            partial.reset();
            let t = cfg.temperature
                * SCHEDULE[round as usize % SCHEDULE.len()]
                * f64::from(1 + restart);
            let pass = one_pass(&mut partial, policy, t, cfg, &mut rng, &mut scratch);
            if pass.is_ok() {
                feasible_rounds += 1;
                let objective = policy.objective(&partial);
                if best.as_ref().is_none_or(|(b, _, _)| objective < *b) {
                    let plan = Plan::from_partial(&partial, objective, &scratch.probability);
                    best = Some((objective, round, plan));
                }
                break;
            }
            let depth = partial.placed();
            if furthest.as_ref().is_none_or(|(d, _)| depth > *d) {
                let dropped = pass.err().unwrap_or(0);
                furthest = Some((depth, no_host(&partial, dropped)));
            }
        }
    }
    match (best, furthest) {
        (Some((_, best_round, plan)), _) => Ok(Outcome {
            plan,
            best_round,
            feasible_rounds,
            passes,
        }),
        (None, Some((_, err))) => Err(err),
        (None, None) => unreachable!("at least one pass ran and neither succeeded nor failed"),
    }
}

/// The error for the unit `partial` could not place; `dropped` hosts could take it but were
/// given up because they led to dead ends further on.
pub(crate) fn no_host(partial: &Partial, dropped: usize) -> PlacementError {
    let unit = partial.problem.units()[partial.placed()];
    let task = partial.problem.graph.task(unit.task);
    let name = if task.replicas > 1 {
        format!(
            "{} (replica {} of {})",
            task.name,
            unit.replica + 1,
            task.replicas
        )
    } else {
        task.name.clone()
    };
    let mut why = partial.explain();
    if dropped > 0 {
        why = format!(
            "{why}; {dropped} more could take it but every draw through them ended at a dead end"
        );
    }
    PlacementError::NoHost { task: name, why }
}

/// Places every unit by weighted draws. At a dead end it undoes the previous draw and draws
/// again without the host that led there, at most `backtracks` times in the pass. If the pass
/// still ends at a dead end, the partial plan is left there and the error counts the hosts that
/// could take the stuck unit but were dropped because they led to dead ends further on.
fn one_pass(
    partial: &mut Partial,
    policy: &dyn Policy,
    temperature: f64,
    cfg: &RoundingConfig,
    rng: &mut ChaCha8Rng,
    s: &mut Scratch,
) -> Result<(), usize> {
    for banned in &mut s.banned {
        banned.clear();
    }
    let mut backtracks = cfg.backtracks;
    while !partial.is_complete() {
        let k = partial.placed();
        partial.sample_candidates(cfg.candidate_cap, rng, &mut s.candidates);
        let banned = &s.banned[k];
        s.candidates.retain(|h| !banned.contains(h));
        if s.candidates.is_empty() && !banned.is_empty() && cfg.candidate_cap > 0 {
            // The sample held only banned hosts; look at every host before calling it a dead end.
            partial.candidates(&mut s.candidates);
            s.candidates.retain(|h| !banned.contains(h));
        }
        if s.candidates.is_empty() {
            if backtracks == 0 || k <= 1 {
                return Err(s.banned[k].len());
            }
            backtracks -= 1;
            s.banned[k].clear();
            let undone = partial.hosts()[k - 1];
            partial.unplace();
            s.banned[k - 1].push(undone);
            continue;
        }
        s.weights.clear();
        s.weights
            .extend(s.candidates.iter().map(|&h| policy.marginal(partial, h)));
        let (pick, p) = draw(&mut s.weights, temperature, rng);
        // The root is pinned to the initiator, not drawn.
        s.probability[k] = partial.problem.units()[k].parent.map(|_| p);
        partial.place(s.candidates[pick]);
    }
    Ok(())
}

/// Turns marginals into weights in place and draws an index; returns it with its probability.
///
/// The temperature is scaled by the gap between the best and the fifth-best marginal, not by
/// the spread of all of them: a crowd of poor far-away candidates must not flatten the draw.
fn draw(marginals: &mut [f64], temperature: f64, rng: &mut impl Rng) -> (usize, f64) {
    let mut finite: Vec<f64> = marginals
        .iter()
        .copied()
        .filter(|m| m.is_finite())
        .collect();
    if finite.is_empty() {
        // Every host is infinitely bad by the policy's measure: draw uniformly among them all.
        let i = rng.random_range(0..marginals.len());
        return (i, 1.0 / marginals.len() as f64);
    }
    let q = (finite.len() - 1).min(TOP - 1);
    finite.select_nth_unstable_by(q, f64::total_cmp);
    let min = finite[..=q].iter().copied().fold(f64::INFINITY, f64::min);
    let t = temperature * (finite[q] - min);
    for m in marginals.iter_mut() {
        *m = if !m.is_finite() {
            0.0
        } else if t > 1e-12 {
            (-(*m - min) / t).exp()
        } else if *m <= min {
            1.0
        } else {
            0.0
        };
    }
    let total: f64 = marginals.iter().sum();
    let mut x = rng.random::<f64>() * total;
    let mut last = 0;
    for (i, w) in marginals.iter().enumerate() {
        if *w > 0.0 {
            last = i;
            if x < *w {
                return (i, w / total);
            }
            x -= w;
        }
    }
    (last, marginals[last] / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_prefers_small_marginals_and_reports_probability() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut hits = [0u32; 3];
        for _ in 0..2000 {
            let mut m = [1.0, 2.0, 10.0];
            let (i, p) = draw(&mut m, 0.5, &mut rng);
            assert!(p > 0.0 && p <= 1.0);
            hits[i] += 1;
        }
        assert!(hits[0] > hits[1] && hits[1] > hits[2], "{hits:?}");
    }

    #[test]
    fn zero_temperature_only_draws_the_minimum() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..100 {
            let mut m = [3.0, 1.0, 1.0, 2.0];
            let (i, p) = draw(&mut m, 0.0, &mut rng);
            assert!(i == 1 || i == 2);
            assert!((p - 0.5).abs() < 1e-12);
        }
    }
}
