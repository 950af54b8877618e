//! What starting a program costs a process that holds much memory, with and without code of
//! ours in the child (`pre_exec`, which makes std fork instead of posix_spawn/vfork): the cost
//! a migration target paid to start `criu lazy-pages` inside the freeze while it held the
//! task's replica (docs/criu.md, "Starting criu from a process that holds the replica").
//!
//! `cargo run --release -p brume-migration --example spawn_cost -- [MIB] [RUNS]` (default 512
//! MiB held as 4 KiB pages, as the replica holds them, and 15 runs of each way, alternated).
//! Prints each way's median, minimum and maximum in ms and their ratio.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

fn spawn(fork: bool) -> f64 {
    let mut cmd = Command::new("/bin/true");
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    if fork {
        // SAFETY: the closure does nothing; its presence is what makes std fork.
        unsafe {
            cmd.pre_exec(|| Ok(()));
        }
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn /bin/true");
    let spawned = started.elapsed().as_secs_f64() * 1e3;
    child.wait().expect("wait");
    spawned
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let runs: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(15)
        .max(1);
    // The replica's shape: one boxed page per 4 KiB, each written.
    let pages: Vec<Box<[u8]>> = (0..mib * 256)
        .map(|i| vec![(i % 251) as u8; 4096].into_boxed_slice())
        .collect();
    let (mut forked, mut spawned) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        forked.push(spawn(true));
        spawned.push(spawn(false));
    }
    let (fm, fmin, fmax) = summary(forked);
    let (sm, smin, smax) = summary(spawned);
    println!(
        "holding {mib} MiB in {} pages, {runs} runs of each",
        pages.len()
    );
    println!("fork (pre_exec):   median {fm:.2} ms (min {fmin:.2}, max {fmax:.2})");
    println!("posix_spawn:       median {sm:.2} ms (min {smin:.2}, max {smax:.2})");
    println!("fork / posix_spawn = {:.1}x", fm / sm.max(1e-6));
}
