//! Adaptive compression of migration data (seed 003): which zstd level to use, chosen every
//! 100 ms from what compression measurably costs and gains and what the link carries.
//!
//! Why: on a slow link every CPU second spent compressing buys back more link seconds than it
//! costs, on a fast link compression is the bottleneck. The best level moves with bandwidth, CPU
//! load and how compressible the pages are, so it is measured, not configured.
//!
//! Data flow: the sender compresses each batch of chunks with [`compress`] at [`Chooser::level`]
//! and reports a [`Sample`] (bytes in, bytes out, CPU time) with [`Chooser::record`]; the
//! transport reports the link's bandwidth with [`Chooser::observe_bandwidth`]; the sender calls
//! [`Chooser::tick`] with the current time as often as it likes and the chooser re-decides every
//! 100 ms. The receiver undoes it with [`decompress`].
//!
//! # The model
//!
//! Per level `L`, let `P_L` be the CPU seconds spent per input byte by the stages that run
//! before the wire (hashing, which every level pays, is `base_cpu_per_byte`; compression is
//! measured per level), `R_L` the output/input byte ratio, `n` the cores working on it and `B`
//! the link bandwidth in bytes/s. With the stages pipelined (seed 003, eq. 4-6):
//!
//! * processing can consume at most `n / (base + P_L)` input bytes/s;
//! * the link drains `B` output bytes/s, that is `B / R_L` input bytes/s;
//! * so the end-to-end rate, in input bytes delivered per second, is
//!   `rate_L = min(n / (base + P_L), B / R_L)`,
//!
//! and since a migration of `S` bytes takes `S / rate_L`, maximising `rate_L` minimises the
//! completion time. Levels never measured are estimated from a reference table scaled by how the
//! current level's measurements compare with its reference (seed 003's `Scale_P`, `Scale_R`),
//! because ratios between levels are stable across workloads even when absolute values are not.
//! One change from the seed: the ratio is scaled as a mixture, not a product. Memory is a mix of
//! pages like the reference ones and pages nothing compresses, so a level's ratio is
//! `1 - (1 - R_ref) * c` for the share `c` the measured level implies; the seed's `R_ref * Scale_R`
//! makes nearly incompressible data look 17 % better at zstd9 than at zstd1 when the truth is 1 %,
//! which kept the chooser at 86 % of the best on such data.
//!
//! Hysteresis: the chooser switches only when the best level beats the current one by more than
//! `hysteresis` (10 %) and the current one has been held for `min_hold`, or when the best other
//! level has led it by more than `sustained_gain` (3 %) on a moving average for `sustain` (1 s): noise
//! averages out of a tie's lead, a real lead stays, so the chooser neither flaps on ties nor sits
//! up to 10 % below the best for good (a property test found it at 89.5 % of the oracle, holding
//! zstd3 at 195 MB/s while zstd1 delivered 216). Probing: every
//! `probe_every` it spends one tick on the level whose own measurement is the oldest, so its
//! estimates do not rot when the data's compressibility changes; and a sample 25 % away from its
//! level's average (the data or the CPU changed) drops the other levels' measurements at once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Weight of a tick's lead in the runner-up's moving average (a time constant of ~1 s of ticks).
const LEAD_ALPHA: f64 = 0.1;

/// A sample this far (relative) from its level's average means the data's compressibility or
/// the CPU's speed changed, not noise.
const REGIME_SHIFT: f64 = 0.25;

/// A compression setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    None,
    Zstd1,
    Zstd3,
    Zstd9,
}

impl Level {
    /// Every level, cheapest first.
    pub const ALL: [Level; 4] = [Level::None, Level::Zstd1, Level::Zstd3, Level::Zstd9];

    fn index(self) -> usize {
        self as usize
    }

    /// The zstd level, if any.
    pub fn zstd(self) -> Option<i32> {
        match self {
            Level::None => None,
            Level::Zstd1 => Some(1),
            Level::Zstd3 => Some(3),
            Level::Zstd9 => Some(9),
        }
    }
}

