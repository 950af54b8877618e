//! The dirty-page tracker against real processes (`brume_migration::track`): a copy kept up to
//! date from its rounds must equal the frozen task's memory, page for page, whatever the task
//! did meanwhile (threads writing, mappings made, moved and unmapped, pages dropped, the kernel
//! writing, forks); and injecting the userfaultfd must leave a task blocked in a system call
//! exactly as it was.
//!
//! Needs root (ptrace with `PTRACE_O_SUSPEND_SECCOMP`, `pidfd_getfd`) and a kernel with
//! userfaultfd async write-protect and `PAGEMAP_SCAN` (Linux >= 6.7): a missing one is a skip,
//! a failure under `BRUME_REQUIRE` (`tracking`, `root`). The workload is
//! examples/dirtier/src/bin/scribbler.rs, built by scripts/build-static.sh.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::mpsc;

use brume_migration::track::{
    self, maps, memory, Method, ProcessTracker, Region, Scope, TaskTracker, Why,
};
use brume_testnet::require::{self, Need};
use common::{static_binary, wait_for, workload_command, LIVENESS};

const PAGE: usize = 4096;

/// Whether this test can run here; records the skip (or fails, under BRUME_REQUIRE) if not.
fn can_track(test: &str) -> bool {
    if !require::root(test) {
        return false;
    }
    let support = track::probe();
    if support.method != Method::Tracked {
        require::missing(test, Need::Tracking, &support.why);
        return false;
    }
    true
}

