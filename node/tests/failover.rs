//! A host dies and its instances come back elsewhere (issue 15, "Failure" and "Replicas";
//! docs/healing.md): real `brume node` daemons on loopback, the process engine, the relay
//! service. The initiator (node 0) sends heartbeats to the hosts of what it deployed; the test
//! kills one host's daemon with SIGKILL (its tasks die with it) and waits until `brume ps` on
//! the initiator shows the lost instance running on another live host and the service answers
//! through it. The times are printed, never asserted: the machine may be loaded.
//!
//! Each node offers 150 mCPU and each task asks 100, so no two tasks share a node: the root
//! (`front`) runs on the initiator, every other task on a node of its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use brume_control::PsRow;
use brume_testnet::relay_service::CALL_BOUND_MS;
use common::{port_of, text};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

/// The longest the test waits for the service to come back.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// `front -> back` with `replicas` copies of `back`, built from the relay's context.
fn manifest(dir: &Path, service: &str, replicas: u32) -> PathBuf {
    common::chain_context(dir, service, service);
    // A generous call bound: `CALL_BOUND_MS` says why.
    let text = format!(
        "[service]\nname = \"{service}\"\nroot = \"front\"\n\n\
         [[task]]\nname = \"front\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n\n\
         [[task]]\nname = \"back\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n\
         replicas = {replicas}\n\n\
         [[call]]\nfrom = \"front\"\nto = \"back\"\nlatency_ms = {CALL_BOUND_MS}\ntraffic_mbps = 1\n"
    );
    let path = dir.join("service.toml");
    std::fs::write(&path, text).expect("write the manifest");
    path
}

/// `n` daemons on the process engine, heartbeats every 300 ms.
fn start(n: usize, service: &str) -> common::ServiceNet {
    common::ServiceNet::start_with(
        Path::new(BRUME),
        n,
        "process",
        150,
        &["--heartbeat-interval-ms", "300"],
        service,
    )
}

fn ps(net: &common::ServiceNet) -> Vec<PsRow> {
    let out = net.brume(0, &["ps", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Which node (index) has node id `host`.
fn index_of(ids: &[String], host: &str) -> usize {
    ids.iter()
        .position(|h| h == host)
        .unwrap_or_else(|| panic!("{host} is none of the nodes {ids:?}"))
}

/// Deploys, returning every node's id (as `ps` names hosts).
fn deploy(net: &common::ServiceNet, m: &Path, n: usize) -> Vec<String> {
    let out = net.brume(0, &["deploy", m.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    (0..n).map(|i| net.status(i).0).collect()
}

/// Polls every 200 ms until `ready` holds for the initiator's `ps`, failing after the guard;
/// how long it took.
fn wait_for(
    net: &common::ServiceNet,
    what: &str,
    ready: impl Fn(&[PsRow]) -> bool,
) -> (Duration, Vec<PsRow>) {
    let started = Instant::now();
    loop {
        let rows = ps(net);
        if ready(&rows) {
            return (started.elapsed(), rows);
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "{what}: not within {HANG_GUARD:?}; last ps: {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn running<'a>(rows: &'a [PsRow], task: &str, replica: u32) -> Option<&'a PsRow> {
    rows.iter()
        .find(|r| r.instance.task == task && r.instance.replica == replica)
        .filter(|r| r.instance.state == "running")
}

/// The front's answer, when it has one.
fn ask_front(rows: &[PsRow]) -> Option<String> {
    let front = running(rows, "front", 0)?;
    common::ask(port_of(&front.instance.address), "hello").ok()
}

#[test]
fn a_killed_host_s_task_runs_again_on_another_node() {
    let service = unique("failover");
    let mut net = start(3, &service);
    let m = manifest(net.dir(), &service, 1);
    let ids = deploy(&net, &m, 3);
    let (_, rows) = wait_for(&net, "the service runs", |rows| {
        running(rows, "back", 0).is_some() && ask_front(rows).as_deref() == Some("front(back)")
    });
    let dead_host = running(&rows, "back", 0).unwrap().instance.host.clone();
    let victim = index_of(&ids, &dead_host);
    assert_ne!(victim, 0, "back never runs beside front on the initiator");

    let killed = Instant::now();
    net.net.kill(victim).expect("kill -9 the victim");
    let (moved, _) = wait_for(&net, "ps shows back on another node", |rows| {
        running(rows, "back", 0).is_some_and(|r| r.instance.host != dead_host)
    });
    let (_, rows) = wait_for(&net, "front reaches back again", |rows| {
        running(rows, "back", 0).is_some_and(|r| r.instance.host != dead_host)
            && ask_front(rows).as_deref() == Some("front(back)")
    });
    let back = running(&rows, "back", 0).unwrap();
    assert_ne!(index_of(&ids, &back.instance.host), victim);
    // The new copy answers where ps says it is.
    assert_eq!(
        common::ask(port_of(&back.instance.address), "hello").expect("back answers"),
        "back"
    );
    eprintln!(
        "failover: node {victim} ({dead_host}) killed; ps shows back running on {} after \
         {:.2} s, front reaches it after {:.2} s (ps polled every 0.2 s; detection and \
         re-placement times are in the initiator's log above)",
        back.instance.host,
        moved.as_secs_f64(),
        killed.elapsed().as_secs_f64(),
    );
}

#[test]
fn a_lost_replica_comes_back_on_a_host_distinct_from_the_survivor() {
    let service = unique("failrep");
    let mut net = start(4, &service);
    let m = manifest(net.dir(), &service, 2);
    let ids = deploy(&net, &m, 4);
    let (_, rows) = wait_for(&net, "the service runs", |rows| {
        running(rows, "back", 0).is_some()
            && running(rows, "back", 1).is_some()
            && ask_front(rows).as_deref() == Some("front(back,back)")
    });
    let host = |rows: &[PsRow], r| running(rows, "back", r).unwrap().instance.host.clone();
    let (dead_host, survivor) = (host(&rows, 0), host(&rows, 1));
    assert_ne!(dead_host, survivor, "replicas placed on distinct hosts");
    let victim = index_of(&ids, &dead_host);
    assert_ne!(victim, 0);

    let killed = Instant::now();
    net.net.kill(victim).expect("kill -9 the victim");
    let (moved, _) = wait_for(&net, "ps shows replica 0 on another node", |rows| {
        running(rows, "back", 0).is_some_and(|r| r.instance.host != dead_host)
    });
    let (_, rows) = wait_for(&net, "replica 0 runs again elsewhere", |rows| {
        running(rows, "back", 0).is_some_and(|r| r.instance.host != dead_host)
            && running(rows, "back", 1).is_some()
            && ask_front(rows).as_deref() == Some("front(back,back)")
    });
    let (new_host, still) = (host(&rows, 0), host(&rows, 1));
    assert_eq!(still, survivor, "the surviving replica stayed");
    assert_ne!(new_host, survivor, "replicas stay on distinct hosts");
    let hosts: BTreeSet<&str> = rows.iter().map(|r| r.instance.host.as_str()).collect();
    assert!(!hosts.contains(dead_host.as_str()), "{rows:#?}");
    eprintln!(
        "failover (replicas): node {victim} ({dead_host}) killed; ps shows replica 0 on \
         {new_host} (beside the survivor on {survivor}) after {:.2} s, front reaches both \
         after {:.2} s",
        moved.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
}
