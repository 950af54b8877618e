//! The phi-accrual failure detector (Hayashibara, Défago, Yared and Katayama, 2004), as Akka
//! and Cassandra use it: instead of a fixed timeout, a suspicion level `phi` that grows the
//! longer a host stays silent, measured against how regularly it used to speak.
//!
//! The detector keeps a bounded window of the intervals between heartbeat arrivals, their mean
//! and standard deviation. At `now`, with `t` the time since the last arrival, `phi =
//! -log10(P(an interval at least t long))` under a normal distribution of the window (Akka's
//! logistic approximation of its tail). `phi = 8` means the silence is a one-in-10^8 event for
//! this host: a jittery host earns a wide distribution and is suspected later, a regular one
//! sooner. A floor on the deviation keeps a perfectly regular history from making one late
//! heartbeat fatal.
//!
//! No clock is read here: the caller passes every arrival and the `now` to judge at, so tests
//! run on synthetic instants and are exact.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The suspicion above which a host is suspected (Akka's default; Cassandra uses 8 too).
pub const DEFAULT_THRESHOLD: f64 = 8.0;
/// Intervals kept (older ones are forgotten: a host's rhythm may change).
pub const DEFAULT_WINDOW: usize = 100;
/// The largest phi reported (beyond it the tail underflows; it means "certainly silent").
pub const MAX_PHI: f64 = 1000.0;

/// How a detector judges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhiConfig {
    /// Suspected above this.
    pub threshold: f64,
    /// Intervals kept, at least 2.
    pub window: usize,
    /// The deviation used is never below this.
    pub min_std_dev: Duration,
    /// Added to the mean interval: a pause this long is never suspicious on its own.
    pub acceptable_pause: Duration,
    /// The interval assumed before any was measured (the heartbeat period): the history starts
    /// as this mean with a quarter of it as deviation, the way Akka seeds it.
    pub first_estimate: Duration,
}

impl PhiConfig {
    /// The defaults for heartbeats sent every `interval`.
    pub fn for_interval(interval: Duration) -> PhiConfig {
        PhiConfig {
            threshold: DEFAULT_THRESHOLD,
            window: DEFAULT_WINDOW,
            min_std_dev: interval / 4,
            acceptable_pause: Duration::ZERO,
            first_estimate: interval,
        }
    }
}

/// The heartbeat history of one host.
#[derive(Debug, Clone)]
pub struct PhiDetector {
    config: PhiConfig,
    /// Inter-arrival times, ms, oldest first.
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Instant>,
}

impl PhiDetector {
    pub fn new(config: PhiConfig) -> PhiDetector {
        PhiDetector {
            config: PhiConfig {
                window: config.window.max(2),
                ..config
            },
            intervals: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
        }
    }

    /// A heartbeat arrived at `at`. An arrival older than the last one known (two probes
    /// answered out of order) adds no interval.
    pub fn heartbeat(&mut self, at: Instant) {
        match self.last {
            None => {
                let first = ms(self.config.first_estimate);
                self.push(first - first / 4.0);
                self.push(first + first / 4.0);
                self.last = Some(at);
            }
            Some(last) if at > last => {
                self.push(ms(at - last));
                self.last = Some(at);
            }
            Some(_) => {}
        }
    }

    fn push(&mut self, interval_ms: f64) {
        if self.intervals.len() >= self.config.window {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.intervals.push_back(interval_ms);
        self.sum += interval_ms;
        self.sum_sq += interval_ms * interval_ms;
    }

    /// The last arrival, if any.
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.last
    }

    /// The mean interval (ms) of the window.
    pub fn mean_ms(&self) -> f64 {
        if self.intervals.is_empty() {
            return ms(self.config.first_estimate);
        }
        self.sum / self.intervals.len() as f64
    }

    fn std_dev_ms(&self) -> f64 {
        let n = self.intervals.len() as f64;
        let measured = if n < 2.0 {
            0.0
        } else {
            let mean = self.sum / n;
            (self.sum_sq / n - mean * mean).max(0.0).sqrt()
        };
        measured.max(ms(self.config.min_std_dev)).max(f64::EPSILON)
    }

