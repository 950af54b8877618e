//! Which pages a running task wrote since the last look, on kernels without soft-dirty bits:
//! the dirty-page tracker that makes pre-copy rounds cost what the task wrote, not its size.
//!
//! Why this way (docs/criu.md, "Tracking written pages"): CRIU's incremental dumps and
//! Podman's pre-checkpoint need `CONFIG_MEM_SOFT_DIRTY`, which these kernels lack; Linux 6.7
//! gives the same knowledge another way. A userfaultfd registered over a mapping in
//! write-protect mode with `UFFD_FEATURE_WP_ASYNC` lets the kernel resolve every write fault
//! itself, just clearing the page's write-protect bit; `PAGEMAP_SCAN` on `/proc/PID/pagemap`
//! then lists the pages without it (written) and sets it again, in one walk.
//!
//! How the parts fit, for one task:
//! - [`inject`]: a userfaultfd belongs to the address space that creates it, so the task must
//!   create it: brume runs `userfaultfd()` inside the task with ptrace, one instruction.
//! - [`uffd`]: takes that descriptor (`pidfd_getfd`), closes the task's copy, and drives
//!   registration, arming and scans from outside ([`abi`] declares the kernel's structs).
//! - [`maps`]: the task's mappings, re-read each round; [`process`] turns them into the runs of
//!   pages to copy (written, or whole for mappings new to it and shared ones); [`task`] does
//!   it for every process of the task's tree; [`memory`] reads the pages
//!   (`process_vm_readv`) while the task runs.
//!
//! What a round promises: after a round run while the task is frozen, every page whose copy
//! is older than its content has been reported in some round since that copy. Dropping a
//! tracker closes the userfaultfd, which unregisters and disarms everything.
//!
//! Where the kernel lacks this ([`probe`]), the caller falls back to soft-dirty (CRIU's own
//! `--track-mem`) or to full dumps, and logs [`Support::why`].

pub mod abi;
pub mod inject;
pub mod maps;
pub mod memory;
pub mod process;
pub mod region;
pub mod task;
pub mod uffd;

use std::io;

pub use process::{ProcessTracker, Round, Scope};
pub use region::{Region, Why};
pub use task::TaskTracker;

/// Why tracking failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// The kernel or the architecture cannot track writes this way; fall back.
    #[error("dirty-page tracking is not available: {0}")]
    Unsupported(String),
    /// An operation on one process failed (it may have exited).
    #[error("process {0}: {1}: {2}")]
    Process(i32, &'static str, #[source] io::Error),
    /// The process replaced its address space (exec); a new userfaultfd is needed.
    #[error("the process's address space was replaced")]
    AddressSpaceGone,
}

/// How this kernel lets brume know which pages a task wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// This module: userfaultfd async write-protect and `PAGEMAP_SCAN`.
    Tracked,
    /// Soft-dirty bits: CRIU's `--track-mem` pre-dumps work.
    SoftDirty,
    /// Neither: every round is a full dump.
    FullDumps,
}

/// What [`probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Support {
    pub method: Method,
    /// Why the better methods are not available (empty for [`Method::Tracked`]).
    pub why: String,
}

/// Finds the best method this kernel offers, by trying it on a page of this process: register
/// it, arm it, write it, and ask `PAGEMAP_SCAN` whether it was written (then the opposite).
pub fn probe() -> Support {
    match probe_tracked() {
        Ok(()) => Support {
            method: Method::Tracked,
            why: String::new(),
        },
        Err(why) if soft_dirty() => Support {
            method: Method::SoftDirty,
            why,
        },
        Err(why) => Support {
            method: Method::FullDumps,
            why: format!("{why}; and no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY) either"),
        },
    }
}

/// One anonymous page of this process, unmapped on drop.
struct TestPage(*mut u8);

impl TestPage {
    fn new() -> Result<Self, String> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                abi::PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", io::Error::last_os_error()));
        }
        Ok(TestPage(p.cast()))
    }

    fn addr(&self) -> u64 {
        self.0 as u64
    }

    fn write(&self, v: u8) {
        // SAFETY: the page is ours, mapped read-write, PAGE bytes long.
        unsafe { std::ptr::write_volatile(self.0, v) }
    }
}

impl Drop for TestPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page mapped in new().
        unsafe { libc::munmap(self.0.cast(), abi::PAGE as usize) };
    }
}

fn probe_tracked() -> Result<(), String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("injecting a system call is implemented for x86_64 only".into());
    }
    let uffd = uffd::Uffd::own().map_err(|e| e.to_string())?;
    let page = TestPage::new()?;
    page.write(1);
    let (start, end) = (page.addr(), page.addr() + abi::PAGE);
    uffd.register(start, end)
        .map_err(|e| format!("UFFDIO_REGISTER in write-protect mode: {e}"))?;
    uffd.arm(start, end)
        .map_err(|e| format!("UFFDIO_WRITEPROTECT: {e}"))?;
    let me = std::process::id() as i32;
    let mut pagemap = uffd::Pagemap::open(me).map_err(|e| e.to_string())?;
    let mut scan = |label: &str| -> Result<Vec<(u64, u64)>, String> {
        let mut out = Vec::new();
        pagemap
            .take_written(start, end, &mut out)
            .map_err(|e| format!("PAGEMAP_SCAN ({label}): {e:?} (needs Linux >= 6.7)"))?;
        Ok(out)
    };
    if !scan("armed, unwritten")?.is_empty() {
        return Err("PAGEMAP_SCAN reports an armed page as written".into());
    }
    page.write(2);
    if scan("written")? != [(start, end)] {
        return Err("PAGEMAP_SCAN does not report a written page".into());
    }
    if !scan("re-armed")?.is_empty() {
        return Err("PAGEMAP_SCAN did not re-arm the page it reported".into());
    }
    Ok(())
}

/// Whether writes set soft-dirty bits: clear them, write a page, look at its pagemap entry.
fn soft_dirty() -> bool {
    let Ok(page) = TestPage::new() else {
        return false;
    };
    page.write(1);
    if std::fs::write("/proc/self/clear_refs", "4").is_err() {
        return false;
    }
    page.write(2);
    let Ok(file) = std::fs::File::open("/proc/self/pagemap") else {
        return false;
    };
    let mut entry = [0u8; 8];
    use std::os::unix::fs::FileExt;
    if file
        .read_exact_at(&mut entry, page.addr() / abi::PAGE * 8)
        .is_err()
    {
        return false;
    }
    u64::from_le_bytes(entry) & (1 << 55) != 0
}
