//! Programs started as the init of a PID namespace of their own (`unshare --pid --fork --`).
//!
//! Why: CRIU restores PIDs, so a task restored on the host it was dumped on needs its old PID
//! free, unless it is the init of its own PID namespace, which CRIU restores as a new namespace.
//! Post-copy restores while the frozen original still exists, so the migration tests and
//! `brume bench migration` start their workloads this way. The program's host PID (the one to
//! dump) is then `unshare`'s only child.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `unshare --pid --fork -- <program>`: configure arguments and stdio on it, then [`spawn`].
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--"]).arg(program);
    cmd
}

/// Spawns `cmd` (made by [`command`]) and returns the `unshare` child, which exits when the
/// program does, and the program's host PID.
pub fn spawn(cmd: &mut Command) -> std::io::Result<(Child, u32)> {
    let mut child = cmd.spawn()?;
    let unshare = child.id();
    let children = format!("/proc/{unshare}/task/{unshare}/children");
    let started = Instant::now();
    loop {
        let found = std::fs::read_to_string(&children)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok());
        if let Some(pid) = found {
            return Ok((child, pid));
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("unshare started no program in 10 s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_pid_1_of_its_namespace_and_unshares_child() {
        if !crate::require::root("pidns::the_program_is_pid_1_of_its_namespace_and_unshares_child")
        {
            return;
        }
        // The program only has to outlive the reading of its status: a long sleep, killed by
        // the guard (a panic too), so no load makes it exit before it is read.
        struct Kill(Child, u32);
        impl Drop for Kill {
            fn drop(&mut self) {
                // SAFETY: kill(2) has no memory effects.
                unsafe {
                    libc::kill(self.1 as i32, libc::SIGKILL);
                }
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut cmd = command("sleep");
        cmd.arg("600");
        let (child, pid) = spawn(&mut cmd).expect("spawn");
        let _guard = Kill(child, pid);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let nspid = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .expect("NSpid");
        assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    }
}
