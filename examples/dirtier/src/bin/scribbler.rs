//! scribbler: the dirty-page tracker's workload (migration/tests/track.rs): a process that
//! changes its memory in every way a real program does, so a tracker that misses one of them
//! shows up as a page whose copy differs from the frozen task's memory.
//!
//! ```text
//! scribbler run <mib>     one epoch per byte read on stdin, one line "epoch N" on stdout after it
//! scribbler echo          copies stdin to stdout line by line (a task blocked in read(2))
//! ```
//!
//! `run`: two threads rewrite pages of a <mib> MiB region all the time (16 words, then a 1 ms
//! sleep: about 16,000 pages a second each at most); the main thread, each epoch (one per byte
//! its caller writes on stdin, so the caller knows an epoch's changes happened between two of
//! its looks): maps a new region and fills it, unmaps
//! the oldest of four, moves one with `mremap`, drops pages with `MADV_DONTNEED`, has the
//! kernel write a page (`read(2)` from a pipe), grows the heap, and every fourth epoch, twice, forks
//! a child that scribbles on its copy of the region until killed (or its parent dies). It then prints the epoch line
//! and waits in `read(2)` for the next byte (a tracker attaches to tasks blocked in system
//! calls). End of stdin ends it. Static, so scripts/build-static.sh builds it.

use std::io::{BufRead, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PAGE: usize = 4096;
/// Children forked in all (each scribbles on its copy of the region).
const FORKS: u64 = 2;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A private anonymous mapping of `len` bytes.
fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "mmap failed");
    p.cast()
}

/// The region the threads rewrite, shared by address (it lives until the process ends).
#[derive(Clone, Copy)]
struct Region(usize, usize);

// SAFETY: only an address and a length; the threads write disjoint bytes or race benignly on
// plain integers (the content does not matter, only that the tracker sees every write).
unsafe impl Send for Region {}

fn scribble(region: Region, seed: u64, counter: &AtomicU64) -> ! {
    let pages = region.1 / PAGE;
    let mut x = seed;
    loop {
        for _ in 0..16 {
            let page = (xorshift(&mut x) as usize) % pages;
            let word = (xorshift(&mut x) as usize) % (PAGE / 8);
            // SAFETY: page < pages and word < PAGE / 8, inside the mapping.
            unsafe {
                let p = (region.0 + page * PAGE + word * 8) as *mut u64;
                std::ptr::write_volatile(p, x);
            }
        }
        counter.fetch_add(16, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn run(mib: usize) {
    let len = mib << 20;
    let base = map(len);
    // Touch every page so the region starts resident.
    for i in (0..len).step_by(PAGE) {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile(base.add(i), 1) };
    }
    let region = Region(base as usize, len);
    let counter = Arc::new(AtomicU64::new(0));
    for seed in [0x9e37_79b9_7f4a_7c15u64, 0xd1b5_4a32_d192_ed03] {
        let counter = counter.clone();
        std::thread::spawn(move || scribble(region, seed, &counter));
    }
    let mut small: Vec<(*mut u8, usize)> = Vec::new();
    let mut heap: Vec<Vec<u8>> = Vec::new();
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut out = std::io::stdout();
    let mut stdin = std::io::stdin();
    let mut byte = [0u8; 1];
    for epoch in 0u64.. {
        if !matches!(stdin.read(&mut byte), Ok(1)) {
            return;
        }
        // A new mapping, filled.
        let n = 1 + (xorshift(&mut x) as usize % 4) * 64;
        let p = map(n * PAGE);
        for i in 0..n {
            // SAFETY: inside the new mapping.
            unsafe { std::ptr::write_volatile(p.add(i * PAGE + 8), epoch as u8 | 1) };
        }
        small.push((p, n * PAGE));
        if small.len() > 4 {
            let (old, l) = small.remove(0);
            // SAFETY: a mapping we made and no longer use.
            unsafe { libc::munmap(old.cast(), l) };
        }
        // Move one mapping elsewhere (the tracker must see its pages at the new address).
        if let Some(last) = small.first_mut() {
            // SAFETY: mremap of a mapping we own, allowed to move; its old address is
            // forgotten at once.
            let moved =
                unsafe { libc::mremap(last.0.cast(), last.1, last.1 + PAGE, libc::MREMAP_MAYMOVE) };
            if moved != libc::MAP_FAILED {
                last.0 = moved.cast();
                last.1 += PAGE;
                // SAFETY: the last page of the grown mapping.
                unsafe { std::ptr::write_volatile(last.0.add(last.1 - PAGE), epoch as u8) };
            }
        }
        // Drop two pages of the big region: they read as zeros from now on.
        let page = xorshift(&mut x) as usize % (len / PAGE - 2);
        // SAFETY: inside the region.
        unsafe { libc::madvise(base.add(page * PAGE).cast(), 2 * PAGE, libc::MADV_DONTNEED) };
        // The kernel writes a page: read(2) from a pipe into the region.
        let msg = epoch.to_le_bytes();
        // SAFETY: writing 8 bytes from a local; reading 8 bytes into the region.
        unsafe {
            libc::write(fds[1], msg.as_ptr().cast(), msg.len());
            let page = xorshift(&mut x) as usize % (len / PAGE);
            libc::read(fds[0], base.add(page * PAGE + 16).cast(), msg.len());
        }
        // The heap grows (brk or a malloc arena).
        heap.push(vec![epoch as u8; 3 * PAGE + 17]);
        if heap.len() > 64 {
            heap.remove(0);
        }
        if epoch % 4 == 3 && epoch < 4 * FORKS {
            // SAFETY: the child only runs `scribble` (no locks held across fork matter: it
            // never allocates) on its copy of the region until it is killed, or its parent
            // dies.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                scribble(region, epoch, &AtomicU64::new(0));
            }
        }
        let _ = writeln!(
            out,
            "epoch {epoch} writes {}",
            counter.load(Ordering::Relaxed)
        );
        let _ = out.flush();
    }
}

fn echo() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("run") => {
            let mib = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(64);
            run(mib)
        }
        Some("echo") => echo(),
        _ => {
            eprintln!("usage: scribbler run <mib> | scribbler echo");
            std::process::exit(2);
        }
    }
}
