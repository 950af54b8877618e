//! `brume testnet` on the real Docker engine: three node containers from the node image, joined
//! through the router with a known RTT, a relay chain deployed from one node onto the others,
//! a partition that cuts a node off and a heal that brings it back, and `down` leaving no
//! container, namespace, router or state behind. Needs root, Docker and criu (for the image);
//! CI's `BRUME_REQUIRE=all` turns a missing one into a failure.
//!
//! The image is built by scripts/node-image.sh around the debug brume of the same build; the
//! image's tag is the hash of its contents, so an unchanged image is not built again.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use brume_testnet::containers::state::{NetState, NODE_PORT};
use brume_testnet::containers::{docker, image, test_run};
use brume_testnet::{netns, relay_service, require};

const BIN: &str = env!("CARGO_BIN_EXE_brume-testnet");
/// The RTT every pair gets.
const RTT_MS: f64 = 20.0;
/// A liveness bound for everything awaited here (generous for a loaded two-core machine).
const PATIENCE: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The node image, built (or found) by scripts/node-image.sh around the brume of this build
/// (the debug binary beside this test's: `cargo test`/`nextest` of the workspace builds it, and
/// a release build of it would cost CI a quarter of an hour).
fn node_image() -> String {
    let brume = std::env::current_exe()
        .expect("the test's own path")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join("brume");
    assert!(
        brume.is_file(),
        "{} is missing: build the workspace first (`cargo build -p brume`; scripts/test.sh does)",
        brume.display()
    );
    image::node_image(&brume).unwrap_or_else(|e| panic!("{e:#}"))
}

