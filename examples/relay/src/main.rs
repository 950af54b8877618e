//! brume-relay: the test workload for brume's engines, tunnels and migrations.
//!
//! A TCP line server on `127.0.0.1:$PORT` (or `$HOST:$PORT`; `PORT=0` takes a free port, named
//! in the `listening on` line it prints first). For each line a client sends, the
//! relay forwards the same line to every replica of every task it calls, reads one line back from
//! each, and answers `<BRUME_TASK>(<reply1>,<reply2>,...)`, or just `<BRUME_TASK>` when it calls
//! nobody. So a chain `a -> b -> c` answers `a(b(c))` and a fan-out `a -> b x2` answers `a(b,b)`:
//! a test reads the whole call graph, and where each hop went, from one reply.
//!
//! The callees come from the house convention: `BRUME_CALL_<CALLEE>` holds the comma-separated
//! addresses of every replica. Those variables are taken in name order; the per-replica
//! `BRUME_CALL_<CALLEE>_<i>` copies are skipped (a variable is a copy when its name minus `_<i>`
//! is itself a `BRUME_CALL_` variable). A callee that cannot be reached yields the slot
//! `error: <CALLEE> at <addr>: <why>` instead of crashing the relay.
//!
//! The line `STATE` is answered with the number of requests served in full so far: a request
//! whose call tree holds an error slot is answered but not counted, so a chain still coming up
//! (a callee not yet reachable) does not move the count. The counter is kept in memory, so a
//! checkpoint/restore that keeps memory keeps it: handy for migration tests.
//! `LOG <text>` prints `<text>` on the relay's stdout and answers `OK`.
//! The relay also speaks brume's application-level checkpoint convention (`checkpoint = "app"`):
//! `CHECKPOINT` is answered with `relay-state/1 served=<n>`, and a relay started with that line
//! in the file `BRUME_RESTORE_FILE` names counts on from `n`. A missing or malformed state stops
//! the relay at start, with status 2, rather than silently losing it. `RELAY_STATE_BYTES=<k>`
//! makes the state large: the line gains ` ballast=<k characters of a fixed pattern>`, and a
//! relay restored with the same setting checks the ballast arrived whole (a test of how brume
//! carries big states).
//! Each client connection gets a thread, and keeps its own connections to the callees, so many
//! clients are served at once. SIGTERM and SIGINT end the process at once with status 0: in a
//! `FROM scratch` container the relay is PID 1, and the kernel ignores signals PID 1 does not
//! handle.
//!
//! std only, so that it builds as a static binary for `FROM scratch` images.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// How long the relay waits for a callee to connect and to answer one line.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest line the relay reads, from a client or a callee.
const MAX_LINE: usize = 64 * 1024;

/// How a checkpoint line starts; the served count follows.
const STATE_PREFIX: &str = "relay-state/1 served=";

const BALLAST_KEY: &str = " ballast=";

/// `len` characters of a pattern that a cut, a shift or a swapped chunk would all break.
fn ballast(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i * 7 + i / 26) % 26) as u8))
        .collect()
}

/// The `CHECKPOINT` line for `served` requests and `ballast_len` characters of ballast.
fn state_line(served: u64, ballast_len: usize) -> String {
    if ballast_len == 0 {
        format!("{STATE_PREFIX}{served}")
    } else {
        format!(
            "{STATE_PREFIX}{served}{BALLAST_KEY}{}",
            ballast(ballast_len)
        )
    }
}

/// The served count a `CHECKPOINT` line carries, its ballast checked against `ballast_len`.
fn parse_state(line: &str, ballast_len: usize) -> Result<u64, String> {
    let short: String = line.chars().take(60).collect();
    let rest = line
        .trim()
        .strip_prefix(STATE_PREFIX)
        .ok_or_else(|| format!("{short:?}... is not a relay checkpoint ({STATE_PREFIX}<count>)"))?;
    let (count, extra) = match rest.split_once(BALLAST_KEY) {
        Some((count, b)) => (count, b),
        None => (rest, ""),
    };
    let served = count
        .parse()
        .map_err(|_| format!("{short:?}... does not carry a count ({STATE_PREFIX}<count>)"))?;
    if extra != ballast(ballast_len) {
        return Err(format!(
            "its ballast is {} characters, not the {ballast_len} of the pattern RELAY_STATE_BYTES \
             asks for, or differs from it",
            extra.len()
        ));
    }
    Ok(served)
}

