//! The trait every duration model shares, so the replay ([`super::evaluate`]) and a node can use
//! any of them the same way.
//!
//! Why so small: a model only answers before a dump and learns after it. `since_checkpoint` is
//! seed 000's `e[i]` (seconds of work since the task's last checkpoint), which PB-MLR's cost
//! needs and the others ignore. [`Window`] is the bounded sample memory the refit models share.

use serde::{Deserialize, Serialize};

use super::features::{self, Features, DIM};

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
