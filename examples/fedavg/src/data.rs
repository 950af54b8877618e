//! The synthetic data: linear regression over [`FEATURES`] features with Gaussian noise.
//!
//! One truth (weights and bias) is drawn from `DATA_SEED` and shared by everyone, so the trainers
//! learn the same thing; each trainer's features are centred on its own random shift and its
//! sample count depends on its replica index, so the data are not IID and averaging by sample
//! count matters. The aggregator's held-out set is drawn unshifted from the same truth.

use crate::rng::SplitMix64;

/// Input features per sample; a model has one more number, the bias.
pub const FEATURES: usize = 10;
/// Standard deviation of the label noise: the loss cannot go below its square (0.01).
pub const NOISE: f64 = 0.1;
/// How far a trainer's feature means sit from zero, at most.
pub const MAX_SHIFT: f64 = 1.5;

const TRUTH_STREAM: u64 = u64::MAX;
const HELD_OUT_STREAM: u64 = u64::MAX - 1;

/// Samples: `x[i]` has label `y[i]`.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub x: Vec<[f64; FEATURES]>,
    pub y: Vec<f64>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

/// The weights and bias every dataset of one seed is labelled with.
pub fn truth(seed: u64) -> ([f64; FEATURES], f64) {
    let mut r = SplitMix64::stream(seed, TRUTH_STREAM);
    let w = std::array::from_fn(|_| r.normal());
    (w, r.uniform(-1.0, 1.0))
}

/// Replica `replica`'s private data: `base + 500 * (replica % 4)` samples around its own shift.
pub fn for_trainer(seed: u64, replica: u64, base: usize) -> Dataset {
    let mut r = SplitMix64::stream(seed, replica);
    let shift: [f64; FEATURES] = std::array::from_fn(|_| r.uniform(-MAX_SHIFT, MAX_SHIFT));
    draw(seed, &mut r, &shift, base + 500 * (replica % 4) as usize)
}

/// The aggregator's held-out set: unshifted features, the same truth.
pub fn held_out(seed: u64, n: usize) -> Dataset {
    let mut r = SplitMix64::stream(seed, HELD_OUT_STREAM);
    draw(seed, &mut r, &[0.0; FEATURES], n)
}

fn draw(seed: u64, r: &mut SplitMix64, shift: &[f64; FEATURES], n: usize) -> Dataset {
    let (w, b) = truth(seed);
    let mut data = Dataset {
        x: Vec::with_capacity(n),
        y: Vec::with_capacity(n),
    };
    for _ in 0..n {
        let x: [f64; FEATURES] = std::array::from_fn(|j| shift[j] + r.normal());
        let y = x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + b + NOISE * r.normal();
        data.x.push(x);
        data.y.push(y);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_and_replica_give_the_same_data() {
        let a = for_trainer(3, 1, 100);
        let b = for_trainer(3, 1, 100);
        assert_eq!(a.x, b.x);
        assert_eq!(a.y, b.y);
        assert_eq!(a.len(), 600);
    }

    #[test]
    fn trainers_see_different_feature_means() {
        let mean0 = |d: &Dataset| d.x.iter().map(|x| x[0]).sum::<f64>() / d.len() as f64;
        let (a, b) = (for_trainer(0, 0, 2000), for_trainer(0, 1, 2000));
        assert!((mean0(&a) - mean0(&b)).abs() > 0.1, "non-IID shifts");
    }
}
