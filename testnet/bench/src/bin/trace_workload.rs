//! brume-trace-workload: the task `brume trace checkpoints` dumps. One binary whose shape is set
//! on the command line, so the trace can vary exactly what a checkpoint's duration may depend
//! on: memory, how fast it is rewritten, threads, processes, open files and sockets.
//!
//! ```text
//! brume-trace-workload <dir> <mib> <dirty_mib_per_s> <threads> <procs> <files> <sockets>
//! ```
//!
//! It calls `setsid` (CRIU dumps it without `--shell-job`), opens `<files>` regular files under
//! `<dir>/files` (4 KiB written into each, kept open) and `<sockets>` sockets (in turn a TCP
//! listener and a UDP socket on 127.0.0.1 and a Unix socket pair, which counts as two), then
//! forks until it is `<procs>` processes (the files and sockets are inherited, as a server's
//! workers inherit them). Each process maps its share of `<mib>` MiB, writes every page, starts
//! `<threads>` threads that rewrite random pages of its share (together `<dirty_mib_per_s>`
//! across the task, paced in 10 ms ticks; a tick never catches up more than 50 ms, so a frozen
//! task does not burst afterwards; 0 leaves the threads idle), and creates `<dir>/ready-<k>`.
//! Every process dies with its parent (`PR_SET_PDEATHSIG`); the caller kills the group.

use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

struct Shape {
    dir: String,
    mib: usize,
    dirty_mib_s: f64,
    threads: usize,
    procs: usize,
    files: usize,
    sockets: usize,
}

fn parse(args: &[String]) -> Result<Shape, String> {
    if args.len() != 8 {
        return Err("usage: brume-trace-workload <dir> <mib> <dirty_mib_per_s> <threads> <procs> <files> <sockets>".into());
    }
    let num = |i: usize, what: &str| -> Result<usize, String> {
        args[i]
            .parse()
            .map_err(|_| format!("{what} must be a whole number: {:?}", args[i]))
    };
    let dirty_mib_s: f64 = args[3]
        .parse()
        .map_err(|_| format!("dirty MiB/s must be a number: {:?}", args[3]))?;
    Ok(Shape {
        dir: args[1].clone(),
        mib: num(2, "MiB")?,
        dirty_mib_s: dirty_mib_s.max(0.0),
        threads: num(4, "threads")?.max(1),
        procs: num(5, "processes")?.max(1),
        files: num(6, "files")?,
        sockets: num(7, "sockets")?,
    })
}

/// A private anonymous mapping of `len` bytes, every page written.
fn map_and_touch(len: usize, seed: u64) -> Result<usize, String> {
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
    if p == libc::MAP_FAILED {
        return Err(format!(
            "mmap {len} bytes: {}",
            std::io::Error::last_os_error()
        ));
    }
    let base = p as usize;
    let mut x = seed | 1;
    for page in 0..len / PAGE {
        for word in 0..8 {
            // SAFETY: inside the mapping just made (page < len / PAGE, word * 8 < PAGE).
            unsafe {
                std::ptr::write_volatile(
                    (base + page * PAGE + word * 8) as *mut u64,
                    xorshift(&mut x),
                );
            }
        }
    }
    Ok(base)
}

/// Rewrites random pages of `[base, base + len)` at `pages_per_s`, forever.
fn dirty(base: usize, len: usize, pages_per_s: f64, seed: u64) -> ! {
    let pages = (len / PAGE).max(1);
    let mut x = seed | 1;
    let mut last = Instant::now();
    let mut owed = 0.0f64;
    loop {
        std::thread::sleep(Duration::from_millis(10));
        if pages_per_s <= 0.0 || len < PAGE {
            continue;
        }
        let now = Instant::now();
        owed += now
            .duration_since(last)
            .min(Duration::from_millis(50))
            .as_secs_f64()
            * pages_per_s;
        last = now;
        while owed >= 1.0 {
            let page = (xorshift(&mut x) as usize) % pages;
            for word in 0..8 {
                // SAFETY: page < pages = len / PAGE, word * 64 < PAGE: inside the mapping.
                unsafe {
                    std::ptr::write_volatile(
                        (base + page * PAGE + word * 64) as *mut u64,
                        xorshift(&mut x),
                    );
                }
            }
            owed -= 1.0;
        }
    }
}

/// Keeps `n` sockets open (leaked on purpose: they live as long as the process).
fn open_sockets(n: usize) -> Result<(), String> {
    let mut made = 0;
    let mut i = 0;
    while made < n {
        match i % 3 {
            0 => {
                let l = std::net::TcpListener::bind("127.0.0.1:0")
                    .map_err(|e| format!("tcp listen: {e}"))?;
                std::mem::forget(l);
                made += 1;
            }
            1 => {
                let u = std::net::UdpSocket::bind("127.0.0.1:0")
                    .map_err(|e| format!("udp bind: {e}"))?;
                std::mem::forget(u);
                made += 1;
            }
            _ => {
                let pair = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
                std::mem::forget(pair);
                made += 2;
            }
        }
        i += 1;
    }
    Ok(())
}

fn open_files(dir: &str, n: usize) -> Result<(), String> {
    use std::io::Write;
    let files = format!("{dir}/files");
    std::fs::create_dir_all(&files).map_err(|e| format!("mkdir {files}: {e}"))?;
    for i in 0..n {
        let path = format!("{files}/f{i}");
        let mut f = std::fs::File::create(&path).map_err(|e| format!("create {path}: {e}"))?;
        f.write_all(&[i as u8; PAGE])
            .map_err(|e| format!("write {path}: {e}"))?;
        std::mem::forget(f);
    }
    Ok(())
}

fn run(shape: &Shape) -> Result<(), String> {
    // SAFETY: setsid has no memory effects; failing (already a group leader) is harmless.
    unsafe { libc::setsid() };
    open_files(&shape.dir, shape.files)?;
    open_sockets(shape.sockets)?;
    // Fork the other processes; `k` is this process's index.
    let mut k = 0;
    for i in 1..shape.procs {
        // SAFETY: no other thread exists yet, so the child may run any code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: prctl has no memory effects.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            k = i;
            break;
        }
    }
    let share = (shape.mib << 20) / shape.procs / PAGE * PAGE;
    let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(k as u64 + 1);
    let base = if share > 0 {
        map_and_touch(share, seed)?
    } else {
        0
    };
    let pages_per_s = shape.dirty_mib_s * 256.0 / (shape.threads * shape.procs) as f64;
    for t in 0..shape.threads {
        // Each thread its own slice, so two never rewrite the same page at once.
        let slice = share / shape.threads / PAGE * PAGE;
        let start = base + t * slice;
        let tseed = seed ^ (t as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        std::thread::spawn(move || dirty(start, slice, pages_per_s, tseed));
    }
    let ready = format!("{}/ready-{k}", shape.dir);
    std::fs::File::create(&ready).map_err(|e| format!("create {ready}: {e}"))?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match parse(&args).and_then(|s| run(&s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brume-trace-workload: {e}");
            ExitCode::FAILURE
        }
    }
}
