//! A live CRIU move that fails, on the process engine against the real CRIU: four real
//! `brume node` daemons on loopback, the relay chain front -> mid -> back with mid
//! `checkpoint = "criu"`, and mid asked to move to the free node, which fails on purpose at one
//! point of the move (the nodes' `live_fault` setting, for tests only: a node suffers it only as
//! the target of a live move, so every node has it):
//!
//! * the target dies mid pre-copy (`exit-in-precopy`: its daemon exits mid round 1);
//! * the link is cut during the final step (`cut-before-restore`: the target has the final
//!   images, the source hears nothing);
//! * the target's restore fails (`fail-restore`: it says so);
//! * the reply is lost after the target started the task (`cut-after-restore`: the copy runs
//!   there, the source hears nothing; it must fence it before it restores its own).
//!
//! After each, exactly one mid process runs on the machine (all nodes share it, so a copy on
//! the target would be a second one), the initiator's `brume ps` still shows mid on its host,
//! and mid's served count, the writes it acknowledged before the move, is intact and goes on.
//! Waits are on events with a generous liveness bound; a missing CRIU or root is a skip
//! recorded by `brume_testnet::require`.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use brume_control::Deployed;
use common::{live_move_supported, text};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

/// The freeze the planner may predict: generous, the tests check state, not speed.
const MAX_DOWNTIME: &str = "120s";

/// A liveness bound on anything a test waits for, never a speed claim.
const LIVENESS: Duration = Duration::from_secs(60);

/// The test's nodes: [`common::ServiceNet`], whose commands it reaches through `Deref`.
struct Net(common::ServiceNet);

impl std::ops::Deref for Net {
    type Target = common::ServiceNet;

    fn deref(&self) -> &common::ServiceNet {
        &self.0
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Asks until the chain answers in full, for at most [`LIVENESS`].
fn chain_answers(port: u16) {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let reply = common::ask(port, "hello");
        match &reply {
            Ok(r) if r == "front(mid(back))" => return,
            _ if Instant::now() > deadline => {
                panic!("the chain does not answer within {LIVENESS:?}; last: {reply:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// mid's served count: the calls it acknowledged.
fn state(port: u16) -> u64 {
    common::ask(port, "STATE")
        .expect("STATE answers")
        .parse()
        .expect("a count")
}

fn processes_of(service: &str, task: &str) -> Vec<u32> {
    common::processes_with_env(&[
        &format!("BRUME_SERVICE={service}"),
        &format!("BRUME_TASK={task}"),
    ])
}

/// Waits until no process runs `task` of `service`, for at most [`LIVENESS`].
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

/// Deploys the chain on four nodes that all have `live_fault = fault`, moves mid live to the
/// free node, and checks what the move left: the move failed with a reason containing each of
/// `said`, one mid process runs, on its host, with its count. Only node 0 (never the target)
/// is asked anything afterwards: a target that died cannot answer.
fn a_failed_move(test: &str, fault: &str, said: &[&str]) {
    if !live_move_supported(test) {
        return;
    }
    let service = unique("fail");
    let env =
        |_: usize| -> Vec<(OsString, OsString)> { vec![("BRUME_LIVE_FAULT".into(), fault.into())] };
    let net = Net(common::ServiceNet::start_with_env(
        Path::new(BRUME),
        4,
        "process",
        150,
        &[],
        &env,
        &service,
    ));
    let dir = net.0.dir().to_path_buf();
    common::chain_context(&dir, &service, &service);
    let m = brume_testnet::relay_service::manifest(&dir, &service).expect("a manifest");
    let criu = std::fs::read_to_string(&m).expect("read manifest").replace(
        "name = \"mid\"\nbuild = \"ctx\"\n",
        "name = \"mid\"\nbuild = \"ctx\"\nstateful = true\ncheckpoint = \"criu\"\n",
    );
    assert!(criu.contains("checkpoint = \"criu\""), "{criu}");
    std::fs::write(&m, criu).expect("write manifest");
    let _: Deployed = net.json(0, &["deploy", m.to_str().expect("utf-8 path"), "--json"]);
    let nodes: Vec<(String, String)> = (0..4).map(|i| net.status(i)).collect();
    let before = net.placement();
    let (_, front_port) = before["front"].clone();
    for _ in 0..3 {
        chain_answers(front_port);
    }
    let (mid_host, mid_port) = before["mid"].clone();
    assert_eq!(state(mid_port), 3, "mid acknowledged three calls");
    let free = nodes
        .iter()
        .position(|(id, _)| before.values().all(|(h, _)| h != id))
        .expect("a free node");
    let old = processes_of(&service, "mid");
    assert_eq!(old.len(), 1, "one mid process: {old:?}");

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
    eprintln!("{fault}: {why}");
    assert!(
        !moved.status.success(),
        "the move succeeded despite {fault}"
    );
    for s in said {
        assert!(why.contains(s), "{fault}: the reason lacks {s:?}: {why}");
    }

    // Exactly one copy, where it was, with every acknowledged write.
    let now = processes_of(&service, "mid");
    assert_eq!(now.len(), 1, "{fault}: exactly one mid process: {now:?}");
    assert_eq!(net.placement()["mid"], (mid_host.clone(), mid_port));
    assert_eq!(state(mid_port), 3, "{fault}: mid kept its count");
    chain_answers(front_port);
    assert_eq!(state(mid_port), 4, "{fault}: the chain goes through mid");
    assert_eq!(
        processes_of(&service, "mid").len(),
        1,
        "{fault}: still one mid process"
    );

    let stopped = net.brume(0, &["stop", &service]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    wait_no_process(&service, "mid");
}

#[test]
fn the_target_dies_mid_pre_copy() {
    a_failed_move(
        "move_failures::the_target_dies_mid_pre_copy",
        "exit-in-precopy",
        &["still runs here"],
    );
}

#[test]
fn the_link_is_cut_during_the_final_step() {
    a_failed_move(
        "move_failures::the_link_is_cut_during_the_final_step",
        "cut-before-restore",
        &["after the final dump", "was lost", "runs here again"],
    );
}

#[test]
fn the_target_restore_fails() {
    a_failed_move(
        "move_failures::the_target_restore_fails",
        "fail-restore",
        &[
            "after the final dump",
            "fails on purpose",
            "runs here again",
        ],
    );
}

#[test]
fn the_reply_is_lost_after_the_target_started() {
    a_failed_move(
        "move_failures::the_reply_is_lost_after_the_target_started",
        "cut-after-restore",
        &["after the final dump", "was lost", "runs here again"],
    );
}
