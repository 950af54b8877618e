//! A split-conformal margin on top of any model, from the model's own out-of-sample errors,
//! each measured against the prediction plus a typical dump: ours, not seed 000's.
//!
//! Why: PB-MLR's fit is an upper envelope of the dumps it has seen, but a new dump carries fresh
//! noise, so out of sample it is still late often: about `d / (n + 1)` of the time for a
//! `d`-coefficient envelope of `n` exchangeable dumps, more on a loaded machine where a dump of
//! one task varies 20x from one minute to the next. What is late is not a share of the dump: a
//! 16 MiB dump that usually takes 30 ms takes 240 or 500 ms when the dumper waits for a core,
//! a stall of the same order as a typical dump of any size. So each error is scored as
//! `s = (y − ŷ) / (ŷ + c)`, `c` the median duration of the dumps seen (a stall's scale; the
//! prediction itself at the first dump), and the prediction is `ŷ + q·(ŷ + c)` with `q` the
//! `⌈(1 − α)(k + 1)⌉`-th smallest of the last `k` scores (at least 0): the split-conformal
//! quantile, which keeps the late rate at most α when the scores are exchangeable. A large dump
//! gets a margin in proportion to itself, a small one a margin of the order of a typical dump.
//!
//! Before `k` reaches `1/α − 1` (19 at α = 5%) that rank does not exist: no finite quantile of
//! so few scores bounds the late rate by α. Until then the margin is at least the one the
//! log-space prior implies ([`features::LOG_NOISE_SD`], ±30% at one sd, fixed before any
//! replay): its one-sided `1 − α` quantile `e^{z·0.3} − 1` (0.64 at 5%), a bound on the
//! score since `s ≤ y/ŷ − 1`. Deterministic; the scores and durations are kept for the last
//! `keep` dumps.

use serde::{Deserialize, Serialize};

use super::features::{Features, LOG_NOISE_SD};
use super::model::Model;

/// Late fraction the node's margin aims at: the late target.
pub const ALPHA: f64 = 0.05;
/// Dumps whose scores and durations the margin keeps (the bench's conformal window since it
/// was first written).
pub const KEEP: usize = 100;

/// The margin's state: the last `keep` scores and durations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conformal {
    /// Target late fraction α.
    alpha: f64,
    /// Scores and durations kept, at most.
    keep: usize,
    /// Out-of-sample scores `(y − ŷ) / (ŷ + c)`, oldest first.
    scores: Vec<f64>,
    /// Measured durations, oldest first (their median is `c`).
    durations: Vec<f64>,
}

impl Default for Conformal {
    fn default() -> Self {
        Conformal::new(ALPHA, KEEP)
    }
}

impl Conformal {
    /// No dumps yet, aiming at late fraction `alpha`, keeping the last `keep`.
    pub fn new(alpha: f64, keep: usize) -> Self {
        Conformal {
            alpha: alpha.clamp(1e-6, 0.5),
            keep: keep.max(1),
            scores: Vec::new(),
            durations: Vec::new(),
        }
    }

    /// Dumps scored so far (at most `keep`).
    pub fn scored(&self) -> usize {
        self.scores.len()
    }

    /// α as used: a state read from a file may hold anything.
    fn alpha(&self) -> f64 {
        if self.alpha.is_finite() {
            self.alpha.clamp(1e-6, 0.5)
        } else {
            ALPHA
        }
    }

    /// The prior's score bound: `e^{z·σ₀} − 1`, `z` the standard normal's `1 − α` quantile.
    pub fn prior_quantile(&self) -> f64 {
        let z = std::f64::consts::SQRT_2 * puruspe::inverf(1.0 - 2.0 * self.alpha());
        (z * LOG_NOISE_SD).exp() - 1.0
    }

    /// The score quantile `q` the margin uses now (at least 0).
    pub fn quantile(&self) -> f64 {
        let k = self.scores.len();
        let mut sorted = self.scores.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = (((1.0 - self.alpha()) * (k as f64 + 1.0)).ceil() as usize).max(1);
        let q = if rank <= k {
            sorted[rank - 1]
        } else {
            // Too few scores for a finite quantile: the largest, and at least the prior's.
            sorted
                .last()
                .copied()
                .unwrap_or(0.0)
                .max(self.prior_quantile())
        };
        q.max(0.0)
    }

    /// `c`: the median measured duration, or `yhat` before the first.
    fn typical(&self, yhat: f64) -> f64 {
        if self.durations.is_empty() {
            return yhat;
        }
        let mut d = self.durations.clone();
        d.sort_by(f64::total_cmp);
        d[d.len() / 2]
    }

    /// The inner prediction `yhat` with the margin: `ŷ + q·(ŷ + c)`.
    pub fn apply(&self, yhat: f64) -> f64 {
        yhat + self.quantile() * (yhat + self.typical(yhat))
    }

