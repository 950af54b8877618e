//! What a CRIU-mode task's process does between fork and exec: it becomes the init of its own
//! PID namespace, in a mount namespace of its own whose root is its rootfs.
//!
//! Why: a task restored on another node must find its files there. With the task's rootfs as
//! its root, every path it holds (its executable and libraries, its working directory, files it
//! opened) is a path inside its image, the same on every node; `criu restore --root <rootfs>`
//! puts it back in any copy of that rootfs, wherever the target keeps it. A task that saw the
//! host's tree instead would hold host paths (a loader, libraries, `/dev/null`) that another
//! host may not have, or has at another size.
//!
//! The mounts are the least CRIU must carry and nothing it cannot: the rootfs bound onto itself
//! as `/` (the mount CRIU replaces with `--root`), a `proc` of the task's PID namespace on
//! `/proc`, and a small tmpfs on `/dev` holding the usual device nodes (made with `mknod`, as
//! runc does without a user namespace; CRIU dumps a tmpfs's contents) and an empty `/dev/shm`.
//! The host's tree is detached after `pivot_root`, so no host mount is left for CRIU to look up.
//! Standard input is reopened on the task's own `/dev/null`: the host's (what the engine hands
//! every child) lives in a mount the task no longer has, and CRIU could not dump it.
//!
//! The sequence, in the child the engine forks (it never execs: it only waits):
//!
//! ```text
//!  unshare(NEWNS|NEWPID) ─ fork ─▶ waits for the task, exits with its status
//!                            └──▶ the task (PID 1): setsid ─ mounts private ─ bind rootfs ─ /proc
//!                                 ─ /dev ─ pivot_root ─ detach the host ─ chdir workdir
//!                                 ─ stdin = /dev/null ─ exec the program (by its path inside)
//! ```
//!
//! Everything runs between fork and exec, so [`Confinement::enter`] only makes system calls on
//! strings built beforehand by [`Confinement::new`]: no allocation, no lock.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// Device nodes every task gets in its `/dev` (name, major, minor), as a container does.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Links every task gets in its `/dev`.
const LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// The old root while it is being detached; removed afterwards.
const OLD_ROOT: &str = ".brume-old-root";

/// The strings [`Confinement::enter`] needs, built before the fork.
#[derive(Debug, Clone)]
pub(crate) struct Confinement {
    host_root: PathBuf,
    rootfs: CString,
    workdir: CString,
    proc_dir: CString,
    dev_dir: CString,
    shm_dir: CString,
    old_root: CString,
    old_root_abs: CString,
    devices: Vec<(CString, libc::dev_t)>,
    links: Vec<(CString, CString)>,
    proc_type: CString,
    tmpfs_type: CString,
    dev_options: CString,
    slash: CString,
    dot: CString,
    dev_null: CString,
}

fn c(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"))
}

