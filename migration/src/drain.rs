//! Who reads a checkpointable task's output. Its stdout and stderr are a pipe (CRIU hands a
//! pipe back at restore; a file outside the task's mounts fails the next dump), and a pipe
//! whose reader is gone ends the task with SIGPIPE at its next line. So the reader is not a
//! thread of the node, which may restart or die while the task runs on, but a `cat` of the
//! task's own, detached from the node, appending to the task's log until the last writer
//! closes the pipe. Where `sh` or `cat` is missing (a `FROM scratch` node image without them),
//! or the drain cannot be started, a thread of this process reads instead, as before: the task
//! then depends on the node for its output again, and a warning says so.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Who reads a task's output pipe.
pub enum Drain {
    /// A `cat` of its own (its pid), outliving this process.
    Process(u32),
    /// A thread of this process (the fallback).
    Thread(JoinHandle<()>),
}

impl Drain {
    /// Waits (at most `bound` for a process) until the drain has copied everything and ended:
    /// once every write end is closed.
    pub fn wait(self, bound: Duration) {
        match self {
            Drain::Process(pid) => wait_gone(pid, bound),
            Drain::Thread(t) => {
                let _ = t.join();
            }
        }
    }
}

/// Whether `program` is an executable file in one of `PATH`'s directories.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Drains `reader` into `log` (appending): by a detached `cat` ([`spawn`]) where it can, else
/// by a thread of this process.
pub fn start(reader: io::PipeReader, log: &Path) -> io::Result<Drain> {
    start_in(reader, log, on_path("sh") && on_path("cat"))
}

/// [`start`], with a detached drain tried only when `detached`.
fn start_in(reader: io::PipeReader, log: &Path, detached: bool) -> io::Result<Drain> {
    let spare = reader.try_clone()?;
    if detached {
        match spawn(reader, log) {
            Ok(pid) => return Ok(Drain::Process(pid)),
            Err(e) => tracing::warn!(log = %log.display(), error = %e,
                "cannot start a drain of the task's own; this node reads its output instead"),
        }
    } else {
        tracing::warn!(log = %log.display(),
            "no sh or cat on PATH: this node reads the task's output itself (the task then dies of SIGPIPE at its next line if the node is gone)");
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut spare = spare;
    let thread = std::thread::Builder::new()
        .name("brume-task-log".into())
        .spawn(move || {
            let _ = io::copy(&mut spare, &mut out);
        })?;
    Ok(Drain::Thread(thread))
}

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
    fn without_sh_or_cat_a_thread_drains() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = dir.path().join("task.log");
        let (r, mut w) = io::pipe().expect("a pipe");
        let drain = start_in(r, &log, false).expect("the drain starts");
        assert!(matches!(drain, Drain::Thread(_)));
        w.write_all(b"by a thread\n").expect("write");
        drop(w);
        drain.wait(Duration::from_secs(30));
        assert_eq!(
            std::fs::read_to_string(&log).expect("the log"),
            "by a thread\n"
        );
    }

    #[test]
    fn a_missing_program_is_not_on_path() {
        assert!(on_path("sh"), "sh is on this machine's PATH");
        assert!(!on_path("no-such-program-brume-drain"));
    }

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
