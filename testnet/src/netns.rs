//! Named network namespaces (the `/run/netns/NAME` files of `ip netns`), entering them from a
//! thread, and the owner markers that let `brume-testnet cleanup` tell a crashed run's leftovers
//! from a live testbed.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Where `ip netns` keeps its namespace files.
pub const NETNS_DIR: &str = "/run/netns";
/// Where each live testbed writes `<tag>.pid` with the process id that owns it.
pub const OWNER_DIR: &str = "/run/brume-testnet";
/// Every namespace this crate creates is called `brume-<tag>-<host>`.
pub const PREFIX: &str = "brume-";

/// Fails with [`Error::NotRoot`] unless the effective user is root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Ok(())
    } else {
        Err(Error::NotRoot { uid })
    }
}

/// The namespace name of host `host` in the testbed tagged `tag`.
pub fn name(tag: &str, host: usize) -> String {
    format!("{PREFIX}{tag}-{host}")
}

/// Splits `brume-<tag>-<host>` into its tag and host; `None` for any other name.
pub fn parse_name(name: &str) -> Option<(&str, usize)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (tag, host) = rest.split_once('-')?;
    let tag_ok = tag.len() == 6 && tag.bytes().all(|b| b.is_ascii_hexdigit());
    (tag_ok && host.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty())
        .then(|| host.parse().ok().map(|h| (tag, h)))
        .flatten()
}

/// Runs `ip ARGS`, feeding `stdin` (for `-batch -`) when given.
pub fn ip(args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().map_err(|source| Error::NoIpTool { source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| Error::Os {
                what: "write to `ip -batch`".into(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Os {
        what: format!("wait for `ip {}`", args.join(" ")),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Creates the named namespace (`ip netns add`).
pub fn create(name: &str) -> Result<()> {
    ip(&["netns", "add", name], None)
}

/// Kills every process still inside the namespace, then deletes it (`ip netns del`). A namespace
/// that is already gone is not an error.
pub fn delete(name: &str) -> Result<()> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    for pid in pids(name) {
        // These processes run in a namespace this crate created; none may outlive the testbed.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    ip(&["netns", "del", name], None)
}

/// Process ids of the processes inside the namespace (`ip netns pids`); empty on any failure.
pub fn pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Names of all namespaces in [`NETNS_DIR`], sorted.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Opens the named namespace's file (`/run/netns/NAME`), the handle `setns(2)` takes. The file is
/// opened close-on-exec, so a program started afterwards does not inherit it.
pub fn open(name: &str) -> std::io::Result<File> {
    File::open(Path::new(NETNS_DIR).join(name))
}

/// Moves the *calling thread* into the named namespace. Only call this on a thread of your own
/// that does nothing else afterwards (see [`run_in`]); sockets and TUN devices it opens stay in
/// that namespace whichever thread uses them later.
pub fn enter(name: &str) -> Result<()> {
    let file = open(name).map_err(|source| Error::Os {
        what: format!("open {}", Path::new(NETNS_DIR).join(name).display()),
        source,
    })?;
    // SAFETY: the fd is open for the duration of the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::last_os(format!("enter network namespace {name}")));
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the named namespace and returns its result.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The owner marker file of a testbed tag.
pub fn owner_file(tag: &str) -> PathBuf {
    Path::new(OWNER_DIR).join(format!("{tag}.pid"))
}

/// Records that this process owns the testbed `tag`, unless a marker for `tag` exists already:
/// `Ok(false)` then, and the caller picks another tag. The marker appears at once with its
/// content (written to a private file first, then hard-linked into place, which fails when the
/// name is taken), so two processes never claim one tag, and a concurrent [`cleanup`] never reads
/// an empty marker and takes a live testbed for a crashed one.
pub fn claim_owner(tag: &str) -> Result<bool> {
    let path = owner_file(tag);
    let os = |what: &str, source| Error::Os {
        what: format!("{what} {}", path.display()),
        source,
    };
    fs::create_dir_all(OWNER_DIR).map_err(|e| os("create the directory of", e))?;
    let me = std::process::id();
    // Not `<tag>.pid`: cleanup only reads names ending in `.pid`.
    let draft = Path::new(OWNER_DIR).join(format!(".{tag}.{me}.draft"));
    fs::write(&draft, me.to_string()).map_err(|e| os("write a draft of", e))?;
    let linked = fs::hard_link(&draft, &path);
    let _ = fs::remove_file(&draft);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(os("create", e)),
    }
}

/// Whether the process recorded as the owner of `tag` is still running.
pub fn owner_alive(tag: &str) -> bool {
    fs::read_to_string(owner_file(tag))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the owner marker of `tag` (missing is fine).
pub fn remove_owner(tag: &str) {
    let _ = fs::remove_file(owner_file(tag));
}

/// What [`cleanup`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// Namespaces deleted.
    pub removed: Vec<String>,
    /// Namespaces left because the process that owns them is alive.
    pub kept: Vec<String>,
    /// Namespaces that could not be deleted, with why.
    pub failed: Vec<(String, String)>,
}

/// Deletes leftover `brume-<tag>-<host>` namespaces (and their processes) of crashed runs. Those
/// of a testbed whose owning process is still running are kept unless `all` is set.
pub fn cleanup(all: bool) -> Result<Cleanup> {
    require_root()?;
    let mut report = Cleanup::default();
    let mut tags = Vec::new();
    for name in list() {
        let Some((tag, _)) = parse_name(&name) else {
            continue;
        };
        if !all && owner_alive(tag) {
            report.kept.push(name);
            continue;
        }
        match delete(&name) {
            Ok(()) => report.removed.push(name.clone()),
            Err(e) => report.failed.push((name.clone(), e.to_string())),
        }
        tags.push(tag.to_string());
    }
    // Markers whose namespaces are all gone (or whose owner died before creating any).
    if let Ok(dir) = fs::read_dir(OWNER_DIR) {
        for entry in dir.filter_map(|e| e.ok()) {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(tag) = file.strip_suffix(".pid") {
                if all || !owner_alive(tag) {
                    tags.push(tag.to_string());
                }
            }
        }
    }
    for tag in tags {
        remove_owner(&tag);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_ignored() {
        let n = name("0a1b2c", 17);
        assert_eq!(n, "brume-0a1b2c-17");
        assert_eq!(parse_name(&n), Some(("0a1b2c", 17)));
        for other in [
            "brume-0a1b2c",
            "brume-0a1b2c-",
            "brume-xyzxyz-1",
            "brume-0a1b2-1",
            "brume-0a1b2c-1a",
            "other-0a1b2c-1",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn not_root_message_says_what_to_do() {
        let msg = Error::NotRoot { uid: 1000 }.to_string();
        assert!(
            msg.contains("needs root") && msg.contains("uid 1000"),
            "{msg}"
        );
    }
}
