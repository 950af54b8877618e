//! Standard least-squares multiple linear regression (seed 000's "Standard-Cost MLR"), online.
//!
//! Why: it is the baseline PB-MLR must beat. Its cost is seed 000's Equation 1, the mean squared
//! error, which punishes early and late predictions alike, so about half its predictions are
//! late. It refits after every dump on the last [`WINDOW`] samples (or as many as asked), with
//! the same ridge prior as the other linear models ([`features::prior`]) so it answers sanely
//! before the first sample.

use serde::{Deserialize, Serialize};

use super::features::{self, Features};
use super::linalg;
use super::model::{Model, Ridge};
use super::PredictorConfig;

/// Samples a windowed model keeps by default.
pub const WINDOW: usize = 512;

/// Least squares with a ridge prior, refit on a window of samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mlr {
    #[serde(flatten)]
    ridge: Ridge,
}

impl Mlr {
    /// A model at the config's prior, keeping the last `window` samples.
    pub fn new(cfg: &PredictorConfig, window: usize) -> Self {
        Mlr {
            ridge: Ridge::new(features::prior(cfg), window),
        }
    }

    /// The coefficients and what they were learned from.
    pub fn ridge(&self) -> &Ridge {
        &self.ridge
    }

    /// The coefficients, in [`features::NAMES`]' order.
    pub fn coefficients(&self) -> &[f64] {
        self.ridge.coefficients()
    }

    /// Samples learned so far.
    pub fn samples(&self) -> u64 {
        self.ridge.samples()
    }

    /// The ridge least-squares fit of `rows` (scaled vectors) to `y`, or `None` if singular.
    pub(crate) fn fit(&self, rows: &[&[f64]], y: &[f64]) -> Option<Vec<f64>> {
        linalg::weighted_ridge(
            rows,
            y,
            &vec![1.0; y.len()],
            &self.ridge.lambda,
            &self.ridge.mu,
        )
    }
}

impl Model for Mlr {
    fn name(&self) -> &'static str {
        "mlr"
    }

    fn predict(&self, f: &Features) -> f64 {
        linalg::dot(&features::vector(f), &self.ridge.theta).max(0.0)
    }

    fn observe(&mut self, f: &Features, seconds: f64, since_checkpoint: f64) {
        if !self.ridge.window.push(f, seconds, since_checkpoint) {
            return;
        }
        let w = &self.ridge.window;
        if let Some(t) = self.fit(&w.rows(), &w.y) {
            self.ridge.theta = t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::features::tests::example;

    #[test]
    fn learns_an_exact_law_from_varied_tasks() {
        let mut m = Mlr::new(&PredictorConfig::default(), WINDOW);
        let law = |f: &Features| 0.02 + 0.9 * f.rss_bytes as f64 / (1u64 << 30) as f64;
        for i in 0..40u32 {
            let mut f = example(16 + 24 * u64::from(i));
            f.threads = 1 + i % 7;
            f.open_files = 3 + (i * 13) % 50;
            f.age_s = 5.0 + f64::from(i * 7 % 11);
            m.observe(&f, law(&f), f.since_checkpoint_s());
        }
        let f = example(700);
        assert!((m.predict(&f) - law(&f)).abs() < 0.01, "{}", m.predict(&f));
        assert_eq!(m.samples(), 40);
    }

    #[test]
    fn the_window_keeps_the_newest_samples() {
        let mut m = Mlr::new(&PredictorConfig::default(), 3);
        for i in 0..5 {
            m.observe(&example(64), f64::from(i), 1.0);
        }
        assert_eq!(m.ridge.window.y, vec![2.0, 3.0, 4.0]);
        m.observe(&example(64), f64::NAN, 1.0);
        assert_eq!(m.samples(), 5);
    }
}
