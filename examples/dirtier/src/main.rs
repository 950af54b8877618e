//! A workload for live-migration tests and `brume bench migration`: it holds M MiB of state,
//! keeps rewriting pages of it at a set rate, and answers a line protocol on a Unix socket.
//!
//! Why this shape: a migration must be judged by whether the task's state survives exactly, so
//! the state is deterministic. It starts as a fill from a seed and each dirty step `i` rewrites
//! one page chosen and filled from `(seed, i)`, so the memory after `steps` steps is a pure
//! function of `(mib, seed, steps)`: `dirtier expect` rebuilds it in a fresh process and prints
//! its checksum, and a restored task whose `SUM` differs from that lost or mixed pages. Every
//! page is half random, half zeros, so it compresses about 2:1 and the compression level
//! matters. Dirtying is paced by the clock in 10 ms ticks; time spent frozen is not caught up
//! (a tick never covers more than 50 ms), so a migration does not cause a burst after it.
//!
//! The process calls `setsid` so CRIU can dump it without its parent's session or terminal, and
//! serves one request per connection, one connection at a time, closing each as soon as it has
//! answered, so between requests it holds no connected socket a dump would have to deal with.
//!
//! ```text
//! dirtier serve <socket> <mib> <seed> <dirty_mib_per_s>
//! dirtier expect <mib> <seed> <steps>      prints the checksum after <steps> steps
//! ```
//!
//! Requests (one line each, one answer line): `TICK` adds one to the counter and answers it,
//! `GET` answers the counter, `SUM` answers `<steps> <checksum>` of the memory now, `PID` the pid.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

extern "C" {
    fn setsid() -> i32;
}

/// Words of 8 bytes in a 4 KiB page.
const PAGE_WORDS: usize = 512;
/// The random first half of a page; the second half stays zero.
const RANDOM_WORDS: usize = PAGE_WORDS / 2;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The memory: its words, the seed and how many dirty steps were applied.
struct State {
    mem: Vec<u64>,
    seed: u64,
    steps: u64,
}

impl State {
    fn new(mib: usize, seed: u64) -> State {
        let mut mem = vec![0u64; mib * 1024 * 1024 / 8];
        let mut x = seed | 1;
        for page in mem.chunks_mut(PAGE_WORDS) {
            for w in page.iter_mut().take(RANDOM_WORDS) {
                *w = xorshift(&mut x);
            }
        }
        State {
            mem,
            seed,
            steps: 0,
        }
    }

    fn pages(&self) -> u64 {
        (self.mem.len() / PAGE_WORDS).max(1) as u64
    }

    /// Applies the next dirty step: one page chosen and refilled from `(seed, steps)`.
    fn step(&mut self) {
        let mut x = (self.seed ^ self.steps.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        for _ in 0..3 {
            xorshift(&mut x);
        }
        let page = (xorshift(&mut x) % self.pages()) as usize;
        let start = page * PAGE_WORDS;
        let end = (start + RANDOM_WORDS).min(self.mem.len());
        for w in &mut self.mem[start..end] {
            *w = xorshift(&mut x);
        }
        self.steps += 1;
    }

    fn checksum(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &w in &self.mem {
            h = (h ^ w).wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("{what} must be a number: {:?}", args[i]))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("serve") => serve(&args),
        Some("expect") => expect(&args),
        _ => Err("usage: dirtier serve <socket> <mib> <seed> <dirty_mib_per_s> | dirtier expect <mib> <seed> <steps>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dirtier: {e}");
            ExitCode::FAILURE
        }
    }
}

fn expect(args: &[String]) -> Result<(), String> {
    let mib: usize = arg(args, 2, "MiB")?;
    let seed: u64 = arg(args, 3, "seed")?;
    let steps: u64 = arg(args, 4, "steps")?;
    let mut state = State::new(mib, seed);
    for _ in 0..steps {
        state.step();
    }
    println!("{}", state.checksum());
    Ok(())
}

fn serve(args: &[String]) -> Result<(), String> {
    // SAFETY: setsid has no memory effects; failing (already a group leader) is harmless.
    unsafe {
        setsid();
    }
    let socket: String = arg(args, 2, "socket path")?;
    let mib: usize = arg(args, 3, "MiB")?;
    let seed: u64 = arg(args, 4, "seed")?;
    let rate_mib_s: f64 = arg(args, 5, "dirty MiB/s")?;
    let pages_per_sec = rate_mib_s * 256.0;
    let mut state = State::new(mib, seed);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| format!("bind {socket}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    let mut counter: u64 = 0;
    let mut last = Instant::now();
    let mut owed = 0.0f64;
    loop {
        let now = Instant::now();
        let dt = now.duration_since(last);
        if dt >= Duration::from_millis(10) {
            last = now;
            owed += dt.min(Duration::from_millis(50)).as_secs_f64() * pages_per_sec;
            while owed >= 1.0 {
                state.step();
                owed -= 1.0;
            }
        }
        match listener.accept() {
            Ok((conn, _)) => handle(conn, &mut state, &mut counter),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(300))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Answers the one request of a connection and closes it at once, so the task holds a
/// connected socket only for the microseconds of an answer (a dump that caught it then would
/// have to deal with a peer outside the task).
fn handle(conn: UnixStream, state: &mut State, counter: &mut u64) {
    if conn.set_nonblocking(false).is_err()
        || conn.set_read_timeout(Some(Duration::from_secs(2))).is_err()
    {
        return;
    }
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut line = String::new();
    if BufReader::new(read_half).read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let reply = match line.trim() {
        "TICK" => {
            *counter += 1;
            counter.to_string()
        }
        "GET" => counter.to_string(),
        "SUM" => format!("{} {}", state.steps, state.checksum()),
        "PID" => std::process::id().to_string(),
        _ => "?".to_string(),
    };
    let mut w = conn;
    let _ = writeln!(w, "{reply}");
}