    /// Scores a dump that took `seconds` where the inner model had predicted `yhat` (before it
    /// learned the dump). A non-finite or negative duration is ignored.
    pub fn record(&mut self, yhat: f64, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 || !yhat.is_finite() {
            return;
        }
        let scale = yhat + self.typical(yhat);
        if scale > 0.0 {
            push(self.keep, &mut self.scores, (seconds - yhat) / scale);
        }
        push(self.keep, &mut self.durations, seconds);
    }
}

fn push(keep: usize, v: &mut Vec<f64>, x: f64) {
    // `keep` may come from a file: at least 1, and a longer list is cut down to it.
    while v.len() >= keep.max(1) {
        v.remove(0);
    }
    v.push(x);
}

/// A model with a conformal margin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibrated<M> {
    inner: M,
    margin: Conformal,
}

impl<M: Model> Calibrated<M> {
    /// `inner` with a margin aiming at late fraction `alpha`, from its last `keep` dumps.
    pub fn new(inner: M, alpha: f64, keep: usize) -> Self {
        Calibrated {
            inner,
            margin: Conformal::new(alpha, keep),
        }
    }

    /// The margin.
    pub fn margin(&self) -> &Conformal {
        &self.margin
    }
}

impl<M: Model> Model for Calibrated<M> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn predict(&self, f: &Features) -> f64 {
        self.margin.apply(self.inner.predict(f))
    }

    fn observe(&mut self, f: &Features, seconds: f64, since_checkpoint: f64) {
        self.margin.record(self.inner.predict(f), seconds);
        self.inner.observe(f, seconds, since_checkpoint);
    }
}

/// The name of PB-MLR with this margin in reports and in a node's status.
pub const NAME: &str = "pbmlr+conformal";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::features::tests::example;
    use crate::predictor::model::tests::Fixed;

    #[test]
    fn before_enough_scores_the_prior_sets_the_margin() {
        let m = Calibrated::new(Fixed(1.0), 0.05, 100);
        // e^{1.645 × 0.3} − 1 = 0.638.
        assert!(
            (m.margin().prior_quantile() - 0.638).abs() < 1e-3,
            "{}",
            m.margin().prior_quantile()
        );
        assert_eq!(m.margin().quantile(), m.margin().prior_quantile());
        // The first prediction: ŷ + q·(ŷ + ŷ).
        let p = m.predict(&example(64));
        assert!(
            (p - (1.0 + 2.0 * m.margin().prior_quantile())).abs() < 1e-12,
            "{p}"
        );
    }

    #[test]
    fn the_margin_is_the_conformal_quantile_of_past_scores() {
        let mut c = Conformal::new(0.1, 100);
        // 20 scores 0, 0.05, ..., 0.95 of dumps of 1 s: the ⌈0.9·21⌉ = 19th smallest is 0.9.
        c.scores = (0..20).map(|i| f64::from(i) * 0.05).collect();
        c.durations = vec![1.0; 20];
        assert_eq!(c.scored(), 20);
        let q = c.quantile();
        assert!((q - 0.9).abs() < 1e-12, "{q}");
        // ŷ + q·(ŷ + c), c the median duration.
        assert!((c.apply(1.0) - 2.8).abs() < 1e-12);
        assert!((c.apply(0.01) - (0.01 + 0.9 * 1.01)).abs() < 1e-12);
    }

    #[test]
    fn a_state_read_with_odd_knobs_still_answers() {
        // What no file written by a node holds, but a hand-edited or damaged one may.
        for alpha in [f64::NAN, -3.0, 7.0] {
            let mut odd = Conformal {
                alpha,
                keep: 0,
                scores: vec![0.5, 0.1],
                durations: Vec::new(),
            };
            assert!(odd.apply(1.0).is_finite());
            odd.record(1.0, 2.0);
            assert_eq!(odd.scored(), 1, "keep 0 keeps one");
            assert!(odd.apply(1.0) >= 1.0);
        }
    }

    #[test]
    fn only_early_scores_give_no_margin_once_there_are_enough() {
        let mut m = Calibrated::new(Fixed(1.0), 0.05, 100);
        for _ in 0..30 {
            m.observe(&example(64), 0.5, 1.0);
        }
        assert_eq!(m.margin().quantile(), 0.0);
        assert_eq!(m.predict(&example(64)), 1.0);
    }

    #[test]
    fn a_steady_overrun_is_covered_once_scored() {
        // Every dump 20% over a prediction of 1 s: scored 0.2 / (1 + 1) first (no median yet),
        // then 0.2 / (1 + 1.2); the largest of 30 is the quantile at 95%.
        let mut m = Calibrated::new(Fixed(1.0), 0.05, 100);
        for _ in 0..30 {
            m.observe(&example(64), 1.2, 1.0);
        }
        let p = m.predict(&example(64));
        assert!((p - 1.22).abs() < 1e-9, "{p}");
    }
}