fn testnet(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run brume-testnet")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `brume-testnet down` for the testnet on drop, also when the test fails.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let out = testnet(&["down", "--name", &self.0]);
        if !out.status.success() {
            eprintln!("down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// `brume <what> --json` inside node `i`'s container.
fn node_json(state: &NetState, i: usize, args: &[&str]) -> serde_json::Value {
    let mut cmd = vec!["exec", &state.nodes[i].container, "brume"];
    cmd.extend(args);
    cmd.extend(["--control", "/run/brume/control.sock", "--json"]);
    let out = docker::docker(&cmd).expect("docker exec brume");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Whether a TCP connection from node `from`'s namespace to `to`:port opens within 3 s.
fn connects(state: &NetState, from: usize, to: SocketAddr) -> bool {
    netns::run_in(&netns::name(&state.tag, from), move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3)).is_ok()
    })
    .expect("enter the node's namespace")
}

/// The chain's answer to one line, asked at its front (a port on node 0's loopback).
fn chain_answer(state: &NetState, port: u16) -> String {
    netns::run_in(&netns::name(&state.tag, 0), move || {
        use std::io::{BufRead, BufReader, Write};
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        writeln!(&s, "hello")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        std::io::Result::Ok(line.trim().to_string())
    })
    .expect("enter node 0's namespace")
    .expect("the chain's front answers")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_testnet_of_node_containers_routes_partitions_deploys_and_goes_down() {
    let test = "containers::a_testnet_of_node_containers_routes_partitions_deploys_and_goes_down";
    if !(require::root(test) && require::docker(test) && require::criu(test)) {
        return;
    }
    let image = node_image();
    let name = test_run::net_name();
    let guard = Down(name.clone());
    let run_label = test_run::label();
    let out = ok(
        testnet(&[
            "up",
            "--nodes",
            "3",
            "--latency",
            "20ms",
            "--seed",
            "1",
            "--name",
            &name,
            "--image",
            &image,
            "--label",
            &run_label,
            "--wait-s",
            "180",
            // One relay (100 mCPU) per node: the chain spans the nodes.
            "--node-arg=--cpu-millis=150",
        ]),
        "up",
    );
    eprintln!("{out}");
    let state = NetState::load(&name).expect("the state file");
    assert_eq!(state.nodes.len(), 3);
    let ps = ok(testnet(&["ps", "--name", &name]), "ps");
    assert_eq!(ps.matches("running").count(), 3, "{ps}");

    // criu, with its libraries, runs inside a node. (The process engine's CRIU tasks, deployed
    // and moved below, show the node may make their namespaces, mounts and device nodes.)
    let c0 = state.nodes[0].container.as_str();
    docker::docker(&["exec", c0, "criu", "--version"]).expect("criu runs in the node");

    // Every node measures the router's RTT to its peers: never below it (the router only
    // delays), where the same nodes without the router measure well under a millisecond.
    wait_until("every node measuring RTTs to two peers", || {
        (0..3).all(|i| {
            let peers = node_json(&state, i, &["peers"]);
            let rtts: Vec<f64> = peers
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["srtt_ms"].as_f64())
                .collect();
            rtts.len() == 2
        })
    });
    for i in 0..3 {
        for p in node_json(&state, i, &["peers"]).as_array().unwrap() {
            let srtt = p["srtt_ms"].as_f64().unwrap();
            assert!(
                srtt >= RTT_MS,
                "node {i} measured {srtt} ms to {p}; the router holds {RTT_MS} ms"
            );
        }
    }

    // A relay chain deployed from node 0: front stays there, mid and back go to the others
    // (the manifest's tasks, copied into node 0's container with their build context).
    let dir = tempfile::tempdir().unwrap();
    let relay = repo().join("target/static/x86_64-unknown-linux-gnu/release/brume-relay");
    relay_service::context(dir.path(), &relay, &name).unwrap();
    let manifest = relay_service::manifest(dir.path(), &name).unwrap();
    // Each task keeps its memory across a move: CRIU on the process engine, inside the node.
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "memory_mb = 64",
        "memory_mb = 64\nstateful = true\ncheckpoint = \"criu\"\nuser = \"root\"",
    );
    std::fs::write(&manifest, text).unwrap();
    let svc = format!("{}:/tmp/svc", state.nodes[0].container);
    docker::docker(&["cp", dir.path().to_str().unwrap(), &svc]).expect("docker cp");
    let deployed = node_json(
        &state,
        0,
        &["deploy", "/tmp/svc/service.toml", "--budget", "1s"],
    );
    let rows = deployed["instances"].as_array().expect("deploy rows");
    assert_eq!(rows.len(), 3, "{deployed}");
    let front = rows
        .iter()
        .find(|r| r["task"] == "front")
        .expect("a front row");
    let port: u16 = front["address"]
        .as_str()
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("front's address in {front}"));
    let reply = chain_answer(&state, port);
    assert_eq!(reply, "front(mid(back))");
    let hosts: std::collections::BTreeSet<&str> =
        rows.iter().filter_map(|r| r["peer"].as_str()).collect();
    assert_eq!(
        hosts.len(),
        3,
        "the chain must span the three nodes: {deployed}"
    );

    // A node joins the running testnet and reaches the others through the router.
    ok(
        testnet(&["join", "--name", &name, "--wait-s", "180"]),
        "join",
    );
    let state = NetState::load(&name).expect("the state file after join");
    assert_eq!(state.nodes.len(), 4);
    assert!(
        connects(
            &state,
            3,
            SocketAddr::from((state.nodes[0].addr, NODE_PORT))
        ),
        "the joined node reaches node 0"
    );
    // mid moves live (CRIU between two node containers, over the router's delay) to the
    // joined node, the only one with room, and the chain answers through it there. The node
    // containers are network namespaces of their own, so the move is tracked (the dirty-page
    // tracker's rounds, then post-copy of the last pages) wherever this kernel tracks written
    // pages, as it does on the machines this runs on; by full dumps elsewhere.
    let mid_before = rows.iter().find(|r| r["task"] == "mid").unwrap()["peer"].clone();
    let joined = node_json(&state, 3, &["status"])["peer_id"]
        .as_str()
        .expect("node 3's peer id")
        .to_string();
    let moved = node_json(&state, 0, &["migrate", "mid", "--to", &joined]);
    let ps = node_json(&state, 0, &["ps"]);
    let mid_after = ps
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["task"] == "mid")
        .unwrap_or_else(|| panic!("mid in {ps}"))["peer"]
        .clone();
    assert_ne!(mid_after, mid_before, "mid did not move: {moved}");
    assert_eq!(mid_after.as_str(), Some(joined.as_str()), "{moved}");
    let tracks = brume_migration::track::probe().method == brume_migration::track::Method::Tracked
        && brume_migration::lazy::check_pipe_max_size().is_ok();
    let mode = if tracks { "tracked" } else { "criu" };
    assert_eq!(moved["mode"], mode, "{moved}");
    assert_eq!(chain_answer(&state, port), "front(mid(back))");

    // Partition node 2 from nodes 0 and 1: no packet between them passes; heal restores it.
    let to = |i: usize| SocketAddr::from((state.nodes[i].addr, NODE_PORT));
    assert!(
        connects(&state, 0, to(2)),
        "node 0 reaches node 2 before the partition"
    );
    ok(testnet(&["partition", "--name", &name, "2"]), "partition");
    assert!(
        !connects(&state, 0, to(2)),
        "node 0 reached node 2 across the partition"
    );
    assert!(
        !connects(&state, 2, to(1)),
        "node 2 reached node 1 across the partition"
    );
    assert!(
        connects(&state, 0, to(1)),
        "nodes 0 and 1 are on the same side"
    );
    ok(testnet(&["heal", "--name", &name]), "heal");
    wait_until("node 0 reaching node 2 after heal", || {
        connects(&state, 0, to(2))
    });

    // A killed node's container stops.
    ok(testnet(&["kill", "--name", &name, "3"]), "kill");
    let ps = ok(testnet(&["ps", "--name", &name]), "ps");
    assert_eq!(ps.matches("running").count(), 3, "{ps}");
    assert_eq!(docker::status_of(&state.nodes[3].container), "exited");

    // Down removes every container, namespace, the router and the state.
    ok(testnet(&["down", "--name", &name]), "down");
    std::mem::forget(guard);
    assert_eq!(docker::containers_of(&name).unwrap(), Vec::<String>::new());
    for i in 0..4 {
        let ns = netns::name(&state.tag, i);
        assert!(
            !Path::new(netns::NETNS_DIR).join(&ns).exists(),
            "{ns} remains"
        );
    }
    let router = state.router_pid.expect("a router pid");
    let stat = std::fs::read_to_string(format!("/proc/{router}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty()
            || stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z')),
        "the router {router} still runs"
    );
    assert!(
        !NetState::dir_of(&name).exists(),
        "the state directory remains"
    );
}

