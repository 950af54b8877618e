//! Who reads a checkpointable task's output. Its stdout and stderr are a pipe (CRIU hands a
//! pipe back at restore; a file outside the task's mounts fails the next dump), and a pipe
//! whose reader is gone ends the task with SIGPIPE at its next line. So the reader is not a
//! thread of the node, which may restart or die while the task runs on, but a `cat` of the
//! task's own, detached from the node, appending to the task's log until the last writer
//! closes the pipe.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts a `cat` that appends what comes through `reader` to `log` until every write end is
/// closed, detached from this process (reparented to init once its shell exits, in its own
/// process group): it outlives the node. Returns its pid.
pub fn spawn(reader: io::PipeReader, log: &Path) -> io::Result<u32> {
    // A background command's stdin is /dev/null unless redirected: the pipe goes in as fd 3.
    let out = Command::new("sh")
        .arg("-c")
        .arg("exec 3<&0; cat <&3 3<&- >>\"$1\" & echo $!")
        .arg("sh")
        .arg(log)
        .stdin(reader)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| io::Error::other("the drain's shell did not name its cat"))
}

/// Waits (at most `bound`) until process `pid` is gone.
pub fn wait_gone(pid: u32, bound: Duration) {
    let until = Instant::now() + bound;
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether some process holds the read end of the pipe that is `pid`'s stdout (a drain left
/// by an earlier run of the node), read from `/proc/*/fd` and their `fdinfo` flags.
pub fn stdout_is_read(pid: u32) -> bool {
    let Ok(target) = std::fs::read_link(format!("/proc/{pid}/fd/1")) else {
        return false;
    };
    if !target.to_string_lossy().starts_with("pipe:[") {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        if p.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).ok().as_ref() != Some(&target) {
                continue;
            }
            let info = p.path().join("fdinfo").join(fd.file_name());
            let flags = std::fs::read_to_string(info).unwrap_or_default();
            let read_only = flags
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .is_some_and(|f| f & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32);
            if read_only {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_drain_outlives_its_starter_and_copies_until_the_writers_close() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = dir.path().join("task.log");
        let (r, mut w) = io::pipe().expect("a pipe");
        let cat = spawn(r, &log).expect("the drain starts");
        // The drain is not this process's child: its shell exited, it was reparented.
        let stat = std::fs::read_to_string(format!("/proc/{cat}/stat")).expect("it runs");
        let ppid: u32 = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .expect("a ppid");
        assert_ne!(ppid, std::process::id());
        w.write_all(b"one line\n").expect("write");
        drop(w);
        wait_gone(cat, Duration::from_secs(30));
        assert!(
            !Path::new(&format!("/proc/{cat}")).exists(),
            "the drain ended"
        );
        assert_eq!(
            std::fs::read_to_string(&log).expect("the log"),
            "one line\n"
        );
    }
}
