//! What a node reads about a task before a dump starts, and the feature vector every linear
//! model shares.
//!
//! Why one vector for all models: the comparison in `brume bench predictor` is then about the
//! cost each model minimises (seed 000's point), not about what each one was allowed to see. The
//! features are those a node can read before it acts (issue 14): resident memory, the dirty-page
//! tracker's rate and count, the process tree's size (processes, threads, open files, sockets,
//! mappings), the task's age and the time since its last dump, and whether pre-copy rounds were
//! tracked. Each is scaled so that one unit is a large but ordinary amount (a GiB, 1e5 pages, a
//! thousand files): the coefficients then share a scale, and one prior standard deviation
//! ([`prior`]) means the same for each.

use serde::{Deserialize, Serialize};

use super::load::MachineLoad;
use super::PredictorConfig;

const GIB: f64 = (1u64 << 30) as f64;
/// Bytes per page, as a float: turns the prior's s/GiB into s per 1e5 pages.
const PAGE: f64 = crate::PAGE as f64;
/// Pages per unit of the page features.
const PAGE_UNIT: f64 = 1e5;

/// Length of [`vector`].
pub const DIM: usize = 17;
/// Index in [`vector`] of the first machine-load term.
pub const LOAD_FIRST: usize = 12;

/// Names of [`vector`]'s entries, in order (for reports).
pub const NAMES: [&str; DIM] = [
    "1",
    "rss_gib",
    "dirty_pps_1e5",
    "written_pages_1e5",
    "processes_10",
    "threads_100",
    "open_files_1000",
    "sockets_100",
    "mappings_1000",
    "age_h",
    "since_last_min",
    "tracked",
    "load_per_cpu",
    "rss_gib_x_load_per_cpu",
    "rss_gib_x_running_per_cpu",
    "rss_gib_x_cpu_pressure",
    "rss_gib_x_load_unknown",
];

/// What a node knows about a task when a dump is about to start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// Resident memory summed over the task's processes, bytes.
    pub rss_bytes: u64,
    /// Pages written per second as the dirty-page tracker counted them (0 when untracked).
    pub dirty_pps: f64,
    /// Pages written since the last round or dump (all present pages for a first dump).
    pub written_pages: u64,
    pub processes: u32,
    pub threads: u32,
    /// Open file descriptors.
    pub open_files: u32,
    /// Socket file descriptors.
    pub sockets: u32,
    /// Memory mappings (lines of /proc/PID/maps, summed).
    pub mappings: u32,
    /// Seconds since the task started.
    pub age_s: f64,
    /// Seconds since the previous dump of this task began; `None` for a first dump.
    pub since_last_s: Option<f64>,
    /// Whether the dump follows tracked pre-copy rounds.
    pub tracked: bool,
    /// The machine's load read just before the dump (all `None` in traces and states written
    /// before it was recorded).
    #[serde(default)]
    pub load: MachineLoad,
}

impl Features {
    /// Seconds of computation since the task's last checkpoint (seed 000's `e[i]`): since the
    /// last dump, or since the start for a first dump. A late dump loses this much work.
    pub fn since_checkpoint_s(&self) -> f64 {
        finite_nonneg(self.since_last_s.unwrap_or(self.age_s))
    }
}

