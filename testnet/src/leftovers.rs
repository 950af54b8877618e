//! What a `brume node` daemon leaves in tmpfs and the temp dir, removed when a test network
//! ends.
//!
//! Why: a node keeps the work of a live move that failed (CRIU's logs, a lost task's final
//! images) in `/dev/shm` by design, named `brume-{live-in,live-out,checkpoint,restore-in}-<its
//! pid>-*`, so the move's error can name them. The test networks' failure tests make such
//! moves on purpose, and without this every suite run would leave them behind. Only the files
//! of the daemon pids given are touched.

use std::path::PathBuf;

/// The name prefixes of daemon `pid`'s work files.
fn prefixes(pid: u32) -> [String; 4] {
    [
        format!("brume-live-in-{pid}-"),
        format!("brume-live-out-{pid}-"),
        format!("brume-checkpoint-{pid}-"),
        format!("brume-restore-in-{pid}-"),
    ]
}

/// The work files and directories of daemon `pid` in /dev/shm and the temp dir.
pub(crate) fn daemon_work(pid: u32) -> Vec<PathBuf> {
    let prefixes = prefixes(pid);
    let mut found = Vec::new();
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                found.push(e.path());
            }
        }
    }
    found
}

/// Removes the live-migration and periodic-checkpoint work files of daemon `pid` in /dev/shm
/// and the temp dir. Call it while the daemon still runs (its pid cannot be another's yet).
pub fn remove_daemon_work(pid: u32) {
    remove(daemon_work(pid));
}

/// Removes these files and directories (trees), whatever is left of them.
pub(crate) fn remove(paths: Vec<PathBuf>) {
    for path in paths {
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_given_daemons_work_goes() {
        // Pids no process has here (above the default pid_max), so no daemon's files are hit.
        let (gone, kept) = (4_194_401u32, 4_194_402u32);
        let tmp = std::env::temp_dir();
        let files = [
            tmp.join(format!("brume-live-in-{gone}-0a1b.lazy-pages.log")),
            tmp.join(format!("brume-restore-in-{gone}-0a1b.restore.log")),
            tmp.join(format!("brume-live-in-{kept}-0a1b.lazy-pages.log")),
            tmp.join(format!("brume-live-in-{gone}0-0a1b.log")),
        ];
        let dir = tmp.join(format!("brume-live-out-{gone}-0a1b"));
        std::fs::create_dir_all(dir.join("images")).unwrap();
        for f in &files {
            std::fs::write(f, b"log").unwrap();
        }
        remove_daemon_work(gone);
        assert!(!files[0].exists() && !files[1].exists() && !dir.exists());
        assert!(files[2].exists(), "another daemon's file stays");
        assert!(
            files[3].exists(),
            "a pid with {gone} as a prefix is another pid"
        );
        for f in &files[2..] {
            std::fs::remove_file(f).unwrap();
        }
    }
}