/// The same command without Docker (`up --processes`): `brume node` processes in namespaces
/// this tooling creates, the same router, RTTs, partition and down.
#[test]
fn a_testnet_of_node_processes_needs_no_docker() {
    if !require::root("containers::a_testnet_of_node_processes_needs_no_docker") {
        return;
    }
    let brume = Path::new(BIN).with_file_name("brume");
    assert!(
        brume.is_file(),
        "{} is missing: cargo build -p brume (cargo nextest run --workspace builds it)",
        brume.display()
    );
    let name = format!("{}p", test_run::net_name());
    let guard = Down(name.clone());
    ok(
        testnet(&[
            "up",
            "--nodes",
            "3",
            "--processes",
            "--latency",
            "20ms",
            "--name",
            &name,
            "--wait-s",
            "180",
        ]),
        "up --processes",
    );
    let state = NetState::load(&name).expect("the state file");
    assert!(state.processes);
    wait_until("every node measuring RTTs to two peers", || {
        (0..3).all(|i| {
            let peers = node_json_host(&state, i, "peers");
            peers
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["srtt_ms"].is_number())
                .count()
                == 2
        })
    });
    for i in 0..3 {
        for p in node_json_host(&state, i, "peers").as_array().unwrap() {
            let srtt = p["srtt_ms"].as_f64().unwrap();
            assert!(srtt >= RTT_MS, "node {i} measured {srtt} ms to {p}");
        }
    }
    let to = |i: usize| SocketAddr::from((state.nodes[i].addr, NODE_PORT));
    ok(testnet(&["partition", "--name", &name, "0"]), "partition");
    assert!(
        !connects(&state, 0, to(1)),
        "node 0 reached node 1 across the partition"
    );
    assert!(
        connects(&state, 1, to(2)),
        "nodes 1 and 2 are on the same side"
    );
    ok(testnet(&["heal", "--name", &name]), "heal");
    wait_until("node 0 reaching node 1 after heal", || {
        connects(&state, 0, to(1))
    });

    ok(testnet(&["down", "--name", &name]), "down");
    std::mem::forget(guard);
    for (i, node) in state.nodes.iter().enumerate() {
        let ns = netns::name(&state.tag, i);
        assert!(
            !Path::new(netns::NETNS_DIR).join(&ns).exists(),
            "{ns} remains"
        );
        assert!(
            !brume_testnet::containers::procs::alive(node.pid),
            "node {i} (pid {}) still runs",
            node.pid
        );
    }
    assert!(
        !NetState::dir_of(&name).exists(),
        "the state directory remains"
    );
}

/// `brume <what> --json` for a process node, through its control socket on the host.
fn node_json_host(state: &NetState, i: usize, what: &str) -> serde_json::Value {
    brume_testnet::containers::ask::node_json(state, i, what).expect("brume answers")
}
