//! criu-workload: the workload of the CRIU tests (migration/tests/criu_*.rs, live_runc.rs).
//!
//! ```text
//! criu-workload <socket> <mib> <seed>
//! ```
//!
//! std only, one thread, so it builds as a static binary (scripts/build-static.sh) that runs as
//! a plain process and as the only program of a `FROM scratch` image. It calls `setsid` so CRIU
//! can dump it without the session or terminal of whoever started it, fills `<mib>` MiB with a
//! xorshift stream from `<seed>` (so a test knows what the memory must hold; the tests mirror
//! the fill and the checksum in `expected_checksum`), then serves a line protocol on the Unix
//! socket `<socket>`: `TICK` adds one to a counter in memory and answers it, `SUM` answers the
//! checksum of the whole buffer, `PID` its pid. A checkpoint that keeps memory keeps both the
//! counter and the checksum. Unlike the dirtier it never writes its buffer after the fill, so
//! successive checkpoints of it differ only in the pages its requests touch.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

extern "C" {
    fn setsid() -> i32;
}

fn checksum(mem: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &w in mem {
        h = (h ^ w).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn main() -> ExitCode {
    // SAFETY: setsid has no memory effects; failing (already a group leader) is harmless.
    unsafe {
        setsid();
    }
    let args: Vec<String> = std::env::args().collect();
    let (Some(sock), Some(Ok(mib)), Some(Ok(seed))) = (
        args.get(1),
        args.get(2).map(|a| a.parse::<usize>()),
        args.get(3).map(|a| a.parse::<u64>()),
    ) else {
        eprintln!("usage: criu-workload <socket> <mib> <seed>");
        return ExitCode::from(2);
    };
    let mut mem = vec![0u64; mib * 1024 * 1024 / 8];
    let mut x = seed | 1;
    for w in mem.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *w = x;
    }
    let _ = std::fs::remove_file(sock);
    let listener = match UnixListener::bind(sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("criu-workload: bind {sock}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut counter: u64 = 0;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let Ok(read_half) = conn.try_clone() else {
            continue;
        };
        let mut reader = BufReader::new(read_half);
        let mut w = conn;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let reply = match line.trim() {
                "TICK" => {
                    counter += 1;
                    counter.to_string()
                }
                "SUM" => checksum(&mem).to_string(),
                "PID" => std::process::id().to_string(),
                _ => "?".to_string(),
            };
            if writeln!(w, "{reply}").is_err() {
                break;
            }
        }
    }
    ExitCode::SUCCESS
}
