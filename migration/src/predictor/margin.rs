//! A margin on top of any model, chosen to minimise seed 000's own measure: the factor that
//! would have lost the least computation over the model's past predictions.
//!
//! Why: PB-MLR's fit is an upper envelope of the dumps it has seen, so a new dump still lands
//! above it now and then, and a late dump costs everything since the last checkpoint. Scaling
//! every prediction up by a factor `m` trades the one for the other: each early prediction
//! wastes `(m − 1)·ŷ` more, each late one it covers saves `e + ŷ`. This layer (ours, not the
//! seed's; reported beside plain PB-MLR) records, before learning each dump, what the inner
//! model had predicted for it, and sets `m` to the value in `{1} ∪ {y/ŷ > 1}` with the least
//! summed lost computation ([`super::evaluate::lost`]) over the last `keep` of them (the
//! smallest such value on a tie). Unlike a conformal quantile it aims at nothing but the cost:
//! it leaves a dump late when covering it would waste more than losing it, and it covers every
//! dump when being late is dear (large `e`). Deterministic; `O(keep²)` per dump.

use serde::{Deserialize, Serialize};

use super::evaluate::lost;
use super::features::Features;
use super::model::Model;

/// One past prediction of the inner model: `(ŷ, y, e)`.
type Past = (f64, f64, f64);

/// A model with a least-lost-computation margin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Margin<M> {
    inner: M,
    /// Past predictions kept, at most.
    keep: usize,
    past: Vec<Past>,
    factor: f64,
}

impl<M: Model> Margin<M> {
    /// `inner` with a margin chosen over its last `keep` predictions.
    pub fn new(inner: M, keep: usize) -> Self {
        Margin {
            inner,
            keep: keep.max(1),
            past: Vec::new(),
            factor: 1.0,
        }
    }

    /// The factor the inner prediction is scaled by now (at least 1).
    pub fn factor(&self) -> f64 {
        self.factor
    }
}

/// The factor in `{1} ∪ {y/ŷ > 1}` with the least summed lost computation over `past`.
pub fn least_lost_factor(past: &[Past]) -> f64 {
    let total = |m: f64| -> f64 { past.iter().map(|&(p, y, e)| lost(p * m, y, e)).sum() };
    let mut candidates: Vec<f64> = past
        .iter()
        .filter(|(p, y, _)| *p > 0.0 && y > p)
        .map(|(p, y, _)| covering(*p, *y))
        .filter(|m| m.is_finite())
        .collect();
    candidates.sort_by(f64::total_cmp);
    let mut best = (total(1.0), 1.0);
    for m in candidates {
        let cost = total(m);
        if cost < best.0 {
            best = (cost, m);
        }
    }
    best.1
}

/// The least factor `m` with `p·m ≥ y` in floating point (`y / p` may round one ulp short).
fn covering(p: f64, y: f64) -> f64 {
    let mut m = y / p;
    for _ in 0..4 {
        if p * m >= y {
            break;
        }
        m = m.next_up();
    }
    m
}

impl<M: Model> Model for Margin<M> {
    fn name(&self) -> &'static str {
        "pbmlr+margin"
    }

    fn predict(&self, f: &Features) -> f64 {
        self.inner.predict(f) * self.factor
    }

    fn observe(&mut self, f: &Features, seconds: f64, since_checkpoint: f64) {
        let before = self.inner.predict(f);
        if seconds.is_finite() && seconds >= 0.0 && since_checkpoint.is_finite() {
            if self.past.len() == self.keep {
                self.past.remove(0);
            }
            self.past.push((before, seconds, since_checkpoint.max(0.0)));
            self.factor = least_lost_factor(&self.past);
        }
        self.inner.observe(f, seconds, since_checkpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::features::tests::example;
    use crate::predictor::model::tests::Fixed;

    #[test]
    fn a_dear_late_dump_is_covered_and_a_cheap_one_is_not() {
        // Nine dumps at 1 s and one at 2 s, all predicted 1 s. Covering the 2 s dump (m = 2)
        // wastes 9 × 1 s on the others: worth it when being late loses 10 s (e = 9), not when
        // it loses 2 s (e = 1).
        let dear: Vec<Past> = (0..9)
            .map(|_| (1.0, 1.0, 9.0))
            .chain([(1.0, 2.0, 9.0)])
            .collect();
        assert_eq!(least_lost_factor(&dear), 2.0);
        let cheap: Vec<Past> = (0..9)
            .map(|_| (1.0, 1.0, 1.0))
            .chain([(1.0, 2.0, 1.0)])
            .collect();
        assert_eq!(least_lost_factor(&cheap), 1.0);
        assert_eq!(least_lost_factor(&[]), 1.0);
    }

    #[test]
    fn the_wrapper_learns_its_factor_from_the_inner_models_misses() {
        let mut m = Margin::new(Fixed(0.5), 100);
        assert_eq!(m.factor(), 1.0);
        assert_eq!(m.predict(&example(64)), 0.5);
        // Every dump took 0.6 s, 5 s after the last checkpoint: 1.2 covers them all.
        for _ in 0..3 {
            m.observe(&example(64), 0.6, 5.0);
        }
        assert!((m.factor() - 1.2).abs() < 1e-12, "{}", m.factor());
        assert!((m.predict(&example(64)) - 0.6).abs() < 1e-12);
        // Unusable samples are not recorded.
        m.observe(&example(64), f64::NAN, 5.0);
        assert_eq!(m.past.len(), 3);
        // Only the last `keep` count: a dear 3 s miss keeps the factor at 3 while it is among
        // them and no longer once it has left.
        let (mut short, mut long) = (Margin::new(Fixed(1.0), 2), Margin::new(Fixed(1.0), 3));
        for y in [3.0, 0.5, 0.5] {
            short.observe(&example(64), y, 10.0);
            long.observe(&example(64), y, 10.0);
        }
        assert_eq!((short.factor(), long.factor()), (1.0, 3.0));
    }
}