/// One callee replica: the variable it came from and its address.
#[derive(Debug, Clone)]
struct Callee {
    var: String,
    addr: String,
}

/// What every connection thread shares.
struct Shared {
    task: String,
    callees: Vec<Callee>,
    served: AtomicU64,
    /// Characters of ballast in each `CHECKPOINT` line (`RELAY_STATE_BYTES`).
    ballast: usize,
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

extern "C" fn exit_now(_signum: i32) {
    // SAFETY: _exit is async-signal-safe; the relay keeps no state that must be flushed.
    unsafe { _exit(0) }
}

fn on_signals_exit() {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        signal(SIGINT, exit_now);
        signal(SIGTERM, exit_now);
    }
}

/// The callee replicas named by `BRUME_CALL_*` variables, in variable-name order then replica
/// order.
fn callees_from(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Callee> {
    let calls: BTreeMap<String, String> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("BRUME_CALL_") && k.len() > "BRUME_CALL_".len())
        .collect();
    let is_replica_copy = |name: &str| match name.rsplit_once('_') {
        Some((base, index)) => {
            !index.is_empty()
                && index.bytes().all(|b| b.is_ascii_digit())
                && calls.contains_key(base)
        }
        None => false,
    };
    let mut out = Vec::new();
    for (name, list) in &calls {
        if is_replica_copy(name) {
            continue;
        }
        for addr in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            out.push(Callee {
                var: name["BRUME_CALL_".len()..].to_string(),
                addr: addr.to_string(),
            });
        }
    }
    out
}

/// Reads one line (without its end) of at most [`MAX_LINE`] bytes; `None` at end of stream.
fn read_line<R: BufRead>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line longer than {MAX_LINE} bytes"),
        ));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// A connection to one callee replica, kept open across requests of one client connection.
struct CalleeConn {
    reader: BufReader<TcpStream>,
}

impl CalleeConn {
    fn open(addr: &str) -> std::io::Result<Self> {
        let sock = addr.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address resolved")
        })?;
        let stream = TcpStream::connect_timeout(&sock, CALL_TIMEOUT)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    fn call(&mut self, line: &str) -> std::io::Result<String> {
        let stream = self.reader.get_mut();
        stream.write_all(line.as_bytes())?;
        stream.write_all(b"\n")?;
        match read_line(&mut self.reader)? {
            Some(reply) => Ok(reply),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the callee closed the connection without answering",
            )),
        }
    }
}

