//! The best static value in hindsight: the constant duration with the least total lost
//! computation over a whole trace (seed 000, section V-A).
//!
//! Why: it is how a careful operator would set a fixed checkpoint lead time after looking at all
//! the data, the baseline seed 000 compares PB-MLR with. It is computed offline from the whole
//! trace, so it is a reference, not a model a node could run online.
//!
//! The search is exact. With lost computation per seed 000's Equation 3 (`c − y` when early,
//! `e + c` when late), the total over the trace is `n·c − Σ_{y_i ≤ c} y_i + Σ_{y_i > c} e_i`:
//! slope `n` between the measured durations and a drop at each of them, so its minimum over
//! `c ≥ 0` lies at 0 or at one of the `y_i`. Sorting and prefix sums find it in O(n log n);
//! ties go to the smallest value.

use super::evaluate::lost;
use super::features::Features;
use super::model::Model;

/// A constant prediction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StaticBest {
    value: f64,
}

impl StaticBest {
    /// The constant with the least total lost computation over `samples` (measured seconds,
    /// seconds since the last checkpoint); non-finite samples are left out; 0 for none.
    pub fn fit(samples: &[(f64, f64)]) -> Self {
        let mut s: Vec<(f64, f64)> = samples
            .iter()
            .copied()
            .filter(|(y, e)| y.is_finite() && e.is_finite())
            .map(|(y, e)| (y.max(0.0), e.max(0.0)))
            .collect();
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = s.len() as f64;
        // total(c) with k samples at or below c: n·c − (sum of their y) + (sum of the rest's e).
        let mut e_above: f64 = s.iter().map(|(_, e)| e).sum();
        let mut y_below = 0.0;
        let mut best = (e_above, 0.0); // c = 0: every positive duration is late.
        let mut k = 0;
        while k < s.len() {
            let c = s[k].0;
            while k < s.len() && s[k].0 == c {
                y_below += s[k].0;
                e_above -= s[k].1;
                k += 1;
            }
            let total = n * c - y_below + e_above;
            if total < best.0 {
                best = (total, c);
            }
        }
        StaticBest { value: best.1 }
    }

    /// The constant.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// Total lost computation of predicting `c` for every sample (the brute-force definition).
    pub fn total_lost(c: f64, samples: &[(f64, f64)]) -> f64 {
        samples.iter().map(|&(y, e)| lost(c, y, e)).sum()
    }
}

impl Model for StaticBest {
    fn name(&self) -> &'static str {
        "static-best"
    }

    fn predict(&self, _f: &Features) -> f64 {
        self.value
    }

    fn observe(&mut self, _f: &Features, _seconds: f64, _since_checkpoint: f64) {}
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn picks_the_largest_duration_when_lateness_is_expensive() {
        let s = [(0.1, 100.0), (0.2, 100.0), (0.3, 100.0)];
        assert_eq!(StaticBest::fit(&s).value(), 0.3);
        // Nearly free lateness: predicting 0 wins.
        let cheap = [(1.0, 0.0), (2.0, 0.0)];
        assert_eq!(StaticBest::fit(&cheap).value(), 0.0);
        assert_eq!(StaticBest::fit(&[]).value(), 0.0);
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(64))]

        /// The exact search matches a brute-force scan over every candidate and a fine grid.
        #[test]
        fn matches_brute_force(
            s in prop::collection::vec((0.0f64..5.0, 0.0f64..20.0), 1..40),
        ) {
            let found = StaticBest::fit(&s).value();
            let at_found = StaticBest::total_lost(found, &s);
            let mut candidates: Vec<f64> = s.iter().map(|p| p.0).collect();
            candidates.push(0.0);
            candidates.extend((0..=600).map(|i| f64::from(i) * 0.01));
            for c in candidates {
                let t = StaticBest::total_lost(c, &s);
                prop_assert!(at_found <= t + 1e-9, "c={} gives {} < {} at {}", c, t, at_found, found);
            }
        }
    }
}
