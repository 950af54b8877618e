//! A node's learned duration models, kept in data_dir across restarts.
//!
//! Why: the models learn from every real dump; losing that at a restart would send a node back
//! to its prior. The file is JSON (serde) written atomically: a temp file in the same
//! directory, synced, then renamed over the old one, so a crash leaves the old state or the new
//! one, never half of each. A file that cannot be read as this state (corrupt, truncated, from
//! another version) is refused with an error naming it, and the caller falls back to the prior
//! ([`load_or_prior`]) rather than trusting or silently discarding it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bayes::BayesModel;
use super::calibrated::Conformal;
use super::estimates::Predictor;
use super::mlr::{Mlr, WINDOW};
use super::pbmlr::{PbMlr, PbMlrConfig};
use super::PredictorConfig;

/// The file's name in data_dir.
pub const FILE: &str = "predictor.json";
/// The state's format version; another one is refused. 2: the feature vector gained the
/// machine-load terms (17 entries, was 12), so a version-1 state's coefficients do not fit.
pub const VERSION: u32 = 2;

/// The lost computation each model has cost over the dumps it predicted, seconds (kept with the
/// models; [`super::choice`] counts it and picks the winner by it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Real dumps observed.
    pub dumps: u64,
    pub pbmlr: f64,
    pub mlr: f64,
    pub bayes: f64,
    /// PB-MLR with its conformal margin; zero in a state written before it existed.
    #[serde(default)]
    pub conformal: f64,
    /// Late predictions of each model, counted since they were first kept.
    #[serde(default)]
    pub late: Lates,
}

/// How many of each model's predictions were late, over the last `dumps` dumps (those since
/// the node's state first kept them: a state written before reads as none counted).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lates {
    pub dumps: u64,
    pub conformal: u64,
    pub pbmlr: u64,
    pub mlr: u64,
    pub bayes: u64,
}

/// The online models of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Models {
    pub version: u32,
    pub pbmlr: PbMlr,
    /// The conformal margin on PB-MLR's answers ([`super::calibrated`]); empty (the prior's
    /// margin) in a state written before it existed.
    #[serde(default)]
    pub conformal: Conformal,
    pub mlr: Mlr,
    pub bayes: BayesModel,
    /// Each model's lost computation on the node's own dumps ([`super::choice`]); zero in a
    /// state written before it was kept.
    #[serde(default)]
    pub lost: Scores,
    /// The planner's dump and restore estimates as the node's last move left them, to start the
    /// next move's planner from (`None`: the prior).
    #[serde(default)]
    pub planner: Option<Predictor>,
}

impl Models {
    /// Every model at the config's prior.
    pub fn prior(cfg: &PredictorConfig) -> Self {
        Models {
            version: VERSION,
            pbmlr: PbMlr::new(cfg, PbMlrConfig::default()),
            conformal: Conformal::default(),
            mlr: Mlr::new(cfg, WINDOW),
            bayes: BayesModel::upper(cfg),
            lost: Scores::default(),
            planner: None,
        }
    }
}

/// Why the stored models could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("predictor state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("predictor state {path} is corrupt ({source}); starting from the prior")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("predictor state {path} has version {found}, this build reads {VERSION}; starting from the prior")]
    Version { path: PathBuf, found: u32 },
}

/// The file's path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The stored models, or `None` when there is no file yet.
pub fn load(data_dir: &Path) -> Result<Option<Models>, StoreError> {
    let path = path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let m: Models = serde_json::from_slice(&text).map_err(|source| StoreError::Corrupt {
        path: path.clone(),
        source,
    })?;
    if m.version != VERSION {
        return Err(StoreError::Version {
            path,
            found: m.version,
        });
    }
    Ok(Some(m))
}

/// The stored models, or the prior when there are none or they cannot be read (with the error,
/// for the caller to log).
pub fn load_or_prior(data_dir: &Path, cfg: &PredictorConfig) -> (Models, Option<StoreError>) {
    match load(data_dir) {
        Ok(Some(m)) => (m, None),
        Ok(None) => (Models::prior(cfg), None),
        Err(e) => (Models::prior(cfg), Some(e)),
    }
}

/// Writes the models atomically (temp file, sync, rename, sync the directory).
pub fn save(data_dir: &Path, models: &Models) -> Result<(), StoreError> {
    let path = path(data_dir);
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let json = serde_json::to_vec(models).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = data_dir.join(format!(".{FILE}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::features::tests::example;
    use crate::predictor::Model;

    #[test]
    fn models_survive_a_save_and_load() {
        let dir = crate::testing::temp_dir("predictor-store");
        let cfg = PredictorConfig::default();
        assert!(load(dir.path()).unwrap().is_none());
        let mut m = Models::prior(&cfg);
        for mib in [64, 128, 256] {
            let f = example(mib);
            m.pbmlr.observe(&f, mib as f64 / 300.0, 5.0);
            m.mlr.observe(&f, mib as f64 / 300.0, 5.0);
            m.bayes.observe(&f, mib as f64 / 300.0, 5.0);
        }
        save(dir.path(), &m).unwrap();
        save(dir.path(), &m).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        // JSON floats come back to within the last digit.
        let f = example(200);
        for (a, b) in [
            (back.pbmlr.predict(&f), m.pbmlr.predict(&f)),
            (back.mlr.predict(&f), m.mlr.predict(&f)),
            (back.bayes.predict(&f), m.bayes.predict(&f)),
        ] {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} != {b}");
        }
        assert_eq!(back.pbmlr.samples(), 3);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(FILE)],
            "no temp file left"
        );
    }

    #[test]
    fn a_corrupt_file_is_refused_and_the_prior_used() {
        let dir = crate::testing::temp_dir("predictor-corrupt");
        let cfg = PredictorConfig::default();
        std::fs::write(path(dir.path()), b"{\"version\":1,\"pbmlr\":").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(FILE) && msg.contains("corrupt"), "{msg}");
        let (m, err) = load_or_prior(dir.path(), &cfg);
        assert!(err.is_some());
        assert_eq!(m, Models::prior(&cfg));
        // Another version is refused too.
        let mut other = serde_json::to_value(Models::prior(&cfg)).unwrap();
        other["version"] = 99.into();
        std::fs::write(path(dir.path()), other.to_string()).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(StoreError::Version { found: 99, .. })
        ));
    }
}
