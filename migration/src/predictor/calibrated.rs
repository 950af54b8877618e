//! A split-conformal margin on top of any model: the prediction is scaled up by the ratio
//! (measured / predicted) that the model's own recent out-of-sample predictions exceeded only a
//! target fraction of the time.
//!
//! Why: PB-MLR's fit lies above the dumps it has seen, but a new dump carries fresh noise, so
//! out of sample it is still late often when dumps are noisy relative to their length (small
//! dumps of a few tens of ms vary by 20-30% on this machine). Seed 000 has no such layer; this
//! one is ours, reported beside plain PB-MLR (never in its place), and it uses nothing but the
//! model's own past errors: before learning each dump it records `y / ŷ` for the prediction it
//! made, and predicts `ŷ · q` where `q` is the `⌈(1 − α)(k + 1)⌉`-th smallest of the last `k`
//! ratios (at least 1; the split-conformal quantile, which keeps the late rate near α when the
//! errors are exchangeable). Deterministic. Its weak point: a ratio is only as good as the inner
//! prediction is far from 0; a model that predicts near 0 makes huge ratios (capped at 100), and
//! the margin then inflates every later prediction until they leave the window.

use serde::{Deserialize, Serialize};

use super::features::Features;
use super::model::Model;

/// A model with a conformal margin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibrated<M> {
    inner: M,
    /// Target late fraction α.
    alpha: f64,
    /// Ratios kept, at most.
    keep: usize,
    ratios: Vec<f64>,
}

impl<M: Model> Calibrated<M> {
    /// `inner` with a margin aiming at late fraction `alpha`, from its last `keep` predictions.
    pub fn new(inner: M, alpha: f64, keep: usize) -> Self {
        Calibrated {
            inner,
            alpha: alpha.clamp(0.0, 1.0),
            keep: keep.max(1),
            ratios: Vec::new(),
        }
    }

    /// The factor the inner prediction is scaled by now.
    pub fn factor(&self) -> f64 {
        let k = self.ratios.len();
        if k == 0 {
            return 1.0;
        }
        let mut r = self.ratios.clone();
        r.sort_by(f64::total_cmp);
        let rank = ((1.0 - self.alpha) * (k as f64 + 1.0)).ceil() as usize;
        r[rank.clamp(1, k) - 1].max(1.0)
    }
}

impl<M: Model> Model for Calibrated<M> {
    fn name(&self) -> &'static str {
        "pbmlr+conformal"
    }

    fn predict(&self, f: &Features) -> f64 {
        self.inner.predict(f) * self.factor()
    }

    fn observe(&mut self, f: &Features, seconds: f64, since_checkpoint: f64) {
        let before = self.inner.predict(f);
        if seconds.is_finite() && seconds >= 0.0 {
            // A prediction of 0 for a positive duration: count it as far off (ratio capped).
            let ratio = if before > 0.0 {
                (seconds / before).min(100.0)
            } else if seconds > 0.0 {
                100.0
            } else {
                1.0
            };
            if self.ratios.len() == self.keep {
                self.ratios.remove(0);
            }
            self.ratios.push(ratio);
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
    fn the_margin_is_the_conformal_quantile_of_past_ratios() {
        let mut m = Calibrated::new(Fixed(1.0), 0.1, 100);
        assert_eq!(m.factor(), 1.0);
        // Ratios 0.1, 0.2, ..., 2.0: the ⌈0.9·21⌉ = 19th smallest is 1.9.
        for i in 1..=20 {
            m.observe(&example(64), f64::from(i) * 0.1, 1.0);
        }
        assert!((m.factor() - 1.9).abs() < 1e-12, "{}", m.factor());
        assert!((m.predict(&example(64)) - 1.9).abs() < 1e-12);
        // Only ever early: no margin below 1.
        let mut low = Calibrated::new(Fixed(1.0), 0.1, 100);
        low.observe(&example(64), 0.5, 1.0);
        assert_eq!(low.factor(), 1.0);
    }
}
