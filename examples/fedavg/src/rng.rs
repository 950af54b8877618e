//! A tiny deterministic PRNG (splitmix64, Steele et al. 2014) and the few draws the example needs:
//! uniforms, normals, shuffles, and Gamma and Dirichlet draws for the non-IID split of the data.
//!
//! The test split, each trainer's share, the minibatch orders and the centralised baseline's
//! order all come from here, seeded from `DATA_SEED`, the replica index and
//! the round, so a trainer asked the same question twice gives the same answer: that is what lets
//! a restored aggregator reproduce an uninterrupted run bit for bit.

/// splitmix64: a 64-bit state advanced by a constant and scrambled on the way out.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one of many independent streams derived from one seed.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut mixer = Self::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Self::new(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Standard normal, by Box-Muller.
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.next_f64(); // (0, 1]: ln stays finite
        let v = self.next_f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform in 0..n (n > 0); the modulo bias is negligible for dataset sizes.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// Gamma(`shape`, 1) for `shape` > 0, by Marsaglia and Tsang (2000), "A simple method for
    /// generating gamma variables": rejection from a transformed normal for `shape` >= 1, and
    /// for `shape` < 1 the boost Gamma(shape + 1) * U^(1/shape). A shape that is not positive
    /// (or not finite) gives 0.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if !(shape > 0.0 && shape.is_finite()) {
            return 0.0;
        }
        if shape < 1.0 {
            let u = 1.0 - self.next_f64(); // (0, 1]
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = 1.0 - self.next_f64(); // (0, 1]: ln stays finite
            if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }

    /// A draw from the symmetric Dirichlet(`alpha`, ..., `alpha`) over `k` parts: `k` Gamma
    /// draws normalised to sum to 1. Should every draw underflow to 0 (tiny `alpha`), all the
    /// mass goes to one part chosen uniformly, the limit the distribution tends to.
    pub fn dirichlet(&mut self, alpha: f64, k: usize) -> Vec<f64> {
        let mut p: Vec<f64> = (0..k).map(|_| self.gamma(alpha)).collect();
        let sum: f64 = p.iter().sum();
        if sum > 0.0 && sum.is_finite() {
            p.iter_mut().for_each(|x| *x /= sum);
        } else if k > 0 {
            let one = self.below(k);
            p.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = f64::from(u8::from(i == one)));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_sequence_for_seed_zero() {
        // First outputs of splitmix64 seeded with 0, as published with the algorithm.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut r = SplitMix64::new(7);
        let xs: Vec<f64> = (0..100_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    /// Mean and variance of many draws.
    fn moments(xs: &[f64]) -> (f64, f64) {
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        (mean, var)
    }

    #[test]
    fn gamma_draws_have_the_shapes_mean_and_variance() {
        // Gamma(a, 1) has mean a and variance a; both branches (a < 1 and a >= 1).
        for (seed, a) in [(1, 0.5), (2, 1.0), (3, 2.5), (4, 9.0)] {
            let mut r = SplitMix64::new(seed);
            let xs: Vec<f64> = (0..200_000).map(|_| r.gamma(a)).collect();
            assert!(xs.iter().all(|x| *x >= 0.0 && x.is_finite()));
            let (mean, var) = moments(&xs);
            assert!(
                (mean - a).abs() < 0.02 * a.max(1.0),
                "shape {a}: mean {mean}"
            );
            assert!(
                (var - a).abs() < 0.06 * a.max(1.0),
                "shape {a}: variance {var}"
            );
        }
        assert_eq!(SplitMix64::new(0).gamma(0.0), 0.0);
        assert_eq!(SplitMix64::new(0).gamma(f64::NAN), 0.0);
    }

    #[test]
    fn dirichlet_draws_sum_to_one_with_the_expected_spread() {
        // Symmetric Dirichlet(a) over k parts: each part has mean 1/k and variance
        // (k - 1) / (k^2 (k a + 1)).
        let (a, k) = (0.5, 4);
        let mut r = SplitMix64::new(5);
        let draws: Vec<Vec<f64>> = (0..50_000).map(|_| r.dirichlet(a, k)).collect();
        assert!(draws
            .iter()
            .all(|p| p.len() == k && (p.iter().sum::<f64>() - 1.0).abs() < 1e-12));
        let first: Vec<f64> = draws.iter().map(|p| p[0]).collect();
        let (mean, var) = moments(&first);
        let kf = k as f64;
        let want_var = (kf - 1.0) / (kf * kf * (kf * a + 1.0));
        assert!((mean - 1.0 / kf).abs() < 0.005, "mean {mean}");
        assert!(
            (var - want_var).abs() < 0.1 * want_var,
            "variance {var} vs {want_var}"
        );
        // Repeatable from the seed.
        assert_eq!(
            SplitMix64::new(9).dirichlet(a, k),
            SplitMix64::new(9).dirichlet(a, k)
        );
    }

    #[test]
    fn streams_differ() {
        let a = SplitMix64::stream(1, 0).next_u64();
        let b = SplitMix64::stream(1, 1).next_u64();
        assert_ne!(a, b);
    }
}