    /// The suspicion at `now` (0 before the first heartbeat: nothing is expected yet).
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let t = ms(now.saturating_duration_since(last));
        let mean = self.mean_ms() + ms(self.config.acceptable_pause);
        let y = (t - mean) / self.std_dev_ms();
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let phi = if t > mean {
            -(e / (1.0 + e)).log10()
        } else {
            -(1.0 - 1.0 / (1.0 + e)).log10()
        };
        if phi.is_finite() {
            phi.clamp(0.0, MAX_PHI)
        } else {
            MAX_PHI
        }
    }

    /// Whether phi at `now` is above the threshold.
    pub fn is_suspected(&self, now: Instant) -> bool {
        self.phi(now) > self.config.threshold
    }

    pub fn config(&self) -> &PhiConfig {
        &self.config
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(500);

    fn detector() -> PhiDetector {
        PhiDetector::new(PhiConfig::for_interval(PERIOD))
    }

    /// A tiny deterministic generator (xorshift64), seeded: the same jitter on every run.
    struct Jitter(u64);
    impl Jitter {
        fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            lo + self.0 % (hi - lo + 1)
        }
    }

    #[test]
    fn nothing_is_suspected_before_the_first_heartbeat() {
        let d = detector();
        let now = Instant::now();
        assert_eq!(d.phi(now), 0.0);
        assert!(!d.is_suspected(now + Duration::from_secs(3600)));
    }

    #[test]
    fn a_jittery_host_that_keeps_speaking_is_never_suspected() {
        let mut d = detector();
        let mut jitter = Jitter(0x5eed_1234_abcd_0042);
        let mut now = Instant::now();
        d.heartbeat(now);
        let mut worst = 0.0f64;
        for _ in 0..2000 {
            // Anywhere from 150 ms to 1.1 s between heartbeats: a loaded machine's scheduler.
            let gap = Duration::from_millis(jitter.next_ms(150, 1100));
            now += gap;
            // Judged at the worst moment: just before the late heartbeat lands.
            worst = worst.max(d.phi(now));
            assert!(!d.is_suspected(now), "phi {} after {gap:?}", d.phi(now));
            d.heartbeat(now);
        }
        assert!(worst > 0.1, "the jitter was felt ({worst})");
    }

    #[test]
    fn a_stopped_host_is_suspected_within_a_few_intervals() {
        let mut d = detector();
        let start = Instant::now();
        let mut now = start;
        for _ in 0..50 {
            d.heartbeat(now);
            now += PERIOD;
        }
        let last = now - PERIOD;
        assert_eq!(d.last_heartbeat(), Some(last));
        // On time, and one interval late: fine.
        assert!(!d.is_suspected(last + PERIOD));
        assert!(d.phi(last + PERIOD) < 1.0);
        // Suspected within three intervals of silence, and from then on, phi only grows.
        let first = (1..=40u32)
            .map(|k| last + PERIOD / 10 * k)
            .find(|t| d.is_suspected(*t))
            .expect("suspected at some point");
        assert!(
            first - last <= PERIOD * 3,
            "suspected after {:?}",
            first - last
        );
        let mut prev = 0.0;
        for k in 0..60u32 {
            let phi = d.phi(last + PERIOD / 10 * k);
            assert!(phi >= prev, "phi is monotonic in silence");
            prev = phi;
        }
        assert_eq!(d.phi(last + Duration::from_secs(3600)), MAX_PHI);
    }

    #[test]
    fn a_jittery_history_is_suspected_later_than_a_regular_one() {
        let mut regular = detector();
        let mut jittery = detector();
        let (mut a, mut b) = (Instant::now(), Instant::now());
        let mut jitter = Jitter(7);
        for _ in 0..100 {
            regular.heartbeat(a);
            jittery.heartbeat(b);
            a += PERIOD;
            b += Duration::from_millis(jitter.next_ms(100, 900));
        }
        let silent = Duration::from_millis(1200);
        let (ra, rb) = (
            regular.last_heartbeat().unwrap(),
            jittery.last_heartbeat().unwrap(),
        );
        assert!(regular.phi(ra + silent) > jittery.phi(rb + silent));
    }

    #[test]
    fn the_window_is_bounded_and_out_of_order_arrivals_are_ignored() {
        let mut d = PhiDetector::new(PhiConfig {
            window: 5,
            ..PhiConfig::for_interval(PERIOD)
        });
        let t0 = Instant::now();
        for k in 0..100u32 {
            d.heartbeat(t0 + Duration::from_millis(100) * k);
        }
        assert_eq!(d.intervals.len(), 5);
        // Only the 100 ms intervals remain: the seeded estimate is forgotten.
        assert!((d.mean_ms() - 100.0).abs() < 1e-6);
        let last = d.last_heartbeat().unwrap();
        d.heartbeat(last - Duration::from_millis(50));
        assert_eq!(d.last_heartbeat(), Some(last));
        assert_eq!(d.intervals.len(), 5);
    }
}
