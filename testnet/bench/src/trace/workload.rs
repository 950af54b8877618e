//! A running brume-trace-workload (src/bin/trace_workload.rs) for one planned task, and the
//! guard that ends it: dropping a [`Workload`] kills its whole process group and reaps the
//! root, whatever path the trace takes out (an error, an interrupt); its processes also die
//! with brume-bench itself (`PR_SET_PDEATHSIG`), should that be killed outright.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::interrupt;
use super::plan::TaskPlan;

/// The workload binary: `brume-trace-workload` beside this program.
pub fn binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let exe = me.with_file_name("brume-trace-workload");
    anyhow::ensure!(
        exe.is_file(),
        "no brume-trace-workload beside {} (cargo build --release -p brume-bench builds both)",
        me.display()
    );
    Ok(exe)
}

/// One started workload.
pub struct Workload {
    child: Child,
    pub pid: i32,
    /// When it was started.
    pub started: Instant,
}

impl Workload {
    /// Starts the workload for `task` with `dir` as its directory (its files, its ready
    /// marks) and waits, at most `ready_within`, until every process has written its memory.
    pub fn start(
        exe: &Path,
        dir: &Path,
        task: &TaskPlan,
        ready_within: Duration,
    ) -> anyhow::Result<Workload> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // Its stderr goes to a file: a pipe to this process would be a peer outside the task
        // for CRIU to deal with.
        let stderr_path = dir.join("stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("create {}", stderr_path.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg(dir)
            .arg(task.mib.to_string())
            .arg(task.dirty_mib_s.to_string())
            .arg(task.threads.to_string())
            .arg(task.procs.to_string())
            .arg(task.files.to_string())
            .arg(task.sockets.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let pid = child.id() as i32;
        let mut w = Workload {
            child,
            pid,
            started,
        };
        let marks: Vec<PathBuf> = (0..task.procs)
            .map(|k| dir.join(format!("ready-{k}")))
            .collect();
        while !marks.iter().all(|m| m.exists()) {
            if let Some(status) = w.child.try_wait()? {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                bail!(
                    "the workload exited ({status}) before it was ready: {}",
                    err.trim()
                );
            }
            if started.elapsed() > ready_within {
                bail!(
                    "the workload ({} MiB) was not ready after {:?}",
                    task.mib,
                    ready_within
                );
            }
            interrupt::check()?;
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(w)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // The workload called setsid: its group is its pid, and holds its forked processes.
        // SAFETY: kill(2) has no memory effects.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
            libc::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
