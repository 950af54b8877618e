//! An unmodified, off-the-shelf stateful server moved live by `brume migrate`: Debian's
//! `redis-server` (bookworm's package, installed by scripts/install-deps.sh), not written here
//! and knowing nothing of brume, in a `FROM scratch` image made of its binary, the shared
//! libraries `ldd` lists and a shell that starts it on the port the node gives it. It is
//! deployed with `checkpoint = "criu"` beside a root task (the relay) that calls it, on three
//! `brume node` daemons on loopback (each offers 150 mCPU, a task takes 100: one task per node,
//! so one node is free), on the process engine and on the Docker engine.
//!
//! A client writes `SET k<i> <i>` over RESP, one after the other, and counts the writes redis
//! acknowledged with `+OK`. It reaches redis the way the root task does: through the call
//! forwarder on the root's node (the `BRUME_CALL_KV` address the relay prints), which tunnels
//! each connection to wherever redis runs now. Meanwhile `brume migrate kv --to <free node>`
//! moves redis live (CRIU pre-copy; Docker's container through runc). The client reconnects
//! and sends the same write again when its connection breaks (a repeated SET is harmless),
//! goes on writing after the move, then reads every acknowledged key back from the moved
//! redis: none may be missing or wrong. Redis's `run_id` (made at its start) is the same
//! before and after, so this was the same process carried over, not a restart; exactly one
//! redis process runs, on the target, and only the target lists it. The longest gap between
//! two acknowledged writes is the pause a client saw: printed, never asserted.
//!
//! Waits are on events (an answer, a count reached), each bounded by a generous liveness
//! limit. A missing root, CRIU >= 4.2, Docker or runc is a skip recorded through
//! `brume_testnet::require`; a missing redis-server fails (scripts/install-deps.sh installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use brume_control::{Deployed, LogLines, PsRow};
use common::text;

const BRUME: &str = env!("CARGO_BIN_EXE_brume");
/// The Debian package's server.
const REDIS: &str = "/usr/bin/redis-server";
/// The freeze a live move may predict before it gives up: generous, since the test checks
/// that no acknowledged write is lost, not how fast the move is.
const MAX_DOWNTIME: &str = "120s";
/// How long anything the test waits for may take before it is called stuck: a liveness bound,
/// never a speed claim.
const LIVENESS: Duration = Duration::from_secs(60);
/// The latency budget of the deploy's map and of the call front -> kv: loose, so that a loaded
/// machine's loopback round trips never keep a node off the map (placement is not under test).
const BUDGET_MS: u64 = 5000;
/// Writes acknowledged before the move starts, and again after it ended.
const WRITES_AROUND: u64 = 200;
/// Bulk values redis holds before the move (`blob<j>`, 1 MiB each, pinned content), so its
/// memory is more than an empty server's.
const BLOBS: u64 = 8;
const BLOB_BYTES: usize = 1 << 20;
/// The writer's bounds: it stops after this many writes or this long, whatever happens.
const MAX_WRITES: u64 = 1_000_000;
const MAX_WRITING: Duration = Duration::from_secs(240);

/// How redis starts: on the node's `$PORT`, on loopback (tasks share the host's network), with
/// no persistence (its state lives in memory only, so only a live move can keep it). `exec`
/// leaves redis the task's only process. The relative path runs the image's own binary on both
/// engines: Docker's working directory is the image's `/`, the process engine's is the image's
/// root directory (it runs tasks without a chroot).
const REDIS_START: &str = "exec ./usr/bin/redis-server --port \"$PORT\" --bind 127.0.0.1 \
                           --protected-mode no --save '' --appendonly no";

