//! Task logs kept under a size cap: `task.log` and one older file, `task.log.1`.
//!
//! Why: a task's output is the one thing on a host that grows for as long as the task runs, and
//! a chatty task on a small device fills its disk. A task writes its log through a descriptor
//! it holds (opened `O_APPEND`, or the engine's pump for a CRIU task), so the file cannot be
//! renamed from under it: the log is rotated the way logrotate's `copytruncate` does, by copying
//! its last bytes to `task.log.1` and truncating `task.log` to zero, after which the task's
//! appends start again at the beginning. Output written between the copy and the truncation is
//! lost (a few milliseconds' worth at most); nothing else is. A log thus holds at most about
//! twice the cap, plus what the task writes between two sweeps.
//!
//! Docker tasks get the same cap from Docker's own `json-file` driver (`max-size`,
//! `max-file = 2`), set when their container is created.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The default cap of one task's log file.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 16 << 20;

/// The older half of a rotated log.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotates `log` when it holds more than `max_bytes`: its last `max_bytes` (from a line start
/// where one is near) replace `task.log.1`, and `log` is truncated. Returns whether it rotated.
/// A missing log is not an error (the task has not written yet, or is gone).
pub fn rotate_if_over(log: &Path, max_bytes: u64) -> io::Result<bool> {
    let mut file = match OpenOptions::new().read(true).write(true).open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len <= max_bytes.max(1) {
        return Ok(false);
    }
    let kept = last_bytes(&mut file, len, max_bytes)?;
    let older = rotated_path(log);
    let mut tmp_name = older.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut out = File::create(&tmp)?;
        out.write_all(&kept)?;
    }
    std::fs::rename(&tmp, &older)?;
    file.set_len(0)?;
    Ok(true)
}

/// The last `max_bytes` of a file of `len` bytes, starting after the first newline of that
/// window when it has one (so the older file starts with a whole line).
fn last_bytes(file: &mut File, len: u64, max_bytes: u64) -> io::Result<Vec<u8>> {
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
    file.take(len - start).read_to_end(&mut buf)?;
    if start > 0 {
        if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            if nl + 1 < buf.len() {
                buf.drain(..=nl);
            }
        }
    }
    Ok(buf)
}

/// At most the last `max_read` bytes of a task's output: the end of `task.log.1`, then
/// `task.log`, so that a tail asked right after a rotation still finds its lines.
pub fn read_tail(log: &Path, max_read: u64) -> io::Result<String> {
    let current = read_end(log, max_read)?;
    let mut bytes = Vec::new();
    let room = max_read.saturating_sub(current.len() as u64);
    if room > 0 {
        match read_end(&rotated_path(log), room) {
            Ok(older) => bytes = older,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    bytes.extend_from_slice(&current);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn read_end(path: &Path, max_read: u64) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max_read);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(len - start).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> String {
        (0..n).map(|i| format!("line {i:05}\n")).collect()
    }

    #[test]
    fn a_log_under_the_cap_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("task.log");
        std::fs::write(&log, lines(10)).expect("write");
        assert!(!rotate_if_over(&log, 1 << 20).expect("rotate"));
        assert_eq!(std::fs::read_to_string(&log).expect("read"), lines(10));
        assert!(!rotated_path(&log).exists());
    }

    #[test]
    fn a_missing_log_is_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!rotate_if_over(&dir.path().join("task.log"), 10).expect("rotate"));
    }

    #[test]
    fn a_log_over_the_cap_keeps_its_last_whole_lines_in_the_older_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("task.log");
        let text = lines(1000); // 11 bytes a line
        std::fs::write(&log, &text).expect("write");
        assert!(rotate_if_over(&log, 1000).expect("rotate"));
        assert_eq!(std::fs::metadata(&log).expect("stat").len(), 0);
        let older = std::fs::read_to_string(rotated_path(&log)).expect("older");
        assert!(older.len() <= 1000, "{}", older.len());
        assert!(older.starts_with("line "), "{older:?}");
        assert!(older.ends_with("line 00999\n"));
        assert!(text.ends_with(&older));
    }

    #[test]
    fn a_writer_holding_the_log_appends_from_the_start_after_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("task.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open");
        writer.write_all(lines(500).as_bytes()).expect("write");
        assert!(rotate_if_over(&log, 100).expect("rotate"));
        writer.write_all(b"after\n").expect("write");
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "after\n");
    }

    #[test]
    fn the_tail_spans_the_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("task.log");
        std::fs::write(&log, lines(100)).expect("write");
        assert!(rotate_if_over(&log, 500).expect("rotate"));
        std::fs::write(&log, "new 1\nnew 2\n").expect("write");
        let tail = read_tail(&log, 1 << 20).expect("tail");
        assert!(tail.ends_with("line 00099\nnew 1\nnew 2\n"), "{tail:?}");
        let short = read_tail(&log, 8).expect("tail");
        assert_eq!(short, "1\nnew 2\n");
    }

    #[test]
    fn several_rotations_keep_one_older_file_under_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("task.log");
        for round in 0..5 {
            std::fs::write(&log, lines(200 + round)).expect("write");
            assert!(rotate_if_over(&log, 300).expect("rotate"));
            assert!(std::fs::metadata(rotated_path(&log)).expect("stat").len() <= 300);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
