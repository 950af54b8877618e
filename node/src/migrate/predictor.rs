//! What this node learned about its own CRIU dumps, kept in `<data_dir>/predictor.json`.
//!
//! Why: before a dump the node should know how long it will take (to freeze a task only when
//! its downtime fits, to start a move in time), and only its own dumps say that for its disk,
//! CPUs and load. Every dump of a live move on the process engine is one sample: the features
//! are read from `/proc` just before it ([`probe`]), the measured duration is learned after it
//! by every model of `brume_migration::predictor` (PB-MLR, with and without its conformal
//! margin, MLR, Bayes), and the node uses PB-MLR with the margin unless another model has
//! stayed within the late target over at least 20 dumps and lost less computation (seed 000's
//! measure, as `brume bench predictor` replays it; `predictor::choice`). Each dump is logged with the prediction of the model in use beside the
//! measured value. The planner's own dump and restore estimates are kept in the same file, so a
//! move starts from what the last one taught it rather than from the prior.
//!
//! The file is loaded once at start (a file that cannot be read is logged and the prior is
//! used: the node starts anyway) and written atomically after every move.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use brume_migration::predictor::choice::Guess;
use brume_migration::predictor::load::MachineLoad;
use brume_migration::predictor::store::{self, Models};
use brume_migration::predictor::{procfs, Features, Predictor, PredictorConfig};
use brume_migration::PAGE;
use tracing::{info, warn};

/// What a move costs besides its dumps and restore, a priori (not learned): preparing the
/// target (fetching and building the image), holding the callers, switching them. A drain's
/// margin covers what this misses.
pub const MOVE_OVERHEAD: Duration = Duration::from_secs(2);

/// The node's dump models behind a lock, with where they are kept.
#[derive(Debug)]
pub struct DumpModels {
    data_dir: PathBuf,
    models: Mutex<Models>,
    /// Why the stored state was refused at start, if it was.
    refused: Option<String>,
}

/// What `brume status` says about the models.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelsView {
    pub model: &'static str,
    pub dumps: u64,
    /// The features PB-MLR's last refit kept (seed 000's selection), intercept first.
    pub pbmlr_features: Vec<&'static str>,
    pub refused: Option<String>,
}

