//! Whether a task can be dumped here, now: a CRIU new enough for this kernel, and a task that
//! holds no TCP connection but its listeners (CRIU refuses to dump established connections
//! without `--tcp-established`, and those could not be restored on another host anyway).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::criu::Criu;

/// Oldest CRIU that dumps TCP listeners on these kernels (docs/criu.md: criu issue #2718).
pub const MIN_CRIU: (u32, u32) = (4, 2);

/// Why CRIU cannot move tasks here, if it cannot: missing, or older than [`MIN_CRIU`].
pub fn criu_usable() -> Result<(), String> {
    let version = Criu::new()
        .version()
        .map_err(|e| format!("CRIU is not usable here: {e}"))?;
    match version_of(&version) {
        Some(v) if v >= MIN_CRIU => Ok(()),
        _ => Err(format!(
            "criu {version} is too old to dump TCP listeners on this kernel; install criu >= \
             {}.{} (scripts/install-criu.sh)",
            MIN_CRIU.0, MIN_CRIU.1
        )),
    }
}

/// `(major, minor)` of a CRIU version string such as `4.2.1`.
fn version_of(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// Socket inodes of `pid`'s descriptors.
fn socket_inodes(pid: u32) -> HashSet<String> {
    let mut out = HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|l| l.strip_suffix(']'))
                {
                    out.insert(inode.to_string());
                }
            }
        }
    }
    out
}

/// How many of `pid`'s TCP sockets are not listeners (CRIU refuses to dump those without
/// `--tcp-established`, which could not be restored on another host anyway).
pub fn open_connections(pid: u32) -> usize {
    let inodes = socket_inodes(pid);
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let (Some(state), Some(inode)) = (f.get(3), f.get(9)) {
                if *state != "0A" && inodes.contains(*inode) {
                    n += 1;
                }
            }
        }
    }
    n
}

/// Waits (bounded) until `pid` holds no TCP connection; returns how many it still holds.
pub async fn quiet(pid: u32, bound: Duration) -> usize {
    let until = Instant::now() + bound;
    loop {
        let n = open_connections(pid);
        if n == 0 || Instant::now() >= until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_versions_are_compared_by_major_and_minor() {
        assert_eq!(version_of("4.2.1"), Some((4, 2)));
        assert_eq!(version_of("4.1"), Some((4, 1)));
        assert_eq!(version_of("5"), Some((5, 0)));
        assert_eq!(version_of("x"), None);
        assert!(version_of("4.1.1").is_some_and(|v| v < MIN_CRIU));
        assert!(version_of("4.10").is_some_and(|v| v >= MIN_CRIU));
    }

    #[test]
    fn connections_are_counted_and_listeners_are_not() {
        // Other tests of this binary may hold connections meanwhile: only a lower bound holds.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _c = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("c");
        let _s = listener.accept().expect("accept");
        assert!(
            open_connections(std::process::id()) >= 2,
            "both ends are counted"
        );
        assert!(!socket_inodes(std::process::id()).is_empty());
    }
}
