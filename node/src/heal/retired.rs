//! The host's side of a retirement: a copy removed from this node (the loser after a
//! partition heals, or a move's start undone) is not dropped silently. Before it is stopped
//! (SIGTERM, then SIGKILL after the deployer's grace), its last state is kept under
//! `<data dir>/retired/<service>.<task>.<replica>.g<generation>/`:
//!
//! * `spec.json`: the instance as it was deployed here (epoch, generation, owner, payload);
//! * `log`: the tail of its output;
//! * `checkpoint`: for a task with an app checkpoint, the state line it answers `CHECKPOINT`
//!   with (what a restore would start from).
//!
//! A CRIU-mode task is not dumped (a dump of a copy that lost is costly and rarely wanted);
//! its log and spec are kept and `criu` in the notes says so.

use std::path::{Path, PathBuf};

use brume_engine::{AnyEngine, Engine};
use brume_migration::app::{self as checkpoint, CHECKPOINT_TIMEOUT};

use crate::deploy::wire::{CheckpointMode, InstanceSpec};

/// How many lines of the output are kept.
pub const LOG_TAIL: usize = 2000;

/// Why the state of a retired copy could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The directory the copy `spec` is kept in, under `root` (`<data dir>/retired`).
pub fn dir_for(root: &Path, spec: &InstanceSpec) -> PathBuf {
    root.join(format!(
        "{}.{}.{}.{}",
        spec.id.service, spec.id.task, spec.id.replica, spec.generation
    ))
}

/// Keeps what can be kept of the running copy `name` (listening on `port`); returns the
/// directory. What cannot be read (a dead task's checkpoint, an engine without logs) is noted
/// in `notes` instead.
pub async fn keep(
    engine: &AnyEngine,
    root: &Path,
    spec: &InstanceSpec,
    name: &str,
    port: u16,
) -> Result<PathBuf, KeepError> {
    let dir = dir_for(root, spec);
    let write = |file: &str, bytes: &[u8]| {
        let path = dir.join(file);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, bytes))
            .map_err(|source| KeepError::Write { path, source })
    };
    let mut notes = String::new();
    match serde_json::to_vec_pretty(spec) {
        Ok(json) => write("spec.json", &json)?,
        Err(e) => notes.push_str(&format!("spec: {e}\n")),
    }
    match spec.checkpoint {
        CheckpointMode::App => match checkpoint::capture(port, CHECKPOINT_TIMEOUT).await {
            Ok(line) => write("checkpoint", line.as_bytes())?,
            Err(e) => notes.push_str(&format!("checkpoint: {e}\n")),
        },
        CheckpointMode::Criu => notes.push_str("criu: the process was not dumped\n"),
        CheckpointMode::None => {}
    }
    match engine.logs(name, LOG_TAIL).await {
        Ok(log) => write("log", log.as_bytes())?,
        Err(e) => notes.push_str(&format!("log: {e}\n")),
    }
    write("notes", notes.as_bytes())?;
    Ok(dir)
}
