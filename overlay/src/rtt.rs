//! Per-peer round-trip-time estimation.
//!
//! The mapping protocol forwards a request only to neighbours whose RTT fits the remaining latency
//! budget, so every node keeps, for every connected peer, a smoothed RTT and how much it varies.
//! This is TCP's estimator (RFC 6298): `SRTT` is an exponentially weighted moving average with gain
//! 1/8 and `RTTVAR` a moving mean deviation with gain 1/4. The first sample sets `SRTT = R` and
//! `RTTVAR = R / 2`, exactly as the RFC does. `predicted_upper(k) = SRTT + k * RTTVAR` is the
//! "measured EWMA plus a variance margin" the mapping protocol compares against the budget.
//!
//! All values are milliseconds as `f64`; the estimator never reads a clock (samples are measured
//! by the caller), so it is deterministic and usable in simulations.

use serde::{Deserialize, Serialize};

/// RFC 6298's gain for the smoothed RTT (alpha = 1/8).
pub const ALPHA: f64 = 1.0 / 8.0;
/// RFC 6298's gain for the RTT variation (beta = 1/4).
pub const BETA: f64 = 1.0 / 4.0;

/// Smoothed RTT and RTT variation of one peer, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RttEstimator {
    srtt: f64,
    rttvar: f64,
    samples: u64,
}

impl RttEstimator {
    /// An estimator with no sample yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one measured RTT (milliseconds). Non-finite or negative samples are ignored: they can
    /// only come from a broken clock or a bogus peer, and must not poison the average.
    pub fn sample(&mut self, rtt_ms: f64) {
        if !rtt_ms.is_finite() || rtt_ms < 0.0 {
            return;
        }
        if self.samples == 0 {
            self.srtt = rtt_ms;
            self.rttvar = rtt_ms / 2.0;
        } else {
            // RFC 6298 2.3: RTTVAR is updated with the old SRTT, then SRTT.
            self.rttvar = (1.0 - BETA) * self.rttvar + BETA * (self.srtt - rtt_ms).abs();
            self.srtt = (1.0 - ALPHA) * self.srtt + ALPHA * rtt_ms;
        }
        self.samples = self.samples.saturating_add(1);
    }

    /// The smoothed RTT, or `None` before the first sample.
    pub fn srtt(&self) -> Option<f64> {
        (self.samples > 0).then_some(self.srtt)
    }

    /// The RTT variation (mean deviation), or `None` before the first sample.
    pub fn rttvar(&self) -> Option<f64> {
        (self.samples > 0).then_some(self.rttvar)
    }

    /// `SRTT + k * RTTVAR`: an RTT the peer is unlikely to exceed; `None` before the first sample.
    pub fn predicted_upper(&self, k: f64) -> Option<f64> {
        (self.samples > 0).then_some(self.srtt + k * self.rttvar)
    }

    /// How many samples have been fed.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_follows_rfc6298() {
        let mut e = RttEstimator::new();
        assert_eq!(e.srtt(), None);
        assert_eq!(e.predicted_upper(4.0), None);
        e.sample(100.0);
        assert_eq!(e.srtt(), Some(100.0));
        assert_eq!(e.rttvar(), Some(50.0));
        assert_eq!(e.predicted_upper(4.0), Some(300.0));
        assert_eq!(e.samples(), 1);
    }

    #[test]
    fn second_sample_uses_old_srtt_for_variance() {
        let mut e = RttEstimator::new();
        e.sample(100.0);
        e.sample(60.0);
        // rttvar = 3/4 * 50 + 1/4 * |100 - 60| = 47.5 ; srtt = 7/8 * 100 + 1/8 * 60 = 95
        assert!((e.rttvar().unwrap() - 47.5).abs() < 1e-9);
        assert!((e.srtt().unwrap() - 95.0).abs() < 1e-9);
    }

    #[test]
    fn converges_and_variance_shrinks_on_constant_rtt() {
        let mut e = RttEstimator::new();
        for _ in 0..60 {
            e.sample(20.0);
        }
        assert!((e.srtt().unwrap() - 20.0).abs() < 1e-6);
        assert!(e.rttvar().unwrap() < 0.01);
        assert_eq!(e.samples(), 60);
    }

    #[test]
    fn ignores_garbage_samples() {
        let mut e = RttEstimator::new();
        e.sample(f64::NAN);
        e.sample(-3.0);
        e.sample(f64::INFINITY);
        assert_eq!(e.samples(), 0);
    }
}
