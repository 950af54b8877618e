//! A process's mappings, from `/proc/PID/maps`, and which of them the tracker follows.
//!
//! Re-read every round: tasks map memory all the time (malloc arenas, thread stacks, a grown
//! heap), and a mapping the tracker has not seen is one whose pages it must copy whole.

use std::io;

use super::TrackError;

/// One line of `/proc/PID/maps`: one VMA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `p` (copy-on-write) rather than `s`.
    pub private: bool,
    pub offset: u64,
    pub inode: u64,
    /// The file, `[heap]`, `[stack]`, `[vdso]`, ... or empty for anonymous memory.
    pub path: String,
}

/// What the tracker does with a mapping's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Private and readable: registered for write tracking; after its first copy only the
    /// pages written since the last round travel.
    Tracked,
    /// Shared (a `MAP_SHARED` file or anonymous region, SysV memory): another process may
    /// write it behind our back, so its pages are all dirty every round.
    Shared,
    /// Neither copied nor tracked: unreadable (guard pages, reservations) or the kernel's
    /// own (`[vdso]`, `[vvar]`, `[vsyscall]`, `[uprobes]`), which a restore recreates.
    Skipped,
}

impl Mapping {
    pub fn class(&self) -> Class {
        let special = matches!(
            self.path.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" | "[uprobes]"
        );
        if special || !self.read {
            Class::Skipped
        } else if self.private {
            Class::Tracked
        } else {
            Class::Shared
        }
    }

    /// Anonymous memory: what CRIU's lazy restore serves page by page (no file behind it).
    pub fn anonymous(&self) -> bool {
        self.inode == 0 && (self.path.is_empty() || self.path.starts_with('['))
    }

    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }
}

/// The mappings of process `pid`.
pub fn read(pid: i32) -> Result<Vec<Mapping>, TrackError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| TrackError::Process(pid, "reading /proc/PID/maps", e))?;
    parse(&text).map_err(|e| TrackError::Process(pid, "parsing /proc/PID/maps", e))
}

/// Parses the text of a `maps` file.
pub fn parse(text: &str) -> io::Result<Vec<Mapping>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> io::Result<Mapping> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad maps line: {line:?}"),
        )
    };
    // address perms offset dev inode [path]; the path may contain spaces.
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field().ok_or_else(bad)?;
    let perms = field().ok_or_else(bad)?.as_bytes();
    let offset = field().ok_or_else(bad)?;
    let _dev = field().ok_or_else(bad)?;
    let inode = field().ok_or_else(bad)?;
    let path = rest.trim().to_string();
    let (s, e) = range.split_once('-').ok_or_else(bad)?;
    let hex = |t: &str| u64::from_str_radix(t, 16).map_err(|_| bad());
    if perms.len() < 4 {
        return Err(bad());
    }
    Ok(Mapping {
        start: hex(s)?,
        end: hex(e)?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        private: perms[3] == b'p',
        offset: hex(offset)?,
        inode: inode.parse().map_err(|_| bad())?,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fd:01 1316 /usr/bin/cat
55d0c8c21000-55d0c8c42000 rw-p 00000000 00:00 0                          [heap]
7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0 
7f1e2c021000-7f1e30000000 ---p 00000000 00:00 0 
7f1e30000000-7f1e30100000 rw-s 00000000 00:01 4242                       /SYSV00000000 (deleted)
7f1e31000000-7f1e31001000 rw-p 00000000 fd:01 77 /tmp/a file with spaces
7ffd1e5d6000-7ffd1e5f7000 rw-p 00000000 00:00 0                          [stack]
7ffd1e5fa000-7ffd1e5fe000 r--p 00000000 00:00 0                          [vvar]
7ffd1e5fe000-7ffd1e600000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_and_classifies_every_kind_of_line() {
        let maps = parse(SAMPLE).unwrap();
        assert_eq!(maps.len(), 9);
        assert_eq!(maps[0].start, 0x55d0c8a00000);
        assert_eq!(maps[0].path, "/usr/bin/cat");
        assert_eq!(maps[0].class(), Class::Tracked);
        assert!(!maps[0].anonymous());
        assert_eq!(maps[1].path, "[heap]");
        assert!(maps[1].anonymous() && maps[1].write);
        assert_eq!(maps[2].path, "");
        assert!(maps[2].anonymous());
        assert_eq!(maps[3].class(), Class::Skipped, "unreadable reservation");
        assert_eq!(maps[4].class(), Class::Shared);
        assert_eq!(maps[4].path, "/SYSV00000000 (deleted)");
        assert_eq!(maps[5].path, "/tmp/a file with spaces");
        assert_eq!(maps[6].bytes(), 0x21000);
        assert_eq!(maps[7].class(), Class::Skipped);
        assert_eq!(maps[8].class(), Class::Skipped);
    }

    #[test]
    fn refuses_a_broken_line() {
        assert!(parse("zzzz-1 rw-p 0 00:00 0\n").is_err());
        assert!(parse("1000-2000 rw\n").is_err());
    }
}
