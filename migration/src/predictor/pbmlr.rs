//! Seed 000's penalty-based multiple linear regression (PB-MLR), trained online.
//!
//! Why: a prediction below the real duration (late) means the dump does not finish before the
//! deadline and all the work since the last checkpoint is lost; one above it (early) only wastes
//! the gap. Seed 000 (section IV-A) therefore fits its linear model with an asymmetric cost:
//! for a sample with measured duration `y`, prediction `ŷ` and `e` seconds of work since the
//! task's last checkpoint, Equation 3 sets `d = y − ŷ` when early (`ŷ ≥ y`) and `d = ŷ + e`
//! (the computation wasted) when late, and the cost is the mean of `d²` (Equation 1).
//!
//! That cost as written cannot be minimised by descent: it jumps at `ŷ = y` (from `(y + e)²`
//! just below to 0 at `y`), and on the late side its slope points *down* (toward `ŷ = −e`), so a
//! gradient step on a late sample makes it later. What the seed's cost expresses is that a late
//! sample costs as much as the work it throws away, however little it is late, far more than an
//! early one. We keep that and make it convex: the late branch is `κ·(y − ŷ)²` with
//! `κ = ((y + e) / σ)²`, so a prediction late by σ, the noise of one measurement (`noise_sd` of
//! [`PredictorConfig`], 50 ms, unless [`PbMlrConfig::late_scale_s`] says otherwise), costs
//! exactly the seed's `(ŷ + e)²` at the boundary, `(y + e)²`, and one late by more costs more
//! (κ capped at [`PbMlrConfig::kappa_max`] to keep the system well conditioned). A smaller scale,
//! such as the dump's own length, would let predictions be late by a few noise widths for
//! almost nothing, which the seed's jump does not allow. Per sample the cost is then
//!
//! ```text
//! c_i(θ) = (x_i·θ − y_i)²          if x_i·θ ≥ y_i   (early: seed 000's Equation 2)
//!        = κ_i (y_i − x_i·θ)²      otherwise         (late)
//! ```
//!
//! plus the ridge prior `Σ λ_j (θ_j − μ_j)²` from [`features::prior`], which gives sane answers
//! before the first sample. The sum is convex and continuously differentiable (piecewise
//! quadratic, both pieces flat at a zero residual), and it is minimised exactly by a
//! generalised Newton method, deterministic and warm-started from the previous fit: fix each
//! sample's weight (1 or κ_i) by the sign of its residual at the current θ, solve that weighted
//! ridge least squares (the Newton step of the current piece), and halve the step until the cost
//! does not grow (the step is a descent direction because the piece's quadratic has the true
//! gradient at θ); stop when the weights no longer change or after [`MAX_ITERS`] steps. The
//! model keeps the last [`PbMlrConfig::window`] samples and refits after every dump.
//!
//! The default form is multiplicative ([`PbMlrConfig::log_space`]): `ln(seconds)` on logs of
//! the features, so a miss weighs by its share of the dump at every size and a prediction is
//! never 0. It was chosen over the linear form (`pbmlr-lin`, seconds on the features as the
//! seed writes it) because it lost less computation, the seed's own measure, on both traces it
//! was developed on (BENCHMARKS.md); node states written with the linear form keep it.
//!
//! Which features the fit may use is seed 000's choice too (section IV-B: low VIF, low
//! p-value), made again from the window before every refit ([`super::selection`]); the others'
//! coefficients are 0. Without it ([`PbMlrConfig::select`] `None`) every feature is fitted.

use serde::{Deserialize, Serialize};

use super::features::{self, Features};
use super::linalg;
use super::model::{Model, Ridge};
use super::selection::{self, Selection};
use super::PredictorConfig;

/// Newton steps per refit, at most.
pub const MAX_ITERS: usize = 60;
/// The floor under the late scale σ, seconds.
pub const SCALE_FLOOR: f64 = 1e-3;

/// PB-MLR's knobs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PbMlrConfig {
    /// Samples kept and refit on.
    pub window: usize,
    /// The lateness σ at which a late sample costs the seed's full penalty, seconds; `None`:
    /// the config's `noise_sd`.
    pub late_scale_s: Option<f64>,
    /// The cap on a late sample's weight κ (keeps the system well conditioned).
    pub kappa_max: f64,
    /// When set, σ is this share of each sample's own duration (floored at [`SCALE_FLOOR`])
    /// instead of a fixed number of seconds: a prediction late by that share of the dump costs
    /// the seed's full penalty, so a 20 ms dump missed by 5 ms weighs as much as a 2 s dump
    /// missed by 0.5 s (a fixed σ lets the fit trade small dumps' lateness for large dumps'
    /// earliness). Overrides `late_scale_s`.
    #[serde(default)]
    pub late_scale_rel: Option<f64>,
    /// Fit `ln(seconds)` on [`features::log_vector`] (a multiplicative model: relative errors
    /// weigh the same at every size) instead of seconds on [`features::vector`]. In log space a
    /// residual is a relative lateness, so σ is always relative: `late_scale_rel`, else
    /// [`LOG_LATE_SCALE`].
    #[serde(default)]
    pub log_space: bool,
    /// Seed 000's feature selection before every refit; `None`: fit every feature. States
    /// written before it existed read as selecting (they refit on their next dump).
    #[serde(default = "default_select")]
    pub select: Option<Selection>,
}