/// The redis build context in `dir/kv`: redis-server, dash as /bin/sh, their libraries.
fn redis_context(dir: &Path, owner: &str) {
    let ctx = dir.join("kv");
    let rootfs = ctx.join("rootfs");
    // Debian's /usr/bin/redis-server is a link to redis-check-rdb, which acts by the name it
    // was started under: the image holds the file itself under the server's name.
    let redis = std::fs::canonicalize(REDIS).expect("resolve redis-server");
    common::add_host_program(&rootfs, &redis, REDIS);
    let sh = std::fs::canonicalize("/bin/sh").expect("resolve /bin/sh");
    common::add_host_program(&rootfs, &sh, "/bin/sh");
    let entrypoint = serde_json::to_string(&["/bin/sh", "-c", REDIS_START]).expect("json");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY rootfs/ /\nWORKDIR /\nENTRYPOINT {entrypoint}\n{}",
            common::docker_labels(owner)
        ),
    )
    .expect("write the Dockerfile");
}

/// The root task's build context in `dir/front`: the static relay.
fn front_context(dir: &Path, owner: &str) {
    let ctx = dir.join("front");
    std::fs::create_dir_all(&ctx).expect("mkdir front");
    std::fs::copy(common::relay_binary(), ctx.join("brume-relay")).expect("copy the relay");
    std::fs::write(ctx.join("Dockerfile"), common::relay_dockerfile(owner))
        .expect("write the Dockerfile");
}

/// front (the root, stateless) calls kv (redis, moved live with CRIU, so as root: CRIU cannot
/// dump a container task of another user here; docs/limits.md).
fn manifest(dir: &Path, service: &str) -> PathBuf {
    let text = format!(
        "[service]\nname = \"{service}\"\nroot = \"front\"\n\n\
         [[task]]\nname = \"front\"\nbuild = \"front\"\ncpu_millis = 100\nmemory_mb = 64\n\n\
         [[task]]\nname = \"kv\"\nbuild = \"kv\"\ncpu_millis = 100\nmemory_mb = 64\n\
         stateful = true\ncheckpoint = \"criu\"\nuser = \"root\"\n\n\
         [[call]]\nfrom = \"front\"\nto = \"kv\"\nlatency_ms = {BUDGET_MS}\ntraffic_mbps = 1\n"
    );
    let path = dir.join("service.toml");
    std::fs::write(&path, text).expect("write the manifest");
    path
}

struct Net(common::ServiceNet);

impl std::ops::Deref for Net {
    type Target = common::ServiceNet;

    fn deref(&self) -> &common::ServiceNet {
        &self.0
    }
}

