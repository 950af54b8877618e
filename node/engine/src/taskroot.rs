//! The fixed directory CRIU-mode tasks live in, the same absolute path on every node.
//!
//! Why: CRIU restores a process's files by absolute path (its executable's mapping, its working
//! directory), but the process engine keeps tasks under the node's own data directory, which
//! differs from node to node (and between several nodes on one machine). So a node that runs as
//! root enters a mount namespace of its own at start, before any thread exists (`unshare
//! (CLONE_NEWNS)` only moves the calling thread of a multithreaded process), makes every mount
//! in it a slave of the host's, and bind-mounts `<data_dir>/criu-tasks` onto [`TASK_ROOT`].
//! Each daemon then sees its own directory at the same path, and a task dumped from
//! `/run/brume/tasks/<service>.<task>.<replica>` on one node finds its files at that path on
//! any other.
//!
//! Slave rather than private: mounts the host makes later (a disk, a Docker volume) still show
//! up in the node, while the node's bind never leaks out to the host or to other nodes. Nothing
//! else in the daemon depends on mounts: Docker works through its socket, and the files the
//! node writes elsewhere are the host's. Without root (or if any step fails) the node runs
//! CRIU-mode tasks like any other and refuses to move them live, saying why.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where CRIU-mode tasks live, on every node.
pub const TASK_ROOT: &str = "/run/brume/tasks";

static STATE: OnceLock<Result<(), String>> = OnceLock::new();

/// Sets up [`TASK_ROOT`] for this process (once; later calls return the first outcome). Call
/// before starting any thread.
pub fn enter(data_dir: &Path) -> Result<(), String> {
    STATE.get_or_init(|| set_up(data_dir)).clone()
}

/// Whether [`TASK_ROOT`] is this node's own, or why not.
pub fn available() -> Result<(), String> {
    match STATE.get() {
        Some(r) => r.clone(),
        None => Err(
            "this process did not set up the fixed task directory (only `brume node` \
                     does, at start)"
                .to_string(),
        ),
    }
}

/// The directory of one CRIU-mode instance: `<TASK_ROOT>/<service>.<task>.<replica>` (the names
/// are checked: letters, digits, `-` and `_` only).
pub fn dir_for(service: &str, task: &str, replica: u32) -> PathBuf {
    Path::new(TASK_ROOT).join(format!("{service}.{task}.{replica}"))
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn set_up(data_dir: &Path) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the node does not run as root, so it cannot give CRIU-mode tasks the \
                    fixed path /run/brume/tasks they need to be restored elsewhere"
                .to_string(),
        );
    }
    if threads() != 1 {
        return Err(format!(
            "the node already runs {} threads when it sets up its mount namespace",
            threads()
        ));
    }
    let source = data_dir.join("criu-tasks");
    std::fs::create_dir_all(&source)
        .map_err(|e| format!("cannot create {}: {e}", source.display()))?;
    let source = source
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", source.display()))?;
    std::fs::create_dir_all(TASK_ROOT).map_err(|e| format!("cannot create {TASK_ROOT}: {e}"))?;
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: unshare(2) with a flag only; the process is single-threaded (checked above).
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os("cannot enter a mount namespace of its own"));
    }
    let root = CString::new("/").map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated strings; null source, type and data are allowed for a
    // propagation change.
    let slave = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    };
    if slave != 0 {
        return Err(os("cannot make the node's mounts slaves of the host's"));
    }
    let from = CString::new(source.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} holds a NUL byte", source.display()))?;
    let to = CString::new(TASK_ROOT).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated paths; a bind mount takes no type or data.
    let bind = unsafe {
        libc::mount(
            from.as_ptr(),
            to.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if bind != 0 {
        return Err(os(&format!(
            "cannot bind {} onto {TASK_ROOT}",
            source.display()
        )));
    }
    Ok(())
}
