//! Finding a deployed task's processes on this machine by the environment brume gave them
//! (`BRUME_SERVICE`, `BRUME_TASK`): the tests' way to count copies of a task, wherever its
//! node runs it (every node of a test shares the machine's process table).

/// The pids of the live processes on this machine (not zombies, not the `unshare` the process
/// engine once started a task through) whose environment holds every `NAME=value` of `vars`.
/// A zombie is not counted: a copy killed by a fence may linger as one until reaped.
pub fn processes_with_env(vars: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for (pid, dir) in live_processes() {
        let Ok(env) = std::fs::read(dir.join("environ")) else {
            continue;
        };
        let have: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "unshare" && vars.iter().all(|w| have.iter().any(|h| h == w)) {
            out.push(pid);
        }
    }
    out
}

/// Every process on this machine that is not a zombie, with its `/proc/<pid>` directory (a
/// process whose `stat` cannot be read counts as live: it may have just exited).
pub fn live_processes() -> impl Iterator<Item = (u32, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flat_map(|entries| entries.flatten())
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let dir = entry.path();
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (!zombie).then_some((pid, dir))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_by_its_own_environment_and_not_by_another() {
        let path = std::env::var("PATH").expect("a PATH");
        let mine = format!("PATH={path}");
        assert!(processes_with_env(&[&mine]).contains(&std::process::id()));
        assert!(
            !processes_with_env(&[&mine, "BRUME_NO_SUCH_VARIABLE=1"]).contains(&std::process::id())
        );
    }
}
