//! Reading another process's memory with `process_vm_readv(2)`: one system call for up to
//! `IOV_MAX` ranges, no ptrace stop, no copy through a pipe. The task keeps running while its
//! pages are read; what it writes meanwhile the next scan reports again.

use std::io;

use super::abi::PAGE;
use super::region::Region;

/// Most ranges one `process_vm_readv` takes (`IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Reads exactly `buf.len()` bytes at `addr` of process `pid`.
pub fn read_exact(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let n = read_ranges(pid, &[(addr, buf.len() as u64)], buf)?;
    if n != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read {n} of {} bytes at {addr:#x}", buf.len()),
        ));
    }
    Ok(())
}

/// Reads the `(address, length)` ranges of process `pid` back to back into `out` (which must
/// hold their sum) and returns how many bytes arrived. The kernel stops at the first range it
/// cannot read (unmapped since it was listed), so a short count means the ranges from that
/// byte on were not read; the caller decides what that means.
pub fn read_ranges(pid: i32, ranges: &[(u64, u64)], out: &mut [u8]) -> io::Result<usize> {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    assert!(out.len() as u64 >= total, "output shorter than the ranges");
    let mut done = 0usize;
    for batch in ranges.chunks(IOV_MAX) {
        let want: usize = batch.iter().map(|r| r.1 as usize).sum();
        let local = libc::iovec {
            iov_base: out[done..].as_mut_ptr().cast(),
            iov_len: want,
        };
        let remote: Vec<libc::iovec> = batch
            .iter()
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len as usize,
            })
            .collect();
        // SAFETY: the local iovec covers `want` bytes of `out`, which is at least that long
        // from `done` on (asserted above); the remote addresses are only read by the kernel.
        let n = unsafe {
            libc::process_vm_readv(
                pid,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // EFAULT: the first range of this batch is gone; a short read, not an error.
            if e.raw_os_error() == Some(libc::EFAULT) {
                return Ok(done);
            }
            return Err(e);
        }
        done += n as usize;
        if (n as usize) < want {
            return Ok(done);
        }
    }
    Ok(done)
}

/// Reads the pages of `regions` of process `pid`: the runs read and their bytes back to back.
///
/// Fast path, one `process_vm_readv` per 1024 runs. A run it cannot read whole is read again
/// page by page through `/proc/PID/mem`, which also reads pages made unreadable (`PROT_NONE`)
/// since they were listed: a written page left unread would leave a stale copy that no later
/// scan reports again. A page neither can read is unmapped: it no longer exists, and a mapping
/// made there later is new to the tracker, so leaving it out is exact.
pub fn read_regions(pid: i32, regions: &[Region]) -> io::Result<(Vec<Region>, Vec<u8>)> {
    let total: u64 = regions.iter().map(|r| r.end - r.start).sum();
    let mut data = vec![0u8; total as usize];
    let mut read = Vec::with_capacity(regions.len());
    let mut at = 0usize; // bytes of `data` filled
    let mut i = 0;
    let mut mem: Option<std::fs::File> = None;
    while i < regions.len() {
        let batch = &regions[i..regions.len().min(i + IOV_MAX)];
        let ranges: Vec<(u64, u64)> = batch.iter().map(|r| (r.start, r.end - r.start)).collect();
        let n = read_ranges(pid, &ranges, &mut data[at..])?;
        // The runs read whole.
        let mut got = 0usize;
        let mut whole = 0;
        for r in batch {
            let len = (r.end - r.start) as usize;
            if got + len > n {
                break;
            }
            got += len;
            whole += 1;
        }
        read.extend_from_slice(&batch[..whole]);
        at += got;
        i += whole;
        if whole < batch.len() {
            // The first run not read whole: page by page through /proc/PID/mem.
            let r = regions[i];
            if mem.is_none() {
                mem = Some(std::fs::File::open(format!("/proc/{pid}/mem"))?);
            }
            let file = mem.as_ref().expect("opened just above");
            let mut page = r.start;
            while page < r.end {
                let buf = &mut data[at..at + PAGE as usize];
                if pread_exact(file, buf, page).is_ok() {
                    match read.last_mut() {
                        Some(last) if last.end == page && last.why == r.why => last.end += PAGE,
                        _ => read.push(Region {
                            start: page,
                            end: page + PAGE,
                            why: r.why,
                        }),
                    }
                    at += PAGE as usize;
                }
                page += PAGE;
            }
            i += 1;
        }
    }
    data.truncate(at);
    Ok((read, data))
}

fn pread_exact(file: &std::fs::File, buf: &mut [u8], at: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, at)
}