impl Confinement {
    /// The directories of the rootfs the task's mounts cover.
    pub(crate) const MOUNTPOINTS: [&'static str; 2] = ["proc", "dev"];

    /// For a task whose rootfs is at `rootfs` on the host and whose working directory is
    /// `workdir` inside it (absolute).
    pub(crate) fn new(rootfs: &Path, workdir: &str) -> io::Result<Confinement> {
        let host_root = rootfs.to_path_buf();
        let rootfs = CString::new(rootfs.as_os_str().as_encoded_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} holds a NUL byte", rootfs.display()),
            )
        })?;
        let workdir = if workdir.starts_with('/') {
            workdir.to_string()
        } else {
            format!("/{workdir}")
        };
        Ok(Confinement {
            host_root,
            rootfs,
            workdir: c(&workdir)?,
            proc_dir: c("proc")?,
            dev_dir: c("dev")?,
            shm_dir: c("dev/shm")?,
            old_root: c(OLD_ROOT)?,
            old_root_abs: c(&format!("/{OLD_ROOT}"))?,
            devices: DEVICES
                .iter()
                .map(|(name, major, minor)| {
                    Ok((c(&format!("dev/{name}"))?, libc::makedev(*major, *minor)))
                })
                .collect::<io::Result<_>>()?,
            links: LINKS
                .iter()
                .map(|(name, to)| Ok((c(&format!("dev/{name}"))?, c(to)?)))
                .collect::<io::Result<_>>()?,
            proc_type: c("proc")?,
            tmpfs_type: c("tmpfs")?,
            dev_options: c("mode=755,size=1m")?,
            slash: c("/")?,
            dot: c(".")?,
            dev_null: c("/dev/null")?,
        })
    }

    /// The rootfs, as the host sees it.
    pub(crate) fn host_root(&self) -> &Path {
        &self.host_root
    }

    /// Enters the namespaces and the root (see the module's doc). Returns in the task, which
    /// then execs; the forked-off waiter never returns.
    ///
    /// # Safety
    /// Call only between fork and exec (a `pre_exec` closure): it forks, and the parent side
    /// ends with `_exit`.
    pub(crate) unsafe fn enter(&self) -> io::Result<()> {
        check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID))?;
        let pid = check(libc::fork())?;
        if pid > 0 {
            // The waiter never execs, so its close-on-exec descriptors would stay open: among
            // them the pipe through which the engine learns that the exec happened (it would
            // wait for as long as the task runs). It needs none.
            libc::close_range(0, libc::c_uint::MAX, 0);
            wait_and_exit(pid);
        }
        // The task: PID 1 of its namespace, leader of its own session (CRIU then restores it
        // without --shell-job).
        check(libc::setsid())?;
        self.mount_root()?;
        check(libc::chdir(self.workdir.as_ptr()))?;
        let null = check(libc::open(self.dev_null.as_ptr(), libc::O_RDONLY))?;
        if null != 0 {
            check(libc::dup2(null, 0))?;
            libc::close(null);
        }
        Ok(())
    }

    unsafe fn mount_root(&self) -> io::Result<()> {
        let none = std::ptr::null();
        // Nothing done here may reach the node's namespace.
        check(libc::mount(
            none,
            self.slash.as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            none.cast(),
        ))?;
        check(libc::mount(
            self.rootfs.as_ptr(),
            self.rootfs.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REC,
            none.cast(),
        ))?;
        check(libc::chdir(self.rootfs.as_ptr()))?;
        for dir in [&self.proc_dir, &self.dev_dir, &self.old_root] {
            mkdir(dir, 0o755)?;
        }
        check(libc::mount(
            self.proc_type.as_ptr(),
            self.proc_dir.as_ptr(),
            self.proc_type.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            none.cast(),
        ))?;
        check(libc::mount(
            self.tmpfs_type.as_ptr(),
            self.dev_dir.as_ptr(),
            self.tmpfs_type.as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            self.dev_options.as_ptr().cast(),
        ))?;
        for (path, dev) in &self.devices {
            check(libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, *dev))?;
            // The umask may have trimmed the mode.
            check(libc::chmod(path.as_ptr(), 0o666))?;
        }
        for (path, to) in &self.links {
            check(libc::symlink(to.as_ptr(), path.as_ptr()))?;
        }
        mkdir(&self.shm_dir, 0o1777)?;
        check(libc::chmod(self.shm_dir.as_ptr(), 0o1777))?;
        check(libc::syscall(
            libc::SYS_pivot_root,
            self.dot.as_ptr(),
            self.old_root.as_ptr(),
        ) as libc::c_int)?;
        check(libc::umount2(self.old_root_abs.as_ptr(), libc::MNT_DETACH))?;
        check(libc::rmdir(self.old_root_abs.as_ptr()))?;
        Ok(())
    }
}

/// `mkdir`, an existing directory being fine.
unsafe fn mkdir(path: &CString, mode: libc::mode_t) -> io::Result<()> {
    if libc::mkdir(path.as_ptr(), mode) != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// The waiter: reaps the task and exits with its status (128+N if a signal N ended it), as
/// `unshare --fork` does.
unsafe fn wait_and_exit(pid: libc::pid_t) -> ! {
    let mut status = 0;
    loop {
        let r = libc::waitpid(pid, &mut status, 0);
        if r == pid {
            break;
        }
        if r < 0 && *libc::__errno_location() != libc::EINTR {
            libc::_exit(127);
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        127
    };
    libc::_exit(code)
}

fn check<T: Into<i64> + Copy>(r: T) -> io::Result<T> {
    if r.into() < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
