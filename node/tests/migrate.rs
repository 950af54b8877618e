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
//!
//! Waits are on events (an answer of the whole chain, a call made, a process gone), each with a
//! generous liveness deadline that reports what it saw last. Build contexts carry the labels
//! `brume.test=<run>` and `brume.test.owner=<service>`: the daemons' images and containers are
//! removed when a test ends (`common::ServiceNet`), runc leftovers by [`RuncLeftovers`]. A
//! missing Docker, CRIU (>= 4.2), runc or root is a skip recorded by `brume_testnet::require`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use brume_control::Deployed;
use brume_control::PsRow;
use brume_control::{DrainLine, Moved};
use brume_testnet::require::{self, Need};
use common::{docker_live_supported, live_move_supported, port_of, text, RuncLeftovers};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");
/// The freeze a live move in these tests may predict before it gives up: generous, since the
/// tests check that state moves exactly, not how fast (under load the default 2 s budget made
/// the planner abort moves that had no bug).
const MAX_DOWNTIME: &str = "120s";

/// How long anything a test waits for (an answer, a process gone, a daemon stopped) may take
/// before the test calls it stuck: a liveness bound, never a speed claim.
const LIVENESS: Duration = Duration::from_secs(60);

/// The relay chain's build context in `dir/ctx`, salted and labelled with `service`.
fn context(dir: &Path, service: &str) {
    common::chain_context(dir, service, service);
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The relay chain with mid stateful, carrying its state by the application-level checkpoint.
fn manifest(dir: &Path, service: &str) -> PathBuf {
    let m = brume_testnet::relay_service::manifest(dir, service).expect("a manifest");
    let text = std::fs::read_to_string(&m).expect("read manifest").replace(
        "name = \"mid\"\nbuild = \"ctx\"\n",
        "name = \"mid\"\nbuild = \"ctx\"\nstateful = true\ncheckpoint = \"app\"\n",
    );
    assert!(text.contains("checkpoint = \"app\""), "{text}");
    std::fs::write(&m, text).expect("write manifest");
    m
}

/// The test's nodes: [`common::ServiceNet`], whose commands it reaches through `Deref`.
struct Net(common::ServiceNet);

impl std::ops::Deref for Net {
    type Target = common::ServiceNet;

    fn deref(&self) -> &common::ServiceNet {
        &self.0
    }
}

/// mid's checkpoint lines for a live move. CRIU cannot dump a container task running as another
/// user here (reading its rlimits is refused), so a Docker task that moves live asks to run as
/// root (docs/limits.md); the process engine takes the same manifest.
const CRIU_MID: &str = "checkpoint = \"criu\"\nuser = \"root\"";

/// The relay chain (front -> mid -> back) deployed from node 0 on four nodes: where its tasks
/// run, and the node that runs none.
struct Chain {
    net: Net,
    service: String,
    /// Each node's (id as `ps` names hosts, peer id).
    nodes: Vec<(String, String)>,
    front_port: u16,
    mid_host: String,
    mid_port: u16,
    /// The node mid runs on.
    source: usize,
    /// A node that runs no task of the chain.
    free: usize,
}

impl Chain {
    /// Deploys the chain of `service` on `net`, mid's `checkpoint = "app"` line replaced by
    /// `mid` (e.g. [`CRIU_MID`]).
    fn deploy(net: Net, service: String, mid: &str) -> Chain {
        let dir = net.0.dir().to_path_buf();
        context(&dir, &service);
        let m = manifest(&dir, &service);
        let text = std::fs::read_to_string(&m)
            .expect("read manifest")
            .replace("checkpoint = \"app\"", mid);
        assert!(text.contains(mid), "{text}");
        std::fs::write(&m, text).expect("write manifest");
        let _: Deployed = net.json(0, &["deploy", m.to_str().expect("utf-8 path"), "--json"]);
        let nodes: Vec<(String, String)> = (0..4).map(|i| net.status(i)).collect();
        let before = net.placement();
        let (_, front_port) = before["front"].clone();
        let (mid_host, mid_port) = before["mid"].clone();
        let source = nodes
            .iter()
            .position(|(id, _)| *id == mid_host)
            .expect("mid's host is a node");
        let free = nodes
            .iter()
            .position(|(id, _)| before.values().all(|(h, _)| h != id))
            .expect("a free node");
        Chain {
            net,
            service,
            nodes,
            front_port,
            mid_host,
            mid_port,
            source,
            free,
        }
    }
}

/// Asks until the chain answers in full (a moved instance may take a moment to be reachable
/// through every tunnel), for at most [`LIVENESS`]; a failure says what it got last.
fn chain_answers(port: u16) -> String {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let reply = common::ask(port, "hello");
        match &reply {
            Ok(r) if r == "front(mid(back))" => return r.clone(),
            _ if Instant::now() > deadline => {
                panic!("the chain does not answer within {LIVENESS:?}; last: {reply:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Calls the chain on one kept connection, as fast as it answers, until stopped (bounded).
struct Caller {
    stop: Arc<AtomicBool>,
    /// Calls answered so far (right or wrong).
    calls: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<(u64, Vec<String>, Duration)>,
}

impl Caller {
    /// Starts calling, and returns once the first call has been answered, so a move started
    /// after this always has a caller in flight.
    fn start(port: u16) -> Caller {
        use std::io::{BufRead, BufReader, Write};
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), calls.clone());
        let thread = std::thread::spawn(move || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect front");
            // A call held through a move waits as long as the move takes; this bound only
            // keeps a lost answer from hanging the test.
            s.set_read_timeout(Some(LIVENESS)).expect("timeout");
            let mut w = s.try_clone().expect("clone");
            let mut r = BufReader::new(s);
            let (mut bad, mut longest) = (Vec::new(), Duration::ZERO);
            let started = Instant::now();
            while !flag.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(300) {
                let t = Instant::now();
                let mut line = String::new();
                let ok = writeln!(w, "hello").is_ok() && r.read_line(&mut line).is_ok();
                longest = longest.max(t.elapsed());
                count.fetch_add(1, Ordering::SeqCst);
                if !ok || line.trim() != "front(mid(back))" {
                    bad.push(line.trim().to_string());
                    if !ok {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (count.load(Ordering::SeqCst), bad, longest)
        });
        let caller = Caller {
            stop,
            calls,
            thread,
        };
        caller.wait_calls(1);
        caller
    }

    /// Waits until at least `n` calls have been answered in all.
    fn wait_calls(&self, n: u64) {
        let deadline = Instant::now() + LIVENESS;
        while self.calls.load(Ordering::SeqCst) < n {
            assert!(
                !self.thread.is_finished(),
                "the caller stopped after {} calls",
                self.calls.load(Ordering::SeqCst)
            );
            assert!(
                Instant::now() < deadline,
                "the caller made {} of {n} calls within {LIVENESS:?}",
                self.calls.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the caller has made another call after now (so a call crossed what just
    /// happened), then stops it: calls made, the answers that were wrong, and the longest wait
    /// for one answer.
    fn stop_after_one_more(self) -> (u64, Vec<String>, Duration) {
        self.wait_calls(self.calls.load(Ordering::SeqCst) + 1);
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the caller thread")
    }
}

/// Characters of ballast in mid's state in [`moves_tasks_between_nodes`]: over the 128 KiB an
/// environment string may hold.
const BIG_STATE: usize = 300_000;

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
    context(&dir, &service);
    let m = manifest(&dir, &service);
    // mid's state is bigger than Linux lets one environment string be (128 KiB): it must reach
    // the new mid whole all the same (the relay checks its ballast at start).
    let big = std::fs::read_to_string(&m).expect("read manifest").replace(
        "checkpoint = \"app\"\n",
        &format!("checkpoint = \"app\"\nenv = {{ RELAY_STATE_BYTES = \"{BIG_STATE}\" }}\n"),
    );
    assert!(big.contains("RELAY_STATE_BYTES"), "{big}");
    std::fs::write(&m, big).expect("write manifest");
    let _: Deployed = net.json(0, &["deploy", m.to_str().expect("utf-8 path"), "--json"]);
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
    let moved: Moved = net.json(0, &["migrate", "mid", "--to", "auto", "--json"]);
    let (calls, bad, longest_gap) = caller.stop_after_one_more();
    assert!(calls > 0, "the caller made no call during the move");
    assert_eq!(bad, Vec::<String>::new(), "calls failed during the move");
    assert_eq!(moved.host, free_node.0, "{moved:#?}");
    assert_eq!(moved.mode, "app", "{moved:#?}");
    assert!(
        moved.state_bytes > BIG_STATE as u64,
        "mid's whole state was carried: {moved:#?}"
    );
    let new_mid = port_of(&moved.address);
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
        moved.elapsed_ms, moved.held_ms, moved.state_bytes, moved.told
    );

    // back is stateless: it restarts cold on the node mid left.
    let moved: Moved = net.json(0, &["migrate", "back", "--json"]);
    assert_eq!(moved.host, mid_host, "{moved:#?}");
    assert_eq!(moved.mode, "cold", "{moved:#?}");
    chain_answers(front_port);
    assert_eq!(
        state(port_of(&moved.address)),
        1,
        "a cold back starts from zero"
    );

    // Draining node 0 moves front to the last free node; the chain answers from there.
    let drained: Vec<DrainLine> = net.json(0, &["drain", "--json"]);
    assert_eq!(drained.len(), 1, "{drained:#?}");
    let front = drained[0].outcome.as_ref().expect("front moved");
    assert_eq!(front.task, "front", "{drained:#?}");
    let final_placement = net.placement();
    assert_ne!(
        final_placement["front"].0, nodes[0].0,
        "{final_placement:?}"
    );
    chain_answers(port_of(&front.address));
    if engine == "docker" {
        assert_eq!(
            net.containers().len(),
            3,
            "one container per task, none left behind"
        );
    }
    let list: Vec<PsRow> = net.json(0, &["ps", "--all", "--json"]);
    assert_eq!(list.len(), 3, "{list:#?}");
}

#[test]
fn tasks_move_between_nodes_on_processes() {
    moves_tasks_between_nodes("process");
}

#[test]
fn tasks_move_between_nodes_on_docker() {
    if !common::need_docker("migrate::tasks_move_between_nodes_on_docker") {
        return;
    }
    moves_tasks_between_nodes("docker");
}

/// A node started with --drain-on-exit that is told to stop (SIGTERM) moves its task to the
/// free node first: the chain keeps answering and mid's count continues there. The drain maps
/// within the test budget: at the default 80 ms a loaded machine's ping can leave the free node
/// out of the map (seen in CI: the move found no node, mid was stopped and re-placed fresh).
#[test]
fn a_leaving_node_moves_its_tasks_away_first() {
    let service = unique("leave");
    let net = Net(common::ServiceNet::start_with(
        Path::new(BRUME),
        4,
        "process",
        150,
        &["--drain-on-exit", "--drain-budget-ms", "5000"],
        &service,
    ));
    leave_and_follow_mid(net, &service);
}

/// With a grace period the leaving node does not move at once: it schedules the move as late
/// as its prediction and the margin allow (as `brume drain --deadline`), logs the schedule, and
/// moves the task within it. What is checked is the schedule's arithmetic as logged (start =
/// grace - margin - predicted, never before now) and the move, not how long anything took: the
/// 20 s the grace leaves beside the margin is for a move predicted at a few seconds.
#[test]
fn a_leaving_node_with_a_grace_period_schedules_its_moves() {
    let service = unique("grace");
    let net = Net(common::ServiceNet::start_logged(
        Path::new(BRUME),
        4,
        "process",
        150,
        &[
            "--drain-on-exit",
            "--drain-budget-ms",
            "5000",
            "--drain-grace-ms",
            "120000",
            "--drain-margin-ms",
            "100000",
            "--log-format",
            "json",
        ],
        "warn,brume::migrate::control=info,brume::daemon::run=info",
        &service,
    ));
    let (net, leaving) = leave_and_follow_mid(net, &service);
    let log = std::fs::read_to_string(net.0.net.log(leaving)).expect("read the leaving node's log");
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let field = |e: &serde_json::Value, k: &str| e["fields"][k].as_u64();
    let scheduled: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["fields"]["message"] == "drain: move scheduled")
        .collect();
    assert_eq!(
        scheduled.len(),
        1,
        "one instance, one schedule line:\n{log}"
    );
    let s = scheduled[0];
    let (predicted, start, deadline, margin) = (
        field(s, "predicted_move_ms").expect("predicted_move_ms"),
        field(s, "start_in_ms").expect("start_in_ms"),
        field(s, "deadline_ms").expect("deadline_ms"),
        field(s, "margin_ms").expect("margin_ms"),
    );
    assert_eq!((deadline, margin), (120_000, 100_000), "{s}");
    assert_eq!(
        start,
        (deadline - margin).saturating_sub(predicted),
        "the move starts at grace - margin - predicted: {s}"
    );
    assert!(
        start > 0,
        "a move predicted at {predicted} ms within a 20 s window starts later than at once: {s}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "moved before leaving"),
        "the leaving node logged its move:\n{log}"
    );
}

/// mid with `max_runtime_s = 15` is moved on by its host before its 15 s there are up, with its
/// state (its count continues; a fresh start would answer at most 1). Nothing here measures how
/// long the move took: the test waits (bounded) for mid to run elsewhere, then for the chain, and
/// reads the count from wherever mid runs by then (it moves on again every 15 s).
#[test]
fn a_task_past_its_max_runtime_is_moved_on_with_its_state() {
    let service = unique("lease");
    let net = Net(common::ServiceNet::start_with(
        Path::new(BRUME),
        4,
        "process",
        150,
        &["--drain-budget-ms", "5000"],
        &service,
    ));
    let Chain {
        net,
        front_port,
        mid_host: first_host,
        ..
    } = Chain::deploy(net, service, "checkpoint = \"app\"\nmax_runtime_s = 15");
    for _ in 0..3 {
        chain_answers(front_port);
    }
    // Where mid runs, from the initiator's ledger; None while it is between hosts.
    let mid = || -> Option<(String, u16)> {
        let ps: Vec<brume_control::PsRow> = net.json(0, &["ps", "--json"]);
        ps.iter()
            .map(|row| &row.instance)
            .find(|r| r.task == "mid" && r.state == "running")
            .map(|r| (r.host.clone(), common::port_of(&r.address)))
    };
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if mid().is_some_and(|(host, _)| host != first_host) {
            break;
        }
        assert!(
            Instant::now() < until,
            "mid still runs on its first host 120 s after a deploy that gave it 15 s there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    chain_answers(front_port);
    let until = Instant::now() + LIVENESS;
    let count = loop {
        if let Some(n) = mid()
            .and_then(|(_, port)| common::ask(port, "STATE").ok())
            .and_then(|a| a.parse::<u64>().ok())
        {
            break n;
        }
        assert!(
            Instant::now() < until,
            "mid's STATE unanswered for {LIVENESS:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        count >= 4,
        "mid's count continued on its next host (3 before, at least 1 after): {count}"
    );
}

/// Deploys the chain, stops mid's node with SIGTERM and checks mid moved with its state; the
/// net and the index of the node that left, for what a test checks besides.
fn leave_and_follow_mid(net: Net, service: &str) -> (Net, usize) {
    let Chain {
        mut net,
        front_port,
        mid_host,
        source: leaving,
        ..
    } = Chain::deploy(net, service.to_string(), "checkpoint = \"app\"");
    for _ in 0..3 {
        chain_answers(front_port);
    }
    assert_ne!(leaving, 0, "the root stays on node 0");
    assert!(
        net.0.net.stop(leaving, Duration::from_secs(180)),
        "the leaving node did not exit within 180 s (its drain is bounded at 60 s, or its grace)"
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
    (net, leaving)
}

/// The pids of the live processes on this machine that run `task` of `service` (by
/// environment; not the `unshare` that started one).
fn processes_of(service: &str, task: &str) -> Vec<u32> {
    common::processes_with_env(&[
        &format!("BRUME_SERVICE={service}"),
        &format!("BRUME_TASK={task}"),
    ])
}

/// Waits until no process runs `task` of `service` (a stopped task's processes are reaped a
/// moment after the stop returns), for at most [`LIVENESS`].
fn wait_no_process(service: &str, task: &str) {
    let until = Instant::now() + LIVENESS;
    loop {
        let left = processes_of(service, task);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "{task} outlived the stop by {LIVENESS:?}: processes {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// mid with `checkpoint = "criu"` on the process engine moves live (CRIU pre-copy over the
/// overlay) to the free node: it runs there, listening on the same port, its served count
/// continues from where it was (memory carried; a cold start would answer 0), the chain
/// answers through it, and no mid process is left on the source. Moves to a node without room
/// or to a node nobody can reach leave it untouched where it was.
#[test]
fn a_criu_task_moves_live_with_its_memory() {
    if !live_move_supported("migrate::a_criu_task_moves_live_with_its_memory") {
        return;
    }
    let service = unique("live");
    let net = Net(common::ServiceNet::start(
        Path::new(BRUME),
        4,
        "process",
        150,
        &service,
    ));
    let Chain {
        net,
        service,
        nodes,
        front_port,
        mid_host,
        mid_port,
        source,
        free,
    } = Chain::deploy(net, service, CRIU_MID);
    for _ in 0..5 {
        chain_answers(front_port);
    }
    assert_eq!(state(mid_port), 5, "mid served the five requests");
    let old = processes_of(&service, "mid");
    assert_eq!(old.len(), 1, "one mid process: {old:?}");
    common::assert_runs_in_its_rootfs(old[0]);

    // No room on node 0 (it runs front): refused there, after the hold; mid runs on, counting.
    let refused = net.brume(
        0,
        &[
            "migrate",
            "mid",
            "--to",
            &nodes[0].1,
            "--max-downtime",
            MAX_DOWNTIME,
        ],
    );
    assert!(
        !refused.status.success(),
        "a move onto a full node succeeded"
    );
    let why = text(&refused.stderr);
    assert!(why.contains("not enough free resources"), "{why}");
    assert!(why.contains("still runs here"), "{why}");
    // A node nobody can reach: refused; mid untouched.
    let nowhere = brume_overlay::PeerId::random().to_string();
    let refused = net.brume(0, &["migrate", "mid", "--to", &nowhere]);
    assert!(!refused.status.success(), "a move to nowhere succeeded");
    assert!(text(&refused.stderr).contains("still runs here"));
    assert_eq!(
        processes_of(&service, "mid"),
        old,
        "the same mid process runs"
    );
    assert_eq!(net.placement()["mid"], (mid_host.clone(), mid_port));
    assert_eq!(state(mid_port), 5, "the refused moves did not touch mid");
    chain_answers(front_port);
    assert_eq!(state(mid_port), 6);

    // The live move, asked on the initiator, while a client keeps calling the chain; its
    // phases (rounds, downtime) on stderr.
    let caller = Caller::start(front_port);
    let started = Instant::now();
    let moved = net.brume(
        0,
        &[
            "migrate",
            "mid",
            "--to",
            &nodes[free].1,
            "--max-downtime",
            MAX_DOWNTIME,
        ],
    );
    let took = started.elapsed();
    let (calls, bad, longest_gap) = caller.stop_after_one_more();
    let (out, err) = (text(&moved.stdout), text(&moved.stderr));
    eprintln!("{err}{out}");
    assert!(moved.status.success(), "the live move failed: {err}");
    assert!(out.contains("(criu,"), "{out}");
    assert!(err.contains("final round"), "{err}");
    assert!(err.contains("restored on the target: downtime"), "{err}");
    let after = net.placement();
    assert_eq!(
        after["mid"],
        (nodes[free].0.clone(), mid_port),
        "mid runs on the free node, on the port its restored socket kept"
    );
    assert!(calls > 0, "the caller made no call");
    assert_eq!(bad, Vec::<String>::new(), "calls failed during the move");
    // The count continues from 6 plus the caller's calls: CRIU carried the memory (a cold
    // start would count from 0). The call in flight when the hold cut mid's connection may
    // have been counted and then repeated by the caller: at most one extra.
    let counted = state(mid_port);
    assert!(
        (6 + calls..=7 + calls).contains(&counted),
        "mid's count continued on the target: {counted} for 6 + {calls} calls"
    );
    chain_answers(front_port);
    assert_eq!(
        state(mid_port),
        counted + 1,
        "the chain goes through the restored mid"
    );
    let n = counted + 1;
    let now = processes_of(&service, "mid");
    assert_eq!(now.len(), 1, "exactly one mid process: {now:?}");
    assert_ne!(now, old, "the old process is gone");
    // Restored into the target's copy of its rootfs, in a mount namespace of its own again.
    common::assert_runs_in_its_rootfs(now[0]);
    let left: Vec<PsRow> = net.json(source, &["ps", "--all", "--json"]);
    assert!(
        left.iter().all(|r| r.instance.task != "mid"),
        "the source still lists mid: {left:#?}"
    );
    let there: Vec<PsRow> = net.json(free, &["ps", "--all", "--json"]);
    assert!(
        there
            .iter()
            .any(|r| r.instance.task == "mid" && r.instance.state == "running"),
        "the target does not run mid: {there:#?}"
    );
    assert!(
        stdout_read_elsewhere(now[0]),
        "the restored mid writes into a pipe nobody reads (CRIU did not inherit the engine's)"
    );
    let logs = net.brume(0, &["logs", "mid"]);
    assert!(
        text(&logs.stdout).contains("restored by CRIU"),
        "{}",
        text(&logs.stdout)
    );
    eprintln!(
        "live CRIU move of mid: {took:?} end to end, asked on the initiator; {calls} calls \
         during the move, none failed, longest gap {longest_gap:?}"
    );

    // And back, asked on the node that runs it now: a restored task moves again.
    let back = net.brume(
        free,
        &[
            "migrate",
            "mid",
            "--to",
            &nodes[source].1,
            "--max-downtime",
            MAX_DOWNTIME,
        ],
    );
    let err = text(&back.stderr);
    eprintln!("{err}{}", text(&back.stdout));
    assert!(back.status.success(), "the move back failed: {err}");
    assert_eq!(net.placement()["mid"], (mid_host.clone(), mid_port));
    assert_eq!(state(mid_port), n, "mid's count continued on the way back");
    chain_answers(front_port);
    assert_eq!(state(mid_port), n + 1);
    let again = processes_of(&service, "mid");
    assert_eq!(again.len(), 1, "exactly one mid process: {again:?}");

    // A target that died: the move fails and mid runs on where it is, with its count.
    let mut net = net;
    assert!(
        net.0.net.stop(free, LIVENESS),
        "the free node did not stop within {LIVENESS:?}"
    );
    let dead = net.brume(
        0,
        &[
            "migrate",
            "mid",
            "--to",
            &nodes[free].1,
            "--max-downtime",
            MAX_DOWNTIME,
        ],
    );
    assert!(!dead.status.success(), "a move to a stopped node succeeded");
    let why = text(&dead.stderr);
    assert!(why.contains("still runs here"), "{why}");
    assert_eq!(
        processes_of(&service, "mid"),
        again,
        "the same mid process runs"
    );
    assert_eq!(state(mid_port), n + 1, "the failed move did not touch mid");
}

/// Whether a process other than `pid` holds the pipe `pid`'s stdout goes to (the engine's log
/// pump, when CRIU handed the task the engine's pipe rather than one of its own).
fn stdout_read_elsewhere(pid: u32) -> bool {
    let Ok(pipe) = std::fs::read_link(format!("/proc/{pid}/fd/1")) else {
        return false;
    };
    if !pipe.to_string_lossy().starts_with("pipe:") {
        return false;
    }
    let me = pid.to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() != me)
        .any(|e| {
            std::fs::read_dir(e.path().join("fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == pipe))
            })
        })
}

/// A deterministic restore failure on chosen nodes: every node of the net runs with a `PATH`
/// that finds a `criu` wrapper (bash) first and with `TEST_NODE_DIR` naming its own directory
/// here. The wrapper logs each call into `<node dir>/criu-calls`; a restore while
/// `<node dir>/fail-restore` exists ([`RestoreFault::arm`]) is refused (exit 1, an `Error`
/// line on stderr), anything else execs the real criu. A restore is `criu restore ...` (the
/// process engine runs criu itself) or `criu swrk <fd>` started by a `runc ... restore ...`
/// (runc speaks CRIU's RPC, so its parent's argv says what for; the first such call, runc's
/// CRIU version check, is the one refused). Unlike a file swapped from a thread while the
/// pre-copy runs, this cannot miss its window on a loaded machine.
struct RestoreFault {
    dir: tempfile::TempDir,
    n: usize,
}

/// The marker file that makes the wrapper refuse a node's restores.
const FAIL_RESTORE: &str = "fail-restore";

impl RestoreFault {
    fn new(n: usize) -> RestoreFault {
        use std::os::unix::fs::PermissionsExt;
        let out = std::process::Command::new("sh")
            .args(["-c", "command -v criu"])
            .output()
            .expect("sh runs");
        let real = text(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && real.starts_with('/') && !real.contains('\''),
            "no criu in PATH: {real:?}"
        );
        let dir = common::tempdir();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir bin");
        let script = format!(
            r#"#!/bin/bash
# criu for a brume test's nodes: refuses a restore while $TEST_NODE_DIR/{FAIL_RESTORE} exists.
dir=${{TEST_NODE_DIR:?TEST_NODE_DIR is not set}}
restore=no
if [ "$1" = restore ]; then
    restore=yes
elif [ "$1" = swrk ] && tr '\0' '\n' < /proc/$PPID/cmdline | grep -qx restore; then
    restore=yes
fi
echo "restore=$restore: $*" >> "$dir/criu-calls"
if [ "$restore" = yes ] && [ -e "$dir/{FAIL_RESTORE}" ]; then
    echo "refused: $*" >> "$dir/criu-calls"
    echo "Error (test criu wrapper): restore refused on purpose ($dir/{FAIL_RESTORE} exists)" >&2
    exit 1
fi
exec '{real}' "$@"
"#
        );
        let wrapper = bin.join("criu");
        std::fs::write(&wrapper, script).expect("write the criu wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the criu wrapper");
        for i in 0..n {
            std::fs::create_dir(dir.path().join(format!("n{i}"))).expect("mkdir node dir");
        }
        RestoreFault { dir, n }
    }

    /// Node `i`'s additions to its environment.
    fn env(&self, i: usize) -> Vec<(OsString, OsString)> {
        assert!(i < self.n, "node {i} of {}", self.n);
        let mut path = OsString::from(self.dir.path().join("bin"));
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        vec![
            ("PATH".into(), path),
            ("TEST_NODE_DIR".into(), self.node(i).into()),
        ]
    }

    fn node(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}"))
    }

    /// From now on, node `i`'s restores fail.
    fn arm(&self, i: usize) {
        std::fs::write(self.node(i).join(FAIL_RESTORE), b"").expect("write the marker");
    }

    /// The criu calls node `i` made, one line each (`restore=yes|no: ARGS`, then `refused:
    /// ARGS` for a refused one).
    fn calls(&self, i: usize) -> Vec<String> {
        std::fs::read_to_string(self.node(i).join("criu-calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Checks that the wrapper did what the test relies on: the target refused a restore, and
    /// the source restored through the real criu (a restore it did not refuse).
    fn assert_target_refused_source_restored(&self, target: usize, source: usize) {
        let t = self.calls(target);
        let s = self.calls(source);
        eprintln!("criu calls on the target: {t:#?}\ncriu calls on the source: {s:#?}");
        assert!(
            t.iter().any(|l| l.starts_with("refused: ")),
            "the target's criu wrapper refused no restore: {t:#?}"
        );
        assert!(
            s.iter().any(|l| l.starts_with("restore=yes: "))
                && !s.iter().any(|l| l.starts_with("refused: ")),
            "the source did not restore through the real criu: {s:#?}"
        );
    }
}

/// A restore that fails on the target after the final dump (the target's `criu restore` is
/// refused, [`RestoreFault`]), with full-dump pre-copy (`live_migration = "pre-copy"`): the
/// source restores mid from its own final images, its engine takes the restored process, and
/// mid serves on where it was with its count. `brume stop` then stops that restored process too.
#[test]
fn a_restore_that_fails_on_the_target_brings_the_task_back_on_the_source() {
    restore_fails_on_the_target(
        "migrate::a_restore_that_fails_on_the_target_brings_the_task_back_on_the_source",
        "pre-copy",
    );
}

/// The same failure with tracked post-copy (`live_migration = "tracked"`, where the kernel tracks
/// written pages): the target's lazy restore is refused, the source's CRIU thaws the frozen
/// task in place (the very process, no restore), and mid serves on with its count.
#[test]
fn a_lazy_restore_that_fails_on_the_target_thaws_the_task_on_the_source() {
    let test = "migrate::a_lazy_restore_that_fails_on_the_target_thaws_the_task_on_the_source";
    let support = brume_migration::track::probe();
    if support.method != brume_migration::track::Method::Tracked {
        require::missing(test, Need::Tracking, &support.why);
        return;
    }
    restore_fails_on_the_target(test, "tracked");
}

fn restore_fails_on_the_target(test: &str, live: &str) {
    if !live_move_supported(test) {
        return;
    }
    let service = unique("back");
    let fault = RestoreFault::new(4);
    let env = |i: usize| {
        let mut env = fault.env(i);
        env.push(("BRUME_LIVE_MIGRATION".into(), live.into()));
        env
    };
    let net = Net(common::ServiceNet::start_with_env(
        Path::new(BRUME),
        4,
        "process",
        150,
        &[],
        &env,
        &service,
    ));
    let Chain {
        net,
        service,
        nodes,
        front_port,
        mid_host,
        mid_port,
        source,
        free,
    } = Chain::deploy(net, service, CRIU_MID);
    for _ in 0..3 {
        chain_answers(front_port);
    }
    assert_eq!(state(mid_port), 3);
    let old = processes_of(&service, "mid");
    assert_eq!(old.len(), 1, "{old:?}");

    fault.arm(free);
    let moved = net.brume(
        0,
        &[
            "migrate",
            "mid",
            "--to",
            &nodes[free].1,
            "--max-downtime",
            MAX_DOWNTIME,
        ],
    );
    let why = text(&moved.stderr);
    eprintln!("{why}");
    assert!(
        !moved.status.success(),
        "the move succeeded with a broken target"
    );
    if live == "pre-copy" {
        assert!(
            why.contains("after the final dump") && why.contains("runs here again"),
            "{why}"
        );
        fault.assert_target_refused_source_restored(free, source);
    } else {
        let t = fault.calls(free);
        assert!(
            t.iter().any(|l| l.starts_with("refused: ")),
            "the target's criu wrapper refused no restore: {t:#?}"
        );
    }
    assert_eq!(net.placement()["mid"], (mid_host, mid_port));
    assert_eq!(state(mid_port), 3, "the restored mid kept its count");
    chain_answers(front_port);
    assert_eq!(
        state(mid_port),
        4,
        "the chain goes through the restored mid"
    );
    let now = processes_of(&service, "mid");
    assert_eq!(now.len(), 1, "exactly one mid process: {now:?}");
    if live == "pre-copy" {
        assert_ne!(now, old, "mid runs as the process restored on the source");
    } else {
        assert_eq!(now, old, "mid runs on as the very process, thawed");
    }
    assert!(
        stdout_read_elsewhere(now[0]),
        "the restored mid writes into a pipe nobody reads"
    );

    // Stopping the service stops the process the engine adopted.
    let stopped = net.brume(0, &["stop", &service]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    wait_no_process(&service, "mid");
}

/// Deploys the relay chain with `checkpoint = "criu"` on the Docker engine, on nodes that run
/// `fault`'s criu wrapper if given and whose `live_migration` is `live` if given; the net, its
/// service, the nodes (id, host).
fn docker_criu_chain(prefix: &str, fault: Option<&RestoreFault>, live: Option<&str>) -> Chain {
    let service = unique(prefix);
    let env = |i| {
        let mut env = fault.map(|f| f.env(i)).unwrap_or_default();
        if let Some(live) = live {
            env.push(("BRUME_LIVE_MIGRATION".into(), live.into()));
        }
        env
    };
    let net = Net(common::ServiceNet::start_with_env(
        Path::new(BRUME),
        4,
        "docker",
        150,
        &[],
        &env,
        &service,
    ));
    Chain::deploy(net, service, CRIU_MID)
}

/// mid with `checkpoint = "criu"` on the Docker engine moves live: pre-copy rounds of `runc
/// checkpoint` of its container, restored on the free node as a runc container from a bundle
/// the target made from its own copy of the image. Its count continues exactly, one mid
/// process runs afterwards (the Docker container on the source is gone), ps and logs follow it,
/// it moves back (the runc container checkpointed in turn), and stopping the service stops the
/// runc container.
#[test]
fn a_docker_criu_task_moves_live_with_its_memory() {
    if !docker_live_supported("migrate::a_docker_criu_task_moves_live_with_its_memory") {
        return;
    }
    let Chain {
        net,
        service,
        nodes,
        front_port,
        mid_host: _,
        mid_port,
        source,
        free,
    } = docker_criu_chain("dlive", None, None);
    let _leftovers = RuncLeftovers(service.clone());
    for _ in 0..5 {
        chain_answers(front_port);
    }
    assert_eq!(state(mid_port), 5, "mid served the five requests");
    let old = processes_of(&service, "mid");
    assert_eq!(old.len(), 1, "one mid process: {old:?}");
    let containers_before = net.containers().len();

    let caller = Caller::start(front_port);
    let started = Instant::now();
    let moved = net.brume(
        0,
        &[
            "migrate",
            "mid",
            "--to",
            &nodes[free].1,
            "--max-downtime",
            MAX_DOWNTIME,
        ],
    );
    let took = started.elapsed();
    let (calls, bad, longest_gap) = caller.stop_after_one_more();
    let (out, err) = (text(&moved.stdout), text(&moved.stderr));
    eprintln!("{err}{out}");
    assert!(moved.status.success(), "the live move failed: {err}");
    assert!(out.contains("(criu,"), "{out}");
    assert!(err.contains("final round"), "{err}");
    assert!(err.contains("restored on the target: downtime"), "{err}");
    assert_eq!(
        net.placement()["mid"],
        (nodes[free].0.clone(), mid_port),
        "mid runs on the free node, on the same port"
    );
    assert!(calls > 0, "the caller made no call");
    assert_eq!(bad, Vec::<String>::new(), "calls failed during the move");
    let counted = state(mid_port);
    assert!(
        (5 + calls..=6 + calls).contains(&counted),
        "mid's count continued on the target: {counted} for 5 + {calls} calls"
    );
    chain_answers(front_port);
    assert_eq!(state(mid_port), counted + 1, "the chain goes through it");
    let n = counted + 1;
    let now = processes_of(&service, "mid");
    assert_eq!(now.len(), 1, "exactly one mid process: {now:?}");
    assert_ne!(now, old, "the old container's process is gone");
    assert_eq!(
        net.containers().len(),
        containers_before - 1,
        "the source's Docker container of mid is removed (mid runs as a runc container)"
    );
    let left: Vec<PsRow> = net.json(source, &["ps", "--all", "--json"]);
    assert!(
        left.iter().all(|r| r.instance.task != "mid"),
        "the source still lists mid: {left:#?}"
    );
    let there: Vec<PsRow> = net.json(free, &["ps", "--all", "--json"]);
    assert!(
        there
            .iter()
            .any(|r| r.instance.task == "mid" && r.instance.state == "running"),
        "the target does not run mid: {there:#?}"
    );
    let logs = net.brume(0, &["logs", "mid"]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    eprintln!(
        "live Docker move of mid: {took:?} end to end; {calls} calls during the move, none \
         failed, longest gap {longest_gap:?}; logs after: {:?}",
        text(&logs.stdout)
    );

    // And back, asked on the node that runs it now: the runc container the move restored is
    // checkpointed in turn and restored on the first node, its count going on; the free node
    // keeps nothing of it. Stopping the service stops the runc container.
    let again = net.brume(
        free,
        &[
            "migrate",
            "mid",
            "--to",
            &nodes[source].1,
            "--max-downtime",
            MAX_DOWNTIME,
        ],
    );
    let (out, err) = (text(&again.stdout), text(&again.stderr));
    eprintln!("{err}{out}");
    assert!(again.status.success(), "the second live move failed: {err}");
    assert_eq!(
        net.placement()["mid"],
        (nodes[source].0.clone(), mid_port),
        "mid runs on its first node again"
    );
    assert_eq!(state(mid_port), n, "mid's count went along the second move");
    chain_answers(front_port);
    assert_eq!(state(mid_port), n + 1, "the chain goes through it");
    let back = processes_of(&service, "mid");
    assert_eq!(back.len(), 1, "exactly one mid process: {back:?}");
    assert_ne!(back, now, "the free node's mid process is gone");
    let left: Vec<PsRow> = net.json(free, &["ps", "--all", "--json"]);
    assert!(
        left.iter().all(|r| r.instance.task != "mid"),
        "the free node still lists mid: {left:#?}"
    );
    let stopped = net.brume(0, &["stop", &service]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    wait_no_process(&service, "mid");
}

/// A restore that fails on the target (runc's CRIU is refused there, [`RestoreFault`]), with
/// full-dump pre-copy: the source restores mid as a runc container from the bundle it copied
/// before, its engine adopts it, mid serves on where it was with its count, exactly one mid
/// runs, and stopping the service stops it.
#[test]
fn a_docker_restore_that_fails_on_the_target_brings_the_task_back_on_the_source() {
    docker_restore_fails_on_the_target(
        "migrate::a_docker_restore_that_fails_on_the_target_brings_the_task_back_on_the_source",
        "pre-copy",
    );
}

/// The same failure with post-copy (`live_migration = "tracked"`: the dirty-page tracker's
/// rounds where the kernel has it, a lazy `runc checkpoint`, then the target's lazy `runc
/// restore`, refused there): the source's CRIU thaws the frozen Docker container in place. The
/// very process serves on with its count, still Docker's container (no runc container restored
/// on the source), and stopping the service stops it.
#[test]
fn a_docker_lazy_restore_that_fails_on_the_target_thaws_the_task_on_the_source() {
    let test =
        "migrate::a_docker_lazy_restore_that_fails_on_the_target_thaws_the_task_on_the_source";
    if let Err(e) = brume_migration::lazy::check_pipe_max_size() {
        require::missing(test, Need::Criu, &e.to_string());
        return;
    }
    docker_restore_fails_on_the_target(test, "tracked");
}

fn docker_restore_fails_on_the_target(test: &str, live: &str) {
    if !docker_live_supported(test) {
        return;
    }
    let fault = RestoreFault::new(4);
    let Chain {
        net,
        service,
        nodes,
        front_port,
        mid_host,
        mid_port,
        source,
        free,
    } = docker_criu_chain("dback", Some(&fault), Some(live));
    let _leftovers = RuncLeftovers(service.clone());
    for _ in 0..3 {
        chain_answers(front_port);
    }
    assert_eq!(state(mid_port), 3);
    let old = processes_of(&service, "mid");
    assert_eq!(old.len(), 1, "{old:?}");

    fault.arm(free);
    let moved = net.brume(
        0,
        &[
            "migrate",
            "mid",
            "--to",
            &nodes[free].1,
            "--max-downtime",
            MAX_DOWNTIME,
        ],
    );
    let why = text(&moved.stderr);
    eprintln!("{why}");
    assert!(
        !moved.status.success(),
        "the move succeeded with a broken target"
    );
    if live == "pre-copy" {
        assert!(
            why.contains("after the final checkpoint") && why.contains("runs here again"),
            "{why}"
        );
        fault.assert_target_refused_source_restored(free, source);
    } else {
        assert!(why.contains("thawed"), "{why}");
        let t = fault.calls(free);
        assert!(
            t.iter().any(|l| l.starts_with("refused: ")),
            "the target's criu wrapper refused no restore: {t:#?}"
        );
        assert!(
            t.iter().any(|l| l.contains("lazy-pages")),
            "the target ran no lazy-pages daemon (not a post-copy move?): {t:#?}"
        );
    }
    assert_eq!(net.placement()["mid"], (mid_host, mid_port));
    assert_eq!(state(mid_port), 3, "mid kept its count");
    chain_answers(front_port);
    assert_eq!(state(mid_port), 4, "the chain goes through mid");
    let now = processes_of(&service, "mid");
    assert_eq!(now.len(), 1, "exactly one mid process: {now:?}");
    if live == "pre-copy" {
        assert_ne!(
            now, old,
            "mid runs as the runc container restored on the source"
        );
    } else {
        assert_eq!(now, old, "mid runs on as the very process, thawed");
    }

    let stopped = net.brume(0, &["stop", &service]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    wait_no_process(&service, "mid");
}

/// The relay chain with mid `checkpoint = "criu"` (as root: see above) and the downtime budget
/// `budget_ms`, deployed on four process-engine nodes; the net, its service, the nodes (id,
/// peer), mid's host's index, a free node's index, mid's port and front's port.
fn budget_chain(prefix: &str, budget_ms: u64) -> Chain {
    let service = unique(prefix);
    let net = Net(common::ServiceNet::start(
        Path::new(BRUME),
        4,
        "process",
        150,
        &service,
    ));
    let mid = format!("{CRIU_MID}\ndowntime_budget_ms = {budget_ms}");
    Chain::deploy(net, service, &mid)
}

/// The real dumps node `i` learned from, as its `predictor.json` counts them.
fn dumps_learned(net: &Net, i: usize) -> u64 {
    let path = net.0.net.data(i).join("predictor.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} is not there: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("predictor.json is JSON");
    v["lost"]["dumps"].as_u64().expect("a dump count")
}

/// Node `i`'s dump models as `brume status` shows them.
fn predictor_status(net: &Net, i: usize) -> brume_control::PredictorView {
    let s: brume_control::StatusView = net.json(i, &["status", "--json"]);
    s.predictor.expect("the node reports its dump models")
}

/// A `checkpoint = "criu"` task whose `downtime_budget_ms` no freeze can meet (1 ms) is not
/// frozen: `brume migrate` fails with a reason naming the budget and the prediction, and mid
/// runs on where it was, the same process, with its count. `--force` moves it anyway; the
/// source then keeps the dumps it learned in `predictor.json`, a restarted source loads them
/// (same count), and a node whose `predictor.json` is corrupt still starts, refusing the file
/// and using the prior.
#[test]
fn an_impossible_downtime_budget_defers_a_live_move() {
    if !live_move_supported("migrate::an_impossible_downtime_budget_defers_a_live_move") {
        return;
    }
    let c = budget_chain("budget", 1);
    let net = &c.net;
    chain_answers(c.front_port);
    let old = processes_of(&c.service, "mid");
    assert_eq!(old.len(), 1, "one mid process: {old:?}");
    let count = state(c.mid_port);

    let deferred = net.brume(0, &["migrate", "mid", "--to", &c.nodes[c.free].1]);
    let why = text(&deferred.stderr);
    eprintln!("{why}");
    assert!(!deferred.status.success(), "a move over budget succeeded");
    assert!(why.contains("deferred"), "{why}");
    assert!(why.contains("downtime budget of 1 ms"), "{why}");
    assert!(why.contains("predicted downtime"), "{why}");
    assert!(why.contains("still runs here"), "{why}");
    assert_eq!(processes_of(&c.service, "mid"), old, "the same mid runs");
    assert_eq!(
        state(c.mid_port),
        count,
        "the deferred move did not touch mid"
    );
    chain_answers(c.front_port);
    assert_eq!(state(c.mid_port), count + 1, "mid still serves the chain");
    let mid_host = c.nodes[c.source].0.clone();
    assert_eq!(net.placement()["mid"], (mid_host, c.mid_port));

    // Forced: frozen whatever the prediction, and moved.
    let forced = net.brume(
        0,
        &["migrate", "mid", "--to", &c.nodes[c.free].1, "--force"],
    );
    let err = text(&forced.stderr);
    eprintln!("{err}{}", text(&forced.stdout));
    assert!(forced.status.success(), "the forced move failed: {err}");
    assert!(err.contains("restored on the target: downtime"), "{err}");
    assert_eq!(
        net.placement()["mid"],
        (c.nodes[c.free].0.clone(), c.mid_port)
    );
    assert_eq!(state(c.mid_port), count + 1, "mid's memory came along");

    // The source learned from the move's dumps and keeps them across a restart.
    let learned = dumps_learned(net, c.source);
    assert!(learned >= 1, "no dump learned");
    assert_eq!(predictor_status(net, c.source).dumps, learned);
    let mut c = c;
    assert!(
        c.net.0.net.stop(c.source, LIVENESS),
        "the source did not stop within {LIVENESS:?}"
    );
    c.net
        .0
        .net
        .restart(c.source)
        .expect("the source starts again");
    let after = predictor_status(&c.net, c.source);
    assert_eq!(
        after.dumps, learned,
        "the restarted source lost what it learned"
    );
    assert_eq!(after.refused, None);
    assert_eq!(
        after.pbmlr_features.get(..2),
        Some(&["1".to_string(), "ln_rss_gib".to_string()][..]),
        "status names PB-MLR's features, intercept and memory first: {after:?}"
    );

    // A corrupt state is refused; the node starts with the prior.
    assert!(
        c.net.0.net.stop(c.source, LIVENESS),
        "the source did not stop within {LIVENESS:?}"
    );
    std::fs::write(
        c.net.0.net.data(c.source).join("predictor.json"),
        b"{\"version\": 2, \"pbmlr\": [",
    )
    .expect("corrupt predictor.json");
    c.net
        .0
        .net
        .restart(c.source)
        .expect("a corrupt state does not stop the node");
    let prior = predictor_status(&c.net, c.source);
    assert_eq!(prior.dumps, 0, "{prior:?}");
    assert!(
        prior
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("corrupt")),
        "{prior:?}"
    );
}

/// The same task with a generous `downtime_budget_ms` (10 min) moves live, and its source
/// learned from the move's dumps.
#[test]
fn a_generous_downtime_budget_lets_a_live_move_freeze() {
    if !live_move_supported("migrate::a_generous_downtime_budget_lets_a_live_move_freeze") {
        return;
    }
    let c = budget_chain("generous", 600_000);
    let net = &c.net;
    chain_answers(c.front_port);
    let count = state(c.mid_port);
    let moved = net.brume(0, &["migrate", "mid", "--to", &c.nodes[c.free].1]);
    let err = text(&moved.stderr);
    eprintln!("{err}{}", text(&moved.stdout));
    assert!(
        moved.status.success(),
        "the move within budget failed: {err}"
    );
    assert!(err.contains("restored on the target: downtime"), "{err}");
    assert_eq!(
        net.placement()["mid"],
        (c.nodes[c.free].0.clone(), c.mid_port)
    );
    assert_eq!(state(c.mid_port), count, "mid's memory came along");
    assert!(dumps_learned(net, c.source) >= 1, "no dump learned");
}

/// `brume drain --deadline` on mid's host (mid is `checkpoint = "criu"`): the move is scheduled
/// against the deadline from its predicted duration, mid moves live, and its line says it ran
/// on its new host before the deadline (a generous one: the test is about the report, not speed).
#[test]
fn a_drain_with_a_deadline_reports_each_task_in_time() {
    if !live_move_supported("migrate::a_drain_with_a_deadline_reports_each_task_in_time") {
        return;
    }
    let c = budget_chain("deadline", 600_000);
    let net = &c.net;
    chain_answers(c.front_port);
    let count = state(c.mid_port);
    let lines: Vec<DrainLine> = net.json(
        c.source,
        &["drain", "--deadline", "60s", "--margin", "50s", "--json"],
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = &lines[0];
    assert_eq!(line.task, "mid");
    let moved = line.outcome.as_ref().expect("mid moved");
    assert_eq!(moved.mode, "criu", "{moved:?}");
    assert_eq!(line.on_time, Some(true), "{line:#?}");
    assert_ne!(net.placement()["mid"].0, c.nodes[c.source].0, "mid left");
    assert_eq!(state(c.mid_port), count, "mid's memory came along");
}
