//! Finding a deployed task's processes on this machine by the environment brume gave them
//! (`BRUME_SERVICE`, `BRUME_TASK`): the tests' way to count copies of a task, wherever its
//! node runs it (every node of a test shares the machine's process table).

/// The pids of the live processes on this machine (not zombies, not the `unshare` the process
/// engine once started a task through) whose environment holds every `NAME=value` of `vars`.
/// A zombie is not counted: a copy killed by a fence may linger as one until reaped.
pub fn processes_with_env(vars: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let have: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !zombie && comm.trim() != "unshare" && vars.iter().all(|w| have.iter().any(|h| h == w)) {
            out.push(pid);
        }
    }
    out
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