/// Why data could not be compressed or decompressed.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("zstd failed to compress: {0}")]
    Compress(std::io::Error),
    #[error(
        "the data does not decompress at {level:?} within {limit} bytes ({source}): it is corrupt or was sent at another level; ask the source again"
    )]
    Decompress {
        level: Level,
        limit: usize,
        source: std::io::Error,
    },
    #[error("{len} uncompressed bytes exceed the limit of {limit}: refused")]
    TooLarge { len: usize, limit: usize },
}

/// Compresses `bytes` at `level` (a copy for [`Level::None`]).
pub fn compress(level: Level, bytes: &[u8]) -> Result<Vec<u8>, CompressError> {
    match level.zstd() {
        None => Ok(bytes.to_vec()),
        Some(l) => zstd::bulk::compress(bytes, l).map_err(CompressError::Compress),
    }
}

/// Undoes [`compress`]; refuses output larger than `limit` bytes (the size the sender announced,
/// bounded by the caller), so a hostile frame cannot make the receiver allocate without bound.
pub fn decompress(level: Level, bytes: &[u8], limit: usize) -> Result<Vec<u8>, CompressError> {
    match level {
        Level::None if bytes.len() > limit => Err(CompressError::TooLarge {
            len: bytes.len(),
            limit,
        }),
        Level::None => Ok(bytes.to_vec()),
        _ => zstd::bulk::decompress(bytes, limit).map_err(|source| CompressError::Decompress {
            level,
            limit,
            source,
        }),
    }
}

/// One measurement of a level at work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub level: Level,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// CPU time the compression of these bytes took (all threads added up).
    pub cpu: Duration,
}

/// The chooser's knobs. [`Default`] follows seed 003 with a shorter hold.
#[derive(Clone, Debug, PartialEq)]
pub struct ChooserConfig {
    /// How often the level is re-decided.
    pub tick: Duration,
    /// The best level must beat the current one by this fraction to replace it.
    pub hysteresis: f64,
    /// A chosen level is kept at least this long.
    pub min_hold: Duration,
    /// A smaller lead that also replaces the current level when it is the moving average of the
    /// same runner-up's lead for at least `sustain`.
    pub sustained_gain: f64,
    /// How long the same level must have been the runner-up.
    pub sustain: Duration,
    /// How often one tick is spent measuring the least recently measured level.
    pub probe_every: Duration,
    /// A level's own measurement older than this is replaced by the scaled reference estimate.
    pub stale_after: Duration,
    /// Cores compressing in parallel.
    pub workers: f64,
    /// CPU seconds per input byte every level pays before compression (hashing, copying).
    pub base_cpu_per_byte: f64,
    /// Weight of a new sample in the moving averages.
    pub alpha: f64,
    /// The level used until bandwidth is known.
    pub initial: Level,
    /// Reference CPU seconds per byte and output/input ratio per level, indexed like
    /// [`Level::ALL`]: measured once on typical memory pages.
    pub reference: [(f64, f64); 4],
}

impl Default for ChooserConfig {
    fn default() -> Self {
        ChooserConfig {
            tick: Duration::from_millis(100),
            hysteresis: 0.10,
            min_hold: Duration::from_millis(500),
            sustained_gain: 0.03,
            sustain: Duration::from_secs(1),
            probe_every: Duration::from_secs(5),
            stale_after: Duration::from_secs(3),
            workers: 1.0,
            base_cpu_per_byte: 1.0 / 2.0e9,
            alpha: 0.3,
            initial: Level::Zstd1,
            // Measured on this project's 2-core machine, zstd 0.13 (libzstd 1.5.7), 1 MiB
            // batches of executables and libraries plus 20% zero pages: zstd1 486 MB/s ratio
            // 0.347, zstd3 169 MB/s 0.312, zstd9 42 MB/s 0.292; a copy ~10 GB/s.
            reference: [
                (1.0e-10, 1.0),
                (1.0 / 490e6, 0.35),
                (1.0 / 170e6, 0.31),
                (1.0 / 42e6, 0.29),
            ],
        }
    }
}

/// What the chooser believes about one level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub level: Level,
    /// CPU seconds per input byte of the compression stage.
    pub cpu_per_byte: f64,
    /// Output bytes per input byte.
    pub ratio: f64,
    /// Input bytes per second the whole pipeline would deliver at this level.
    pub rate: f64,
    /// True if from this level's own recent measurement, false if scaled from the reference.
    pub measured: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Measured {
    cpu_per_byte: f64,
    ratio: f64,
    at: Option<Duration>,
}

