//! The Bayesian linear model (recursive least squares with a Gaussian prior), the model the
//! planner's [`super::Predictor`] has used since the first migration.
//!
//! Why a file of its own: it is one of the models `brume bench predictor` compares (seed 000's
//! table), beside PB-MLR ([`super::pbmlr`]), least squares ([`super::mlr`]) and the best static
//! value ([`super::static_best`]); [`BayesModel`] puts it behind the shared [`Model`] trait on the
//! shared feature vector. Its prediction is a mean and a standard deviation: the table reports
//! the mean (`bayes`) and the upper bound the planner decides with, `mean + z·sd` (`bayes+zsd`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::features::{self, Features};
use super::model::Model;
use super::PredictorConfig;

/// A prediction in seconds with its uncertainty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// Expected value, seconds (never negative).
    pub mean: f64,
    /// Predictive standard deviation, seconds.
    pub sd: f64,
}

impl Prediction {
    /// The mean as a duration.
    pub fn mean(&self) -> Duration {
        secs(self.mean)
    }

    /// `mean + z·sd`: with Gaussian errors, z = 2 is exceeded about 2% of the time.
    pub fn upper(&self, z: f64) -> Duration {
        secs(self.mean + z * self.sd)
    }
}

fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(1e9))
    } else if s > 0.0 {
        Duration::from_secs(1_000_000_000)
    } else {
        Duration::ZERO
    }
}

/// Online Bayesian linear regression: `y = θ·x + ε`, `θ ~ N(mean, P)`, `ε ~ N(0, σ²)`, updated
/// per observation in O(n²), forgetting old data by `forget` per update (1 = never), and
/// estimating σ² from its own innovations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnlineLinear {
    theta: Vec<f64>,
    p: Vec<Vec<f64>>,
    noise_var: f64,
    noise_floor: f64,
    forget: f64,
    samples: u64,
}

impl OnlineLinear {
    /// A model with prior means and standard deviations per coefficient, the expected noise and
    /// a forgetting factor in (0, 1].
    ///
    /// # Panics
    ///
    /// If `prior_mean` and `prior_sd` differ in length (a programming error).
    pub fn new(prior_mean: &[f64], prior_sd: &[f64], noise_sd: f64, forget: f64) -> Self {
        let n = prior_mean.len();
        assert_eq!(n, prior_sd.len(), "one prior sd per coefficient");
        let mut p = vec![vec![0.0; n]; n];
        for (i, sd) in prior_sd.iter().enumerate() {
            p[i][i] = sd * sd;
        }
        OnlineLinear {
            theta: prior_mean.to_vec(),
            p,
            noise_var: noise_sd * noise_sd,
            noise_floor: (noise_sd * noise_sd) * 0.01,
            forget: forget.clamp(0.5, 1.0),
            samples: 0,
        }
    }

    /// The coefficients as learned so far.
    pub fn coefficients(&self) -> &[f64] {
        &self.theta
    }

    /// How many observations were learned.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    fn px(&self, x: &[f64]) -> Vec<f64> {
        self.p
            .iter()
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// The predictive distribution at `x` (features in the model's order).
    pub fn predict(&self, x: &[f64]) -> Prediction {
        let mean: f64 = self.theta.iter().zip(x).map(|(t, v)| t * v).sum();
        let xpx: f64 = self.px(x).iter().zip(x).map(|(a, b)| a * b).sum();
        Prediction {
            mean: mean.max(0.0),
            sd: (xpx.max(0.0) + self.noise_var).sqrt(),
        }
    }

