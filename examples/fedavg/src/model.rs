//! The model and its math: a linear predictor, its squared loss, local SGD and federated averaging.
//!
//! A [`Model`] is [`FEATURES`] weights followed by a bias. Trainers call [`Model::train`] on their
//! own data; the aggregator combines the answers with [`fedavg`] and scores the result with
//! [`Model::loss`]. [`Model::checksum`] fingerprints the exact bits, so two runs can be compared
//! without printing eleven floats.

use crate::data::{Dataset, FEATURES};
use crate::rng::SplitMix64;

/// Numbers in a model: the weights, then the bias.
pub const DIM: usize = FEATURES + 1;

/// Linear regression weights, bias last.
#[derive(Debug, Clone, PartialEq)]
pub struct Model(pub Vec<f64>);

/// How a trainer runs SGD.
#[derive(Debug, Clone, Copy)]
pub struct Sgd {
    pub epochs: u32,
    pub learning_rate: f64,
    pub batch: usize,
}

impl Model {
    /// The starting point of round 1.
    pub fn zeros() -> Self {
        Model(vec![0.0; DIM])
    }

    pub fn predict(&self, x: &[f64; FEATURES]) -> f64 {
        x.iter().zip(&self.0).map(|(a, w)| a * w).sum::<f64>() + self.0[FEATURES]
    }

    /// Mean squared error over `data` (0 for no data).
    pub fn loss(&self, data: &Dataset) -> f64 {
        if data.is_empty() {
            return 0.0;
        }
        let sum: f64 = data
            .x
            .iter()
            .zip(&data.y)
            .map(|(x, y)| (self.predict(x) - y).powi(2))
            .sum();
        sum / data.len() as f64
    }

    /// `sgd.epochs` passes of minibatch SGD on the squared loss, each over a fresh shuffle drawn
    /// from `rng`.
    pub fn train(&mut self, data: &Dataset, sgd: Sgd, rng: &mut SplitMix64) {
        let mut order: Vec<usize> = (0..data.len()).collect();
        let batch = sgd.batch.max(1);
        for _ in 0..sgd.epochs {
            rng.shuffle(&mut order);
            for chunk in order.chunks(batch) {
                let mut grad = [0.0; DIM];
                for &i in chunk {
                    let err = self.predict(&data.x[i]) - data.y[i];
                    for (g, x) in grad.iter_mut().zip(&data.x[i]) {
                        *g += err * x;
                    }
                    grad[FEATURES] += err;
                }
                let step = sgd.learning_rate / chunk.len() as f64;
                for (w, g) in self.0.iter_mut().zip(grad) {
                    *w -= step * g;
                }
            }
        }
    }

    /// FNV-1a over the little-endian bits of every number: equal checksums, equal models.
    pub fn checksum(&self) -> u64 {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for b in self.0.iter().flat_map(|w| w.to_bits().to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        h
    }
}

/// Federated averaging: the mean of the models weighted by each one's sample count, summed in
/// the order given (so the same answers in the same order give the same bits). `None` when there
/// is nothing to average: no updates, no samples at all, or models of different sizes.
pub fn fedavg(updates: &[(u64, &Model)]) -> Option<Model> {
    let dim = updates.first()?.1 .0.len();
    if updates.iter().any(|(_, m)| m.0.len() != dim) {
        return None;
    }
    let total: u64 = updates.iter().map(|(n, _)| n).sum();
    if total == 0 {
        return None;
    }
    let mut avg = vec![0.0; dim];
    for (n, m) in updates {
        let share = *n as f64 / total as f64;
        for (a, w) in avg.iter_mut().zip(&m.0) {
            *a += share * w;
        }
    }
    Some(Model(avg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn averaging_weights_each_model_by_its_sample_count() {
        let a = Model(vec![1.0, 10.0]);
        let b = Model(vec![3.0, 20.0]);
        // 100 samples against 300: b counts three times as much.
        let avg = fedavg(&[(100, &a), (300, &b)]).expect("an average");
        assert!(close(&avg.0, &[2.5, 17.5]), "{avg:?}");
        // Equal counts give the plain mean; a lone model is itself.
        let even = fedavg(&[(7, &a), (7, &b)]).expect("an average");
        assert!(close(&even.0, &[2.0, 15.0]), "{even:?}");
        assert_eq!(fedavg(&[(5, &a)]), Some(a.clone()));
        // A model with no samples carries no weight.
        let zero = fedavg(&[(0, &a), (9, &b)]).expect("an average");
        assert!(close(&zero.0, &b.0), "{zero:?}");
    }

    #[test]
    fn nothing_to_average_gives_none() {
        let a = Model(vec![1.0, 2.0]);
        assert_eq!(fedavg(&[]), None);
        assert_eq!(fedavg(&[(0, &a), (0, &a)]), None);
        assert_eq!(fedavg(&[(1, &a), (1, &Model(vec![1.0]))]), None);
    }

    #[test]
    fn the_loss_is_the_mean_squared_error() {
        let d = Dataset {
            x: vec![[1.0; FEATURES], [0.0; FEATURES]],
            y: vec![FEATURES as f64 + 1.0, 3.0],
        };
        let mut m = Model(vec![1.0; DIM]); // predicts 11 and 1
        assert_eq!(m.loss(&d), (0.0 + 4.0) / 2.0);
        m.0[FEATURES] = 0.0; // predicts 10 and 0
        assert_eq!(m.loss(&d), (1.0 + 9.0) / 2.0);
    }

    #[test]
    fn sgd_recovers_the_truth_and_is_repeatable() {
        let d = data::for_trainer(0, 0, 2000);
        let sgd = Sgd {
            epochs: 5,
            learning_rate: 0.01,
            batch: 32,
        };
        let mut a = Model::zeros();
        a.train(&d, sgd, &mut SplitMix64::new(1));
        let mut b = Model::zeros();
        b.train(&d, sgd, &mut SplitMix64::new(1));
        assert_eq!(a.checksum(), b.checksum());
        assert!(
            a.loss(&d) < 0.05 * Model::zeros().loss(&d),
            "{}",
            a.loss(&d)
        );
    }

    #[test]
    fn the_checksum_sees_every_bit() {
        let a = Model(vec![1.0, 2.0]);
        let b = Model(vec![1.0, f64::from_bits(2.0f64.to_bits() + 1)]);
        assert_ne!(a.checksum(), b.checksum());
        assert_eq!(a.checksum(), a.clone().checksum());
    }
}
