//! Tracked live moves as nodes on separate devices make them, against the real CRIU: four
//! `brume node` processes, each in a network namespace of its own (`brume-testnet up
//! --processes`, the router between them), the relay chain front -> mid -> back with mid
//! `checkpoint = "criu"`, and mid moved to the free node. Nodes in different network namespaces
//! move such a task tracked by default (`live_migration = "auto"`): the dirty-page tracker's
//! rounds carry its memory while it runs, and the copy is restored on the target before the
//! last pages arrive (post-copy), while the frozen original still exists on the source.
//!
//! One test moves mid and checks that the move was tracked, that exactly one mid process runs
//! afterwards, on the target, and that its served count (the calls it acknowledged) came along.
//! The others give every node one of the four failure points of a target (the nodes'
//! `--live-fault`, for tests only) and check what the failed move left: it says why, exactly
//! one mid process runs, on its old host, with its count, and serves on. These are the
//! failures of `node/tests/move_failures.rs`, whose nodes share one network and so move by
//! full-dump pre-copy; here they meet the post-copy's own rules: the source's task stays
//! frozen with its pages until the target holds every page (the source closes its page server
//! only then), a failure before that thaws it, and a failure where the target may run a copy
//! (the link lost after the images went) thaws it only once the target fenced its copy (or its
//! lease surely ran out).
//!
//! Waits are on events with a generous liveness bound. Needs root and criu (>= 4.2, with the
//! kernel's tracking of written pages for the tracked mode: else a recorded skip through
//! `brume_testnet::require`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use brume_testnet::containers::state::NetState;
use brume_testnet::containers::test_run;
use brume_testnet::processes::processes_with_env;
use brume_testnet::{netns, relay_service, require};

const BIN: &str = env!("CARGO_BIN_EXE_brume-testnet");
/// A liveness bound on anything awaited here, never a speed claim.
const PATIENCE: Duration = Duration::from_secs(120);
/// The freeze the planner may predict: generous, these tests check state, not speed.
const MAX_DOWNTIME: &str = "120s";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn testnet(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run brume-testnet")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Takes the testnet down however the test ends.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let out = testnet(&["down", "--name", &self.0]);
        if !out.status.success() {
            eprintln!("down failed: {}", text(&out.stderr));
        }
    }
}

/// Four process nodes in namespaces of their own; none answers the test's commands but
/// through its control socket.
struct Net {
    state: NetState,
    brume: PathBuf,
    _down: Down,
}

impl Net {
    /// `fault`: every node's `--live-fault` (a node suffers it only as a move's target).
    /// `suffix` tells this test's testnet from the others of this process.
    fn up(fault: Option<&str>, suffix: &str) -> Net {
        let name = format!("{}{suffix}", test_run::net_name());
        let down = Down(name.clone());
        let mut args = vec![
            "up",
            "--nodes",
            "4",
            "--processes",
            "--latency",
            "2ms",
            "--name",
            &name,
            "--wait-s",
            "180",
            // One relay (100 mCPU) per node: the chain spans three nodes, one is free.
            "--node-arg=--cpu-millis=150",
        ];
        let fault_arg = fault.map(|f| format!("--node-arg=--live-fault={f}"));
        args.extend(fault_arg.as_deref());
        let out = testnet(&args);
        assert!(out.status.success(), "up failed: {}", text(&out.stderr));
        let state = NetState::load(&name).expect("the state file");
        let brume = Path::new(BIN).with_file_name("brume");
        Net {
            state,
            brume,
            _down: down,
        }
    }

    /// `brume ARGS --control <node i's socket>`.
    fn brume(&self, i: usize, args: &[&str]) -> Output {
        let control = brume_testnet::containers::procs::control(&self.state, i);
        Command::new(&self.brume)
            .args(args)
            .arg("--control")
            .arg(control)
            .output()
            .expect("run brume")
    }