    /// Learns one observation; non-finite inputs are ignored.
    pub fn update(&mut self, x: &[f64], y: f64) {
        if !y.is_finite() || x.len() != self.theta.len() || x.iter().any(|v| !v.is_finite()) {
            return;
        }
        let err = y - self.theta.iter().zip(x).map(|(t, v)| t * v).sum::<f64>();
        // A surprise far beyond what the model's uncertainty allows means the machine changed
        // (a slower disk, a loaded CPU), not noise: widen P so the coefficients move, instead of
        // blaming the noise and learning nothing.
        let xpx0: f64 = self.px(x).iter().zip(x).map(|(a, b)| a * b).sum();
        let nis = err * err / (xpx0 + self.noise_var);
        if nis > 9.0 {
            let inflate = (nis / 9.0).min(100.0);
            for row in &mut self.p {
                for v in row.iter_mut() {
                    *v *= inflate;
                }
            }
        }
        let px = self.px(x);
        let xpx: f64 = px.iter().zip(x).map(|(a, b)| a * b).sum();
        // Noise estimate: E[err²] = xPx + σ², each sample capped so one outlier cannot swamp it.
        let sample = (err * err - xpx).clamp(self.noise_floor, 9.0 * self.noise_var);
        let w = if self.samples < 10 { 0.3 } else { 0.1 };
        self.noise_var += w * (sample - self.noise_var);
        let s = xpx + self.noise_var;
        let k: Vec<f64> = px.iter().map(|v| v / s).collect();
        for (t, ki) in self.theta.iter_mut().zip(&k) {
            *t += ki * err;
        }
        for (row, ki) in self.p.iter_mut().zip(&k) {
            for (v, pj) in row.iter_mut().zip(&px) {
                *v = (*v - ki * pj) / self.forget;
            }
        }
        let n = x.len();
        // Keep P symmetric against rounding.
        for i in 0..n {
            for j in 0..i {
                let v = 0.5 * (self.p[i][j] + self.p[j][i]);
                self.p[i][j] = v;
                self.p[j][i] = v;
            }
        }
        self.samples += 1;
    }
}

/// [`OnlineLinear`] on the shared feature vector ([`features::vector`]), behind [`Model`]: it
/// answers its mean, or its upper bound `mean + z·sd` when built with [`BayesModel::upper`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BayesModel {
    model: OnlineLinear,
    /// 0 for the mean; otherwise how many sds above it.
    z: f64,
}

impl BayesModel {
    /// The mean of a model with the config's prior (see [`features::prior`]).
    pub fn mean(cfg: &PredictorConfig) -> Self {
        let prior = features::prior(cfg);
        BayesModel {
            model: OnlineLinear::new(&prior.mean, &prior.sd, cfg.noise_sd, cfg.forget),
            z: 0.0,
        }
    }

    /// The upper bound `mean + cfg.z·sd`, as the planner uses it.
    pub fn upper(cfg: &PredictorConfig) -> Self {
        BayesModel {
            z: cfg.z,
            ..Self::mean(cfg)
        }
    }

    /// The underlying model.
    pub fn linear(&self) -> &OnlineLinear {
        &self.model
    }
}

impl Model for BayesModel {
    fn name(&self) -> &'static str {
        if self.z > 0.0 {
            "bayes+zsd"
        } else {
            "bayes"
        }
    }

    fn predict(&self, f: &Features) -> f64 {
        let p = self.model.predict(&features::vector(f));
        (p.mean + self.z * p.sd).max(0.0)
    }

    fn observe(&mut self, f: &Features, seconds: f64, _since_checkpoint: f64) {
        self.model.update(&features::vector(f), seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_observations_are_ignored() {
        let mut m = OnlineLinear::new(&[1.0, 2.0], &[1.0, 1.0], 0.1, 1.0);
        let before = m.clone();
        m.update(&[1.0, f64::NAN], 3.0);
        m.update(&[1.0, 2.0], f64::INFINITY);
        m.update(&[1.0], 3.0);
        assert_eq!(m, before);
    }

    #[test]
    fn upper_variant_lies_above_the_mean() {
        let cfg = PredictorConfig::default();
        let (mean, upper) = (BayesModel::mean(&cfg), BayesModel::upper(&cfg));
        let f = crate::predictor::features::tests::example(256);
        assert!(upper.predict(&f) > mean.predict(&f));
        assert_eq!((mean.name(), upper.name()), ("bayes", "bayes+zsd"));
    }
}