fn default_select() -> Option<Selection> {
    Some(Selection::default())
}

/// Features PB-MLR always fits, never tested by the selection: the intercept and resident
/// memory (the prior's own terms, and seed 000's "program memory usage").
pub const KEEP: [usize; 2] = [0, 1];

/// σ of the log-space form when `late_scale_rel` is not set: late by 5% of the dump.
pub const LOG_LATE_SCALE: f64 = 0.05;
/// The floor under a duration before its log is taken, seconds.
pub const LOG_FLOOR_S: f64 = 1e-3;

impl Default for PbMlrConfig {
    fn default() -> Self {
        PbMlrConfig {
            window: super::mlr::WINDOW,
            late_scale_s: None,
            kappa_max: 1e8,
            late_scale_rel: None,
            log_space: true,
            select: default_select(),
        }
    }
}

/// A late sample's weight: `((y + e) / σ)²`, σ floored at [`SCALE_FLOOR`], within
/// `[1, kappa_max]`.
pub fn kappa(y: f64, e: f64, scale: f64, kappa_max: f64) -> f64 {
    let r = (y.max(0.0) + e.max(0.0)) / scale.max(SCALE_FLOOR);
    (r * r).clamp(1.0, kappa_max.max(1.0))
}

/// Seed 000's cost of one sample as written (Equations 2 and 3, squared): for reference and
/// tests; it is not what the fit minimises (see the module doc).
pub fn seed_cost(predicted: f64, y: f64, e: f64) -> f64 {
    let d = if predicted >= y {
        y - predicted
    } else {
        predicted + e
    };
    d * d
}

/// The online PB-MLR model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PbMlr {
    cfg: PbMlrConfig,
    /// σ in κ, seconds.
    scale: f64,
    #[serde(flatten)]
    ridge: Ridge,
    /// The features of the last refit, ascending (every feature before the first, or without
    /// selection).
    #[serde(default)]
    active: Vec<usize>,
}

impl PbMlr {
    /// A model at the config's prior.
    pub fn new(cfg: &PredictorConfig, pb: PbMlrConfig) -> Self {
        let prior = if pb.log_space {
            features::log_prior(cfg)
        } else {
            features::prior(cfg)
        };
        PbMlr {
            cfg: pb,
            scale: pb.late_scale_s.unwrap_or(cfg.noise_sd),
            ridge: Ridge::new(prior, pb.window),
            active: Vec::new(),
        }
    }

    /// The features the last refit used, in [`features::NAMES`]' order (or
    /// [`features::LOG_NAMES`]' for the log-space form); every feature before the first refit
    /// or without selection.
    pub fn active(&self) -> Vec<usize> {
        if self.active.is_empty() {
            (0..self.used()).collect()
        } else {
            self.active.clone()
        }
    }