    fn json(&self, i: usize, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.brume(i, &all);
        assert!(
            out.status.success(),
            "brume {args:?} on node {i}: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
    }

    fn peer_id(&self, i: usize) -> String {
        self.json(i, &["status"])["peer_id"]
            .as_str()
            .expect("a peer id")
            .to_string()
    }

    /// Task -> (host's node index, port), as node 0 (the initiator) lists them.
    fn placement(&self, peers: &[String]) -> BTreeMap<String, (usize, u16)> {
        let ps = self.json(0, &["ps"]);
        ps.as_array()
            .expect("ps rows")
            .iter()
            .map(|r| {
                let task = r["task"].as_str().expect("a task").to_string();
                let peer = r["peer"].as_str().expect("a peer");
                let host = peers
                    .iter()
                    .position(|p| p == peer)
                    .unwrap_or_else(|| panic!("{peer} is none of the nodes"));
                let port = r["address"]
                    .as_str()
                    .and_then(|a| a.rsplit(':').next()?.parse().ok())
                    .unwrap_or_else(|| panic!("a port in {r}"));
                (task, (host, port))
            })
            .collect()
    }

    /// One line to the relay task listening on `port` in node `i`'s namespace.
    fn ask(&self, i: usize, port: u16, line: &str) -> std::io::Result<String> {
        let line = line.to_string();
        netns::run_in(&netns::name(&self.state.tag, i), move || {
            relay_service::ask(&format!("127.0.0.1:{port}"), &line)
        })
        .expect("enter the node's namespace")
    }

    /// Asks until the chain answers in full through front (on node `i`, `port`).
    fn chain_answers(&self, i: usize, port: u16) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reply = self.ask(i, port, "hello");
            match &reply {
                Ok(r) if r == "front(mid(back))" => return,
                _ if Instant::now() > deadline => {
                    panic!("the chain does not answer within {PATIENCE:?}; last: {reply:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// mid's served count.
    fn count(&self, i: usize, port: u16) -> u64 {
        self.ask(i, port, "STATE")
            .expect("STATE answers")
            .parse()
            .expect("a count")
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.state.node_dir(i).join("node.log")).unwrap_or_default()
    }
}

/// The chain deployed from node 0 with mid `checkpoint = "criu"`, each task on its own node.
struct Chain {
    net: Net,
    service: String,
    peers: Vec<String>,
    front: (usize, u16),
    mid: (usize, u16),
    free: usize,
    _dir: tempfile::TempDir,
}

impl Chain {
    fn deploy(net: Net) -> Chain {
        let service = format!("tm-{:08x}", rand::random::<u32>());
        let dir = tempfile::tempdir().expect("a temp dir");
        let relay = repo().join("target/static/x86_64-unknown-linux-gnu/release/brume-relay");
        assert!(
            relay.is_file(),
            "{} is missing: bash scripts/build-static.sh",
            relay.display()
        );
        relay_service::context(dir.path(), &relay, &service).expect("the build context");
        let m = relay_service::manifest(dir.path(), &service).expect("a manifest");
        let text = std::fs::read_to_string(&m).expect("read the manifest").replace(
            "name = \"mid\"\nbuild = \"ctx\"\n",
            "name = \"mid\"\nbuild = \"ctx\"\nstateful = true\ncheckpoint = \"criu\"\nuser = \"root\"\n",
        );
        assert!(text.contains("checkpoint = \"criu\""), "{text}");
        std::fs::write(&m, text).expect("write the manifest");
        let peers: Vec<String> = (0..4).map(|i| net.peer_id(i)).collect();
        net.json(
            0,
            &[
                "deploy",
                m.to_str().expect("a UTF-8 path"),
                "--budget",
                "5s",
            ],
        );
        let placed = net.placement(&peers);
        let (front, mid) = (placed["front"], placed["mid"]);
        let free = (0..4)
            .find(|i| placed.values().all(|(h, _)| h != i))
            .expect("a free node");
        for _ in 0..3 {
            net.chain_answers(front.0, front.1);
        }
        assert_eq!(net.count(mid.0, mid.1), 3, "mid acknowledged three calls");
        let chain = Chain {
            net,
            service,
            peers,
            front,
            mid,
            free,
            _dir: dir,
        };
        assert_eq!(chain.mids().len(), 1, "one mid process");
        chain
    }

    fn mids(&self) -> Vec<u32> {
        processes_with_env(&[&format!("BRUME_SERVICE={}", self.service), "BRUME_TASK=mid"])
    }

    /// `brume migrate mid --to <the free node>` from node 0.
    fn migrate(&self) -> Output {
        self.net.brume(
            0,
            &[
                "migrate",
                "mid",
                "--to",
                &self.peers[self.free],
                "--max-downtime",
                MAX_DOWNTIME,
                "--json",
            ],
        )
    }

    /// Stops the service; no mid process is left.
    fn stop(&self) {
        let stopped = self.net.brume(0, &["stop", &self.service]);
        assert!(stopped.status.success(), "{}", text(&stopped.stderr));
        let until = Instant::now() + PATIENCE;
        while !self.mids().is_empty() {
            assert!(Instant::now() < until, "mid outlived its stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether this machine moves tracked: root, criu, and the kernel's tracking of written pages
/// with the pipe size post-copy needs. A recorded skip otherwise.
fn tracked_moves_supported(test: &str) -> bool {
    if !(require::root(test) && require::criu(test)) {
        return false;
    }
    let support = brume_migration::track::probe();
    if support.method != brume_migration::track::Method::Tracked {
        require::missing(test, require::Need::Tracking, &support.why);
        return false;
    }
    if let Err(e) = brume_migration::lazy::check_pipe_max_size() {
        require::missing(test, require::Need::Tracking, &e.to_string());
        return false;
    }
    true
}

#[test]
fn a_task_moves_tracked_between_network_namespaces_with_its_state() {
    if !tracked_moves_supported(
        "tracked_moves::a_task_moves_tracked_between_network_namespaces_with_its_state",
    ) {
        return;
    }
    let c = Chain::deploy(Net::up(None, "m"));
    let out = c.migrate();
    assert!(
        out.status.success(),
        "the move failed: {}\nsource log:\n{}\ntarget log:\n{}",
        text(&out.stderr),
        c.net.log(c.mid.0),
        c.net.log(c.free)
    );
    let moved: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the move's JSON line");
    eprintln!("moved: {moved}");
    assert_eq!(moved["mode"], "tracked", "{moved}");

    let placed = c.net.placement(&c.peers);
    let (host, port) = placed["mid"];
    assert_eq!(host, c.free, "mid runs on the node it was moved to");
    assert_eq!(c.mids().len(), 1, "exactly one mid process after the move");
    assert_eq!(c.net.count(host, port), 3, "mid's count came along");
    c.net.chain_answers(c.front.0, c.front.1);
    assert_eq!(
        c.net.count(host, port),
        4,
        "the chain goes through the moved mid"
    );
    assert_eq!(c.mids().len(), 1, "still one mid process");
    c.stop();
}

/// A tracked move that fails at `fault` on the target: it says so (each of `said`), and exactly
/// one mid runs, on its old host, with its count, and serves on.
fn a_failed_tracked_move(test: &str, fault: &str, suffix: &str, said: &[&str]) {
    if !tracked_moves_supported(test) {
        return;
    }
    let c = Chain::deploy(Net::up(Some(fault), suffix));
    let out = c.migrate();
    let why = text(&out.stderr);
    eprintln!("{fault}: {why}");
    assert!(!out.status.success(), "the move succeeded despite {fault}");
    for s in said {
        assert!(
            why.contains(s),
            "{fault}: the reason lacks {s:?}: {why}\nsource log:\n{}",
            c.net.log(c.mid.0)
        );
    }
    assert!(
        c.net.log(c.mid.0).contains("moving with tracked pre-copy"),
        "{fault}: the move was not tracked:\n{}",
        c.net.log(c.mid.0)
    );
    let now = c.mids();
    assert_eq!(now.len(), 1, "{fault}: exactly one mid process: {now:?}");
    assert_eq!(
        c.net.placement(&c.peers)["mid"],
        c.mid,
        "{fault}: mid stayed"
    );
    assert_eq!(
        c.net.count(c.mid.0, c.mid.1),
        3,
        "{fault}: mid kept its count"
    );
    c.net.chain_answers(c.front.0, c.front.1);
    assert_eq!(
        c.net.count(c.mid.0, c.mid.1),
        4,
        "{fault}: the chain goes through mid"
    );
    assert_eq!(c.mids().len(), 1, "{fault}: still one mid process");
    c.stop();
}

#[test]
fn a_target_that_dies_mid_tracked_pre_copy_leaves_the_task_untouched() {
    a_failed_tracked_move(
        "tracked_moves::a_target_that_dies_mid_tracked_pre_copy_leaves_the_task_untouched",
        "exit-in-precopy",
        "x",
        &["still runs here"],
    );
}

#[test]
fn a_link_cut_before_the_lazy_restore_thaws_the_task_on_the_source() {
    a_failed_tracked_move(
        "tracked_moves::a_link_cut_before_the_lazy_restore_thaws_the_task_on_the_source",
        "cut-before-restore",
        "b",
        &["after the final dump", "thawed here", "runs here again"],
    );
}

#[test]
fn a_lazy_restore_refused_by_the_target_thaws_the_task_on_the_source() {
    a_failed_tracked_move(
        "tracked_moves::a_lazy_restore_refused_by_the_target_thaws_the_task_on_the_source",
        "fail-restore",
        "f",
        &["fails on purpose", "thawed the task", "still runs here"],
    );
}

#[test]
fn a_link_cut_after_the_lazy_restore_fences_the_copy_and_thaws_the_task() {
    a_failed_tracked_move(
        "tracked_moves::a_link_cut_after_the_lazy_restore_fences_the_copy_and_thaws_the_task",
        "cut-after-restore",
        "a",
        &["after the final dump", "thawed here", "runs here again"],
    );
}
