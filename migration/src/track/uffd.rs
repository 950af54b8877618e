//! A task's userfaultfd, held by brume, and the two calls that read and re-arm its written
//! pages: `UFFDIO_REGISTER`/`UFFDIO_WRITEPROTECT` on the userfaultfd and `PAGEMAP_SCAN` on the
//! task's `/proc/PID/pagemap`.
//!
//! The userfaultfd is made by the task itself ([`super::inject`]: `userfaultfd()` run in it),
//! copied into brume with `pidfd_getfd(2)` and closed in the task, so the task's descriptor
//! table is as it was (CRIU dumps it later and must not find ours). Every later operation acts
//! on the task's address space from outside. Dropping the descriptor unregisters everything and
//! clears the write-protect bits: the task is left exactly as it ran before.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::abi::*;
use super::inject::Session;
use super::TrackError;

/// A task's userfaultfd in async write-protect mode.
pub struct Uffd {
    fd: OwnedFd,
    pid: i32,
    /// Created with `UFFD_USER_MODE_ONLY` (the task may not catch kernel-mode faults).
    pub user_mode_only: bool,
}

impl Uffd {
    /// Makes a userfaultfd in process `pid` and takes it (see the module comment).
    pub fn take(pid: i32) -> Result<Self, TrackError> {
        let mut session = Session::seize(pid)?;
        let base = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        let mut user_mode_only = false;
        let mut remote = session.call(libc::SYS_userfaultfd, [base, 0, 0, 0, 0, 0])?;
        if remote == -(libc::EPERM as i64) {
            // vm.unprivileged_userfaultfd = 0 and the task lacks CAP_SYS_PTRACE (a Docker
            // container's default): user-mode faults are all async write-protect needs.
            user_mode_only = true;
            remote = session.call(
                libc::SYS_userfaultfd,
                [base | UFFD_USER_MODE_ONLY, 0, 0, 0, 0, 0],
            )?;
        }
        if remote < 0 {
            return Err(TrackError::Process(
                pid,
                "userfaultfd() in the task",
                io::Error::from_raw_os_error(-remote as i32),
            ));
        }
        let taken = get_fd(pid, remote as i32);
        // Close the task's copy whatever happened: its descriptor table must end as it began.
        let closed = session.call(libc::SYS_close, [remote as u64, 0, 0, 0, 0, 0])?;
        drop(session);
        let fd = taken?;
        if closed < 0 {
            tracing::warn!(
                pid,
                fd = remote,
                "closing the injected userfaultfd in the task: errno {}",
                -closed
            );
        }
        let uffd = Uffd {
            fd,
            pid,
            user_mode_only,
        };
        uffd.handshake()?;
        Ok(uffd)
    }