/// Calls one replica, reusing `conn` when it is open and reconnecting once if it went stale.
fn call_one(callee: &Callee, conn: &mut Option<CalleeConn>, line: &str) -> String {
    for attempt in 0..2 {
        if conn.is_none() {
            match CalleeConn::open(&callee.addr) {
                Ok(c) => *conn = Some(c),
                Err(e) => return error_slot(callee, &e),
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.call(line) {
            Ok(reply) => return reply,
            Err(e) => {
                *conn = None;
                // A kept connection may have been closed by the callee (it restarted or moved):
                // try once on a fresh one. A fresh connection that fails is a real error.
                if attempt == 1 {
                    return error_slot(callee, &e);
                }
            }
        }
    }
    format!("error: {} at {}: unreachable", callee.var, callee.addr)
}

fn error_slot(callee: &Callee, e: &std::io::Error) -> String {
    // Commas separate the slots of a reply, so none may appear inside one.
    let why = e.to_string().replace(',', ";");
    format!("error: {} at {}: {why}", callee.var, callee.addr)
}

/// Serves one client connection until it closes.
fn serve(shared: &Shared, stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut conns: Vec<Option<CalleeConn>> = shared.callees.iter().map(|_| None).collect();
    while let Some(line) = read_line(&mut reader)? {
        if line == "STATE" {
            let n = shared.served.load(Ordering::SeqCst);
            writer.write_all(format!("{n}\n").as_bytes())?;
            continue;
        }
        if let Some(text) = line.strip_prefix("LOG ") {
            // A line on its own output, on request: a test's proof that the output still
            // reaches somebody (a pipe whose reader died would end the relay here).
            println!("{text}");
            writer.write_all(b"OK\n")?;
            continue;
        }
        if line == "CHECKPOINT" {
            let n = shared.served.load(Ordering::SeqCst);
            writer.write_all(state_line(n, shared.ballast).as_bytes())?;
            writer.write_all(b"\n")?;
            continue;
        }
        let reply = if shared.callees.is_empty() {
            shared.task.clone()
        } else {
            let replies: Vec<String> = thread::scope(|s| {
                let handles: Vec<_> = shared
                    .callees
                    .iter()
                    .zip(conns.iter_mut())
                    .map(|(callee, conn)| {
                        let line = line.as_str();
                        s.spawn(move || call_one(callee, conn, line))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| "error: the call panicked".to_string())
                    })
                    .collect()
            });
            format!("{}({})", shared.task, replies.join(","))
        };
        if !reply.contains("error: ") {
            shared.served.fetch_add(1, Ordering::SeqCst);
        }
        writer.write_all(reply.as_bytes())?;
        writer.write_all(b"\n")?;
    }
    Ok(())
}

fn main() -> ExitCode {
    on_signals_exit();
    let env: HashMap<String, String> = std::env::vars().collect();
    let Some(port) = env.get("PORT") else {
        eprintln!("brume-relay: PORT is not set; set PORT to the TCP port to listen on");
        return ExitCode::from(2);
    };
    let Ok(port) = port.trim().parse::<u16>() else {
        eprintln!("brume-relay: PORT={port:?} is not a port number (0-65535)");
        return ExitCode::from(2);
    };
    let host = env
        .get("HOST")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    let task = env
        .get("BRUME_TASK")
        .cloned()
        .unwrap_or_else(|| "relay".into());
    let ballast = match env
        .get("RELAY_STATE_BYTES")
        .map(|b| b.trim().parse::<usize>())
    {
        None => 0,
        Some(Ok(b)) => b,
        Some(Err(_)) => {
            eprintln!("brume-relay: RELAY_STATE_BYTES is not a number of bytes");
            return ExitCode::from(2);
        }
    };
    let served = match env.get("BRUME_RESTORE_FILE") {
        None => 0,
        Some(file) => match std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|l| parse_state(&l, ballast))
        {
            Ok(n) => n,
            Err(e) => {
                eprintln!("brume-relay: the state in BRUME_RESTORE_FILE={file}: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let callees = callees_from(env);
    let listener = match TcpListener::bind((host.as_str(), port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("brume-relay: cannot listen on {host}:{port}: {e}");
            return ExitCode::from(1);
        }
    };
    let shown: Vec<String> = callees
        .iter()
        .map(|c| format!("{}={}", c.var, c.addr))
        .collect();
    // The port bound, not the one asked for: with PORT=0 the kernel picks a free one, and this
    // line is how a test learns it (a port picked by the test and released before the relay
    // binds it may be taken by then).
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!(
        "brume-relay {task} listening on {host}:{port}, calls [{}], served {served}",
        shown.join(" ")
    );
    let shared = Arc::new(Shared {
        task,
        callees,
        served: AtomicU64::new(served),
        ballast,
    });
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    if let Err(e) = serve(&shared, stream) {
                        eprintln!("brume-relay: connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("brume-relay: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn callees_are_sorted_and_replica_copies_skipped() {
        let c = callees_from(vars(&[
            ("BRUME_CALL_C", "127.0.0.1:3"),
            ("BRUME_CALL_B", "127.0.0.1:1,127.0.0.1:2"),
            ("BRUME_CALL_B_0", "127.0.0.1:1"),
            ("BRUME_CALL_B_1", "127.0.0.1:2"),
            ("BRUME_CALL_C_0", "127.0.0.1:3"),
            ("PORT", "9"),
        ]));
        let got: Vec<(&str, &str)> = c.iter().map(|c| (&*c.var, &*c.addr)).collect();
        assert_eq!(
            got,
            vec![
                ("B", "127.0.0.1:1"),
                ("B", "127.0.0.1:2"),
                ("C", "127.0.0.1:3")
            ]
        );
    }

    #[test]
    fn a_task_whose_name_ends_in_digits_is_still_a_callee() {
        // `b-2` becomes BRUME_CALL_B_2; with no BRUME_CALL_B it is a callee, not a copy.
        let c = callees_from(vars(&[
            ("BRUME_CALL_B_2", "127.0.0.1:7"),
            ("BRUME_CALL_B_2_0", "127.0.0.1:7"),
        ]));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].var, "B_2");
    }

    fn spawn_relay(task: &str, callees: Vec<Callee>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            task: task.into(),
            callees,
            served: AtomicU64::new(0),
            ballast: 0,
        });
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                thread::spawn(move || serve(&shared, s));
            }
        });
        port
    }

    fn ask(port: u16, line: &str) -> String {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        writeln!(w, "{line}").unwrap();
        read_line(&mut BufReader::new(s)).unwrap().unwrap()
    }

    #[test]
    fn a_chain_and_a_fan_out_answer_with_the_call_tree() {
        let c = spawn_relay("c", vec![]);
        let b = spawn_relay(
            "b",
            vec![Callee {
                var: "C".into(),
                addr: format!("127.0.0.1:{c}"),
            }],
        );
        let a = spawn_relay(
            "a",
            vec![
                Callee {
                    var: "B".into(),
                    addr: format!("127.0.0.1:{b}"),
                },
                Callee {
                    var: "C".into(),
                    addr: format!("127.0.0.1:{c}"),
                },
            ],
        );
        assert_eq!(ask(a, "hello"), "a(b(c),c)");
        assert_eq!(ask(a, "again"), "a(b(c),c)");
        assert_eq!(ask(a, "STATE"), "2");
        assert_eq!(ask(c, "STATE"), "4");
    }

    #[test]
    fn a_checkpoint_line_carries_the_count_and_parses_back() {
        let a = spawn_relay("a", vec![]);
        assert_eq!(ask(a, "x"), "a");
        assert_eq!(ask(a, "y"), "a");
        let line = ask(a, "CHECKPOINT");
        assert_eq!(line, "relay-state/1 served=2");
        assert_eq!(parse_state(&line, 0), Ok(2));
        assert!(parse_state("relay-state/1 served=x", 0).is_err());
        assert!(parse_state("served=2", 0).is_err());
    }

    #[test]
    fn a_ballast_must_come_back_whole() {
        let line = state_line(5, 1000);
        assert_eq!(line.len(), "relay-state/1 served=5 ballast=".len() + 1000);
        assert_eq!(parse_state(&line, 1000), Ok(5));
        // Cut short, a character changed, or a relay set for another size: refused.
        assert!(parse_state(&line[..line.len() - 1], 1000).is_err());
        let mut changed = line.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] = if changed[last] == b'z' { b'y' } else { b'z' };
        let changed = String::from_utf8(changed).unwrap();
        assert!(parse_state(&changed, 1000).is_err());
        assert!(parse_state(&line, 999).is_err());
        assert!(parse_state(&line, 0).is_err());
        assert!(parse_state("relay-state/1 served=5", 1000).is_err());
    }

    #[test]
    fn an_unreachable_callee_is_an_error_slot() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        let a = spawn_relay(
            "a",
            vec![Callee {
                var: "B".into(),
                addr: format!("127.0.0.1:{port}"),
            }],
        );
        let reply = ask(a, "x");
        assert!(
            reply.starts_with(&format!("a(error: B at 127.0.0.1:{port}: ")),
            "{reply}"
        );
        assert!(!reply[2..reply.len() - 1].contains(','), "{reply}");
        // Answered, but not served in full: the count stays.
        assert_eq!(ask(a, "STATE"), "0");
    }
}