impl Net {
    /// Waits until node 0's map within [`BUDGET_MS`] holds `n` nodes (each needs a measured
    /// round trip first), for at most [`LIVENESS`].
    fn wait_map(&self, n: usize) {
        let budget = format!("{BUDGET_MS}ms");
        let deadline = Instant::now() + LIVENESS;
        loop {
            let out = self.brume(0, &["map", "--json", "--fresh", "--budget", &budget]);
            let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if map["nodes"].as_array().map_or(0, Vec::len) == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node 0's map did not hold {n} nodes within {LIVENESS:?}; last: {map} {}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `task`'s row in the initiator's `brume ps`, which must list it running.
    fn row(&self, task: &str) -> brume_control::Row {
        let ps: Vec<PsRow> = self.json(0, &["ps", "--json"]);
        let row = ps
            .iter()
            .find(|r| r.instance.task == task)
            .unwrap_or_else(|| panic!("ps does not list {task}: {ps:#?}"));
        assert_eq!(row.instance.state, "running", "{ps:#?}");
        row.instance.clone()
    }

    /// The host of `task` in the initiator's `brume ps`.
    fn host_of(&self, task: &str) -> String {
        self.row(task).host
    }

    /// Whether node `i` lists `task` among what it runs (running or not).
    fn runs(&self, i: usize, task: &str) -> bool {
        let ps: Vec<PsRow> = self.json(i, &["ps", "--all", "--json"]);
        ps.iter().any(|r| r.instance.task == task)
    }

    /// The address of the forwarder on node 0 that reaches kv: the `BRUME_CALL_KV` the root
    /// task was given, from the line the relay prints first (`calls [KV=addr]`).
    fn kv_forwarder(&self) -> String {
        let deadline = Instant::now() + LIVENESS;
        loop {
            let logs: LogLines = self.json(0, &["logs", "front", "--json"]);
            let addr = logs.lines.iter().find_map(|l| {
                let calls = l.split_once("calls [")?.1.split(']').next()?;
                let kv = calls.split(' ').find_map(|c| c.strip_prefix("KV="))?;
                Some(kv.to_string())
            });
            if let Some(addr) = addr {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "front named no BRUME_CALL_KV within {LIVENESS:?}: {logs:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One RESP command as an array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// A RESP reply: a simple string (`+`), an error (`-`), an integer (`:`) or a bulk string
/// (`$`, `None` for the null bulk string).
#[derive(Debug, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
}

/// A connection to redis, through whatever address it is given.
struct Redis {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Redis {
    fn connect(addr: &str) -> std::io::Result<Redis> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        // A call held through a move waits as long as the move takes; this bound only keeps a
        // lost answer from hanging the test.
        s.set_read_timeout(Some(LIVENESS))?;
        Ok(Redis {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }

    fn call(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        self.w.write_all(&resp(args))?;
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let body = line
            .strip_suffix("\r\n")
            .ok_or_else(|| bad("a reply line without CRLF"))?;
        let (kind, rest) = body
            .split_at_checked(1)
            .ok_or_else(|| bad("an empty reply"))?;
        Ok(match kind {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(rest.parse().map_err(|_| bad("a bad integer"))?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad("a bad bulk length"))?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let len = usize::try_from(len).map_err(|_| bad("a huge bulk"))?;
                    if len > 1 << 20 {
                        return Err(bad("a bulk string over 1 MiB"));
                    }
                    let mut buf = vec![0; len + 2];
                    self.r.read_exact(&mut buf)?;
                    buf.truncate(len);
                    Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
                }
            }
            _ => return Err(bad("a reply of an unknown kind")),
        })
    }
}

/// Runs `args` on redis at `addr`, reconnecting and sending it again while the connection
/// fails (only for commands that may run twice), for at most [`LIVENESS`].
fn call_retrying(conn: &mut Option<Redis>, addr: &str, args: &[&str]) -> Resp {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let reply = match conn {
            Some(c) => c.call(args),
            None => Redis::connect(addr).and_then(|mut c| {
                let r = c.call(args);
                *conn = Some(c);
                r
            }),
        };
        match reply {
            Ok(r) => return r,
            Err(e) => {
                *conn = None;
                assert!(
                    Instant::now() < deadline,
                    "redis at {addr} did not answer {args:?} within {LIVENESS:?}: {e}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// redis's `run_id`: random, made when the server starts.
fn run_id(addr: &str) -> String {
    let mut conn = None;
    let Resp::Bulk(Some(info)) = call_retrying(&mut conn, addr, &["INFO", "server"]) else {
        panic!("INFO server gave no text");
    };
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .unwrap_or_else(|| panic!("no run_id in INFO: {info}"))
        .trim()
        .to_string()
}

/// The pinned content of `blob<j>`: printable bytes from a xorshift seeded with `j`.
fn blob(j: u64) -> String {
    let mut x = 0x9e37_79b9_7f4a_7c15 ^ (j + 1);
    (0..BLOB_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// What the writer saw.
struct Writes {
    /// Writes acknowledged with `+OK`: keys `k0..k<acked>`.
    acked: u64,
    /// Connections that broke (or never answered) and were made again.
    reconnects: u64,
    /// The longest time between two acknowledged writes: the pause the client saw.
    longest_gap: Duration,
}

/// Writes `SET k<i> <i>` for i = 0, 1, ... one at a time, until stopped (bounded).
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Writes>,
}

impl Writer {
    fn start(addr: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let (mut conn, mut reconnects) = (None::<Redis>, 0);
            let (mut last_ack, mut longest_gap) = (Instant::now(), Duration::ZERO);
            let mut i = 0;
            while !flag.load(Ordering::SeqCst) && i < MAX_WRITES && started.elapsed() < MAX_WRITING
            {
                let (key, value) = (format!("k{i}"), i.to_string());
                let reply = match &mut conn {
                    Some(c) => c.call(&["SET", &key, &value]),
                    None => Redis::connect(&addr).and_then(|mut c| {
                        let r = c.call(&["SET", &key, &value]);
                        conn = Some(c);
                        r
                    }),
                };
                match reply {
                    Ok(Resp::Simple(ok)) if ok == "OK" => {
                        let now = Instant::now();
                        if i > 0 {
                            longest_gap = longest_gap.max(now - last_ack);
                        }
                        last_ack = now;
                        i += 1;
                        count.store(i, Ordering::SeqCst);
                    }
                    // An answer that is not +OK is not an acknowledgement: the same write goes
                    // again (on a fresh connection, in case this one is confused).
                    Ok(_) | Err(_) => {
                        conn = None;
                        reconnects += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            Writes {
                acked: i,
                reconnects,
                longest_gap,
            }
        });
        Writer {
            stop,
            acked,
            thread,
        }
    }

    /// Waits until at least `n` writes were acknowledged in all.
    fn wait_acked(&self, n: u64) {
        let deadline = Instant::now() + LIVENESS;
        while self.acked.load(Ordering::SeqCst) < n {
            assert!(
                !self.thread.is_finished(),
                "the writer stopped after {} writes",
                self.acked.load(Ordering::SeqCst)
            );
            assert!(
                Instant::now() < deadline,
                "{} of {n} writes acknowledged within {LIVENESS:?}",
                self.acked.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    fn stop(self) -> Writes {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the writer thread")
    }
}

/// The pids of the live redis servers on this machine that listen on `port`. Redis rewrites
/// its command line (and with it the environment brume gave it) into its title,
/// `<program> 127.0.0.1:<port>`, which is what this reads.
fn redis_processes(port: u16) -> Vec<u32> {
    let title = format!(" 127.0.0.1:{port}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if comm.trim() == "redis-server"
            && !zombie
            && String::from_utf8_lossy(&cmdline)
                .trim_end_matches('\0')
                .ends_with(&title)
        {
            out.push(pid);
        }
    }
    out
}

fn redis_moves_live(engine: &str, service: &str) {
    assert!(
        Path::new(REDIS).exists(),
        "{REDIS} is missing: run `bash scripts/install-deps.sh` (it installs Debian's redis-server)"
    );
    let net = Net(common::ServiceNet::start(
        Path::new(BRUME),
        3,
        engine,
        150,
        service,
    ));
    let _leftovers = common::RuncLeftovers(service.to_string());
    let dir = net.0.dir().to_path_buf();
    redis_context(&dir, service);
    front_context(&dir, service);
    let m = manifest(&dir, service);
    net.wait_map(3);
    let budget = format!("{BUDGET_MS}ms");
    let m = m.to_str().expect("utf-8 path");
    let _: Deployed = net.json(0, &["deploy", m, "--budget", &budget, "--json"]);
    let nodes: Vec<(String, String)> = (0..3).map(|i| net.status(i)).collect();
    assert_eq!(net.host_of("front"), nodes[0].0, "the root stays on node 0");
    let kv_host = net.host_of("kv");
    let source = nodes
        .iter()
        .position(|(id, _)| *id == kv_host)
        .expect("kv's host is a node");
    assert_ne!(source, 0, "one task per node: kv is not beside front");
    let target = 3 - source;
    let addr = net.kv_forwarder();
    let before = run_id(&addr);
    let mut conn = None;
    for j in 0..BLOBS {
        let set = call_retrying(&mut conn, &addr, &["SET", &format!("blob{j}"), &blob(j)]);
        assert_eq!(set, Resp::Simple("OK".into()), "SET blob{j}");
    }
    // Closed: only the writer talks to redis during the move.
    conn = None;
    let port = common::port_of(&net.row("kv").address);
    let old = redis_processes(port);
    assert_eq!(old.len(), 1, "one redis process: {old:?}");

    let writer = Writer::start(addr.clone());
    writer.wait_acked(WRITES_AROUND);
    let at_move = writer.acked();
    let started = Instant::now();
    let moved = net.brume(
        0,
        &[
            "migrate",
            "kv",
            "--to",
            &nodes[target].1,
            "--max-downtime",
            MAX_DOWNTIME,
        ],
    );
    let took = started.elapsed();
    // The move's phases (pre-copy rounds, the final one, the downtime) on stderr, its line on
    // stdout.
    let (out, err) = (text(&moved.stdout), text(&moved.stderr));
    eprintln!("{err}{out}");
    assert!(
        moved.status.success(),
        "the live move of redis failed: {err}"
    );
    assert!(out.contains("(criu,"), "not moved live with CRIU: {out}");
    assert!(err.contains("final round"), "{err}");
    assert!(err.contains("restored on the target: downtime"), "{err}");
    let after_move = writer.acked();
    writer.wait_acked(after_move + WRITES_AROUND);
    let writes = writer.stop();

    // Every acknowledged write is there, with its value, in the redis that runs now.
    let mut missing = Vec::new();
    for j in 0..BLOBS {
        let key = format!("blob{j}");
        match call_retrying(&mut conn, &addr, &["GET", &key]) {
            Resp::Bulk(Some(v)) if v == blob(j) => {}
            Resp::Bulk(Some(v)) => missing.push((key, format!("{} other bytes", v.len()))),
            other => missing.push((key, format!("{other:?}"))),
        }
    }
    for i in 0..writes.acked {
        let key = format!("k{i}");
        match call_retrying(&mut conn, &addr, &["GET", &key]) {
            Resp::Bulk(Some(v)) if v == i.to_string() => {}
            other => missing.push((key, format!("{other:?}"))),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost or wrong, e.g. {:?}",
        missing.len(),
        writes.acked + BLOBS,
        &missing[..missing.len().min(10)]
    );
    // Nothing else was written: the acknowledged keys, and perhaps the next one, had a try of
    // it failed just before the writer was stopped (a write may arrive without its answer).
    let size = call_retrying(&mut conn, &addr, &["DBSIZE"]);
    let acked = (writes.acked + BLOBS) as i64;
    assert!(
        matches!(size, Resp::Int(n) if (acked..=acked + 1).contains(&n)),
        "redis holds {size:?} keys for {acked} acknowledged writes"
    );
    assert_eq!(
        run_id(&addr),
        before,
        "the same redis process answers (its memory moved): not a restart"
    );

    // Exactly one copy: on the target, and only there.
    assert_eq!(net.host_of("kv"), nodes[target].0);
    assert!(net.runs(target, "kv"), "the target does not list kv");
    assert!(!net.runs(source, "kv"), "the source still lists kv");
    assert_eq!(
        common::port_of(&net.row("kv").address),
        port,
        "redis listens on the port its restored socket kept"
    );
    let now = redis_processes(port);
    assert_eq!(now.len(), 1, "exactly one redis process: {now:?}");
    assert_ne!(now, old, "the source's redis process is gone");

    eprintln!(
        "{engine}: redis (Debian's {REDIS}) moved live in {took:?} end to end; {} writes \
         acknowledged ({at_move} before the move, {after_move} by its end), 0 lost; {} \
         reconnects; client-observed pause (longest gap between two acknowledged writes): {:?}",
        writes.acked, writes.reconnects, writes.longest_gap
    );
    let stopped = net.brume(0, &["stop", service]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

#[test]
fn redis_moves_live_on_processes_without_losing_a_write() {
    if !common::live_move_supported(
        "offshelf::redis_moves_live_on_processes_without_losing_a_write",
    ) {
        return;
    }
    redis_moves_live("process", &unique("redis"));
}

#[test]
fn redis_moves_live_on_docker_without_losing_a_write() {
    if !common::docker_live_supported("offshelf::redis_moves_live_on_docker_without_losing_a_write")
    {
        return;
    }
    redis_moves_live("docker", &unique("dredis"));
}
