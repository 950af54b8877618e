//! The kernel interfaces the tracker drives, declared here because this machine's headers (and
//! the `libc` crate) are older than them: userfaultfd's asynchronous write-protect mode (Linux
//! 6.7, `UFFD_FEATURE_WP_ASYNC`) and the `PAGEMAP_SCAN` ioctl on `/proc/PID/pagemap` (6.7).
//!
//! Every struct is `#[repr(C)]` of `u64` fields exactly as in `include/uapi/linux/userfaultfd.h`
//! and `include/uapi/linux/fs.h`; the `const` assertions at the bottom fail the build if a size
//! or offset drifts, and the ioctl numbers are derived from the sizes as the kernel's `_IOWR`
//! does, so the two cannot disagree.

use std::mem::{offset_of, size_of};

/// The page size the tracker works in (x86_64's base page).
pub const PAGE: u64 = 4096;

/// `UFFD_API`: the only API version there is.
pub const UFFD_API: u64 = 0xAA;
/// Bit 13: `UFFDIO_WRITEPROTECT` also arms pages never touched (they get a PTE marker), so a
/// first write to them is seen.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// Bit 15: write faults on armed pages are resolved by the kernel at once (no handler thread);
/// the page just loses its write-protect bit, which `PAGEMAP_SCAN` then reports as written.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `userfaultfd(2)` flag: handle faults from user mode only; what a task without
/// `CAP_SYS_PTRACE` may create when `vm.unprivileged_userfaultfd` is 0.
pub const UFFD_USER_MODE_ONLY: u64 = 1;

/// `UFFDIO_REGISTER_MODE_WP`.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`: arm (set) rather than clear.
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// `PM_SCAN_WP_MATCHING`: write-protect (re-arm) the pages the scan reports, in the same walk.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail with `EPERM` if a scanned mapping is not registered in async
/// write-protect mode (an exec replaced the address space, or a mapping escaped registration).
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// `PAGE_IS_WRITTEN`: written since it was last armed.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PAGE_IS_PRESENT`: in memory.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`: swapped out (it holds data all the same).
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `struct page_region`: one run of pages sharing the reported categories.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// `_IOWR(ty, nr, size)` / `_IOR` as `include/uapi/asm-generic/ioctl.h` builds them.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_READ_WRITE: u64 = 3;
const UFFDIO: u64 = 0xAA;

pub const UFFDIO_API: u64 = ioc(IOC_READ_WRITE, UFFDIO, 0x3F, size_of::<UffdioApi>());
pub const UFFDIO_REGISTER: u64 = ioc(IOC_READ_WRITE, UFFDIO, 0x00, size_of::<UffdioRegister>());
pub const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, UFFDIO, 0x01, size_of::<UffdioRange>());
pub const UFFDIO_WRITEPROTECT: u64 = ioc(
    IOC_READ_WRITE,
    UFFDIO,
    0x06,
    size_of::<UffdioWriteprotect>(),
);
pub const PAGEMAP_SCAN: u64 = ioc(IOC_READ_WRITE, b'f' as u64, 16, size_of::<PmScanArg>());

// The layout test: sizes and offsets as the kernel's headers have them (checked at compile time).
const _: () = {
    assert!(size_of::<UffdioApi>() == 24);
    assert!(size_of::<UffdioRange>() == 16);
    assert!(size_of::<UffdioRegister>() == 32);
    assert!(offset_of!(UffdioRegister, mode) == 16);
    assert!(size_of::<UffdioWriteprotect>() == 24);
    assert!(offset_of!(UffdioWriteprotect, mode) == 16);
    assert!(size_of::<PageRegion>() == 24);
    assert!(size_of::<PmScanArg>() == 96);
    assert!(offset_of!(PmScanArg, walk_end) == 32);
    assert!(offset_of!(PmScanArg, vec_len) == 48);
    assert!(offset_of!(PmScanArg, max_pages) == 56);
    assert!(offset_of!(PmScanArg, return_mask) == 88);
    // The numbers the kernel's headers print (checked by hand against 6.18's uapi headers).
    assert!(UFFDIO_API == 0xC018_AA3F);
    assert!(UFFDIO_REGISTER == 0xC020_AA00);
    assert!(UFFDIO_UNREGISTER == 0x8010_AA01);
    assert!(UFFDIO_WRITEPROTECT == 0xC018_AA06);
    assert!(PAGEMAP_SCAN == 0xC060_6610);
};
