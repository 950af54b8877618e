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
fn daemon_work(pid: u32) -> Vec<PathBuf> {
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
/// and the temp dir. Call it while the daemon still runs (its pid cannot be another's yet) or
/// right after it was reaped.
pub fn remove_daemon_work(pid: u32) {
    for path in daemon_work(pid) {
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Removes the *empty* work directories of daemon `pid` (`remove_dir` leaves any other): what
/// a daemon killed with SIGKILL could not remove itself (a move's staging directory it had
/// emptied). Its files stay: a restarted node may still need what they hold. Call it right
/// after the daemon was reaped: pids are handed out in turn, so its pid is not another's yet.
pub fn remove_empty_daemon_dirs(pid: u32) {
    for path in daemon_work(pid).into_iter().filter(|p| p.is_dir()) {
        let _ = std::fs::remove_dir(&path);
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

    #[test]
    fn a_killed_daemons_empty_dirs_go_and_its_work_stays() {
        let (gone, kept) = (4_194_403u32, 4_194_404u32);
        let tmp = std::env::temp_dir();
        let empty = tmp.join(format!("brume-live-in-{gone}-0c1d"));
        let full = tmp.join(format!("brume-live-out-{gone}-0c1d"));
        let other = tmp.join(format!("brume-live-in-{kept}-0c1d"));
        for d in [&empty, &full, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(full.join("pages-1.img"), b"pages").unwrap();
        remove_empty_daemon_dirs(gone);
        assert!(!empty.exists(), "the empty staging dir goes");
        assert!(full.join("pages-1.img").exists(), "the work in it stays");
        assert!(other.exists(), "another daemon's dir stays");
        std::fs::remove_dir_all(&full).unwrap();
        std::fs::remove_dir(&other).unwrap();
    }
}
