//! `brume migrate` and `brume drain` end to end: four real `brume node` daemons on loopback, the
//! relay chain front -> mid -> back deployed from node 0 (one task per node: each node offers
//! 150 mCPU and a task takes 100, so exactly one node is free), then moves, on the real Docker
//! engine and on the process engine:
//!
//! * mid (`checkpoint = "app"`) moves to the free node, asked on the initiator (which forwards
//!   to mid's host): its served count continues on the new host, the chain answers through the
//!   switched tunnels, and `brume ps` on the initiator shows the new host;
//! * a move to a node without room is refused by that node, a move to a node nobody can reach
//!   fails, and a move that cannot meet its deadline gives up: each time mid keeps running where
//!   it is, with its count;
//! * back (stateless) moves cold to the node mid left;
//! * `brume drain` on node 0 moves front away too, and the chain still answers from there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;

use common::{port_of, text};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The relay chain with mid stateful, carrying its state by the application-level checkpoint.
fn manifest(dir: &Path, service: &str) -> PathBuf {
    let m = brume::bench::deploy::manifest(dir, service).expect("a manifest");
    let text = std::fs::read_to_string(&m).expect("read manifest").replace(
        "name = \"mid\"\nbuild = \"ctx\"\n",
        "name = \"mid\"\nbuild = \"ctx\"\nstateful = true\ncheckpoint = \"app\"\n",
    );
    assert!(text.contains("checkpoint = \"app\""), "{text}");
    std::fs::write(&m, text).expect("write manifest");
    m
}

struct Net(common::ServiceNet);

impl Net {
    fn brume(&self, i: usize, args: &[&str]) -> Output {
        self.0.brume(i, args)
    }

    fn containers(&self) -> Vec<String> {
        self.0.containers()
    }

