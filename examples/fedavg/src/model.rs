//! The model and its math: softmax regression (multinomial logistic regression) over the 64
//! pixels, its cross-entropy loss and accuracy, local minibatch SGD, and federated averaging.
//!
//! A [`Model`] is [`DIM`] = 650 numbers: for each class its 64 weights (class 0 first), then the
//! 10 biases. Trainers call [`Model::train`] on their own data; the aggregator combines the
//! answers with [`fedavg`] and scores the result with [`Model::score`]. [`Model::checksum`]
//! fingerprints the exact bits, so two runs can be compared without printing 650 floats.

use crate::data::{Dataset, CLASSES, FEATURES};
use crate::rng::SplitMix64;

/// Numbers in a model: 10 x 64 weights, then 10 biases.
pub const DIM: usize = CLASSES * FEATURES + CLASSES;
/// Where the biases start.
const BIAS: usize = CLASSES * FEATURES;

/// Softmax regression weights (class-major), biases last.
#[derive(Debug, Clone, PartialEq)]
pub struct Model(pub Vec<f64>);

/// How a model is trained.
#[derive(Debug, Clone, Copy)]
pub struct Sgd {
    pub epochs: u32,
    pub learning_rate: f64,
    pub batch: usize,
}

/// A model's quality on a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Share of samples whose most likely class is their label.
    pub accuracy: f64,
    /// Mean cross-entropy (natural log).
    pub loss: f64,
}

impl Model {
    /// The starting point: every class equally likely.
    pub fn zeros() -> Self {
        Model(vec![0.0; DIM])
    }

    /// Class probabilities for one image (softmax of the logits, shifted by the largest).
    pub fn probabilities(&self, x: &[f64; FEATURES]) -> [f64; CLASSES] {
        let w = &self.0;
        let mut z: [f64; CLASSES] = std::array::from_fn(|k| {
            let row = &w[k * FEATURES..(k + 1) * FEATURES];
            row.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + w[BIAS + k]
        });
        let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for v in &mut z {
            *v = (*v - top).exp();
            sum += *v;
        }
        z.map(|v| v / sum)
    }

    /// The most likely class (the lowest on a tie).
    pub fn predict(&self, x: &[f64; FEATURES]) -> usize {
        let p = self.probabilities(x);
        (0..CLASSES).fold(0, |best, k| if p[k] > p[best] { k } else { best })
    }

    /// Accuracy and mean cross-entropy on `data` (accuracy 0 and loss 0 for no data).
    pub fn score(&self, data: &Dataset) -> Score {
        if data.is_empty() {
            return Score {
                accuracy: 0.0,
                loss: 0.0,
            };
        }
        let (mut right, mut loss) = (0usize, 0.0);
        for (x, &y) in data.x.iter().zip(&data.y) {
            let p = self.probabilities(x);
            let best = (0..CLASSES).fold(0, |b, k| if p[k] > p[b] { k } else { b });
            right += usize::from(best == y);
            // Clamped so a confident mistake costs a large finite amount, not infinity.
            loss -= p[y].max(1e-300).ln();
        }
        let n = data.len() as f64;
        Score {
            accuracy: right as f64 / n,
            loss: loss / n,
        }
    }

    /// `sgd.epochs` passes of minibatch SGD on the mean cross-entropy, each over a fresh
    /// shuffle drawn from `rng`. No data, no change.
    pub fn train(&mut self, data: &Dataset, sgd: Sgd, rng: &mut SplitMix64) {
        let mut order: Vec<usize> = (0..data.len()).collect();
        let batch = sgd.batch.max(1);
        let mut grad = vec![0.0; DIM];
        for _ in 0..sgd.epochs {
            rng.shuffle(&mut order);
            for chunk in order.chunks(batch) {
                grad.iter_mut().for_each(|g| *g = 0.0);
                for &i in chunk {
                    let (x, y) = (&data.x[i], data.y[i]);
                    let p = self.probabilities(x);
                    for k in 0..CLASSES {
                        let err = p[k] - f64::from(u8::from(k == y));
                        let row = &mut grad[k * FEATURES..(k + 1) * FEATURES];
                        for (g, a) in row.iter_mut().zip(x) {
                            *g += err * a;
                        }
                        grad[BIAS + k] += err;
                    }
                }
                let step = sgd.learning_rate / chunk.len() as f64;
                for (w, g) in self.0.iter_mut().zip(&grad) {
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
    fn the_score_is_accuracy_and_cross_entropy() {
        let mut a = [0.0; FEATURES];
        a[0] = 1.0;
        let d = Dataset {
            x: vec![a, [0.0; FEATURES]],
            y: vec![3, 5],
        };
        // The zero model: uniform probabilities, loss ln 10, class 0 predicted for both.
        let s = Model::zeros().score(&d);
        assert_eq!(s.accuracy, 0.0);
        assert!((s.loss - (CLASSES as f64).ln()).abs() < 1e-12);
        // Pixel 0 votes for class 3 and the bias for class 5: both right.
        let mut m = Model::zeros();
        m.0[3 * FEATURES] = 10.0;
        m.0[BIAS + 5] = 5.0;
        assert_eq!((m.predict(&d.x[0]), m.predict(&d.x[1])), (3, 5));
        let s = m.score(&d);
        assert_eq!(s.accuracy, 1.0);
        let p0 = m.probabilities(&d.x[0]);
        assert!((p0.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let p1 = m.probabilities(&d.x[1]);
        assert!((s.loss - -(p0[3].ln() + p1[5].ln()) / 2.0).abs() < 1e-12);
        assert_eq!(m.score(&Dataset::default()).loss, 0.0);
    }

    #[test]
    fn sgd_learns_the_digits_and_is_repeatable() {
        let cut = data::cut(0).expect("data");
        let sgd = Sgd {
            epochs: 3,
            learning_rate: 0.5,
            batch: 32,
        };
        let mut a = Model::zeros();
        a.train(&cut.train, sgd, &mut SplitMix64::new(1));
        let mut b = Model::zeros();
        b.train(&cut.train, sgd, &mut SplitMix64::new(1));
        assert_eq!(a.checksum(), b.checksum());
        let s = a.score(&cut.test);
        assert!(s.accuracy > 0.85, "{s:?}");
        assert!(s.loss < Model::zeros().score(&cut.test).loss / 3.0, "{s:?}");
    }

    #[test]
    fn the_checksum_sees_every_bit() {
        let a = Model(vec![1.0, 2.0]);
        let b = Model(vec![1.0, f64::from_bits(2.0f64.to_bits() + 1)]);
        assert_ne!(a.checksum(), b.checksum());
        assert_eq!(a.checksum(), a.clone().checksum());
    }
}
