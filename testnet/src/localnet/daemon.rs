//! One `brume node` child of a [`super::LocalNet`], and the work it left in tmpfs.
//!
//! Why: a daemon that dies (a test's SIGKILL, a fault that makes it exit mid-move) leaves its
//! live-migration work in /dev/shm, named by its pid (see [`crate::leftovers`]). Those names
//! can be read safely only until the child is reaped: until then its pid is a zombie's and no
//! other process can hold it. So the one place that reaps a daemon also takes the names of
//! what it left, and the net removes them when it ends (a restarted node may still read them
//! before that).

use std::path::PathBuf;
use std::process::{Child, ExitStatus};

pub(super) struct Daemon {
    child: Child,
    /// Set by the reap that saw the child exit.
    exited: Option<ExitStatus>,
    /// The work files it left, named at that reap.
    left: Vec<PathBuf>,
}

impl Daemon {
    pub(super) fn new(child: Child) -> Daemon {
        Daemon {
            child,
            exited: None,
            left: Vec::new(),
        }
    }

    pub(super) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (reaping it then, once).
    pub(super) fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped(status);
            }
        }
        self.exited
    }

    /// Sends SIGKILL (if it still runs) and reaps it.
    pub(super) fn kill(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.reaped(status);
        Ok(status)
    }

    /// Sends SIGTERM if it has not exited (reaped children are never signalled: their pid may
    /// be another's).
    pub(super) fn terminate(&mut self) {
        if self.try_wait().is_none() {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill(2) on our own unreaped child's pid has no memory-safety
                // preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.exited = Some(status);
        self.left = crate::leftovers::daemon_work(self.child.id());
    }

    /// Kills it if it still runs, and hands over the work it left, for the net to remove.
    pub(super) fn retire(mut self) -> Vec<PathBuf> {
        let _ = self.kill();
        std::mem::take(&mut self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// What a child left is named at its reap, so a later process given the same pid (made up
    /// here by writing under that pid after the reap) keeps its files.
    #[test]
    fn the_work_named_is_what_the_child_left_before_its_reap() {
        let child = Command::new("sh")
            .args(["-c", "read _"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let tmp = std::env::temp_dir();
        let before = tmp.join(format!("brume-live-in-{pid}-d1e2"));
        std::fs::create_dir_all(&before).unwrap();
        let mut daemon = Daemon::new(child);
        assert!(daemon.try_wait().is_none(), "it waits for its stdin");
        drop(daemon.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        while daemon.try_wait().is_none() {
            assert!(Instant::now() < deadline, "sh did not exit at end of input");
            std::thread::sleep(Duration::from_millis(10));
        }
        let after = tmp.join(format!("brume-live-out-{pid}-d1e2"));
        std::fs::create_dir_all(&after).unwrap();
        let left = daemon.retire();
        assert_eq!(left, vec![before.clone()]);
        std::fs::remove_dir(&before).unwrap();
        std::fs::remove_dir(&after).unwrap();
    }
}
