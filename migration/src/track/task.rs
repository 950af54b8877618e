//! A task's processes, each with its own tracker: the root and every descendant, found again
//! each round (a process that forked since is new, and its pages are all reported).

use std::collections::{BTreeMap, HashMap};

use super::process::{ProcessTracker, Round, Scope};
use super::TrackError;

/// The trackers of a process tree.
#[derive(Debug)]
pub struct TaskTracker {
    root: i32,
    scope: Scope,
    procs: BTreeMap<i32, ProcessTracker>,
}

impl TaskTracker {
    /// Starts tracking `root` and its descendants.
    pub fn attach(root: i32, scope: Scope) -> Result<Self, TrackError> {
        let mut me = TaskTracker {
            root,
            scope,
            procs: BTreeMap::new(),
        };
        me.refresh()?;
        Ok(me)
    }

    /// The pids tracked now, root first.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.procs.keys().copied().collect();
        pids.sort_by_key(|&p| (p != self.root, p));
        pids
    }

    /// One round over every process of the tree (see [`ProcessTracker::round`]); processes
    /// that ended are dropped, new ones attached and reported whole.
    pub fn round(&mut self) -> Result<Vec<(i32, Round)>, TrackError> {
        self.refresh()?;
        let mut out = Vec::with_capacity(self.procs.len());
        let mut ended = Vec::new();
        for (&pid, tracker) in self.procs.iter_mut() {
            match tracker.round() {
                Ok(round) => out.push((pid, round)),
                // It exited between the listing and its round.
                Err(TrackError::Process(_, _, e)) if !alive(pid) => {
                    tracing::debug!(pid, "process ended during its round: {e}");
                    ended.push(pid);
                }
                Err(e) => return Err(e),
            }
        }
        for pid in ended {
            self.procs.remove(&pid);
        }
        Ok(out)
    }

    /// The tracker of process `pid`, to read its pages.
    pub fn process(&self, pid: i32) -> Option<&ProcessTracker> {
        self.procs.get(&pid)
    }

    fn refresh(&mut self) -> Result<(), TrackError> {
        let now = descendants(self.root)?;
        self.procs.retain(|pid, _| now.contains(pid));
        for pid in now {
            if !self.procs.contains_key(&pid) {
                match ProcessTracker::attach(pid, self.scope) {
                    Ok(t) => {
                        self.procs.insert(pid, t);
                    }
                    Err(_) if pid != self.root && !alive(pid) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `root` and every process descended from it, from each process's parent in `/proc/*/stat`.
pub fn descendants(root: i32) -> Result<Vec<i32>, TrackError> {
    if !alive(root) {
        return Err(TrackError::Process(
            root,
            "listing its processes",
            std::io::Error::from_raw_os_error(libc::ESRCH),
        ));
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let dir =
        std::fs::read_dir("/proc").map_err(|e| TrackError::Process(root, "listing /proc", e))?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // Gone since the listing: skipped.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(ppid) = parent(&stat) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids.iter().copied());
        }
        i += 1;
    }
    Ok(out)
}

/// The parent pid in a `/proc/PID/stat` line (the 4th field; the 2nd, the command name in
/// parentheses, may itself hold spaces and parentheses, so parse after its last `)`).
fn parent(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The pid process `pid` has in its own (innermost) PID namespace: the one CRIU's images use.
pub fn namespace_pid(pid: i32) -> Result<i32, TrackError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| TrackError::Process(pid, "reading /proc/PID/status", e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            TrackError::Process(
                pid,
                "reading NSpid",
                std::io::Error::other("no NSpid line in /proc/PID/status"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_is_read_after_the_command_name() {
        assert_eq!(parent("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parent("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent("garbage"), None);
    }

    #[test]
    fn this_process_is_its_own_first_descendant() {
        let me = std::process::id() as i32;
        let tree = descendants(me).unwrap();
        assert_eq!(tree[0], me);
        assert_eq!(namespace_pid(me).map(|p| p > 0).ok(), Some(true));
    }
}