impl DumpModels {
    /// The models stored in `data_dir`, or the prior (a refused file is logged and left for
    /// the next save to replace).
    pub fn open(data_dir: &Path) -> Self {
        let (models, err) = store::load_or_prior(data_dir, &PredictorConfig::default());
        let refused = err.map(|e| e.to_string());
        match &refused {
            Some(why) => warn!("dump predictor: {why}"),
            None => info!(
                dumps = models.dumps(),
                model = models.winner(),
                "dump predictor loaded"
            ),
        }
        DumpModels {
            data_dir: data_dir.to_path_buf(),
            models: Mutex::new(models),
            refused,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Models> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the models say for `brume status`.
    pub fn view(&self) -> ModelsView {
        let m = self.lock();
        ModelsView {
            model: m.winner(),
            dumps: m.dumps(),
            pbmlr_features: m.pbmlr.active_names(),
            refused: self.refused.clone(),
        }
    }

    /// The planner's estimates to start a move from: the last move's, or the prior.
    pub fn planner(&self) -> Predictor {
        self.lock().planner.clone().unwrap_or_default()
    }

    /// The prediction of the model in use for a dump with these features.
    pub fn predict(&self, f: &Features) -> Guess {
        self.lock().predict(f)
    }

    /// The predicted duration of a move of the task under `pid` when it moves live with CRIU,
    /// or of a move that dumps nothing (`None`): [`MOVE_OVERHEAD`], plus for a live move two
    /// dumps by the model in use (a pre-copy round and the final dump: what the planner runs
    /// for a task that writes little) and the planner's upper bound of the restore.
    pub fn move_estimate(&self, pid: Option<u32>) -> Duration {
        let Some(pid) = pid else {
            return MOVE_OVERHEAD;
        };
        let f = probe(pid, None, procfs::cpu_jiffies());
        let dump = self.predict(&f).seconds;
        let planner = self.planner();
        let restore = planner.restore(f.rss_bytes).upper(planner.z());
        let dumps = if (2.0 * dump).is_finite() && dump > 0.0 {
            Duration::from_secs_f64((2.0 * dump).min(1e6))
        } else {
            Duration::ZERO
        };
        MOVE_OVERHEAD + dumps + restore
    }

    /// Learns the dumps of one move of `task` (features read before each, measured duration),
    /// logging each prediction beside its measured value, keeps the planner's estimates if the
    /// move gave them, and saves.
    pub fn learn(&self, task: &str, dumps: &[(Features, Duration)], planner: Option<Predictor>) {
        let mut m = self.lock();
        for (i, (f, took)) in dumps.iter().enumerate() {
            let Some(l) = m.observe(f, took.as_secs_f64()) else {
                continue;
            };
            info!(
                task,
                dump = i + 1,
                model = l.used.model,
                predicted_ms = ms(l.used.seconds),
                measured_ms = ms(l.observed),
                late = l.late(),
                lost_s = l.lost,
                next_model = l.next,
                "dump duration: predicted beside measured"
            );
        }
        if let Some(p) = planner {
            m.planner = Some(p);
        }
        if let Err(e) = store::save(&self.data_dir, &m) {
            warn!(error = %e, "dump predictor: the learned state could not be saved");
        }
    }
}

fn ms(seconds: f64) -> u64 {
    (seconds * 1e3).round().max(0.0) as u64
}

/// Reads the features of the process tree under `pid` before a full dump (every resident page
/// is written: pre-copy without tracking), `since_last` after the previous dump of this move
/// began (`None` for the first), with the machine's load.
pub fn probe(pid: u32, since_last: Option<Instant>, busy_since: Option<(u64, u64)>) -> Features {
    let root = i32::try_from(pid).unwrap_or(i32::MAX);
    let look = procfs::look_tree(root);
    let load: MachineLoad = procfs::machine_load(busy_since);
    let count = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Features {
        rss_bytes: look.rss_bytes,
        dirty_pps: 0.0,
        written_pages: look.rss_bytes / PAGE,
        processes: count(look.processes),
        threads: count(look.threads),
        open_files: count(look.open_files),
        sockets: count(look.sockets),
        mappings: count(look.mappings),
        age_s: procfs::age_s(root).unwrap_or(0.0),
        since_last_s: since_last.map(|t| t.elapsed().as_secs_f64()),
        tracked: false,
        load,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("brume-{name}-"))
            .tempdir()
            .expect("a temp dir")
    }

    #[test]
    fn learned_dumps_are_saved_and_loaded_again() {
        let dir = temp("dump-models");
        let models = DumpModels::open(dir.path());
        assert_eq!(models.view().dumps, 0);
        let f = probe(std::process::id(), None, None);
        assert!(
            f.rss_bytes > 0 && f.processes >= 1 && f.threads >= 1,
            "{f:?}"
        );
        // The age has the resolution of /proc/uptime (10 ms): a test process that young reads 0.
        assert!(f.age_s >= 0.0 && f.age_s.is_finite(), "{f:?}");
        let mut planner = Predictor::default();
        planner.observe_restore(64 << 20, Duration::from_millis(80));
        models.learn(
            "t",
            &[
                (f, Duration::from_millis(120)),
                (f, Duration::from_millis(110)),
            ],
            Some(planner.clone()),
        );
        assert_eq!(models.view().dumps, 2);
        let again = DumpModels::open(dir.path());
        assert_eq!(again.view().dumps, 2, "the count survives a restart");
        assert_eq!(again.view().refused, None);
        // JSON floats come back to within the last digit.
        let (a, b) = (again.planner().restore(64 << 20), planner.restore(64 << 20));
        assert!((a.mean - b.mean).abs() < 1e-12 && (a.sd - b.sd).abs() < 1e-12);
        assert_ne!(
            again.planner(),
            Predictor::default(),
            "the planner's state came back"
        );
    }

    #[test]
    fn a_live_move_is_predicted_longer_than_the_overhead() {
        let dir = temp("dump-models-estimate");
        let models = DumpModels::open(dir.path());
        assert_eq!(models.move_estimate(None), MOVE_OVERHEAD);
        let live = models.move_estimate(Some(std::process::id()));
        assert!(live > MOVE_OVERHEAD, "{live:?}");
    }

    #[test]
    fn a_corrupt_file_is_refused_and_the_prior_used() {
        let dir = temp("dump-models-corrupt");
        std::fs::write(dir.path().join(store::FILE), b"{\"version\": 2, \"pbm").unwrap();
        let models = DumpModels::open(dir.path());
        let v = models.view();
        assert_eq!(v.dumps, 0);
        assert_eq!(v.model, "pbmlr+conformal");
        assert!(
            v.refused.as_deref().is_some_and(|r| r.contains("corrupt")),
            "{v:?}"
        );
        assert_eq!(models.planner(), Predictor::default());
    }
}
