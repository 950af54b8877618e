//! Docker-engine tasks that a live migration restored as runc containers Docker does not know
//! (docs/criu.md, "brume's Docker tasks"). Docker 20.10 cannot take a checkpoint back without
//! experimental mode, so `brume_migration::checkpointer::RuncRestore` restores the container
//! under a runc root of brume's own, from a bundle laid out around the image's rootfs. The
//! Docker engine then answers `state`, `logs`, `stop`, `remove` and `list` for it through runc:
//! state and pid from `runc state`, output from the file the restore gave it, stop as `runc
//! kill` TERM then KILL, remove as `runc delete -f` and its bundle and cgroup removed.
//!
//! Names: two nodes on one host share the runc root, so each container, bundle and cgroup
//! carries the instance name (which names the node) and a random suffix.
//!
//! A restored container outlives a restart of its node: its output is drained by a process of
//! its own (`brume_migration::checkpointer`), and what the engine knows of it is written beside
//! its bundle (`brume-task.json`, [`RuncTask::save`]), so the restarted node takes it back
//! ([`RuncTask::saved`], `DockerEngine::readopt`) instead of starting a second copy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brume_migration::checkpointer::RuncRestore;

use super::ready::tail_lines;
use super::types::{TaskState, TaskStatus, TaskSummary};

/// Where brume keeps its runc state and bundles (tmpfs: they do not outlive the host's boot,
/// and neither do the containers).
pub const RUNC_HOME: &str = "/run/brume-runc";

/// The file beside a restored container's bundle that records it.
const TASK_FILE: &str = "brume-task.json";

/// One restored container and what to clean up with it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RuncTask {
    pub restore: RuncRestore,
    /// Its cgroup path (as in the bundle's `cgroupsPath`), removed with it.
    pub cgroup: String,
    /// The instance it is, for `list` (its `state` field is not used).
    pub summary: TaskSummary,
}

impl RuncTask {
    /// A fresh runc container id, bundle directory and cgroup for instance `summary.name`.
    pub fn new(summary: TaskSummary, tag: &str) -> RuncTask {
        let suffix = format!("{tag}-{:08x}", rand::random::<u32>());
        let id = format!("{}-{suffix}", summary.name);
        RuncTask {
            restore: RuncRestore {
                runc: PathBuf::from("runc"),
                root: Path::new(RUNC_HOME).join("root"),
                id: id.clone(),
                bundle: Path::new(RUNC_HOME).join("bundles").join(&id),
            },
            cgroup: format!("/brume-runc/{id}"),
            summary,
        }
    }

    /// Its bundle directory.
    pub fn bundle(&self) -> &Path {
        &self.restore.bundle
    }

    /// Records this container in its bundle directory (written whole, then renamed), so that a
    /// restarted node finds it.
    pub fn save(&self) -> std::io::Result<()> {
        let path = self.restore.bundle.join(TASK_FILE);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    }

    /// Every restored container recorded under `home`'s bundles (normally [`RUNC_HOME`]); an
    /// unreadable record is skipped.
    pub fn saved(home: &Path) -> Vec<RuncTask> {
        let Ok(dirs) = std::fs::read_dir(home.join("bundles")) else {
            return Vec::new();
        };
        dirs.flatten()
            .filter_map(|d| std::fs::read(d.path().join(TASK_FILE)).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect()
    }

    /// `runc state`: running (with its pid), stopped (exited, code unknown), or missing.
    pub fn status(&self) -> TaskStatus {
        let out = Command::new(&self.restore.runc)
            .arg("--root")
            .arg(&self.restore.root)
            .arg("state")
            .arg(&self.restore.id)
            .stdin(Stdio::null())
            .output();
        let Ok(out) = out else {
            return TaskStatus::MISSING;
        };
        if !out.status.success() {
            return TaskStatus::MISSING;
        }
        let Ok(state) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return TaskStatus::MISSING;
        };
        let pid = state
            .get("pid")
            .and_then(|p| p.as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        let task_state = match state.get("status").and_then(|s| s.as_str()) {
            Some("running") | Some("paused") => TaskState::Running,
            Some("created") => TaskState::Created,
            // runc does not keep the exit code of a container it did not start.
            _ => TaskState::Exited { code: -1 },
        };
        TaskStatus {
            state: task_state,
            restarts: 0,
            pid: if task_state == TaskState::Running {
                pid
            } else {
                None
            },
        }
    }

    /// The last `n` lines of its stdout and stderr (after the restore).
    pub fn logs(&self, n: usize) -> String {
        let text = std::fs::read(self.restore.output()).unwrap_or_default();
        tail_lines(&String::from_utf8_lossy(&text), n)
    }

    fn runc(&self, args: &[&str]) {
        let _ = Command::new(&self.restore.runc)
            .arg("--root")
            .arg(&self.restore.root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM, then SIGKILL after `grace` (bounded wait in between).
    pub async fn stop(&self, grace: Duration) {
        if self.status().state != TaskState::Running {
            return;
        }
        self.runc(&["kill", &self.restore.id, "TERM"]);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if self.status().state != TaskState::Running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.runc(&["kill", &self.restore.id, "KILL"]);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until && self.status().state == TaskState::Running {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills and deletes the container, then removes its bundle and cgroup (best effort).
    pub fn remove(&self) {
        self.restore.remove();
        let _ = std::fs::remove_dir_all(&self.restore.bundle);
        remove_cgroup(&self.cgroup);
    }
}

/// Removes `cgroup` (a path as in `cgroupsPath`) from every v1 controller, or the v2 tree.
pub fn remove_cgroup(cgroup: &str) {
    let rel = cgroup.trim_start_matches('/');
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in controllers.flatten() {
            let _ = std::fs::remove_dir(c.path().join(rel));
        }
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(rel));
}