    fn handshake(&self) -> Result<(), TrackError> {
        let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: want,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_API, &mut api).map_err(|e| {
            TrackError::Unsupported(format!(
                "this kernel's userfaultfd lacks async write-protect (UFFDIO_API with features \
                 {want:#x}: {e}; needs Linux >= 6.7)"
            ))
        })?;
        if api.features & want != want {
            return Err(TrackError::Unsupported(format!(
                "userfaultfd offers features {:#x}, without async write-protect ({want:#x})",
                api.features
            )));
        }
        Ok(())
    }

    /// Registers `[start, end)` for write-protect tracking.
    pub fn register(&self, start: u64, end: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start,
                len: end - start,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_REGISTER, &mut reg)
    }

    /// Arms every page of `[start, end)`: the next write to each is recorded.
    pub fn arm(&self, start: u64, end: u64) -> io::Result<()> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start,
                len: end - start,
            },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        self.ioctl(UFFDIO_WRITEPROTECT, &mut wp)
    }

    fn ioctl<T>(&self, request: u64, arg: &mut T) -> io::Result<()> {
        ioctl(self.fd.as_raw_fd(), request, arg)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// `pidfd_getfd(pidfd_open(pid), fd)`: a copy of the task's descriptor `fd`.
fn get_fd(pid: i32, fd: i32) -> Result<OwnedFd, TrackError> {
    // SAFETY: pidfd_open takes a pid and flags, returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(TrackError::Process(
            pid,
            "pidfd_open",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: pidfd is a descriptor we just got and own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(TrackError::Process(
            pid,
            "pidfd_getfd",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel gave us this new descriptor (close-on-exec); we own it now.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

fn ioctl<T>(fd: i32, request: u64, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: `arg` is the #[repr(C)] struct the request's number encodes (abi.rs checks
        // sizes at compile time); the kernel reads and writes only that many bytes.
        let r = unsafe { libc::ioctl(fd, request as libc::Ioctl, arg as *mut T) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A task's `/proc/PID/pagemap`, for `PAGEMAP_SCAN`.
pub struct Pagemap {
    file: File,
    /// Reused output of every scan.
    regions: Vec<PageRegion>,
}

/// Why a scan of a mapping gave no answer.
#[derive(Debug)]
pub enum ScanError {
    /// Part of the range is not registered with our userfaultfd (a mapping made, moved or
    /// replaced since the last round): its pages must be copied whole.
    Unregistered,
    Io(io::Error),
}

impl Pagemap {
    pub fn open(pid: i32) -> Result<Self, TrackError> {
        let file = File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|e| TrackError::Process(pid, "opening /proc/PID/pagemap", e))?;
        Ok(Pagemap {
            file,
            regions: vec![PageRegion::default(); 512],
        })
    }

    /// The pages of `[start, end)` written since they were last armed, re-armed in the same
    /// walk, appended to `out` as `[start, end)` runs.
    pub fn take_written(
        &mut self,
        start: u64,
        end: u64,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), ScanError> {
        self.scan(
            start,
            end,
            PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            PAGE_IS_WRITTEN,
            0,
            out,
        )
    }

    /// The pages of `[start, end)` that hold data (in memory or swapped out).
    pub fn present(
        &mut self,
        start: u64,
        end: u64,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), ScanError> {
        self.scan(start, end, 0, 0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, out)
    }

    fn scan(
        &mut self,
        start: u64,
        end: u64,
        flags: u64,
        mask: u64,
        anyof: u64,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), ScanError> {
        let mut from = start;
        // Each call fills at most `regions.len()` runs and says where it stopped; bounded by
        // the range (every call advances).
        while from < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags,
                start: from,
                end,
                walk_end: 0,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: mask,
                category_anyof_mask: anyof,
                return_mask: mask | anyof,
            };
            // SAFETY: arg.vec points at `regions`, whose length is arg.vec_len; the kernel
            // writes at most that many page_region structs there.
            let r = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    PAGEMAP_SCAN as libc::Ioctl,
                    &mut arg as *mut PmScanArg,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::EPERM) => ScanError::Unregistered,
                    Some(libc::EINTR) => continue,
                    _ => ScanError::Io(e),
                });
            }
            for region in &self.regions[..r as usize] {
                match out.last_mut() {
                    Some(last) if last.1 == region.start => last.1 = region.end,
                    _ => out.push((region.start, region.end)),
                }
            }
            if arg.walk_end <= from {
                return Err(ScanError::Io(io::Error::other(format!(
                    "PAGEMAP_SCAN made no progress at {from:#x}"
                ))));
            }
            from = arg.walk_end;
        }
        Ok(())
    }
}

impl Uffd {
    /// A userfaultfd of this process (for [`super::probe`]): user-mode faults only, which is
    /// all async write-protect needs and what an unprivileged process may create.
    pub fn own() -> Result<Self, TrackError> {
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY;
        // SAFETY: userfaultfd takes flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(TrackError::Unsupported(format!(
                "userfaultfd(): {}",
                io::Error::last_os_error()
            )));
        }
        let uffd = Uffd {
            // SAFETY: the kernel gave us this new descriptor.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            pid: std::process::id() as i32,
            user_mode_only: true,
        };
        uffd.handshake()?;
        Ok(uffd)
    }
}