/// Makes `cmd`'s child get SIGKILL when the test ends, however it ends (a runner's kill
/// included): a workload must not outlive its test.
fn die_with_parent(cmd: &mut std::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The scribbler, in its own process group (its forked children too), killed on drop.
struct Scribbler {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Scribbler {
    fn run(mib: usize) -> Scribbler {
        let mut cmd = workload_command(static_binary("scribbler"));
        cmd.args(["run", &mib.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("start the scribbler");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Scribbler {
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Has the scribbler run one epoch and waits until it did (it prints a line), so every
    /// round of the test sees a task that changed its memory since the last.
    fn next_epoch(&mut self) -> String {
        self.stdin.write_all(b"e").expect("ask for an epoch");
        self.stdin.flush().expect("ask for an epoch");
        self.lines
            .recv_timeout(LIVENESS)
            .unwrap_or_else(|e| panic!("the scribbler printed no epoch line: {e}"))
    }

    /// Stops the whole group and waits until every thread of every process is stopped.
    fn freeze(&self) {
        // SAFETY: signals our own child's process group.
        assert_eq!(unsafe { libc::kill(-self.pid(), libc::SIGSTOP) }, 0);
        wait_for("every thread of the scribbler stopped", LIVENESS, || {
            for pid in track::task::descendants(self.pid()).map_err(|e| e.to_string())? {
                let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map_err(|e| format!("{pid}: {e}"))?;
                for t in tasks.flatten() {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    let state = stat
                        .rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().next());
                    if state != Some("T") {
                        return Err(format!("thread {:?} of {pid} is {state:?}", t.file_name()));
                    }
                }
            }
            Ok(())
        });
    }
}

impl Drop for Scribbler {
    fn drop(&mut self) {
        // SAFETY: kills our own child's process group (the scribbler and its forks).
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The copy a migration would keep: each page's bytes as last read, per process.
#[derive(Default)]
struct Replica {
    pages: HashMap<(i32, u64), Box<[u8]>>,
}

impl Replica {
    /// Reads what a round reported and stores it; returns the pages stored.
    fn apply(&mut self, tracker: &TaskTracker, rounds: &[(i32, track::Round)]) -> usize {
        let mut stored = 0;
        for (pid, round) in rounds {
            let process = tracker.process(*pid).expect("a tracked process");
            let (read, data) = process
                .read(&round.regions)
                .expect("read the reported pages");
            let mut at = 0;
            for r in &read {
                let mut addr = r.start;
                while addr < r.end {
                    self.pages.insert(
                        (*pid, addr),
                        data[at..at + PAGE].to_vec().into_boxed_slice(),
                    );
                    addr += PAGE as u64;
                    at += PAGE;
                    stored += 1;
                }
            }
        }
        stored
    }
}

#[test]
fn a_copy_kept_by_rounds_equals_the_frozen_memory() {
    if !can_track("a_copy_kept_by_rounds_equals_the_frozen_memory") {
        return;
    }
    let mut task = Scribbler::run(64);
    task.next_epoch();
    let mut tracker = TaskTracker::attach(task.pid(), Scope::Anonymous).expect("attach");
    let mut replica = Replica::default();
    let mut per_round: Vec<(u64, u64, u64)> = Vec::new();
    for _ in 0..12 {
        task.next_epoch();
        let rounds = tracker.round().expect("a round");
        replica.apply(&tracker, &rounds);
        let sum = |why| rounds.iter().map(|(_, r)| r.pages(why)).sum::<u64>();
        per_round.push((sum(Why::New), sum(Why::Written), sum(Why::Untracked)));
    }
    task.freeze();
    let rounds = tracker.round().expect("the frozen round");
    replica.apply(&tracker, &rounds);
    let pids = tracker.pids();
    // A frozen task writes nothing: the scans re-armed what they reported.
    let again = tracker.round().expect("a second frozen round");
    let reported: Vec<_> = again
        .iter()
        .filter(|(_, r)| !r.regions.is_empty())
        .collect();
    assert!(
        reported.is_empty(),
        "pages reported while frozen: {reported:?}"
    );

    // Every page of every anonymous mapping of every process, read now, against the copy
    // (a page never reported is one never touched: zeros).
    let zero = vec![0u8; PAGE];
    let (mut checked, mut mismatched) = (0usize, Vec::new());
    for &pid in &pids {
        let regions: Vec<Region> = maps::read(pid)
            .expect("maps")
            .into_iter()
            .filter(|m| m.class() != maps::Class::Skipped && m.anonymous())
            .map(|m| Region {
                start: m.start,
                end: m.end,
                why: Why::New,
            })
            .collect();
        let (read, data) = memory::read_regions(pid, &regions).expect("read the frozen task");
        let mut at = 0;
        for r in &read {
            let mut addr = r.start;
            while addr < r.end {
                let now = &data[at..at + PAGE];
                let copy = replica
                    .pages
                    .get(&(pid, addr))
                    .map(|p| &p[..])
                    .unwrap_or(&zero);
                if now != copy && mismatched.len() < 10 {
                    mismatched.push(format!("pid {pid} page {addr:#x}"));
                }
                checked += 1;
                addr += PAGE as u64;
                at += PAGE;
            }
        }
    }
    eprintln!(
        "processes {pids:?}; pages per round (new, written, untracked): {per_round:?}; \
         checked {checked} pages of the frozen task"
    );
    assert!(
        mismatched.is_empty(),
        "pages whose copy differs: {mismatched:?}"
    );
    assert!(checked >= 64 * 256, "only {checked} pages checked");
    // Tracking, not copying everything each round: later rounds report written pages, far
    // fewer than the first round's whole copy, and the new mappings the task makes.
    let first = per_round[0].0 + per_round[0].1;
    assert!(
        first >= 64 * 256 / 2,
        "the first round copied only {first} pages"
    );
    let later = &per_round[1..];
    assert!(
        later.iter().any(|r| r.1 > 0),
        "no round reported a written page: {per_round:?}"
    );
    assert!(
        later.iter().any(|r| r.0 > 0),
        "no round saw a new mapping: {per_round:?}"
    );
    assert!(
        pids.len() > 1,
        "the scribbler's forks were not tracked: {pids:?}"
    );
}

/// The descriptors of `pid`: number and what each points at.
fn fds(pid: i32) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list fds")
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), target)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn injecting_leaves_a_task_blocked_in_read_as_it_was() {
    if !can_track("injecting_leaves_a_task_blocked_in_read_as_it_was") {
        return;
    }
    let mut cmd = workload_command(static_binary("scribbler"));
    cmd.arg("echo").stdin(Stdio::piped()).stdout(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("start the echo");
    let pid = child.id() as i32;
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    writeln!(stdin, "one").unwrap();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "one\n");
    // Blocked in read(2) on stdin (system call 0): the injected calls interrupt it, and it
    // must restart as after any signal.
    wait_for("the echo blocked in read(2)", LIVENESS, || {
        let s =
            std::fs::read_to_string(format!("/proc/{pid}/syscall")).map_err(|e| e.to_string())?;
        if s.starts_with("0 ") {
            Ok(())
        } else {
            Err(s)
        }
    });
    let before = fds(pid);
    let mut tracker = ProcessTracker::attach(pid, Scope::All).expect("attach");
    let first = tracker.round().expect("first round");
    assert!(first.pages(Why::New) > 0, "the first round copied nothing");
    assert_eq!(
        fds(pid),
        before,
        "the injected userfaultfd was left in the task"
    );
    line.clear();
    writeln!(stdin, "two").unwrap();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "two\n", "the interrupted read did not resume");
    tracker.round().expect("a round after the task ran");
    drop(tracker);
    line.clear();
    writeln!(stdin, "three").unwrap();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "three\n");
    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(status.success(), "the echo ended with {status}");
}

#[test]
fn the_kernel_here_supports_tracking() {
    if !require::root("the_kernel_here_supports_tracking") {
        return;
    }
    let support = track::probe();
    if support.method != Method::Tracked {
        require::missing(
            "the_kernel_here_supports_tracking",
            Need::Tracking,
            &support.why,
        );
    }
}