/// The sans-IO level chooser. Feed it samples and bandwidth; ask it the level.
#[derive(Clone, Debug)]
pub struct Chooser {
    cfg: ChooserConfig,
    measured: [Measured; 4],
    bandwidth: Option<f64>,
    chosen: Level,
    probing: Option<Level>,
    last_tick: Option<Duration>,
    switched_at: Duration,
    last_probe: Duration,
    switches: u32,
    /// The best level other than the chosen one, since when, and the moving average of its
    /// relative lead over the chosen one.
    runner_up: Option<(Level, Duration, f64)>,
}

impl Chooser {
    pub fn new(cfg: ChooserConfig) -> Self {
        let chosen = cfg.initial;
        Chooser {
            cfg,
            measured: [Measured::default(); 4],
            bandwidth: None,
            chosen,
            probing: None,
            last_tick: None,
            switched_at: Duration::ZERO,
            last_probe: Duration::ZERO,
            switches: 0,
            runner_up: None,
        }
    }

    /// The level to compress with now (a probe's level during a probe).
    pub fn level(&self) -> Level {
        self.probing.unwrap_or(self.chosen)
    }

    /// The level chosen on the model, ignoring a probe in progress.
    pub fn chosen(&self) -> Level {
        self.chosen
    }

    /// How many times the chosen level changed.
    pub fn switches(&self) -> u32 {
        self.switches
    }

    /// The latest link bandwidth estimate, in bytes per second.
    pub fn observe_bandwidth(&mut self, bytes_per_sec: f64) {
        if bytes_per_sec.is_finite() && bytes_per_sec > 0.0 {
            self.bandwidth = Some(match self.bandwidth {
                None => bytes_per_sec,
                Some(b) => b + self.cfg.alpha * (bytes_per_sec - b),
            });
        }
    }

    /// Records a measurement taken at time `now`. Empty samples are ignored.
    pub fn record(&mut self, s: Sample, now: Duration) {
        if s.bytes_in == 0 {
            return;
        }
        let cpu = s.cpu.as_secs_f64() / s.bytes_in as f64;
        let ratio = s.bytes_out as f64 / s.bytes_in as f64;
        let m = &mut self.measured[s.level.index()];
        let fresh =
            m.at.is_some_and(|at| now.saturating_sub(at) <= self.cfg.stale_after);
        let shifted = fresh
            && ((ratio - m.ratio).abs() > REGIME_SHIFT * m.ratio
                || (cpu - m.cpu_per_byte).abs() > REGIME_SHIFT * m.cpu_per_byte);
        if shifted {
            // The data or the CPU changed under this level: what the other levels measured
            // before no longer holds, so they are estimated from this one until probed again.
            for (i, other) in self.measured.iter_mut().enumerate() {
                if i != s.level.index() {
                    other.at = None;
                }
            }
        }
        let m = &mut self.measured[s.level.index()];
        if fresh && !shifted {
            m.cpu_per_byte += self.cfg.alpha * (cpu - m.cpu_per_byte);
            m.ratio += self.cfg.alpha * (ratio - m.ratio);
        } else {
            m.cpu_per_byte = cpu;
            m.ratio = ratio;
        }
        m.at = Some(now);
    }

    fn fresh(&self, level: Level, now: Duration) -> Option<Measured> {
        let m = self.measured[level.index()];
        m.at.filter(|at| now.saturating_sub(*at) <= self.cfg.stale_after)
            .map(|_| m)
    }

    /// The model's view of `level` at time `now`.
    pub fn estimate(&self, level: Level, now: Duration) -> Estimate {
        let (cpu_per_byte, ratio, measured) = match self.fresh(level, now) {
            Some(m) => (m.cpu_per_byte, m.ratio, true),
            None => {
                let (p_ref, r_ref) = self.cfg.reference[level.index()];
                let (sp, share) = self.scales(now);
                let ratio = if level == Level::None {
                    1.0
                } else {
                    (1.0 - (1.0 - r_ref) * share).clamp(0.005, 1.0)
                };
                (p_ref * sp, ratio, false)
            }
        };
        let processing = self.cfg.workers / (self.cfg.base_cpu_per_byte + cpu_per_byte).max(1e-15);
        let network = match self.bandwidth {
            Some(b) => b / ratio.max(1e-9),
            None => f64::INFINITY,
        };
        Estimate {
            level,
            cpu_per_byte,
            ratio,
            rate: processing.min(network),
            measured,
        }
    }