    fn json(&self, i: usize, args: &[&str]) -> serde_json::Value {
        let out = self.brume(i, args);
        assert!(
            out.status.success(),
            "brume {args:?} on node {i} failed: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("brume {args:?}: not JSON ({e}): {}", text(&out.stdout)))
    }

    fn status(&self, i: usize) -> (String, String) {
        let s = self.json(i, &["status", "--json"]);
        (
            format!("n{}", s["node_id"]),
            s["peer_id"].as_str().expect("peer id").to_string(),
        )
    }

    /// (task -> (host node id, port)) from the initiator's `brume ps`, every row running.
    fn placement(&self) -> BTreeMap<String, (String, u16)> {
        let ps = self.json(0, &["ps", "--json"]);
        let mut out = BTreeMap::new();
        for row in ps.as_array().expect("rows") {
            let r = &row[1];
            assert_eq!(r["state"], "running", "{ps:#}");
            out.insert(
                r["task"].as_str().expect("task").to_string(),
                (r["host"].as_str().expect("host").to_string(), port_of(r)),
            );
        }
        out
    }
}

/// Asks until the chain answers in full (a moved instance may take a moment to be reachable
/// through every tunnel), bounded.
fn chain_answers(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = common::ask(port, "hello");
        match &reply {
            Ok(r) if r == "front(mid(back))" => return r.clone(),
            _ if Instant::now() > deadline => panic!("the chain does not answer: {reply:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Calls the chain on one kept connection, as fast as it answers, until stopped (bounded).
struct Caller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>, Duration)>,
}

impl Caller {
    fn start(port: u16) -> Caller {
        use std::io::{BufRead, BufReader, Write};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect front");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut w = s.try_clone().expect("clone");
            let mut r = BufReader::new(s);
            let (mut calls, mut bad, mut longest) = (0u64, Vec::new(), Duration::ZERO);
            let started = Instant::now();
            while !flag.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(60)
            {
                let t = Instant::now();
                let mut line = String::new();
                let ok = writeln!(w, "hello").is_ok() && r.read_line(&mut line).is_ok();
                longest = longest.max(t.elapsed());
                calls += 1;
                if !ok || line.trim() != "front(mid(back))" {
                    bad.push(line.trim().to_string());
                    if !ok {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (calls, bad, longest)
        });
        Caller { stop, thread }
    }

    /// Calls made, the answers that were wrong, and the longest wait for one answer.
    fn stop(self) -> (u64, Vec<String>, Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("the caller thread")
    }
}

fn state(port: u16) -> u64 {
    common::ask(port, "STATE")
        .expect("STATE answers")
        .parse()
        .expect("a count")
}

fn moves_tasks_between_nodes(engine: &str) {
    let service = unique("move");
    let net = Net(common::ServiceNet::start(
        Path::new(BRUME),
        4,
        engine,
        150,
        &service,
    ));
    let dir = net.0.dir().to_path_buf();
    brume::bench::deploy::context(&dir, &common::relay_binary(), &service).expect("context");
    let m = manifest(&dir, &service);
    net.json(0, &["deploy", m.to_str().expect("utf-8 path"), "--json"]);
    let nodes: Vec<(String, String)> = (0..4).map(|i| net.status(i)).collect();
    let before = net.placement();
    let (front_host, front_port) = before["front"].clone();
    assert_eq!(front_host, nodes[0].0, "the root stays on the initiator");
    for _ in 0..5 {
        chain_answers(front_port);
    }
    let (mid_host, mid_port) = before["mid"].clone();
    assert_eq!(state(mid_port), 5, "mid served the five requests");
    let free: Vec<&(String, String)> = nodes
        .iter()
        .filter(|(id, _)| before.values().all(|(h, _)| h != id))
        .collect();
    assert_eq!(free.len(), 1, "one node is free: {before:?}");
    let free_node = free[0].clone();

    // A move to a node with no room (node 0 holds front) is refused there; mid stays, counting.
    let refused = net.brume(0, &["migrate", "mid", "--to", &nodes[0].1]);
    assert!(
        !refused.status.success(),
        "a move onto a full node succeeded"
    );
    let why = text(&refused.stderr);
    assert!(why.contains("not enough free resources"), "{why}");
    assert!(why.contains("still runs here"), "{why}");
    assert_eq!(net.placement()["mid"], (mid_host.clone(), mid_port));
    assert_eq!(state(mid_port), 5, "the refused move did not touch mid");
    chain_answers(front_port);

    // A target nobody can reach: refused after the bounded connect; mid is untouched.
    let nowhere = brume_overlay::PeerId::random().to_string();
    let refused = net.brume(0, &["migrate", "mid", "--to", &nowhere]);
    assert!(!refused.status.success(), "a move to nowhere succeeded");
    let why = text(&refused.stderr);
    assert!(why.contains("still runs here"), "{why}");
    assert_eq!(state(mid_port), 6, "the failed move did not touch mid");
    chain_answers(front_port);

    // A deadline that cannot be met: the move gives up and mid is untouched.
    let late = net.brume(0, &["migrate", "mid", "--deadline", "1ms"]);
    assert!(!late.status.success(), "a 1 ms move succeeded");
    let why = text(&late.stderr);
    assert!(
        why.contains("deadline") && why.contains("still runs here"),
        "{why}"
    );
    assert_eq!(net.placement()["mid"], (mid_host.clone(), mid_port));
    assert_eq!(state(mid_port), 7, "the late move did not touch mid");

    // mid moves (asked on the initiator, done by its host) to the free node with its count,
    // while a client keeps calling the chain on one connection: make-before-break means no
    // call fails, and the longest gap between answers is what the move costs a caller.
    let caller = Caller::start(front_port);
    let moved = net.json(0, &["migrate", "mid", "--to", "auto", "--json"]);
    let (calls, bad, longest_gap) = caller.stop();
    assert!(calls > 0, "the caller made no call during the move");
    assert_eq!(bad, Vec::<String>::new(), "calls failed during the move");
    assert_eq!(
        moved["host"].as_str(),
        Some(free_node.0.as_str()),
        "{moved:#}"
    );
    assert_eq!(moved["mode"], "app", "{moved:#}");
    let new_mid = port_of(&moved);
    // The caller's calls went through mid too, each counted once: before the move (in the
    // checkpoint) or after it, on the new mid. The one call in flight when the move cut the
    // old connection may have been counted by the old mid before the checkpoint and then
    // repeated by the caller: at most one extra.
    let counted = state(new_mid);
    assert!(
        (7 + calls..=8 + calls).contains(&counted),
        "the count continued: {counted} counted for 7 + {calls} calls served across the move"
    );
    chain_answers(front_port);
    assert_eq!(
        state(new_mid),
        counted + 1,
        "the chain now goes through the new mid"
    );
    let after = net.placement();
    assert_eq!(after["mid"], (free_node.0.clone(), new_mid), "{after:?}");
    eprintln!(
        "{engine}: mid moved in {} ms (callers held {} ms, {} bytes of state, {} node(s) told); \
         {calls} calls during the move, none failed, longest gap {longest_gap:?}",
        moved["elapsed_ms"], moved["held_ms"], moved["state_bytes"], moved["told"]
    );

    // back is stateless: it restarts cold on the node mid left.
    let moved = net.json(0, &["migrate", "back", "--json"]);
    assert_eq!(moved["host"].as_str(), Some(mid_host.as_str()), "{moved:#}");
    assert_eq!(moved["mode"], "cold", "{moved:#}");
    chain_answers(front_port);
    assert_eq!(state(port_of(&moved)), 1, "a cold back starts from zero");

    // Draining node 0 moves front to the last free node; the chain answers from there.
    let drained = net.json(0, &["drain", "--json"]);
    let lines = drained.as_array().expect("lines");
    assert_eq!(lines.len(), 1, "{drained:#}");
    let front = &lines[0]["outcome"]["Ok"];
    assert_eq!(front["task"], "front", "{drained:#}");
    let final_placement = net.placement();
    assert_ne!(
        final_placement["front"].0, nodes[0].0,
        "{final_placement:?}"
    );
    chain_answers(port_of(front));
    if engine == "docker" {
        assert_eq!(
            net.containers().len(),
            3,
            "one container per task, none left behind"
        );
    }
    let list = net.json(0, &["ps", "--all", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list:#}");
}

#[test]
fn tasks_move_between_nodes_on_processes() {
    moves_tasks_between_nodes("process");
}

#[test]
fn tasks_move_between_nodes_on_docker() {
    if !common::docker_available() {
        eprintln!("SKIPPED: no Docker daemon answers; this test needs the real engine");
        return;
    }
    moves_tasks_between_nodes("docker");
}

/// A node started with --drain-on-exit that is told to stop (SIGTERM) moves its task to the
/// free node first: the chain keeps answering and mid's count continues there.
#[test]
fn a_leaving_node_moves_its_tasks_away_first() {
    let service = unique("leave");
    let mut net = Net(common::ServiceNet::start_with(
        Path::new(BRUME),
        4,
        "process",
        150,
        &["--drain-on-exit"],
        &service,
    ));
    let dir = net.0.dir().to_path_buf();
    brume::bench::deploy::context(&dir, &common::relay_binary(), &service).expect("context");
    let m = manifest(&dir, &service);
    net.json(0, &["deploy", m.to_str().expect("utf-8 path"), "--json"]);
    let nodes: Vec<(String, String)> = (0..4).map(|i| net.status(i)).collect();
    let before = net.placement();
    let (_, front_port) = before["front"].clone();
    for _ in 0..3 {
        chain_answers(front_port);
    }
    let (mid_host, _) = before["mid"].clone();
    let leaving = nodes
        .iter()
        .position(|(id, _)| *id == mid_host)
        .expect("mid's host is one of the nodes");
    assert_ne!(leaving, 0, "the root stays on node 0");
    assert!(
        net.0.net.stop(leaving, Duration::from_secs(60)),
        "the leaving node did not exit within 60 s"
    );
    chain_answers(front_port);
    let after = net.placement();
    let (new_host, new_port) = after["mid"].clone();
    assert_ne!(
        new_host, mid_host,
        "mid is still on the node that left: {after:?}"
    );
    assert_eq!(
        state(new_port),
        4,
        "mid's count continued: 3 before, 1 after"
    );
}