    /// The names of [`PbMlr::active`]'s features, the intercept (`1`) first.
    pub fn active_names(&self) -> Vec<&'static str> {
        let names: &[&'static str] = if self.cfg.log_space {
            &features::LOG_NAMES
        } else {
            &features::NAMES
        };
        self.active()
            .into_iter()
            .filter_map(|j| names.get(j).copied())
            .collect()
    }

    /// Entries of the vector in use.
    fn used(&self) -> usize {
        if self.cfg.log_space {
            features::LOG_USED
        } else {
            features::DIM
        }
    }

    /// The knobs it was made with.
    pub fn config(&self) -> &PbMlrConfig {
        &self.cfg
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

    /// The penalized cost of `theta` on the window (the objective the fit minimises).
    pub fn cost(&self, theta: &[f64]) -> f64 {
        let data: f64 = (0..self.ridge.window.len())
            .map(|i| {
                let r = linalg::dot(&self.ridge.window.x[i], theta) - self.ridge.window.y[i];
                if r >= 0.0 {
                    r * r
                } else {
                    self.kappa(i) * r * r
                }
            })
            .sum();
        data + self.ridge.prior_cost(theta)
    }

    fn kappa(&self, i: usize) -> f64 {
        let rel = self
            .cfg
            .late_scale_rel
            .filter(|r| r.is_finite() && *r > 0.0);
        if self.cfg.log_space {
            // The residual is ln(ŷ/y), about the relative error: κ keeps the linear form's
            // ratio of a late to an early miss of the same size, ((y + e)/σ)² with σ = rel·y.
            let y = self.ridge.window.y[i].exp();
            let scale = rel.unwrap_or(LOG_LATE_SCALE) * y;
            return kappa(y, self.ridge.window.e[i], scale, self.cfg.kappa_max);
        }
        let y = self.ridge.window.y[i];
        let scale = match rel {
            Some(rel) => rel * y,
            None => self.scale,
        };
        kappa(y, self.ridge.window.e[i], scale, self.cfg.kappa_max)
    }

    /// The vector this model's space uses.
    fn vector(&self, f: &Features) -> [f64; features::DIM] {
        if self.cfg.log_space {
            features::log_vector(f)
        } else {
            features::vector(f)
        }
    }

    /// Minimises [`PbMlr::cost`] from the current θ (module doc: generalised Newton with
    /// step halving). Returns the Newton steps taken.
    fn refit(&mut self) -> usize {
        let rows = self.ridge.window.rows();
        let all: Vec<usize> = (0..self.used()).collect();
        self.active = match &self.cfg.select {
            Some(s) => selection::select(&rows, &self.ridge.window.y, &all, &KEEP, s),
            None => all,
        };
        let active = self.active.clone();
        let project = |v: &[f64]| -> Vec<f64> { active.iter().map(|&j| v[j]).collect() };
        let projected: Vec<Vec<f64>> = rows.iter().map(|r| project(r)).collect();
        let projected: Vec<&[f64]> = projected.iter().map(|r| &r[..]).collect();
        let (lambda, mu) = (project(&self.ridge.lambda), project(&self.ridge.mu));
        let mut theta = self.ridge.theta.clone();
        for (j, t) in theta.iter_mut().enumerate() {
            if !active.contains(&j) {
                *t = 0.0;
            }
        }
        let mut cost = self.cost(&theta);
        let mut last_weights: Option<Vec<f64>> = None;
        for step in 0..MAX_ITERS {
            let weights: Vec<f64> = (0..rows.len())
                .map(|i| {
                    if linalg::dot(rows[i], &theta) >= self.ridge.window.y[i] {
                        1.0
                    } else {
                        self.kappa(i)
                    }
                })
                .collect();
            if last_weights.as_ref() == Some(&weights) {
                self.ridge.theta = theta;
                return step;
            }
            let Some(solved) =
                linalg::weighted_ridge(&projected, &self.ridge.window.y, &weights, &lambda, &mu)
            else {
                break;
            };
            let mut target = vec![0.0; theta.len()];
            for (&j, t) in active.iter().zip(solved) {
                target[j] = t;
            }
            let mut t = 1.0;
            let mut accepted = None;
            for _ in 0..40 {
                let cand: Vec<f64> = theta
                    .iter()
                    .zip(&target)
                    .map(|(a, b)| a + t * (b - a))
                    .collect();
                let c = self.cost(&cand);
                if c <= cost {
                    accepted = Some((cand, c));
                    break;
                }
                t *= 0.5;
            }
            let Some((cand, c)) = accepted else { break };
            let converged = cost - c <= 1e-15 * cost.max(1e-300);
            theta = cand;
            cost = c;
            if converged {
                break;
            }
            // A full step lands on the minimum of this piece: if the pieces are the same there,
            // it is the minimum of the whole (convex, C¹) cost.
            last_weights = (t == 1.0).then_some(weights);
        }
        self.ridge.theta = theta;
        MAX_ITERS
    }
}

impl Model for PbMlr {
    fn name(&self) -> &'static str {
        if self.cfg.log_space {
            "pbmlr"
        } else {
            "pbmlr-lin"
        }
    }

    fn predict(&self, f: &Features) -> f64 {
        let z = linalg::dot(&self.vector(f), &self.ridge.theta);
        if self.cfg.log_space {
            // exp of at most 20: under 14 years, never infinite.
            z.min(20.0).exp()
        } else {
            z.max(0.0)
        }
    }

    fn observe(&mut self, f: &Features, seconds: f64, since_checkpoint: f64) {
        if self.cfg.log_space {
            if !seconds.is_finite() || seconds < 0.0 || !since_checkpoint.is_finite() {
                return;
            }
            let x = self.vector(f);
            self.ridge
                .window
                .push_row(x, seconds.max(LOG_FLOOR_S).ln(), since_checkpoint);
            self.refit();
        } else if self.ridge.window.push(f, seconds, since_checkpoint) {
            self.refit();
        }
    }
}

#[cfg(test)]
mod tests;