    /// Seed 003's scale factors: how the freshest measured level compares with its reference.
    /// Returns the CPU scale and the compressible share of the data (how much of the reference's
    /// saving the measured level got); both 1 when nothing is known.
    fn scales(&self, now: Duration) -> (f64, f64) {
        let mut best: Option<(Duration, Level, Measured)> = None;
        for l in Level::ALL {
            if let Some(m) = self.fresh(l, now) {
                let at = m.at.unwrap_or_default();
                if best.is_none_or(|(b, _, _)| at > b) {
                    best = Some((at, l, m));
                }
            }
        }
        let Some((_, level, m)) = best else {
            return (1.0, 1.0);
        };
        let (p_ref, r_ref) = self.cfg.reference[level.index()];
        let sp = (m.cpu_per_byte / p_ref).clamp(0.05, 20.0);
        let share = if level == Level::None {
            1.0
        } else {
            ((1.0 - m.ratio) / (1.0 - r_ref)).clamp(0.0, 1.5)
        };
        (sp, share)
    }

    /// Re-decides if a tick has passed since the last decision; returns the level to use from
    /// now on when it changed (including the start and end of a probe).
    pub fn tick(&mut self, now: Duration) -> Option<Level> {
        if let Some(last) = self.last_tick {
            if now.saturating_sub(last) < self.cfg.tick {
                return None;
            }
        }
        self.last_tick = Some(now);
        let before = self.level();
        self.probing = None;
        if self.bandwidth.is_some() {
            let current = self.estimate(self.chosen, now).rate;
            let held = now.saturating_sub(self.switched_at) >= self.cfg.min_hold;
            // The best level other than the chosen one: the one to jump to, and the runner-up
            // whose lead is averaged.
            let other = Level::ALL
                .into_iter()
                .filter(|l| *l != self.chosen)
                .map(|l| self.estimate(l, now))
                .max_by(|a, b| a.rate.total_cmp(&b.rate));
            let jump = other
                .filter(|o| o.rate > current * (1.0 + self.cfg.hysteresis))
                .map(|o| o.level);
            let mut sustained = None;
            if let Some(o) = other.filter(|_| current > 0.0) {
                let lead = o.rate / current - 1.0;
                let (since, avg) = match self.runner_up {
                    Some((l, since, avg)) if l == o.level => {
                        (since, avg + LEAD_ALPHA * (lead - avg))
                    }
                    _ => (now, lead),
                };
                self.runner_up = Some((o.level, since, avg));
                let long = now.saturating_sub(since) >= self.cfg.sustain;
                if long && avg > self.cfg.sustained_gain {
                    sustained = Some(o.level);
                }
            }
            if let Some(next) = jump.or(sustained).filter(|_| held) {
                self.chosen = next;
                self.switched_at = now;
                self.switches += 1;
                self.runner_up = None;
            } else if now.saturating_sub(self.last_probe) >= self.cfg.probe_every {
                self.last_probe = now;
                self.probing = Level::ALL
                    .into_iter()
                    .filter(|l| *l != self.chosen)
                    .min_by_key(|l| self.measured[l.index()].at);
            }
        }
        let after = self.level();
        (after != before).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MB: f64 = 1e6;

    /// The ground truth of a synthetic run: per-level CPU per byte and ratio.
    #[derive(Clone, Copy, Debug)]
    struct Truth {
        bandwidth: f64,
        cpu_scale: f64,
        /// 0 = incompressible, 1 = like the reference pages.
        compressibility: f64,
    }

    impl Truth {
        fn level(&self, l: Level) -> (f64, f64) {
            let (p, r) = ChooserConfig::default().reference[l.index()];
            let r = if l == Level::None {
                1.0
            } else {
                1.0 - (1.0 - r) * self.compressibility + 0.001
            };
            (p * self.cpu_scale, r)
        }

        fn rate(&self, l: Level) -> f64 {
            let cfg = ChooserConfig::default();
            let (p, r) = self.level(l);
            (cfg.workers / (cfg.base_cpu_per_byte + p)).min(self.bandwidth / r)
        }

        fn best(&self) -> f64 {
            Level::ALL
                .into_iter()
                .map(|l| self.rate(l))
                .fold(0.0, f64::max)
        }
    }

    /// What a simulated run delivered.
    struct Run {
        /// Bytes delivered, and what an oracle choosing the best level at every tick would.
        got: f64,
        oracle: f64,
        /// The same, counting only ticks at least `SETTLE` seconds after a change of truth.
        settled_got: f64,
        settled_oracle: f64,
        /// The chosen level at every tick.
        chosen: Vec<Level>,
    }

    /// How long after a change of truth the chooser is given to notice it: bandwidth is averaged
    /// over a few ticks, a choice is held 500 ms, and a change may take two steps.
    const SETTLE: f64 = 1.5;

    /// Runs the chooser over `segments` (truth, seconds) with multiplicative noise from `noise`.
    fn simulate(segments: &[(Truth, f64)], noise: &mut impl FnMut() -> f64) -> Run {
        simulate_with(ChooserConfig::default(), segments, noise)
    }

    fn simulate_with(
        cfg: ChooserConfig,
        segments: &[(Truth, f64)],
        noise: &mut impl FnMut() -> f64,
    ) -> Run {
        let mut c = Chooser::new(cfg);
        let dt = 0.1;
        let mut t = 0.0;
        let mut run = Run {
            got: 0.0,
            oracle: 0.0,
            settled_got: 0.0,
            settled_oracle: 0.0,
            chosen: Vec::new(),
        };
        for (truth, secs) in segments {
            let (start, end) = (t, t + secs);
            while t < end - 1e-9 {
                let now = Duration::from_secs_f64(t);
                c.observe_bandwidth(truth.bandwidth * noise());
                c.tick(now);
                let l = c.level();
                let rate = truth.rate(l);
                let bytes_in = rate * dt;
                let (p, r) = truth.level(l);
                c.record(
                    Sample {
                        level: l,
                        bytes_in: bytes_in as u64,
                        bytes_out: (bytes_in * r * noise()) as u64,
                        cpu: Duration::from_secs_f64(bytes_in * p * noise()),
                    },
                    now,
                );
                run.got += bytes_in;
                run.oracle += truth.best() * dt;
                if t - start >= SETTLE - 1e-9 {
                    run.settled_got += bytes_in;
                    run.settled_oracle += truth.best() * dt;
                }
                run.chosen.push(c.chosen());
                t += dt;
            }
        }
        run
    }

    fn steady(bandwidth: f64) -> Truth {
        Truth {
            bandwidth,
            cpu_scale: 1.0,
            compressibility: 1.0,
        }
    }

    #[test]
    fn round_trip_every_level() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 / 7).collect();
        for l in Level::ALL {
            let z = compress(l, &data).unwrap();
            if l != Level::None {
                assert!(z.len() < data.len() / 4, "{l:?} compresses {}", z.len());
            }
            assert_eq!(decompress(l, &z, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn decompress_refuses_garbage_and_oversize() {
        let data = vec![7u8; 50_000];
        let z = compress(Level::Zstd3, &data).unwrap();
        assert!(matches!(
            decompress(Level::Zstd3, &z, 1000),
            Err(CompressError::Decompress { .. })
        ));
        assert!(decompress(Level::Zstd1, b"not zstd at all", 1 << 20).is_err());
        assert!(matches!(
            decompress(Level::None, &data, 10),
            Err(CompressError::TooLarge { .. })
        ));
    }

    #[test]
    fn slow_link_picks_high_compression() {
        let Run { chosen, .. } = simulate(&[(steady(1.0 * MB), 5.0)], &mut || 1.0);
        assert_eq!(*chosen.last().unwrap(), Level::Zstd9);
    }

    #[test]
    fn fast_link_picks_none_or_zstd1() {
        let Run { chosen, .. } = simulate(&[(steady(2000.0 * MB), 5.0)], &mut || 1.0);
        assert!(matches!(chosen.last().unwrap(), Level::None | Level::Zstd1));
        let Run { chosen, .. } = simulate(&[(steady(10_000.0 * MB), 5.0)], &mut || 1.0);
        assert_eq!(*chosen.last().unwrap(), Level::None);
    }

    #[test]
    fn incompressible_data_on_a_fast_link_goes_uncompressed() {
        let t = Truth {
            bandwidth: 600.0 * MB,
            cpu_scale: 1.0,
            compressibility: 0.0,
        };
        let Run { chosen, .. } = simulate(&[(t, 10.0)], &mut || 1.0);
        assert_eq!(*chosen.last().unwrap(), Level::None);
    }

    #[test]
    fn follows_bandwidth_changes_both_ways() {
        let Run {
            got,
            oracle,
            chosen,
            ..
        } = simulate(
            &[
                (steady(1.0 * MB), 10.0),
                (steady(5000.0 * MB), 10.0),
                (steady(1.0 * MB), 10.0),
            ],
            &mut || 1.0,
        );
        // At the end of each phase the choice is the best level or one within the hysteresis
        // of it (coming down from the fast phase, zstd3 may stay: zstd9 is only 7% better).
        for (i, bw) in [(99, 1.0), (199, 5000.0), (299, 1.0)] {
            let t = steady(bw * MB);
            assert!(
                t.rate(chosen[i]) * 1.1 >= t.best(),
                "tick {i}: {:?} at {bw} MB/s",
                chosen[i]
            );
        }
        assert_eq!(chosen[99], Level::Zstd9);
        assert!(matches!(chosen[199], Level::None | Level::Zstd1));
        assert!(matches!(chosen[299], Level::Zstd3 | Level::Zstd9));
        assert!(got > 0.9 * oracle, "{got} vs {oracle}");
    }

    /// A link where zstd1 (network-bound) and zstd3 (CPU-bound) deliver the same rate, measured
    /// with 5% noise: the worst case for flapping.
    fn tie_trace() -> (Truth, impl FnMut() -> f64) {
        let cfg = ChooserConfig::default();
        let (_, r1) = cfg.reference[1];
        let (p3, _) = cfg.reference[2];
        let b = r1 / (cfg.base_cpu_per_byte + p3);
        let mut rng = 12345u64;
        let noise = move || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1.0 + ((rng >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.1
        };
        (steady(b), noise)
    }

    fn switches(chosen: &[Level]) -> usize {
        chosen.windows(2).filter(|w| w[0] != w[1]).count()
    }

    #[test]
    fn hysteresis_prevents_flapping() {
        let (truth, mut noise) = tie_trace();
        let Run { chosen, .. } = simulate(&[(truth, 60.0)], &mut noise);
        eprintln!(
            "with hysteresis: {} switches in 600 ticks",
            switches(&chosen)
        );
        assert!(
            switches(&chosen) <= 2,
            "{} switches in 600 ticks",
            switches(&chosen)
        );
    }

    #[test]
    fn without_hysteresis_the_same_trace_flaps() {
        // The control for the test above: the noise really is enough to flap.
        let cfg = ChooserConfig {
            hysteresis: 0.0,
            min_hold: Duration::ZERO,
            ..ChooserConfig::default()
        };
        let (truth, mut noise) = tie_trace();
        let Run { chosen, .. } = simulate_with(cfg, &[(truth, 60.0)], &mut noise);
        eprintln!(
            "without hysteresis: {} switches in 600 ticks",
            switches(&chosen)
        );
        assert!(
            switches(&chosen) > 10,
            "only {} switches",
            switches(&chosen)
        );
    }

    #[test]
    fn probes_other_levels_now_and_then() {
        let mut c = Chooser::new(ChooserConfig::default());
        c.observe_bandwidth(1.0 * MB);
        let mut probed = std::collections::HashSet::new();
        for i in 0..300u64 {
            let now = Duration::from_millis(100 * i);
            c.tick(now);
            if c.level() != c.chosen() {
                probed.insert(c.level());
            }
            c.record(
                Sample {
                    level: c.level(),
                    bytes_in: 100_000,
                    bytes_out: 35_000,
                    cpu: Duration::from_millis(1),
                },
                now,
            );
        }
        assert!(probed.len() >= 2, "probed {probed:?}");
    }

    #[test]
    fn ticks_closer_than_100ms_do_nothing() {
        let mut c = Chooser::new(ChooserConfig::default());
        c.observe_bandwidth(1.0 * MB);
        c.tick(Duration::from_millis(1000));
        let l = c.level();
        assert_eq!(c.tick(Duration::from_millis(1050)), None);
        assert_eq!(c.level(), l);
    }

    fn xorshift_noise(seed: u64) -> impl FnMut() -> f64 {
        let mut rng = seed | 1;
        move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            1.0 + ((rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.1
        }
    }

    fn truth(bandwidth: f64, cpu_scale: f64, compressibility: f64) -> Truth {
        Truth {
            bandwidth,
            cpu_scale,
            compressibility,
        }
    }

    /// Traces the property below once failed on, each a way the chooser went wrong: holding
    /// zstd3 while zstd1 led by 11% (under the hysteresis; 89.5% of the oracle), trusting
    /// other levels' measurements of incompressible data after the data turned compressible
    /// (79.6%), and scaling ratios as a product on nearly incompressible data (85.4%).
    #[test]
    fn traces_the_property_test_found() {
        let slow_incompressible = truth(395_284.7, 0.3, 0.0);
        let cases = [
            (
                vec![
                    (slow_incompressible, 9.18),
                    (truth(140_423_389.3, 0.786, 0.542), 8.69),
                ],
                13_278_967_331_741_706_578u64,
            ),
            (
                vec![
                    (truth(27_054_348.4, 0.869, 0.880), 5.0),
                    (slow_incompressible, 5.91),
                    (truth(133_471_944.7, 0.3, 0.998), 5.0),
                ],
                33_940_439_415_718,
            ),
            (
                vec![
                    (slow_incompressible, 14.83),
                    (truth(240_478_840.6, 0.601, 0.247), 5.0),
                ],
                6_909_028_981_661_640_392,
            ),
        ];
        for (i, (segments, seed)) in cases.iter().enumerate() {
            let run = simulate(segments, &mut xorshift_noise(*seed));
            let share = run.got / run.oracle;
            eprintln!("case {i}: {share:.3} of the oracle");
            assert!(share >= 0.9, "case {i}: {share:.3} of the oracle");
        }
    }

    fn truth_strategy() -> impl Strategy<Value = (Truth, f64)> {
        (0.5f64..4.0, 0.3f64..1.0, 0.0f64..1.0, 5.0f64..20.0).prop_map(
            |(log_bw, cpu_scale, compressibility, secs)| {
                (
                    Truth {
                        bandwidth: 10f64.powf(log_bw) * MB / 8.0,
                        cpu_scale,
                        compressibility,
                    },
                    secs,
                )
            },
        )
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]

        /// On piecewise-constant traces (bandwidth 0.4 MB/s..1.2 GB/s, CPU speed and
        /// compressibility varying, each phase 5-20 s, 5% measurement noise), the adaptive
        /// choice delivers at least 90% of what an oracle knowing the truth at every tick would,
        /// and 95% once 1.5 s have passed since each change. Worst of 15,000 cases (5 runs of
        /// 3,000 with `BRUME_CHOOSER_RATIOS=1`): 92.3% and 95.9%.
        #[test]
        fn within_10_percent_of_hindsight(
            segments in proptest::collection::vec(truth_strategy(), 1..5),
            seed in any::<u64>(),
        ) {
            let run = simulate(&segments, &mut xorshift_noise(seed));
            if std::env::var_os("BRUME_CHOOSER_RATIOS").is_some() {
                eprintln!("RATIOS settled {:.4} whole {:.4}", run.settled_got / run.settled_oracle, run.got / run.oracle);
            }
            prop_assert!(run.got >= 0.9 * run.oracle, "{:.3} of the oracle", run.got / run.oracle);
            prop_assert!(
                run.settled_got >= 0.95 * run.settled_oracle,
                "settled: {:.3} of the oracle",
                run.settled_got / run.settled_oracle
            );
        }
    }
}