fn finite_nonneg(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

/// The scaled feature vector, intercept first, in [`NAMES`]' order. Non-finite or negative
/// inputs count as 0, so a vector is always finite.
///
/// The machine-load terms (from [`LOAD_FIRST`]) are interactions with resident memory: a dump's
/// cost is mostly CPU work per page (CRIU reads and writes every page: each dump of the trace is
/// a full one), and CPU work stretches with contention, so the load multiplies the per-GiB cost
/// rather than adding a constant. `load_per_cpu` alone carries a fixed cost that stretches too.
/// An unknown load is explicit: its terms are 0 and `rss_gib_x_load_unknown` is `rss_gib`, so a
/// model learns what a dump costs when the load was not read (an old trace: all rows), instead
/// of taking an unread load for an idle machine. CPU pressure counts only when the load is
/// known (PSI is absent on some kernels: 0 then, the load terms still apply).
pub fn vector(f: &Features) -> [f64; DIM] {
    let rss_gib = f.rss_bytes as f64 / GIB;
    let load = f.load.load_per_cpu();
    let running = f.load.running_per_cpu().filter(|_| load.is_some());
    let pressure = f
        .load
        .cpu_pressure
        .filter(|p| p.is_finite() && load.is_some());
    [
        1.0,
        rss_gib,
        finite_nonneg(f.dirty_pps) / PAGE_UNIT,
        f.written_pages as f64 / PAGE_UNIT,
        f64::from(f.processes) / 10.0,
        f64::from(f.threads) / 100.0,
        f64::from(f.open_files) / 1000.0,
        f64::from(f.sockets) / 100.0,
        f64::from(f.mappings) / 1000.0,
        finite_nonneg(f.age_s) / 3600.0,
        f.since_checkpoint_s() / 60.0,
        if f.tracked { 1.0 } else { 0.0 },
        load.unwrap_or(0.0),
        rss_gib * load.unwrap_or(0.0),
        rss_gib * running.unwrap_or(0.0),
        rss_gib * finite_nonneg(pressure.unwrap_or(0.0)),
        if load.is_none() { rss_gib } else { 0.0 },
    ]
}

/// Entries of [`log_vector`] in use (the rest of its `DIM` slots are 0).
pub const LOG_USED: usize = 10;

/// Names of [`log_vector`]'s entries in use, in order.
pub const LOG_NAMES: [&str; LOG_USED] = [
    "1",
    "ln_rss_gib",
    "ln_1p_written_pages_1e5",
    "ln_processes",
    "ln_threads",
    "ln_1p_open_files",
    "ln_1p_load_per_cpu",
    "ln_1p_running_per_cpu",
    "cpu_pressure",
    "load_unknown",
];

/// The vector of PB-MLR's multiplicative (log-space) form, which models `ln(seconds)`: logs of
/// the sizes, so a coefficient is an elasticity (ln rss's is how the time scales with memory)
/// and the load terms multiply the whole duration. Resident memory is floored at 1 MiB, counts
/// at 1. The load is handled as in [`vector`]: unknown gives 0 load terms and `load_unknown` 1.
/// Padded with zeros to `DIM` so it shares the models' sample window.
pub fn log_vector(f: &Features) -> [f64; DIM] {
    let rss_gib = (f.rss_bytes as f64).max(1048576.0) / GIB;
    let load = f.load.load_per_cpu();
    let running = f.load.running_per_cpu().filter(|_| load.is_some());
    let pressure = f
        .load
        .cpu_pressure
        .filter(|p| p.is_finite() && load.is_some());
    let mut v = [0.0; DIM];
    v[..LOG_USED].copy_from_slice(&[
        1.0,
        rss_gib.ln(),
        (f.written_pages as f64 / PAGE_UNIT).ln_1p(),
        f64::from(f.processes.max(1)).ln(),
        f64::from(f.threads.max(1)).ln(),
        f64::from(f.open_files).ln_1p(),
        load.unwrap_or(0.0).ln_1p(),
        running.unwrap_or(0.0).ln_1p(),
        finite_nonneg(pressure.unwrap_or(0.0)),
        if load.is_none() { 1.0 } else { 0.0 },
    ]);
    v
}

/// The noise of one dump's `ln(seconds)` the log-space prior assumes: about ±30% (a priori, not
/// measured on a trace).
pub const LOG_NOISE_SD: f64 = 0.3;

/// The prior of [`log_vector`]'s coefficients, from the same `dump_prior` as [`prior`]: the
/// intercept is ln of its 1 GiB answer, the ln-rss elasticity the one that joins its 64 MiB and
/// 1 GiB answers (ln(y(1 GiB)/y(64 MiB)) / ln 16), sd 1 and 0.5; every other coefficient 0, sd 0.5
/// (a doubling of a count or of the load per CPU may a priori stretch a dump by about 40%); the
/// unused slots 0 with sd 1e-3.
pub fn log_prior(cfg: &PredictorConfig) -> Prior {
    let (a, b) = (cfg.dump_prior[0].0, cfg.dump_prior[1].0);
    let at = |gib: f64| (a + b * gib).max(1e-3);
    let mut mean = vec![0.0; DIM];
    let mut sd: Vec<f64> = vec![1e-3; DIM];
    for s in &mut sd[..LOG_USED] {
        *s = 0.5;
    }
    mean[0] = at(1.0).ln();
    sd[0] = 1.0;
    mean[1] = (at(1.0) / at(1.0 / 16.0)).ln() / 16f64.ln();
    let lambda = sd
        .iter()
        .map(|s| (LOG_NOISE_SD / s.max(1e-6)).powi(2))
        .collect();
    Prior { mean, sd, lambda }
}

/// A Gaussian prior on the coefficients of [`vector`].
#[derive(Clone, Debug, PartialEq)]
pub struct Prior {
    pub mean: Vec<f64>,
    pub sd: Vec<f64>,
    /// Ridge weight per coefficient for the least-squares fits: `noise_sd² / sd²`, the MAP
    /// estimate's penalty `Σ λ_j (θ_j − mean_j)²` under this prior and that noise.
    pub lambda: Vec<f64>,
}

/// The prior from the planner's config: the intercept and the per-GiB cost of resident memory
/// come from `dump_prior` (measured here with criu 4.1.1: 64 MiB in 109 ms, 1 GiB in 3.5 s), the
/// per-page cost of written pages from its "dirtied" entry (s/GiB turned into s per 1e5 pages);
/// every other coefficient starts at 0 with sd 0.1 s per unit (a thousand open files, a hundred
/// threads, an hour of age each a priori within about ±0.1 s of dump time: the data can move
/// them, but a handful of dumps cannot make them carry an upper envelope on their own, which
/// PB-MLR's steep late penalty otherwise invites). The load terms start at 0 too, the
/// interactions with resident memory with sd 1 s per GiB per unit (a loaded machine may a
/// priori double a GiB's dump time, or more: the data decide), the fixed load term with sd 0.1.
pub fn prior(cfg: &PredictorConfig) -> Prior {
    let pages_per_gib = GIB / PAGE / PAGE_UNIT;
    let mut mean = vec![0.0; DIM];
    let mut sd = vec![0.1; DIM];
    (mean[0], sd[0]) = cfg.dump_prior[0];
    (mean[1], sd[1]) = cfg.dump_prior[1];
    mean[3] = cfg.dump_prior[2].0 / pages_per_gib;
    sd[3] = (cfg.dump_prior[2].1 / pages_per_gib).max(1e-3);
    for s in &mut sd[LOAD_FIRST + 1..] {
        *s = 1.0;
    }
    let noise = cfg.noise_sd.max(1e-3);
    let lambda = sd.iter().map(|s| (noise / s.max(1e-6)).powi(2)).collect();
    Prior { mean, sd, lambda }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain untracked first dump of a task of `mib` MiB.
    pub(crate) fn example(mib: u64) -> Features {
        Features {
            rss_bytes: mib << 20,
            written_pages: (mib << 20) / 4096,
            processes: 1,
            threads: 1,
            open_files: 4,
            mappings: 30,
            age_s: 10.0,
            ..Features::default()
        }
    }

    #[test]
    fn vector_is_scaled_and_finite() {
        let mut f = example(1024);
        f.dirty_pps = f64::NAN;
        f.age_s = -3.0;
        let v = vector(&f);
        assert!(v.iter().all(|x| x.is_finite()));
        assert_eq!(v[0], 1.0);
        assert!((v[1] - 1.0).abs() < 1e-12);
        assert!((v[3] - 2.62144).abs() < 1e-9);
        assert_eq!((v[2], v[9]), (0.0, 0.0));
        assert_eq!(f.since_checkpoint_s(), 0.0);
        // The load was not read: its terms are 0 and the unknown-load term carries rss.
        assert_eq!(v[LOAD_FIRST..DIM - 1], [0.0; 4]);
        assert!((v[DIM - 1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_log_prior_predicts_the_measured_dumps() {
        let p = log_prior(&PredictorConfig::default());
        let at = |mib| -> f64 {
            let v = log_vector(&example(mib));
            v.iter().zip(&p.mean).map(|(a, b)| a * b).sum::<f64>().exp()
        };
        // Equal to the linear prior's answers at 64 MiB and 1 GiB (up to the written-pages
        // term, 0 in the prior).
        let lin = prior(&PredictorConfig::default());
        let lin_at = |mib| -> f64 {
            let v = vector(&example(mib));
            v.iter().zip(&lin.mean).map(|(a, b)| a * b).sum()
        };
        for mib in [64, 1024] {
            assert!((at(mib) / lin_at(mib) - 1.0).abs() < 0.02, "{mib}");
        }
        assert!(log_vector(&example(64))[LOG_USED..]
            .iter()
            .all(|x| *x == 0.0));
        assert_eq!(log_vector(&example(64))[LOG_USED - 1], 1.0);
    }

    #[test]
    fn a_known_load_stretches_resident_memory() {
        let mut f = example(512);
        f.load = MachineLoad {
            load1: Some(4.0),
            procs_running: Some(5),
            cpus: Some(2),
            cpu_busy: Some(0.9),
            cpu_pressure: Some(0.25),
        };
        let v = vector(&f);
        assert_eq!(v[LOAD_FIRST..], [2.0, 1.0, 1.0, 0.125, 0.0]);
        f.load.cpu_pressure = None;
        assert_eq!(vector(&f)[LOAD_FIRST + 3], 0.0);
    }

    #[test]
    fn since_checkpoint_is_the_age_for_a_first_dump() {
        let mut f = example(64);
        assert_eq!(f.since_checkpoint_s(), 10.0);
        f.since_last_s = Some(2.5);
        assert_eq!(f.since_checkpoint_s(), 2.5);
    }

    #[test]
    fn prior_predicts_the_measured_dumps() {
        // The prior's own answer: 64 MiB near 0.1-0.4 s, 1 GiB near 3-4 s.
        let p = prior(&PredictorConfig::default());
        let at = |mib| -> f64 {
            let v = vector(&example(mib));
            v.iter().zip(&p.mean).map(|(a, b)| a * b).sum()
        };
        assert!((0.1..0.4).contains(&at(64)), "{}", at(64));
        assert!((3.0..4.0).contains(&at(1024)), "{}", at(1024));
        assert!(p.lambda.iter().all(|l| l.is_finite() && *l > 0.0));
    }
}
