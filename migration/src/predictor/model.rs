//! The trait every duration model shares, so the replay ([`super::evaluate`]) and a node can use
//! any of them the same way.
//!
//! Why so small: a model only answers before a dump and learns after it. `since_checkpoint` is
//! seed 000's `e[i]` (seconds of work since the task's last checkpoint), which PB-MLR's cost
//! needs and the others ignore. [`Window`] is the bounded sample memory the refit models share,
//! [`Ridge`] the rest of their state (coefficients and the prior they are pulled toward).

use serde::{Deserialize, Serialize};

use super::features::{self, Features, Prior, DIM};

/// A predictor of a dump's duration in seconds.
pub trait Model {
    /// Short name for reports (`pbmlr`, `mlr`, `bayes`, ...).
    fn name(&self) -> &'static str;
    /// Predicted duration of a dump with these features, seconds (finite, never negative).
    fn predict(&self, f: &Features) -> f64;
    /// Learns one measured dump: it took `seconds`, `since_checkpoint` seconds after the task's
    /// last checkpoint. Non-finite values are ignored.
    fn observe(&mut self, f: &Features, seconds: f64, since_checkpoint: f64);
}

/// The last `cap` samples a windowed model learned from, oldest first: the scaled features, the
/// measured seconds and seed 000's `e[i]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    cap: usize,
    pub(crate) x: Vec<[f64; DIM]>,
    pub(crate) y: Vec<f64>,
    pub(crate) e: Vec<f64>,
    /// Samples ever learned (also those dropped from the window).
    seen: u64,
}

impl Window {
    /// An empty window keeping at most `cap` samples (at least 1).
    pub fn new(cap: usize) -> Self {
        Window {
            cap: cap.max(1),
            x: Vec::new(),
            y: Vec::new(),
            e: Vec::new(),
            seen: 0,
        }
    }

    /// Adds one sample, dropping the oldest beyond the cap; false (and nothing added) when a
    /// value is not finite or negative.
    pub fn push(&mut self, f: &Features, seconds: f64, since_checkpoint: f64) -> bool {
        if !seconds.is_finite() || seconds < 0.0 || !since_checkpoint.is_finite() {
            return false;
        }
        self.push_row(features::vector(f), seconds, since_checkpoint);
        true
    }

    /// Adds one sample as given (a vector and label of the caller's own space, e.g. PB-MLR's
    /// log space, where the label may be negative); the caller checks finiteness.
    pub(crate) fn push_row(&mut self, x: [f64; DIM], label: f64, since_checkpoint: f64) {
        if self.y.len() == self.cap {
            self.x.remove(0);
            self.y.remove(0);
            self.e.remove(0);
        }
        self.x.push(x);
        self.y.push(label);
        self.e.push(since_checkpoint.max(0.0));
        self.seen += 1;
    }

    /// Samples in the window.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Samples ever learned.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub(crate) fn rows(&self) -> Vec<&[f64]> {
        self.x.iter().map(|r| &r[..]).collect()
    }
}

/// What a windowed linear model fitted under a ridge prior holds: its samples, its coefficients
/// θ (in [`features::NAMES`]' order) and the prior's mean μ and weights λ, which keep θ sane
/// before the first sample and pull it back where the data say little. [`super::mlr::Mlr`] and
/// [`super::pbmlr::PbMlr`] differ only in how they fit θ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ridge {
    pub(crate) window: Window,
    pub(crate) theta: Vec<f64>,
    pub(crate) mu: Vec<f64>,
    pub(crate) lambda: Vec<f64>,
}

impl Ridge {
    /// At the prior's mean, keeping the last `window` samples.
    pub fn new(prior: Prior, window: usize) -> Self {
        Ridge {
            window: Window::new(window),
            theta: prior.mean.clone(),
            mu: prior.mean,
            lambda: prior.lambda,
        }
    }

    /// The coefficients θ.
    pub fn coefficients(&self) -> &[f64] {
        &self.theta
    }

    /// Samples learned so far (also those dropped from the window).
    pub fn samples(&self) -> u64 {
        self.window.seen()
    }

    /// The prior's penalty on `theta`: `Σ λ_j (θ_j − μ_j)²`.
    pub fn prior_cost(&self, theta: &[f64]) -> f64 {
        theta
            .iter()
            .zip(&self.mu)
            .zip(&self.lambda)
            .map(|((t, m), l)| l * (t - m) * (t - m))
            .sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A model that always answers the same and learns nothing: the inner model of the
    /// layers' tests (margins on top of a model).
    pub(crate) struct Fixed(pub f64);

    impl Model for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn predict(&self, _f: &Features) -> f64 {
            self.0
        }
        fn observe(&mut self, _f: &Features, _s: f64, _e: f64) {}
    }
}
